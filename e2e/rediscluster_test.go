package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relaychat/relaychat/internal/testenv"
	"github.com/relaychat/relaychat/route"
)

// The chat system on a real Redis Cluster: 3 masters, 3 replicas, a 1s
// cluster-node-timeout, shared by the subtests (each heals the cluster and
// checks that its users' routes are all gone when it ends). Two
// chat-servers and a chat-proxy run against it, given the nodes as a comma
// list.

// onRedisCluster starts s1, s2 and a proxy on rc, reusing the e2e harness
// (cluster) for clients; cl.redis stays nil, so only helpers that do not
// read Redis directly may be used.
func onRedisCluster(t *testing.T, rc *testenv.RedisClusterProc) *cluster {
	t.Helper()
	cl := &cluster{bin: testenv.Build(t), prefix: prefixFor(t)}
	for i, id := range []string{"s1", "s2"} {
		cl.s[i] = &server{id: id}
		cl.s[i].proc = testenv.Start(t, filepath.Join(cl.bin, "chat-server"), rcServerArgs(cl, rc, id, "127.0.0.1:0", "127.0.0.1:0")...)
	}
	for _, s := range cl.s {
		got := map[string]string{}
		for len(got) < 2 {
			m := s.proc.WaitLine(t, listenerReadyRE, wait)
			got[m[1]] = m[2]
		}
		s.addr, s.peer = got["client"], got["peer"]
	}
	cl.proxyArgs = []string{
		"-id", "proxy1",
		"-servers", cl.s[0].id + "=" + cl.s[0].peer + "," + cl.s[1].id + "=" + cl.s[1].peer,
		"-redis", rc.AddrList(),
		"-redis-prefix", cl.prefix,
	}
	cl.proxy = cl.startProxy(t)
	return cl
}

func rcServerArgs(cl *cluster, rc *testenv.RedisClusterProc, id, listen, peer string) []string {
	return []string{
		"-id", id, "-listen", listen, "-peer-listen", peer,
		"-redis", rc.AddrList(), "-redis-prefix", cl.prefix,
	}
}

// rcRestart kill -9s server i and starts it again on the same addresses.
func rcRestart(t *testing.T, cl *cluster, rc *testenv.RedisClusterProc, i int) {
	t.Helper()
	s := cl.s[i]
	s.proc.Kill()
	s.proc = testenv.Start(t, filepath.Join(cl.bin, "chat-server"), rcServerArgs(cl, rc, s.id, s.addr, s.peer)...)
	s.proc.WaitLine(t, `msg="client listener ready"`, wait)
}

// rcRoutes returns the route keys under cl's prefix on the masters.
func rcRoutes(t *testing.T, cl *cluster, rc *testenv.RedisClusterProc) []string {
	t.Helper()
	return rc.Keys(t, route.RoutePattern(cl.prefix))
}

// rcWaitRoutes waits until exactly want route keys exist, and returns how
// long that took.
func rcWaitRoutes(t *testing.T, cl *cluster, rc *testenv.RedisClusterProc, want int, timeout time.Duration) time.Duration {
	t.Helper()
	t0 := time.Now()
	eventually(t, timeout, func() (bool, string) {
		keys := rcRoutes(t, cl, rc)
		return len(keys) == want, fmt.Sprintf("%d route keys, want %d: %.300v", len(keys), want, keys)
	})
	return time.Since(t0)
}

// rcNamesOn returns n fresh names whose route keys live on master m.
func rcNamesOn(t *testing.T, cl *cluster, rc *testenv.RedisClusterProc, m *testenv.ClusterNode, base string, n int) []string {
	t.Helper()
	var out []string
	for len(out) < n {
		name := cl.name(base)
		if rc.MasterOf(t, route.RouteKey(cl.prefix, name)) == m {
			out = append(out, name)
		}
	}
	return out
}

