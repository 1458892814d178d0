package e2e

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relaychat/relaychat/internal/testenv"
)

// restartServer starts server i again with the same id and addresses (as an
// operator restarting it would) and waits until it listens.
func (cl *cluster) restartServer(t *testing.T, i int, extra ...string) *testenv.Proc {
	t.Helper()
	s := cl.s[i]
	args := append([]string{
		"-id", s.id, "-listen", s.addr, "-peer-listen", s.peer,
		"-redis", cl.redis.Addr, "-redis-prefix", cl.prefix,
	}, extra...)
	s.proc = testenv.Start(t, filepath.Join(cl.bin, "chat-server"), args...)
	s.proc.WaitLine(t, `msg="client listener ready"`, wait)
	return s.proc
}

// TestServerCrash: kill -9 a server. A chat its stream had sent but that
// was not acknowledged may or may not have arrived: its sender is told so.
// Chats for its users sent after the crash wait for the hold, then go to
// the users' mailboxes; the restarted server (new run) clears the routes
// the dead one left, and the users get the stored chats when they log in.
func TestServerCrash(t *testing.T) {
	t.Parallel()
	cfg := clusterConfig{serverArgs: []string{"-hold-age", "500ms"}}
	cl := startCluster(t, cfg)
	an, bn := cl.name("alice"), cl.name("bob")
	a, b := cl.login(t, 0, an), cl.login(t, 1, bn)
	a.Send(t, chatReq(t, an, bn, "before", "b0"))
	expectAck(t, a, "b0")
	expectDelivery(t, b, an, bn, "before")

	cl.s[1].proc.Kill()
	cl.proxy.WaitLine(t, `msg="link down".*server=s2`, wait)
	// s1 learns from the proxy that s2 is unreachable a few milliseconds
	// later; a chat sent before that goes to the proxy, is acknowledged
	// once it is in the kernel, and only then held.
	cl.s[0].proc.WaitLine(t, `msg="stream path down: holding chats for the server".*server=s2`, wait)
	if got := cl.routeServer(t, bn); got != "s2" {
		t.Fatalf("route of %s names %q right after the crash, want the dead s2", bn, got)
	}
	// Held (no path to s2), then stored at -hold-age: acknowledged as stored.
	a.Send(t, chatReq(t, an, bn, "to the dead", "dead"))
	for {
		m := next(t, a)
		if m["cmd"] == "error" && m["id"] == "b0" && strings.Contains(fmt.Sprint(m["error"]), "did not confirm delivery") {
			continue // s2 may have died before its ack of "before" went out
		}
		if m["cmd"] != "ack" || m["id"] != "dead" || m["stored"] != true {
			t.Fatalf("got %v, want the stored ack of \"dead\"", m)
		}
		break
	}

	cl.restartServer(t, 1, cfg.serverArgs...)
	cl.waitRoute(t, bn, "") // the restarted s2 cleared the routes it left
	cl.proxy.WaitLine(t, `msg="link up".*server=s2`, wait)
	a.Send(t, chatReq(t, an, bn, "to nobody", "gone"))
	// "b0" may come back unconfirmed (s2 may have died before its ack went
	// out); nothing else may come back but the stored ack of "gone".
	for {
		m := next(t, a)
		if m["cmd"] == "error" && m["id"] == "b0" && strings.Contains(fmt.Sprint(m["error"]), "did not confirm delivery") {
			continue
		}
		if m["cmd"] != "ack" || m["id"] != "gone" || m["stored"] != true {
			t.Fatalf("got %v, want the stored ack of \"gone\"", m)
		}
		break
	}

	b = cl.login(t, 1, bn)
	expectStoredDelivery(t, b, an, bn, "to the dead")
	expectStoredDelivery(t, b, an, bn, "to nobody")
	a.Send(t, chatReq(t, an, bn, "welcome back", "wb"))
	expectAck(t, a, "wb")
	expectDelivery(t, b, an, bn, "welcome back")
}

