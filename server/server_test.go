package server_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relaychat/relaychat/auth"
	"github.com/relaychat/relaychat/internal/testenv"
	"github.com/relaychat/relaychat/proxy"
	"github.com/relaychat/relaychat/route"
	"github.com/relaychat/relaychat/server"
)

const wait = 10 * time.Second

type cluster struct {
	redis   *testenv.RedisProc
	servers []*server.Server
	stores  []*route.Store
	proxy   *proxy.Proxy
	peers   map[string]string
	prefix  string
}

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startCluster starts n in-process servers and a proxy on loopback against a
// private Redis. tune may adjust each server's options.
func startCluster(t *testing.T, n int, noCache bool, tune func(*server.Options)) *cluster {
	t.Helper()
	c := &cluster{redis: testenv.Redis(t), prefix: "p" + strings.ReplaceAll(t.Name(), "/", "_") + ":"}
	peers := map[string]string{}
	for i := 1; i <= n; i++ {
		srv, st := startServer(t, c.redis.Addr, c.prefix, fmt.Sprintf("s%d", i), noCache, tune)
		c.servers = append(c.servers, srv)
		c.stores = append(c.stores, st)
		peers[fmt.Sprintf("s%d", i)] = srv.PeerAddr()
	}
	c.peers = peers
	c.startProxy(t)
	return c
}

// startProxy starts a proxy linked to every server of c and waits until it
// is ready; it is shut down in t.Cleanup (or earlier with stopProxy).
func (c *cluster) startProxy(t *testing.T) {
	t.Helper()
	p, err := proxy.New(proxy.Options{Servers: c.peers, Loops: 2, Secret: c.secret(t), Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.stopProxyOf(p) })
	select {
	case <-p.Ready():
	case <-time.After(wait):
		t.Fatal("proxy not ready")
	}
	c.proxy = p
}

// secret returns the cluster's link secret, as cmd/chat-proxy reads it.
func (c *cluster) secret(t *testing.T) string {
	t.Helper()
	v, err := c.stores[0].ClusterSecret(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func (c *cluster) stopProxyOf(p *proxy.Proxy) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = p.Shutdown(ctx)
}

// stopProxy stops the proxy and waits until no server has a link left.
func (c *cluster) stopProxy(t *testing.T) {
	t.Helper()
	c.stopProxyOf(c.proxy)
	deadline := time.Now().Add(wait)
	for _, srv := range c.servers {
		for srv.Stats().LinksUp.Load() != 0 {
			if time.Now().After(deadline) {
				t.Fatal("servers still linked after the proxy stopped")
			}
			time.Sleep(5 * time.Millisecond) // poll interval
		}
	}
}

// startServer starts one in-process server on loopback; it is shut down in
// t.Cleanup.
func startServer(t *testing.T, redisAddr, prefix, id string, noCache bool, tune func(*server.Options)) (*server.Server, *route.Store) {
	t.Helper()
	st, err := route.New(route.Options{Addrs: []string{redisAddr}, Prefix: prefix, DisableCache: noCache})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	o := server.Options{
		ID: id, Listen: "127.0.0.1:0", PeerListen: "127.0.0.1:0",
		Router: st, Loops: 2, Logger: testLogger(),
	}
	if tune != nil {
		tune(&o)
	}
	srv, err := server.New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown %s: %v", id, err)
		}
	})
	return srv, st
}

func (c *cluster) login(t *testing.T, i int, name string) *testenv.Client {
	t.Helper()
	cl := testenv.Dial(t, c.servers[i].ClientAddr())
	cl.Send(t, fmt.Sprintf(`{"cmd":"login","name":%q}`, name))
	cl.Expect(t, wait, map[string]any{"cmd": "login", "ok": true, "name": name})
	return cl
}

// warmPair logs alice in on the first server and bob on the second, and
// has a first chat from alice reach bob and be settled: s1's route table
// knows bob, and nothing is left unacknowledged on the stream to s2
// (alice's ack comes when the chat reaches the kernel; s2's stream ack
// may come later).
func (c *cluster) warmPair(t *testing.T) (alice, bob *testenv.Client) {
	t.Helper()
	alice, bob = c.login(t, 0, "alice"), c.login(t, 1, "bob")
	alice.Send(t, `{"cmd":"chat","recv":"bob","content":"warm","id":0}`)
	alice.Expect(t, wait, map[string]any{"cmd": "ack", "id": 0})
	bob.Expect(t, wait, map[string]any{"cmd": "chat", "content": "warm"})
	deadline := time.Now().Add(wait)
	for unacked(c.servers[0], "s2") != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("s2 never acknowledged the first chat")
		}
		time.Sleep(5 * time.Millisecond) // poll interval
	}
	return alice, bob
}