func TestRedisClusterE2E(t *testing.T) {
	rc := testenv.RedisCluster(t, testenv.RedisClusterConfig{})
	cl := onRedisCluster(t, rc)

	t.Run("Basics", func(t *testing.T) {
		rc.Heal(t)
		a, b, c := cl.name("a"), cl.name("b"), cl.name("c")
		ca := cl.login(t, 0, a)
		cb := cl.login(t, 1, b)
		cc := cl.login(t, 0, c)
		ca.Send(t, chatReq(t, a, c, "same server", 1))
		expectAck(t, ca, 1)
		expectDelivery(t, cc, a, c, "same server")
		ca.Send(t, chatReq(t, a, b, "cross server", 2))
		expectAck(t, ca, 2)
		expectDelivery(t, cb, a, b, "cross server")
		cb.Send(t, chatReq(t, b, a, "back", 3))
		expectAck(t, cb, 3)
		expectDelivery(t, ca, b, a, "back")
		if n := len(rcRoutes(t, cl, rc)); n != 3 {
			t.Fatalf("%d route keys for 3 sessions", n)
		}
		// The newest login wins, across servers.
		ca2 := cl.login(t, 1, a)
		expectKickedAndClosed(t, ca)
		cb.Send(t, chatReq(t, b, a, "to the new session", 4))
		expectAck(t, cb, 4)
		expectDelivery(t, ca2, b, a, "to the new session")
		for _, c := range []*testenv.Client{ca2, cb, cc} {
			c.Close()
		}
		rcWaitRoutes(t, cl, rc, 0, wait)
	})

	t.Run("Mailbox", func(t *testing.T) {
		rc.Heal(t)
		a, off := cl.name("a"), cl.name("off")
		ca := cl.login(t, 0, a)
		for i := 1; i <= 3; i++ {
			ca.Send(t, chatReq(t, a, off, fmt.Sprintf("stored %d", i), i))
			expectStoredAck(t, ca, i)
		}
		co := cl.login(t, 1, off)
		for i := 1; i <= 3; i++ {
			expectStoredDelivery(t, co, a, off, fmt.Sprintf("stored %d", i))
		}
		ca.Send(t, chatReq(t, a, off, "live", 4))
		expectAck(t, ca, 4)
		expectDelivery(t, co, a, off, "live")
		if v, ok := rc.Get(t, route.MailboxKey(cl.prefix, off)); ok {
			t.Fatalf("mailbox of %s still holds %q after the drain", off, v)
		}
		ca.Close()
		co.Close()
		rcWaitRoutes(t, cl, rc, 0, wait)
	})

	t.Run("ReplicaDown", func(t *testing.T) {
		rc.Heal(t)
		const n = 30
		var clients []*testenv.Client
		for i := 0; i < n; i++ {
			clients = append(clients, cl.login(t, i%2, cl.name("r")))
		}
		before := len(rcRoutes(t, cl, rc))
		rep := rc.Replicas(t)[0]
		rep.Kill()
		// Releases with a replica down: every session closes.
		for _, c := range clients {
			c.Close()
		}
		took := rcWaitRoutes(t, cl, rc, 0, wait)
		t.Logf("replica %s killed: %d routes before, 0 after the sessions closed (%v)", rep.Addr, before, took.Round(time.Millisecond))

	})

	// Start-up clean-up with a replica down: s1 dies with sessions on it
	// and comes back. (At the test's level, not in a subtest: the restarted
	// server must outlive this step.)
	rc.Heal(t)
	rep := rc.Replicas(t)[1]
	rep.Kill()
	var clients []*testenv.Client
	for i := 0; i < 30; i++ {
		clients = append(clients, cl.login(t, 0, cl.name("k")))
	}
	before := len(rcRoutes(t, cl, rc))
	rcRestart(t, cl, rc, 0)
	after := len(rcRoutes(t, cl, rc))
	t.Logf("s1 killed and restarted with replica %s down: %d routes before, %d after its start-up clean-up", rep.Addr, before, after)
	if after != 0 {
		t.Fatalf("%d routes left after s1's start-up clean-up", after)
	}
	cl.s[0].proc.WaitLine(t, proxyLinkUpRE, wait)
	for _, c := range clients {
		c.Close()
	}

	t.Run("MasterFailover", func(t *testing.T) {
		rc.Heal(t)
		ps, before := rcFailover(t, cl, rc, "killed", func(m *testenv.ClusterNode) { m.Kill() })

		// Everyone leaves while a second master dies: the releases go
		// through once its slots are failed over.
		rc.Heal(t)
		m2 := rc.Masters(t)[1]
		mid := len(rcRoutes(t, cl, rc))
		rc.WaitReplicated(t)
		t0 := time.Now()
		m2.Kill()
		for _, p := range ps {
			p.sc.Close()
			p.rc.Close()
		}
		fo := rc.WaitFailover(t, m2, t0)
		rcWaitRoutes(t, cl, rc, 0, 20*time.Second)
		t.Logf("routes: %d before the first fault, %d before the second; every session closed as master %s died: failover after %v, 0 routes left %v after the kill",
			before, mid, m2.Addr, fo.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
	})

	t.Run("MasterFrozen", func(t *testing.T) {
		rc.Heal(t)
		ps, _ := rcFailover(t, cl, rc, "frozen (SIGSTOP)", func(m *testenv.ClusterNode) { m.Pause(t) })
		for _, p := range ps {
			p.sc.Close()
			p.rc.Close()
		}
		rc.Heal(t) // resumes it: it rejoins as a replica
		rcWaitRoutes(t, cl, rc, 0, wait)
	})

	t.Run("NoLeakedRoutes", func(t *testing.T) {
		rc.Heal(t)
		if keys := rcRoutes(t, cl, rc); len(keys) != 0 {
			t.Fatalf("route keys left at the end: %v", keys)
		}
	})
}

// lineConn is a raw client for goroutines other than the test's: it never
// touches t. Lines read are decoded onto in.
type lineConn struct {
	c  net.Conn
	in chan map[string]any
}

func dialLine(t *testing.T, addr, name string) *lineConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	lc := &lineConn{c: c, in: make(chan map[string]any, 1<<16)}
	go func() {
		defer close(lc.in)
		sc := bufio.NewScanner(c)
		sc.Buffer(make([]byte, 1<<16), 1<<20)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				lc.in <- m
			}
		}
	}()
	t.Cleanup(lc.Close)
	lc.send(mustJSON(t, map[string]any{"cmd": "login", "name": name}))
	select {
	case m := <-lc.in:
		if m["cmd"] != "login" || m["ok"] != true {
			t.Fatalf("login %s: %v", name, m)
		}
	case <-time.After(wait):
		t.Fatalf("login %s: no reply", name)
	}
	return lc
}