// TestSlowReader: 50 MB of chats at a client that never reads. The server
// cuts it off at its outbound cap (what it had not written goes back to
// its mailbox, which then fills up: later chats are refused with an
// error), stays under 512 MB of RSS, and keeps answering everyone else.
func TestSlowReader(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, clusterConfig{})
	sinkName, floodName := cl.name("sink"), cl.name("flood")
	sink, err := net.Dial("tcp", cl.s[0].addr)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	_ = sink.(*net.TCPConn).SetReadBuffer(4096)
	fmt.Fprintf(sink, `{"cmd":"login","name":%q}`+"\n", sinkName)
	cl.waitRoute(t, sinkName, "s1")

	flood, err := net.Dial("tcp", cl.s[0].addr)
	if err != nil {
		t.Fatal(err)
	}
	defer flood.Close()
	var replies, offline atomic.Int64
	readerDone := make(chan struct{})
	pongs := make(chan struct{}, 1024)
	go func() { // drains the flooder's replies so that it is not slow itself
		defer close(readerDone)
		sc := bufio.NewScanner(flood)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			replies.Add(1)
			if strings.Contains(sc.Text(), "recipient's mailbox is full") {
				offline.Add(1)
			}
			if strings.Contains(sc.Text(), `"pong"`) {
				pongs <- struct{}{}
			}
		}
	}()
	fmt.Fprintf(flood, `{"cmd":"login","name":%q}`+"\n", floodName)
	cl.waitRoute(t, floodName, "s1")
	line := []byte(fmt.Sprintf(`{"cmd":"chat","recv":%q,"content":%q}`+"\n", sinkName, strings.Repeat("x", 8000)))
	const total = 50 << 20
	_ = flood.SetWriteDeadline(time.Now().Add(60 * time.Second))
	// The flooder writes as fast as the socket takes it, but waits for a
	// pong every 64 chats (512 KB): a sender that never waits would be cut
	// off itself, past -max-pending, once the sink's chats go to its
	// mailbox through Redis.
	for sent, n := 0, 0; sent < total; sent, n = sent+len(line), n+1 {
		if _, err := flood.Write(line); err != nil {
			t.Fatalf("flooding: %v after %d bytes", err, sent)
		}
		if n%64 == 63 {
			fmt.Fprintf(flood, `{"cmd":"ping","id":%d}`+"\n", n)
			select {
			case <-pongs:
			case <-time.After(wait):
				t.Fatalf("no pong within %v after %d bytes", wait, sent)
			}
		}
	}
	// Once the sink is cut off, chats to it are refused: the server is past
	// the cap and has said so.
	eventually(t, wait, func() (bool, string) {
		return offline.Load() > 0, fmt.Sprintf("%d replies, none \"recipient's mailbox is full\" yet", replies.Load())
	})
	other := cl.login(t, 1, cl.name("other"))
	expectPong(t, other)
	if hwm := vmHWM(t, cl.s[0].proc.Pid()); hwm > 512<<20 {
		t.Fatalf("s1 peak RSS %d MiB while a client did not read, want under 512 MiB", hwm>>20)
	}
	// The server says why it dropped the sink. (Reading the sink to EOF
	// instead would crawl: with a 4 KiB receive buffer on loopback the
	// window opens in zero-window probes.)
	cl.s[0].proc.WaitLine(t, `msg="disconnecting slow consumer".*user=`+sinkName, wait)
	// And lets go of its route: the sink is offline, not "online at s1".
	cl.waitRoute(t, sinkName, "")
}

// vmHWM reads a process's peak resident set size.
func vmHWM(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`VmHWM:\s+(\d+) kB`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no VmHWM in /proc/%d/status", pid)
	}
	kb, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return kb << 10
}

// TestRedisRestart: Redis killed and restarted empty. Chats between users
// already looked up keep flowing, a login fails fast with a clear error,
// and once Redis is back the live sessions' routes are re-asserted and
// logins work again.
func TestRedisRestart(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, clusterConfig{serverArgs: []string{"-redis-timeout", "300ms"}})
	an, bn := cl.name("alice"), cl.name("bob")
	a, b := cl.login(t, 0, an), cl.login(t, 1, bn)
	a.Send(t, chatReq(t, an, bn, "before", "b0"))
	expectAck(t, a, "b0")
	expectDelivery(t, b, an, bn, "before")

	cl.redis.Kill()
	a.Send(t, chatReq(t, an, bn, "during", "d0"))
	expectAck(t, a, "d0")
	expectDelivery(t, b, an, bn, "during")
	c := testenv.Dial(t, cl.s[0].addr)
	start := time.Now()
	c.Send(t, `{"cmd":"login","name":"`+cl.name("carol")+`","id":"c"}`)
	expectError(t, c, "routing store unavailable", "c")
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("login took %v to fail with Redis down", d)
	}

	cl.redis.Restart(t)
	cl.waitRoute(t, an, "s1")
	cl.waitRoute(t, bn, "s2")
	dn := cl.name("dave")
	eventually(t, wait, func() (bool, string) {
		c.Send(t, `{"cmd":"login","name":"`+dn+`"}`)
		m := next(t, c)
		return m["ok"] == true, fmt.Sprintf("login after Redis came back: %v", m)
	})
	c.Send(t, chatReq(t, dn, bn, "after", "a0"))
	expectAck(t, c, "a0")
	expectDelivery(t, b, dn, bn, "after")
}