// TestOrderUnderForcedMisses turns the route cache off, so every chat to a
// user on the other server is decided off the event loop (a store attempt
// that answers where the user is), and checks that 1,000 such chats,
// interleaved with local ones, arrive in order, and that every chat is
// acknowledged exactly once (a local chat's ack may overtake a remote
// one's: acks are matched by id).
func TestOrderUnderForcedMisses(t *testing.T) {
	c := startCluster(t, 2, true, nil)
	alice := c.login(t, 0, "alice")
	local := c.login(t, 0, "carol")
	bob := c.login(t, 1, "bob")
	const n = 1000
	var b strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, `{"cmd":"chat","recv":"bob","content":"m%d","id":%d}`+"\n", i, 2*i)
		fmt.Fprintf(&b, `{"cmd":"chat","recv":"carol","content":"m%d","id":%d}`+"\n", i, 2*i+1)
	}
	alice.SendRaw(t, []byte(b.String()))
	for i := 0; i < n; i++ {
		want := fmt.Sprintf("m%d", i)
		if got := bob.Expect(t, wait, map[string]any{"cmd": "chat"}); got["content"] != want || got["send"] != "alice" {
			t.Fatalf("bob got %v, want content %s", got, want)
		}
		if got := local.Expect(t, wait, map[string]any{"cmd": "chat"}); got["content"] != want {
			t.Fatalf("carol got %v, want content %s", got, want)
		}
	}
	acked := make([]bool, 2*n)
	for i := 0; i < 2*n; i++ {
		got := alice.ReadJSON(t, wait)
		id, ok := got["id"].(float64)
		if got["cmd"] != "ack" || !ok || id < 0 || int(id) >= 2*n || acked[int(id)] {
			t.Fatalf("ack %d: got %v (a duplicate, or not an ack)", i, got)
		}
		acked[int(id)] = true
	}
	// Not every chat to bob misses: while an earlier one is on its stream
	// unconfirmed, later ones follow it without a lookup (follow.go).
	m := c.servers[0].Stats().CacheMisses.Load()
	if m == 0 {
		t.Fatalf("no cache misses: the test did not force lookups off the loop")
	}
	t.Logf("%d of %d chats to bob were looked up off the loop; the rest followed unconfirmed ones", m, n)
}

// TestConcurrentSameNameLogins races two logins of one name on one server:
// exactly one survives, the other is kicked, and chats reach the survivor.
func TestConcurrentSameNameLogins(t *testing.T) {
	c := startCluster(t, 2, false, nil)
	sender := c.login(t, 1, "sender")
	for i := 0; i < 20; i++ {
		name := fmt.Sprintf("dup%d", i)
		a := testenv.Dial(t, c.servers[0].ClientAddr())
		b := testenv.Dial(t, c.servers[0].ClientAddr())
		line := []byte(fmt.Sprintf(`{"cmd":"login","name":%q}`+"\n", name))
		var wg sync.WaitGroup
		wg.Add(2)
		for _, conn := range []net.Conn{rawConn(a), rawConn(b)} {
			go func() { defer wg.Done(); _, _ = conn.Write(line) }()
		}
		wg.Wait()
		// Each gets login ok, or is told straight away that the other,
		// newer, login won; exactly one must end up kicked and closed.
		kicked := 0
		for _, cl := range []*testenv.Client{a, b} {
			first := cl.ReadJSON(t, wait)
			switch {
			case first["cmd"] == "login" && first["ok"] == true:
			case first["cmd"] == "kicked":
				kicked++
				cl.ExpectClosed(t, wait)
			default:
				t.Fatalf("first reply to a racing login: %v", first)
			}
		}
		if kicked > 1 {
			t.Fatal("both racing logins were kicked")
		}
		sender.Send(t, fmt.Sprintf(`{"cmd":"chat","recv":%q,"content":"hi","id":1}`, name))
		sender.Expect(t, wait, map[string]any{"cmd": "ack"})
		if kicked == 0 {
			whoGot(t, a, b)
		} else {
			for _, cl := range []*testenv.Client{a, b} {
				if cl.Alive() {
					cl.Expect(t, wait, map[string]any{"cmd": "chat", "content": "hi"})
				}
			}
		}
		a.Close()
		b.Close()
	}
}