func (lc *lineConn) send(line string) error {
	_ = lc.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := lc.c.Write([]byte(line + "\n"))
	return err
}

func (lc *lineConn) Close() { _ = lc.c.Close() }

// loadPair is a sender and a receiver chatting through a fault. run and
// the readers fill the counters; finish reads them on the test goroutine.
type loadPair struct {
	send, recv string
	sc, rc     *lineConn

	mu                                      sync.Mutex
	sent, acked, stored, errored, delivered int
	errs                                    []string
	lastDelivery                            time.Time
	maxGap                                  time.Duration
	outOfOrder                              int
	done                                    chan struct{}
}

// run sends a chat with an id every 20ms until stop, while two readers
// count the sender's acks and errors and the receiver's deliveries.
func (p *loadPair) run(stop <-chan struct{}) {
	p.done = make(chan struct{})
	var readers sync.WaitGroup
	readers.Add(2)
	go func() {
		defer readers.Done()
		for m := range p.sc.in {
			p.mu.Lock()
			switch {
			case m["cmd"] == "ack" && m["stored"] == true:
				p.stored++
			case m["cmd"] == "ack":
				p.acked++
			case m["cmd"] == "error":
				p.errored++
				p.errs = append(p.errs, fmt.Sprint(m["error"]))
			}
			p.mu.Unlock()
		}
	}()
	go func() {
		defer readers.Done()
		last := 0
		for m := range p.rc.in {
			if m["cmd"] != "chat" {
				continue
			}
			var seq int
			fmt.Sscanf(fmt.Sprint(m["content"]), "m%d", &seq)
			now := time.Now()
			p.mu.Lock()
			p.delivered++
			if seq <= last {
				p.outOfOrder++ // a chat that errored is skipped, not out of order
			}
			last = seq
			if !p.lastDelivery.IsZero() {
				p.maxGap = max(p.maxGap, now.Sub(p.lastDelivery))
			}
			p.lastDelivery = now
			p.mu.Unlock()
		}
	}()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for seq := 1; ; seq++ {
		select {
		case <-stop:
			close(p.done)
			return
		case <-tick.C:
		}
		b, _ := json.Marshal(map[string]any{"cmd": "chat", "recv": p.recv, "content": fmt.Sprintf("m%d", seq), "id": seq})
		if p.sc.send(string(b)) != nil {
			close(p.done)
			return
		}
		p.mu.Lock()
		p.sent++
		p.mu.Unlock()
	}
}

// finish waits (up to wait) until every chat sent was answered and every
// acked one delivered.
func (p *loadPair) finish(t *testing.T) {
	t.Helper()
	<-p.done
	eventually(t, wait, func() (bool, string) {
		p.mu.Lock()
		defer p.mu.Unlock()
		answered := p.acked + p.stored + p.errored
		return answered == p.sent && p.delivered >= p.acked, fmt.Sprintf("%s→%s: sent %d, answered %d, delivered %d of %d acked", p.send, p.recv, p.sent, answered, p.delivered, p.acked)
	})
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.outOfOrder != 0 {
		t.Fatalf("%s→%s: %d deliveries out of order", p.send, p.recv, p.outOfOrder)
	}
}

func errorsOf(ps []*loadPair) []string {
	var out []string
	for _, p := range ps {
		p.mu.Lock()
		out = append(out, p.errs...)
		p.mu.Unlock()
	}
	sort.Strings(out)
	return out
}

// probe is one login attempt by a new session.
type probe struct {
	start, end time.Time
	err        string // "" when the login succeeded
}