// TestBadInput: hostile lines get an error each (or, over the cap, an error
// and a close), a connection flood and half-written lines change nothing,
// and the server answers throughout.
func TestBadInput(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, clusterConfig{})
	c := testenv.Dial(t, cl.s[0].addr)
	hostile := []struct{ line, reason string }{
		{"\x89PNG\x1a\x00\x00\x00\rIHDR\xff", "invalid UTF-8"},
		{"{\"cmd\":\"ping\"\x00}", "invalid JSON"},
		{"{\"cmd\":\"chat\",\"recv\":\"b\",\"content\":\"\xff\xfe\"}", "invalid UTF-8"},
		{strings.Repeat(`{"a":`, 10000) + "1" + strings.Repeat("}", 10000), "invalid JSON"},
		{`{"cmd":"chat","recv":"b","content":"x","id":` + strings.Repeat("9", 5000) + `}`, "id must be"},
		{`{"cmd":"login","name":"` + strings.Repeat("n", 65) + `"}`, "invalid name"},
		{`[1,2,3]`, "must be a JSON object"},
		{`{"cmd":{"nested":true}}`, "must be strings"},
	}
	for _, h := range hostile {
		c.Send(t, h.line)
		m := next(t, c)
		if m["cmd"] != "error" || !strings.Contains(fmt.Sprint(m["error"]), h.reason) {
			t.Errorf("%.40q: got %v, want an error containing %q", h.line, m, h.reason)
		}
	}
	expectPong(t, c)

	// A connection flood: many connections opened and dropped, some with
	// half a line.
	for i := 0; i < 500; i++ {
		conn, err := net.DialTimeout("tcp", cl.s[0].addr, wait)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if i%2 == 0 {
			_, _ = conn.Write([]byte(`{"cmd":"login","na`))
		}
		_ = conn.Close()
	}
	expectPong(t, c)
	// A megabyte line closes only its connection.
	big := testenv.Dial(t, cl.s[0].addr)
	big.SendRaw(t, []byte(strings.Repeat("a", 1<<20)))
	if lines := big.ExpectClosed(t, wait); len(lines) != 1 || !strings.Contains(lines[0], "line too long") {
		t.Errorf("megabyte line: got %q before the close", lines)
	}
	expectPong(t, c)
}

// TestFileTableFull: a server whose open-file limit is tiny (64) is flooded
// with connections. It must refuse the excess with "server full" and keep
// running (gnet stops its whole engine if accept fails with EMFILE), then
// accept again once connections close.
func TestFileTableFull(t *testing.T) {
	t.Parallel()
	bin := testenv.Build(t)
	rd := testenv.Redis(t)
	srv := testenv.Start(t, "/bin/sh", "-c", "ulimit -n 64 && exec "+filepath.Join(bin, "chat-server")+
		" -id f1 -listen 127.0.0.1:0 -peer-listen 127.0.0.1:0 -redis "+rd.Addr)
	addr := srv.WaitLine(t, `msg="client listener ready".*\baddr="?([^"\s]+)`, wait)[1]
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	full := 0
	for i := 0; i < 150; i++ {
		conn, err := net.DialTimeout("tcp", addr, wait)
		if err != nil {
			t.Fatalf("connection %d: %v (did the server stop accepting?)", i, err)
		}
		held = append(held, conn)
		_ = conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		line, _ := bufio.NewReader(conn).ReadString('\n')
		if strings.Contains(line, "server full") {
			full++
		}
	}
	if full == 0 {
		t.Fatal("150 connections to a server limited to 64 files, and none was refused")
	}
	for _, c := range held {
		c.Close()
	}
	held = nil
	// Once the server has handled the closes, a new connection is served
	// (until then it may still be told "server full": dial afresh each try).
	eventually(t, wait, func() (bool, string) {
		conn, err := net.DialTimeout("tcp", addr, wait)
		if err != nil {
			return false, fmt.Sprintf("after the flood: %v", err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(wait))
		_, _ = conn.Write([]byte(`{"cmd":"ping"}` + "\n"))
		line, err := bufio.NewReader(conn).ReadString('\n')
		return strings.Contains(line, `"cmd":"pong"`), fmt.Sprintf("after the flood: %q %v", line, err)
	})
	select {
	case <-srv.Done():
		t.Fatal("the server exited during the flood")
	default:
	}
}