// whoGot checks that, of two sessions that both logged in, one receives
// the chat and the other is kicked and closed without it.
func whoGot(t *testing.T, a, b *testenv.Client) {
	t.Helper()
	outcomes := map[string]int{}
	for _, cl := range []*testenv.Client{a, b} {
		var seen []string
		for {
			line, ok := cl.NextLine(t, wait)
			if !ok {
				if !containsKicked(seen) {
					t.Fatalf("closed without a kicked line: %q", seen)
				}
				outcomes["kicked"]++
				break
			}
			seen = append(seen, line)
			if strings.Contains(line, `"cmd":"chat"`) {
				if containsKicked(seen) {
					t.Fatalf("a kicked session received the chat: %q", seen)
				}
				outcomes["chat"]++
				break
			}
		}
	}
	if outcomes["kicked"] != 1 || outcomes["chat"] != 1 {
		t.Fatalf("outcomes %v, want one kicked and one chat", outcomes)
	}
}

func containsKicked(lines []string) bool {
	for _, l := range lines {
		if strings.Contains(l, `"cmd":"kicked"`) {
			return true
		}
	}
	return false
}

func rawConn(c *testenv.Client) net.Conn { return c.Conn() }

// TestCloseDuringLogin closes connections right after sending login: no
// route may outlive its session, whichever of the close and the claim
// finishes first.
func TestCloseDuringLogin(t *testing.T) {
	c := startCluster(t, 1, false, nil)
	const n = 100
	for i := 0; i < n; i++ {
		conn, err := net.Dial("tcp", c.servers[0].ClientAddr())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, `{"cmd":"login","name":"ghost%d"}`+"\n", i)
		conn.Close()
	}
	ctx := context.Background()
	deadline := time.Now().Add(wait)
	for i := 0; i < n; i++ {
		for {
			_, ok, err := c.stores[0].FreshLookup(ctx, fmt.Sprintf("ghost%d", i))
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("route of ghost%d outlived its closed session", i)
			}
			time.Sleep(10 * time.Millisecond) // poll interval
		}
	}
}