// probeLogins logs a new session in every 100ms, alternating servers and
// cycling through names, until stop; each session is closed after its
// answer (or after 3s without one).
func probeLogins(cl *cluster, names []string, stop <-chan struct{}) []probe {
	var out []probe
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-stop:
			return out
		case <-tick.C:
		}
		p := probe{start: time.Now()}
		p.err = probeOnce(cl.s[i%2].addr, names[i%len(names)])
		p.end = time.Now()
		out = append(out, p)
	}
}

func probeOnce(addr, name string) string {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err.Error()
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	b, _ := json.Marshal(map[string]any{"cmd": "login", "name": name})
	if _, err := c.Write(append(b, '\n')); err != nil {
		return err.Error()
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "no answer: " + err.Error()
	}
	var m map[string]any
	if json.Unmarshal([]byte(line), &m) != nil {
		return "bad answer " + strings.TrimSpace(line)
	}
	if m["cmd"] == "login" && m["ok"] == true {
		return ""
	}
	return fmt.Sprint(m["error"])
}

// rcFailover runs chats between sessions that exist before the fault and
// login probes for users on the first master's slots, applies fault to
// that master, waits for the failover and some traffic after it, and
// checks: the chats go on (every one acked and delivered in order, none
// refused), and logins come back within 10s. It logs the measures and
// returns the pairs (still connected) and the route count before.
func rcFailover(t *testing.T, cl *cluster, rc *testenv.RedisClusterProc, what string, fault func(*testenv.ClusterNode)) ([]*loadPair, int) {
	t.Helper()
	m := rc.Masters(t)[0]
	// Sessions that exist before the fault: senders on s1, receivers
	// on s2 (cross-server) and on s1 (same server).
	const pairs = 6
	var ps []*loadPair
	for i := 0; i < pairs; i++ {
		p := &loadPair{send: cl.name("ps"), recv: cl.name("pr")}
		p.sc = dialLine(t, cl.s[0].addr, p.send)
		p.rc = dialLine(t, cl.s[i%2].addr, p.recv)
		ps = append(ps, p)
	}
	probeNames := rcNamesOn(t, cl, rc, m, "probe", 400)
	before := len(rcRoutes(t, cl, rc))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Add(1)
		go func() { defer wg.Done(); p.run(stop) }()
	}
	probes := make(chan []probe, 1)
	go func() { probes <- probeLogins(cl, probeNames, stop) }()

	time.Sleep(500 * time.Millisecond) // a stretch of traffic before the fault, not synchronisation
	// The sessions' routes are on the replicas before the master dies
	// (asynchronous replication could lose the latest otherwise; see
	// WaitReplicated).
	rc.WaitReplicated(t)
	t0 := time.Now()
	fault(m)
	fo := rc.WaitFailover(t, m, t0)
	time.Sleep(3 * time.Second) // a stretch of traffic after the failover, not synchronisation
	close(stop)
	wg.Wait()
	results := <-probes

	// Logins for users whose slot was on the dead master.
	var fails []probe
	var lastFail time.Time
	for _, r := range results {
		if r.err != "" && r.start.After(t0) {
			fails = append(fails, r)
			lastFail = r.start
		}
	}
	outage := time.Duration(0)
	for _, r := range results {
		if r.err == "" && r.start.After(lastFail) && !lastFail.IsZero() {
			outage = r.end.Sub(t0)
			break
		}
	}
	errs := map[string]int{}
	for _, f := range fails {
		errs[f.err]++
	}
	t.Logf("master %s %s: failover after %v; logins on its slots failed for %v (%d of %d probes failed: %v)",
		m.Addr, what, fo.Round(time.Millisecond), outage.Round(time.Millisecond), len(fails), len(results), errs)

	// The chats between sessions that existed before.
	for _, p := range ps {
		p.finish(t)
	}
	var sent, acked, stored, errored, delivered, silent int
	var maxGap time.Duration
	for _, p := range ps {
		sent += p.sent
		acked += p.acked
		stored += p.stored
		errored += p.errored
		delivered += p.delivered
		silent += p.sent - p.acked - p.stored - p.errored
		maxGap = max(maxGap, p.maxGap)
	}
	t.Logf("chats of %d sessions that existed before: sent %d, acked %d, delivered %d, stored %d, errored %d, silent %d; longest gap between deliveries of a pair %v",
		2*pairs, sent, acked, delivered, stored, errored, silent, maxGap.Round(time.Millisecond))
	if errored != 0 || silent != 0 || stored != 0 || delivered != acked {
		t.Fatalf("chats were interrupted: errors %v", errorsOf(ps))
	}
	if outage > 10*time.Second {
		t.Fatalf("logins failed for %v, want under 10s", outage)
	}
	if outage == 0 && len(fails) > 0 {
		t.Fatalf("logins never recovered")
	}
	return ps, before
}