// TestSlowConsumerDisconnected: a client that never reads is cut off at
// MaxOutbound, with a counter, while others keep being served.
func TestSlowConsumerDisconnected(t *testing.T) {
	c := startCluster(t, 1, false, func(o *server.Options) { o.MaxOutbound = 256 << 10 })
	sink, err := net.Dial("tcp", c.servers[0].ClientAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	if err := sink.(*net.TCPConn).SetReadBuffer(4096); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(sink, `{"cmd":"login","name":"sink"}`+"\n")
	deadline := time.Now().Add(wait)
	for {
		if _, ok, _ := c.stores[0].FreshLookup(context.Background(), "sink"); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("sink never logged in")
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
	flood := c.login(t, 0, "flood")
	other := c.login(t, 0, "other")
	content := strings.Repeat("x", 8000)
	line := fmt.Sprintf(`{"cmd":"chat","recv":"sink","content":%q}`+"\n", content)
	for i := 0; i < 2000 && c.servers[0].Stats().SlowConsumers.Load() == 0; i++ {
		flood.SendRaw(t, []byte(line))
		if i%50 == 49 {
			flood.Send(t, `{"cmd":"ping","id":1}`)
			flood.Expect(t, wait, map[string]any{"cmd": "pong"})
		}
	}
	if c.servers[0].Stats().SlowConsumers.Load() == 0 {
		t.Fatal("16 MB sent at a client that never reads, and it was not disconnected")
	}
	other.Send(t, `{"cmd":"ping","id":"still"}`)
	other.Expect(t, wait, map[string]any{"cmd": "pong", "id": "still"})
}

// TestLineTooLong: a line over MaxLine gets an error and closes only that
// connection.
func TestLineTooLong(t *testing.T) {
	c := startCluster(t, 1, false, func(o *server.Options) { o.MaxLine = 1024 })
	bad := testenv.Dial(t, c.servers[0].ClientAddr())
	good := c.login(t, 0, "good")
	bad.SendRaw(t, []byte(strings.Repeat("a", 5000)))
	lines := bad.ExpectClosed(t, wait)
	if len(lines) != 1 || !strings.Contains(lines[0], "line too long") {
		t.Fatalf("before close got %q", lines)
	}
	good.Send(t, `{"cmd":"ping"}`)
	good.Expect(t, wait, map[string]any{"cmd": "pong"})
	if got := c.servers[0].Stats().LineTooLong.Load(); got != 1 {
		t.Fatalf("LineTooLong = %d", got)
	}
}

// TestConnectionCap: past MaxConns a connection is told why and closed;
// the engine keeps accepting once there is room again.
func TestConnectionCap(t *testing.T) {
	// Four: the proxy's link shares the budget with the three clients.
	c := startCluster(t, 1, false, func(o *server.Options) { o.MaxConns = 4 })
	var held []*testenv.Client
	for i := 0; i < 3; i++ {
		cl := testenv.Dial(t, c.servers[0].ClientAddr())
		cl.Send(t, `{"cmd":"ping"}`)
		cl.Expect(t, wait, map[string]any{"cmd": "pong"})
		held = append(held, cl)
	}
	extra := testenv.Dial(t, c.servers[0].ClientAddr())
	lines := extra.ExpectClosed(t, wait)
	if len(lines) != 1 || !strings.Contains(lines[0], "server full") {
		t.Fatalf("over the cap got %q", lines)
	}
	held[0].Close()
	deadline := time.Now().Add(wait)
	for c.servers[0].Stats().Connections.Load() >= 3 {
		if time.Now().After(deadline) {
			t.Fatal("closed connection still counted")
		}
		time.Sleep(5 * time.Millisecond) // poll interval
	}
	again := testenv.Dial(t, c.servers[0].ClientAddr())
	again.Send(t, `{"cmd":"ping"}`)
	again.Expect(t, wait, map[string]any{"cmd": "pong"})
}

// TestIdleTimeout: a silent connection is closed with a reason; one that
// pings stays.
func TestIdleTimeout(t *testing.T) {
	c := startCluster(t, 1, false, func(o *server.Options) { o.IdleTimeout = 300 * time.Millisecond })
	idle := testenv.Dial(t, c.servers[0].ClientAddr())
	busy := c.login(t, 0, "busy")
	// Ping from the test goroutine until the idle one is closed.
	deadline := time.Now().Add(wait)
	for c.servers[0].Stats().IdleClosed.Load() == 0 {
		busy.Send(t, `{"cmd":"ping"}`)
		busy.Expect(t, wait, map[string]any{"cmd": "pong"})
		if time.Now().After(deadline) {
			t.Fatal("idle connection not closed")
		}
		time.Sleep(50 * time.Millisecond) // the pace of a pinging client
	}
	lines := idle.ExpectClosed(t, wait)
	if len(lines) != 1 || !strings.Contains(lines[0], "idle timeout") {
		t.Fatalf("idle connection got %q", lines)
	}
	busy.Send(t, `{"cmd":"ping","id":"alive"}`)
	busy.Expect(t, wait, map[string]any{"cmd": "pong", "id": "alive"})
}

// TestRateLimit: a burst over the bucket gets errors with ids; requests
// within it are served.
func TestRateLimit(t *testing.T) {
	c := startCluster(t, 1, false, func(o *server.Options) { o.RateLimit = 1; o.RateBurst = 5 })
	cl := testenv.Dial(t, c.servers[0].ClientAddr())
	var b strings.Builder
	for i := 0; i < 20; i++ {
		fmt.Fprintf(&b, `{"cmd":"ping","id":%d}`+"\n", i)
	}
	cl.SendRaw(t, []byte(b.String()))
	pongs, limited := 0, 0
	for i := 0; i < 20; i++ {
		m := cl.ReadJSON(t, wait)
		switch {
		case m["cmd"] == "pong":
			pongs++
		case m["cmd"] == "error" && strings.Contains(fmt.Sprint(m["error"]), "rate limit") && m["id"] == float64(i):
			limited++
		default:
			t.Fatalf("reply %d: %v", i, m)
		}
	}
	if pongs < 5 || pongs > 6 || limited != 20-pongs {
		t.Fatalf("pongs %d limited %d, want about 5 served and the rest refused", pongs, limited)
	}
}

// TestRedisOutage: with Redis gone, chats to users already looked up keep
// flowing, a login fails fast with a clear error, and once Redis is back
// (empty, as after a restart without persistence) the routes of live
// sessions are re-asserted and logins work again.
func TestRedisOutage(t *testing.T) {
	c := startCluster(t, 2, false, func(o *server.Options) {
		o.RedisTimeout = 300 * time.Millisecond
		o.Heartbeat = 100 * time.Millisecond
	})
	alice := c.login(t, 0, "alice")
	bob := c.login(t, 1, "bob")
	alice.Send(t, `{"cmd":"chat","recv":"bob","content":"before","id":1}`)
	alice.Expect(t, wait, map[string]any{"cmd": "ack", "id": 1})
	bob.Expect(t, wait, map[string]any{"cmd": "chat", "content": "before"})

	c.redis.Kill()
	for i := 0; i < 20; i++ {
		alice.Send(t, fmt.Sprintf(`{"cmd":"chat","recv":"bob","content":"during%d","id":%d}`, i, i+10))
		alice.Expect(t, wait, map[string]any{"cmd": "ack", "id": i + 10})
		bob.Expect(t, wait, map[string]any{"cmd": "chat", "content": fmt.Sprintf("during%d", i)})
	}
	carol := testenv.Dial(t, c.servers[0].ClientAddr())
	start := time.Now()
	carol.Send(t, `{"cmd":"login","name":"carol","id":"c"}`)
	carol.Expect(t, wait, map[string]any{"cmd": "error", "error": "routing store unavailable"})
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("login took %v to fail with a 300ms Redis timeout", d)
	}

	c.redis.Restart(t)
	deadline := time.Now().Add(wait)
	for {
		r, ok, err := c.stores[1].FreshLookup(context.Background(), "bob")
		if err == nil && ok && r.Server == "s2" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bob's route not re-asserted after Redis came back: %v %v %v", r, ok, err)
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
	for {
		carol.Send(t, `{"cmd":"login","name":"carol"}`)
		m := carol.ReadJSON(t, wait)
		if m["cmd"] == "login" && m["ok"] == true {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("login still failing after Redis came back: %v", m)
		}
		time.Sleep(20 * time.Millisecond) // retry pace, like a client would
	}
	carol.Send(t, `{"cmd":"chat","recv":"bob","content":"after","id":2}`)
	carol.Expect(t, wait, map[string]any{"cmd": "ack", "id": 2})
	bob.Expect(t, wait, map[string]any{"cmd": "chat", "content": "after", "send": "carol"})
}

// TestProxyOutageHoldsChats: while no proxy is linked, cross-server chats
// are held (acknowledged only once they have left the server); when a
// proxy links again they arrive, in order, and are acknowledged, and
// same-server chat never stops.
func TestProxyOutageHoldsChats(t *testing.T) {
	c := startCluster(t, 2, false, nil)
	carol := c.login(t, 0, "carol")
	alice, bob := c.warmPair(t)

	c.stopProxy(t)
	const n = 200
	for i := 1; i <= n; i++ {
		alice.Send(t, fmt.Sprintf(`{"cmd":"chat","recv":"bob","content":"held%d","id":%d}`, i, i))
	}
	alice.Send(t, `{"cmd":"chat","recv":"carol","content":"local","id":"l"}`)
	alice.Expect(t, wait, map[string]any{"cmd": "ack", "id": "l"}) // nothing before it: the held chats are not acked
	carol.Expect(t, wait, map[string]any{"cmd": "chat", "content": "local"})
	bob.ExpectNothing(t, 50*time.Millisecond)
	if held := unacked(c.servers[0], "s2"); held != n {
		t.Fatalf("%d chats held for s2, want %d", held, n)
	}

	c.startProxy(t)
	alice.Send(t, `{"cmd":"chat","recv":"bob","content":"after","id":"last"}`)
	for i := 1; i <= n; i++ {
		bob.Expect(t, wait, map[string]any{"cmd": "chat", "content": fmt.Sprintf("held%d", i)})
	}
	bob.Expect(t, wait, map[string]any{"cmd": "chat", "content": "after"})
	acked := map[string]bool{}
	for len(acked) < n+1 {
		m := alice.ReadJSON(t, wait)
		if m["cmd"] != "ack" || acked[fmt.Sprint(m["id"])] {
			t.Fatalf("after the proxy came back alice got %v (acked so far: %d)", m, len(acked))
		}
		acked[fmt.Sprint(m["id"])] = true
	}
}

// TestHeldChatsExpire: a chat never sent within MaxHoldAge (no path to its
// server) is stored in its recipient's mailbox, and the recipient's session
// is told to read it once a path is back; past MaxHoldBytes chats are
// refused with an error at once.
func TestHeldChatsExpire(t *testing.T) {
	c := startCluster(t, 2, false, func(o *server.Options) {
		o.MaxHoldAge = 200 * time.Millisecond
		o.MaxHoldBytes = 64 << 10
	})
	alice := c.login(t, 0, "alice")
	bob := c.login(t, 1, "bob")
	c.stopProxy(t)
	alice.Send(t, `{"cmd":"chat","recv":"bob","content":"x","id":"e1"}`)
	// Held, then stored at -hold-age: acknowledged as stored.
	alice.Expect(t, wait, map[string]any{"cmd": "ack", "id": "e1", "stored": true})
	c.startProxy(t)
	bob.Expect(t, wait, map[string]any{"cmd": "chat", "content": "x", "stored": true})

	c.stopProxy(t)
	big := strings.Repeat("y", 30000)
	alice.Send(t, fmt.Sprintf(`{"cmd":"chat","recv":"bob","content":%q,"id":"b1"}`, big))
	alice.Send(t, fmt.Sprintf(`{"cmd":"chat","recv":"bob","content":%q,"id":"b2"}`, big))
	alice.Send(t, fmt.Sprintf(`{"cmd":"chat","recv":"bob","content":%q,"id":"b3"}`, big))
	alice.Expect(t, wait, map[string]any{"cmd": "error", "error": "forwarding tier unavailable", "id": "b3"})
	if n := c.servers[0].Stats().StreamFull.Load(); n != 1 {
		t.Fatalf("StreamFull = %d", n)
	}
}

// unacked returns the chats srv holds for server dst.
func unacked(srv *server.Server, dst string) int {
	return srv.Unacked()[dst].Frames
}

// TestLoginAuth: with an auth secret, login needs a valid, unexpired token
// for that very name.
func TestLoginAuth(t *testing.T) {
	secret := []byte("k")
	c := startCluster(t, 1, false, func(o *server.Options) { o.AuthSecret = secret })
	cl := testenv.Dial(t, c.servers[0].ClientAddr())
	cl.Send(t, `{"cmd":"login","name":"alice","id":1}`)
	cl.Expect(t, wait, map[string]any{"cmd": "error", "error": "login requires a token", "id": 1})
	bobs := auth.Mint(secret, "bob", time.Now().Add(time.Hour))
	cl.Send(t, fmt.Sprintf(`{"cmd":"login","name":"alice","token":%q}`, bobs))
	cl.Expect(t, wait, map[string]any{"cmd": "error", "error": "invalid token"})
	old := auth.Mint(secret, "alice", time.Now().Add(-time.Second))
	cl.Send(t, fmt.Sprintf(`{"cmd":"login","name":"alice","token":%q}`, old))
	cl.Expect(t, wait, map[string]any{"cmd": "error", "error": "token expired"})
	good := auth.Mint(secret, "alice", time.Now().Add(time.Hour))
	cl.Send(t, fmt.Sprintf(`{"cmd":"login","name":"alice","token":%q}`, good))
	cl.Expect(t, wait, map[string]any{"cmd": "login", "ok": true, "name": "alice"})
}

// TestLineInPieces: a line that arrives over several reads is kept until it
// is complete (a callback with no complete line must not drop the bytes).
func TestLineInPieces(t *testing.T) {
	c := startCluster(t, 2, false, nil)
	bob := c.login(t, 1, "bob")
	cl := testenv.Dial(t, c.servers[0].ClientAddr())
	line := `{"cmd":"login","name":"alice"}` + "\n"
	for i := 0; i < len(line); i++ {
		cl.SendRaw(t, []byte{line[i]})
		if i == 10 {
			cl.ExpectNothing(t, 50*time.Millisecond) // let the server read the prefix alone
		}
	}
	cl.Expect(t, wait, map[string]any{"cmd": "login", "ok": true, "name": "alice"})
	// A cross-server chat far larger than one read, in two writes, to
	// exercise the same on the link.
	big := strings.Repeat("z", 60_000) // under the 64 KiB line cap, over one 64 KiB read with framing
	msg := fmt.Sprintf(`{"cmd":"chat","recv":"bob","content":%q,"id":"big"}`+"\n", big)
	cl.SendRaw(t, []byte(msg[:len(msg)/2]))
	cl.ExpectNothing(t, 50*time.Millisecond)
	cl.SendRaw(t, []byte(msg[len(msg)/2:]))
	cl.Expect(t, wait, map[string]any{"cmd": "ack", "id": "big"})
	if got := bob.Expect(t, wait, map[string]any{"cmd": "chat"}); got["content"] != big {
		t.Fatalf("big chat arrived with %d bytes of content", len(fmt.Sprint(got["content"])))
	}
}

// TestRestartOnSameAddresses: a server that closed its links and clients
// can be started again on the same ports at once (SO_REUSEADDR), as an
// operator restarting it would.
func TestRestartOnSameAddresses(t *testing.T) {
	c := startCluster(t, 2, false, nil)
	c.login(t, 0, "alice")
	old := c.servers[0]
	clientAddr, peerAddr := old.ClientAddr(), old.PeerAddr()
	if err := old.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, _ = startServer(t, c.redis.Addr, c.prefix, "s1", false, func(o *server.Options) {
		o.Listen, o.PeerListen = clientAddr, peerAddr
	})
}

// TestMassDisconnectReleasesRoutes: thousands of sessions closing at once
// all get their routes deleted (batched), without Redis errors.
func TestMassDisconnectReleasesRoutes(t *testing.T) {
	c := startCluster(t, 1, false, nil)
	const n = 3000
	conns := make([]net.Conn, 0, n)
	for i := 0; i < n; i++ {
		conn, err := net.Dial("tcp", c.servers[0].ClientAddr())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, `{"cmd":"login","name":"m%d"}`+"\n", i)
		conns = append(conns, conn)
	}
	deadline := time.Now().Add(30 * time.Second)
	for c.servers[0].Stats().Logins.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d logged in", c.servers[0].Stats().Logins.Load(), n)
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
	for _, conn := range conns {
		conn.Close()
	}
	ctx := context.Background()
	for i := 0; i < n; i++ {
		for {
			_, ok, err := c.stores[0].FreshLookup(ctx, fmt.Sprintf("m%d", i))
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("route of m%d still there after the mass disconnect", i)
			}
			time.Sleep(10 * time.Millisecond) // poll interval
		}
	}
	if e := c.servers[0].Stats().RedisErrors.Load(); e != 0 {
		t.Fatalf("%d Redis errors releasing routes", e)
	}
}

// TestTwoProxies: with two proxies linked, losing one does not interrupt
// cross-server chat: the servers route through the other at once.
func TestTwoProxies(t *testing.T) {
	c := startCluster(t, 2, false, nil)
	first := c.proxy
	c.startProxy(t) // a second proxy (ids only name proxies in logs)
	alice := c.login(t, 0, "alice")
	bob := c.login(t, 1, "bob")
	alice.Send(t, `{"cmd":"chat","recv":"bob","content":"two","id":1}`)
	alice.Expect(t, wait, map[string]any{"cmd": "ack", "id": 1})
	bob.Expect(t, wait, map[string]any{"cmd": "chat", "content": "two"})

	c.stopProxyOf(first)
	deadline := time.Now().Add(wait)
	for _, srv := range c.servers {
		for srv.Stats().LinksUp.Load() != 1 {
			if time.Now().After(deadline) {
				t.Fatal("servers did not notice the first proxy leave")
			}
			time.Sleep(5 * time.Millisecond) // poll interval
		}
	}
	for i := 0; i < 50; i++ {
		alice.Send(t, fmt.Sprintf(`{"cmd":"chat","recv":"bob","content":"m%d","id":%d}`, i, i+10))
		alice.Expect(t, wait, map[string]any{"cmd": "ack", "id": i + 10})
		bob.Expect(t, wait, map[string]any{"cmd": "chat", "content": fmt.Sprintf("m%d", i)})
	}
	if n := c.servers[0].Stats().StreamExpired.Load(); n != 0 {
		t.Fatalf("%d chats expired although a proxy was linked", n)
	}
}

// TestProxyDiscovery: a proxy without a static list finds the servers by
// their Redis heartbeats and links them.
func TestProxyDiscovery(t *testing.T) {
	rd := testenv.Redis(t)
	prefix := "disc:"
	s1, _ := startServer(t, rd.Addr, prefix, "s1", false, nil)
	s2, _ := startServer(t, rd.Addr, prefix, "s2", false, nil)
	st, err := route.New(route.Options{Addrs: []string{rd.Addr}, Prefix: prefix, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	secret, err := st.ClusterSecret(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	discover := func(ctx context.Context) (map[string]string, error) {
		m, err := st.Servers(ctx)
		out := map[string]string{}
		for id, info := range m {
			out[id] = info.Addr
		}
		return out, err
	}
	p, err := proxy.New(proxy.Options{Discover: discover, DiscoverEvery: 100 * time.Millisecond, Secret: secret, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Shutdown(context.Background()) })
	deadline := time.Now().Add(wait)
	for s1.Stats().LinksUp.Load() != 1 || s2.Stats().LinksUp.Load() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the proxy did not discover and link both servers")
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
	a := testenv.Dial(t, s1.ClientAddr())
	a.Send(t, `{"cmd":"login","name":"a"}`)
	a.Expect(t, wait, map[string]any{"cmd": "login", "ok": true})
	b := testenv.Dial(t, s2.ClientAddr())
	b.Send(t, `{"cmd":"login","name":"b"}`)
	b.Expect(t, wait, map[string]any{"cmd": "login", "ok": true})
	a.Send(t, `{"cmd":"chat","recv":"b","content":"found you"}`)
	b.Expect(t, wait, map[string]any{"cmd": "chat", "content": "found you", "send": "a"})
}

// TestDeadServerRoutesSwept: routes naming a server whose heartbeat stayed
// gone past -dead-server-grace are deleted by the live server with the
// smallest id; routes of live servers stay.
func TestDeadServerRoutesSwept(t *testing.T) {
	const grace = 300 * time.Millisecond
	c := startCluster(t, 2, false, func(o *server.Options) { o.DeadServerGrace = grace })
	c.login(t, 0, "alice")
	c.login(t, 1, "bob")
	ctx := context.Background()
	// s0 never had a heartbeat: it sorts before s1 and s2, so the test also
	// shows that a dead id does not stop the first live one from sweeping.
	for _, name := range []string{"ghost1", "ghost2"} {
		if _, _, err := c.stores[0].Claim(ctx, name, route.Route{Server: "s0", Token: "t-" + name}); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	deadline := start.Add(wait)
	for {
		_, ok1, err1 := c.stores[0].FreshLookup(ctx, "ghost1")
		_, ok2, err2 := c.stores[0].FreshLookup(ctx, "ghost2")
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		if !ok1 && !ok2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("routes of the dead server still there after %v (grace %v)", wait, grace)
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
	took := time.Since(start)
	if took < grace {
		t.Fatalf("routes deleted after %v, before the grace of %v", took, grace)
	}
	if s1, s2 := c.servers[0].Stats().RoutesSwept.Load(), c.servers[1].Stats().RoutesSwept.Load(); s1 != 2 || s2 != 0 {
		t.Fatalf("routes swept by s1 %d, by s2 %d; want 2 by s1 (the smallest live id) only", s1, s2)
	}
	for _, name := range []string{"alice", "bob"} {
		if _, ok, err := c.stores[0].FreshLookup(ctx, name); err != nil || !ok {
			t.Fatalf("route of live user %s: ok=%v err=%v", name, ok, err)
		}
	}
	t.Logf("2 routes of a server without heartbeat deleted %v after they were written (grace %v)", took.Round(time.Millisecond), grace)
}

// TestChatWaitsBehindHeldOnes: bob logs in on alice's server while
// alice's earlier chats to him are held on the stream to his old server
// (no path). alice's next chat must not overtake them: it waits (alice is
// not read meanwhile) until they are settled (they expire, and come back
// here), then follows them, in order.
func TestChatWaitsBehindHeldOnes(t *testing.T) {
	c := startCluster(t, 2, false, func(o *server.Options) {
		o.MaxHoldAge = 500 * time.Millisecond
		o.KickWait = 200 * time.Millisecond
	})
	alice, _ := c.warmPair(t)

	c.stopProxy(t)
	const held = 4
	for i := 1; i <= held; i++ {
		alice.Send(t, fmt.Sprintf(`{"cmd":"chat","recv":"bob","content":"h%d","id":%d}`, i, i))
	}
	// bob logs in again, on alice's server; his old session on s2 is out
	// of reach (its kick waits for a path; the new login goes on after
	// KickWait).
	bob2 := c.login(t, 0, "bob")
	alice.Send(t, `{"cmd":"chat","recv":"bob","content":"after","id":"after"}`)
	for i := 1; i <= held; i++ {
		m := bob2.ReadJSON(t, wait)
		if m["cmd"] != "chat" || m["content"] != fmt.Sprintf("h%d", i) {
			t.Fatalf("bob's new session: got %v, want h%d (held chats first, in order)", m, i)
		}
	}
	if m := bob2.ReadJSON(t, wait); m["cmd"] != "chat" || m["content"] != "after" {
		t.Fatalf("bob's new session: got %v, want the later chat", m)
	}
	acked := map[string]bool{}
	for len(acked) < held+1 {
		m := alice.ReadJSON(t, wait)
		if m["cmd"] != "ack" {
			t.Fatalf("alice got %v, want acks", m)
		}
		acked[fmt.Sprint(m["id"])] = true
	}
}
