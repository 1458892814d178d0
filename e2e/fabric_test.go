package e2e

// Fault injection into the fabric between servers (issue 8, section 7):
// proxies killed, stalled, stopped and added mid-stream, servers stopped
// and restarted, kicks across a partition, rogue peers and floods on the
// peer port, a duplicate server id, and a mesh with a server restarted.
//
// Every scenario keeps its books in a testenv.Ledger: each chat carries an
// id and its pair's sequence number, every line the clients read is fed to
// the ledger, and at the end each acknowledged chat must be delivered once
// in order, stored, or errored to its sender (testenv.Ledger documents the
// order rules). Each test logs the ledger's one line; the assertions are on
// every acked id.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/relaychat/relaychat/codec"
	"github.com/relaychat/relaychat/internal/peer"
	"github.com/relaychat/relaychat/internal/testenv"
	"github.com/relaychat/relaychat/route"
)

const (
	// fabricWindow is how many chats one sender keeps unanswered at most:
	// enough to fill the streams, few enough that a sender is never cut
	// off for queueing behind a Redis wait.
	fabricWindow = 64
	// fabricStall is how long a sender waits for any answer before it
	// gives up (and the test reports it).
	fabricStall = 15 * time.Second
	// fabricSettle bounds the wait for every acked chat to be settled.
	fabricSettle = 20 * time.Second
)

// fabricConfig describes a fabric's processes.
type fabricConfig struct {
	servers    int      // s1..sN
	mesh       bool     // -topology mesh
	serverArgs []string // extra flags for every server
	proxies    []string // proxy ids started at first (static -servers list)
}

// fabric is a private Redis, servers s1..sN and proxies by id, and the
// ledger of the chats its clients send and read.
type fabric struct {
	bin     string
	redis   *testenv.RedisProc
	prefix  string
	cfg     fabricConfig
	s       []*server
	proxies map[string]*testenv.Proc
	led     *testenv.Ledger
	nsess   atomic.Int64
	names   atomic.Int64
}

// startFabric starts Redis, the servers (in parallel) and the proxies,
// and returns once every proxy is ready and, in mesh mode, every server
// has a link up to every other.
func startFabric(t *testing.T, cfg fabricConfig) *fabric {
	t.Helper()
	f := &fabric{
		bin:     testenv.Build(t),
		redis:   testenv.Redis(t),
		prefix:  prefixFor(t),
		cfg:     cfg,
		proxies: map[string]*testenv.Proc{},
		led:     testenv.NewLedger("c"),
	}
	for i := range cfg.servers {
		f.s = append(f.s, &server{id: fmt.Sprintf("s%d", i+1)})
		f.s[i].proc = testenv.Start(t, filepath.Join(f.bin, "chat-server"), f.serverArgs(i, "127.0.0.1:0", "127.0.0.1:0")...)
	}
	for _, s := range f.s {
		got := map[string]string{}
		for len(got) < 2 {
			m := s.proc.WaitLine(t, listenerReadyRE, wait)
			got[m[1]] = m[2]
		}
		s.addr, s.peer = got["client"], got["peer"]
	}
	if cfg.mesh {
		for i := range f.s {
			f.waitMesh(t, i, 0)
		}
	}
	for _, id := range cfg.proxies {
		f.startProxy(t, id)
	}
	return f
}

func (f *fabric) serverArgs(i int, listen, peer string) []string {
	args := []string{
		"-id", f.s[i].id, "-listen", listen, "-peer-listen", peer,
		"-redis", f.redis.Addr, "-redis-prefix", f.prefix,
	}
	if f.cfg.mesh {
		args = append(args, "-topology", "mesh")
	}
	return append(args, f.cfg.serverArgs...)
}

// running reports whether p has not exited.
func running(p *testenv.Proc) bool {
	select {
	case <-p.Done():
		return false
	default:
		return true
	}
}

// mark returns how many lines p has logged: a start for waitLog.
func mark(p *testenv.Proc) int { return len(p.Lines()) }

// waitLog waits until p logs, after line from, a line matching re, and
// returns its submatches. Unlike Proc.WaitLine it keeps no cursor, so
// several waits on one process can look at the same lines.
func waitLog(t *testing.T, p *testenv.Proc, from int, re string, timeout time.Duration) []string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(timeout)
	for {
		lines := p.Lines()
		for _, l := range lines[min(from, len(lines)):] {
			if m := rx.FindStringSubmatch(l); m != nil {
				return m
			}
		}
		if time.Now().After(deadline) || !running(p) {
			t.Fatalf("%s: no line matching %q after line %d within %v (exited: %v); last lines:\n%s",
				p, re, from, timeout, !running(p), strings.Join(lines[max(0, len(lines)-40):], "\n"))
		}
		time.Sleep(pollEvery) // poll interval: the loop re-reads the log
	}
}

// countLog counts p's lines from line from on that match re.
func countLog(p *testenv.Proc, from int, re string) int {
	rx := regexp.MustCompile(re)
	n := 0
	lines := p.Lines()
	for _, l := range lines[min(from, len(lines)):] {
		if rx.MatchString(l) {
			n++
		}
	}
	return n
}

// waitMesh waits until server i logged, after line from, a mesh link up
// to every other running server.
func (f *fabric) waitMesh(t *testing.T, i, from int) {
	t.Helper()
	for j, o := range f.s {
		if j != i && running(o.proc) {
			waitLog(t, f.s[i].proc, from, `msg="mesh link up".*\bpeer=`+o.id+`\b`, wait)
		}
	}
}

// marks returns mark of every server (0 for one that has exited).
func (f *fabric) marks() []int {
	out := make([]int, len(f.s))
	for i, s := range f.s {
		out[i] = mark(s.proc)
	}
	return out
}

// startProxy starts proxy id, linked to every server, and waits until it
// is ready and every running server has logged its link.
func (f *fabric) startProxy(t *testing.T, id string) *testenv.Proc {
	t.Helper()
	var list []string
	for _, s := range f.s {
		list = append(list, s.id+"="+s.peer)
	}
	from := f.marks()
	p := testenv.Start(t, filepath.Join(f.bin, "chat-proxy"),
		"-id", id, "-servers", strings.Join(list, ","), "-redis", f.redis.Addr, "-redis-prefix", f.prefix)
	p.WaitLine(t, proxyReadyRE, wait)
	for i, s := range f.s {
		if running(s.proc) {
			waitLog(t, s.proc, from[i], `msg="proxy link up".*\bproxy=`+id+`\b`, wait)
		}
	}
	f.proxies[id] = p
	return p
}

// waitProxyDown waits until every running server has logged, after from,
// that its link to proxy id is down.
func (f *fabric) waitProxyDown(t *testing.T, id string, from []int) {
	t.Helper()
	for i, s := range f.s {
		if running(s.proc) {
			waitLog(t, s.proc, from[i], `msg="proxy link down".*\bpeer=`+id+`\b`, wait)
		}
	}
}

// restartServer starts server i again, same id and addresses, and waits
// until it listens (and, in mesh mode, links to every other server).
func (f *fabric) restartServer(t *testing.T, i int) {
	t.Helper()
	s := f.s[i]
	if running(s.proc) {
		t.Fatalf("test bug: restarting %s while it runs", s.id)
	}
	from := f.marks()
	s.proc = testenv.Start(t, filepath.Join(f.bin, "chat-server"), f.serverArgs(i, s.addr, s.peer)...)
	s.proc.WaitLine(t, `msg="client listener ready"`, wait)
	if f.cfg.mesh {
		f.waitMesh(t, i, 0)
		for j := range f.s {
			if j != i {
				waitLog(t, f.s[j].proc, from[j], `msg="mesh link up".*\bpeer=`+s.id+`\b`, wait)
			}
		}
	}
	for id, p := range f.proxies {
		if running(p) {
			waitLog(t, s.proc, 0, `msg="proxy link up".*\bproxy=`+id+`\b`, wait)
		}
	}
}

// name returns a user name unique within the fabric.
func (f *fabric) name(base string) string { return fmt.Sprintf("%s%d", base, f.names.Add(1)) }

// fclient is a client whose every line goes to the fabric's ledger. Its
// reader runs on its own goroutine; the other lines (logins, errors
// without a ledger id, kicks, pongs) are kept for waitCtl.
type fclient struct {
	f           *fabric
	name, label string
	conn        net.Conn
	wmu         sync.Mutex

	mu      sync.Mutex
	ctl     []string
	changed chan struct{}
	next    int           // waitCtl's cursor (test goroutine only)
	done    chan struct{} // closed when the connection has closed
}

// login connects to server i and logs in as name; the session is
// registered with the ledger (in login order) before the login is sent.
func (f *fabric) login(t *testing.T, i int, name string) *fclient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", f.s[i].addr, wait)
	if err != nil {
		t.Fatalf("dial %s: %v", f.s[i].id, err)
	}
	c := &fclient{
		f: f, name: name, conn: conn,
		label:   fmt.Sprintf("%s@%s#%d", name, f.s[i].id, f.nsess.Add(1)),
		changed: make(chan struct{}),
		done:    make(chan struct{}),
	}
	t.Cleanup(func() { _ = conn.Close() })
	f.led.Session(c.label, name)
	go c.read()
	c.send(t, mustJSON(t, map[string]any{"cmd": "login", "name": name}))
	m := c.waitCtl(t, wait, func(m map[string]any) bool { return m["cmd"] == "login" || m["cmd"] == "error" })
	if m["ok"] != true || m["server"] != f.s[i].id {
		t.Fatalf("%s: login answered %v", c.label, m)
	}
	return c
}

func (c *fclient) read() {
	defer close(c.done)
	r := bufio.NewReaderSize(c.conn, 64<<10)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			c.f.led.Closed(c.label)
			c.mu.Lock()
			close(c.changed)
			c.changed = make(chan struct{})
			c.mu.Unlock()
			return
		}
		line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
		c.f.led.Read(c.label, line)
		if strings.HasPrefix(line, `{"cmd":"chat"`) || strings.HasPrefix(line, `{"cmd":"ack"`) {
			continue
		}
		c.mu.Lock()
		c.ctl = append(c.ctl, line)
		close(c.changed)
		c.changed = make(chan struct{})
		c.mu.Unlock()
	}
}

// write writes b; safe from any goroutine.
func (c *fclient) write(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.conn.SetWriteDeadline(time.Now().Add(wait)); err != nil {
		return err
	}
	_, err := c.conn.Write(b)
	return err
}

func (c *fclient) send(t *testing.T, line string) {
	t.Helper()
	if err := c.write([]byte(line + "\n")); err != nil {
		t.Fatalf("%s: write: %v", c.label, err)
	}
}

// waitCtl returns the next control line (not a chat or an ack) matching
// pred, consuming the ones before it. It fails the test on timeout or if
// the connection closes first.
func (c *fclient) waitCtl(t *testing.T, timeout time.Duration, pred func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		lines, ch := c.ctl[c.next:], c.changed
		c.mu.Unlock()
		for _, l := range lines {
			c.next++
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil && pred(m) {
				return m
			}
		}
		select {
		case <-ch:
		case <-c.done:
			c.mu.Lock()
			more := len(c.ctl) > c.next
			c.mu.Unlock()
			if !more {
				t.Fatalf("%s: connection closed before the line awaited; control lines: %q", c.label, c.ctlLines())
			}
		case <-deadline.C:
			t.Fatalf("%s: no line awaited within %v; control lines: %q", c.label, timeout, c.ctlLines())
		}
	}
}

func (c *fclient) ctlLines() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.ctl[max(0, len(c.ctl)-20):]...)
}

// closed reports whether the connection has closed.
func (c *fclient) closed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stopper returns a channel for pumps and a function that closes it once
// (also at cleanup).
func stopper(t *testing.T) (<-chan struct{}, func()) {
	ch := make(chan struct{})
	var once sync.Once
	halt := func() { once.Do(func() { close(ch) }) }
	t.Cleanup(halt)
	return ch, halt
}

// pump sends chats from one client on its own goroutine, cycling through
// its recipients, keeping at most fabricWindow of them unanswered. It
// stops after n chats, when stop is closed, or when the connection fails.
type pump struct {
	c    *fclient
	recv []string
	n    int
	pad  int
	rate float64 // chats per second at most; 0: as fast as answered
	sent atomic.Int64
	err  error // set before done is closed
	done chan struct{}
}

func (f *fabric) startPump(c *fclient, recv []string, n, pad int, stop <-chan struct{}) *pump {
	return f.startPumpRate(c, recv, n, pad, 0, stop)
}

// startPumpRate is startPump, at most rate chats per second.
func (f *fabric) startPumpRate(c *fclient, recv []string, n, pad int, rate float64, stop <-chan struct{}) *pump {
	p := &pump{c: c, recv: recv, n: n, pad: pad, rate: rate, done: make(chan struct{})}
	go p.run(stop)
	return p
}

func (p *pump) run(stop <-chan struct{}) {
	defer close(p.done)
	led := p.c.f.led
	var buf []byte
	start := time.Now()
	for sent := 0; sent < p.n; {
		if p.rate > 0 {
			if d := time.Until(start.Add(time.Duration(float64(sent) / p.rate * float64(time.Second)))); d > 0 {
				select { // rate limit, not synchronisation
				case <-stop:
					return
				case <-p.c.done:
				case <-time.After(d):
				}
			}
		}
		ch := led.Changed()
		select {
		case <-stop:
			return
		case <-p.c.done:
			p.err = fmt.Errorf("%s: connection closed after %d chats", p.c.label, sent)
			return
		default:
		}
		space := fabricWindow - led.Outstanding(p.c.label)
		if space <= 0 {
			select {
			case <-ch:
			case <-stop:
				return
			case <-p.c.done:
			case <-time.After(fabricStall):
				p.err = fmt.Errorf("%s: no answer for %v with %d chats outstanding", p.c.label, fabricStall, led.Outstanding(p.c.label))
				return
			}
			continue
		}
		k := min(space, 16, p.n-sent)
		buf = buf[:0]
		for j := range k {
			_, line := led.Chat(p.c.label, p.recv[(sent+j)%len(p.recv)], p.pad)
			buf = append(append(buf, line...), '\n')
		}
		if err := p.c.write(buf); err != nil {
			p.err = fmt.Errorf("%s: write after %d chats: %v", p.c.label, sent, err)
			return
		}
		sent += k
		p.sent.Store(int64(sent))
	}
}

// waitPumps waits for the pumps to end and fails the test for each one
// that ended with an error, unless tolerated (a client of a server the
// test stops).
func waitPumps(t *testing.T, timeout time.Duration, pumps []*pump, tolerated func(*pump) bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for _, p := range pumps {
		select {
		case <-p.done:
		case <-deadline.C:
			t.Fatalf("%s: still sending after %v (%d of %d sent)", p.c.label, timeout, p.sent.Load(), p.n)
		}
		if p.err != nil && (tolerated == nil || !tolerated(p)) {
			t.Errorf("sender %v", p.err)
		}
	}
}

// waitAnswered waits until the ledger has n chats answered.
func (f *fabric) waitAnswered(t *testing.T, n int) {
	t.Helper()
	eventually(t, 2*wait, func() (bool, string) {
		sent, answered, acked := f.led.Counts()
		return answered >= n, fmt.Sprintf("%d chats answered (%d sent, %d acked), want %d", answered, sent, acked, n)
	})
}

// waitHeld waits, once the only path is down, until n chats wait
// unanswered: the servers hold them (a chat put on a stream is acked only
// once it reached the kernel on a link, or was stored instead).
func (f *fabric) waitHeld(t *testing.T, n int) {
	t.Helper()
	eventually(t, 2*wait, func() (bool, string) {
		sent, answered, acked := f.led.Counts()
		return sent-answered >= n, fmt.Sprintf("%d chats unanswered (%d sent, %d acked), want %d", sent-answered, sent, acked, n)
	})
}

// settle waits until every chat is settled (acked ones delivered, errored
// or in the mailbox, sent ones answered unless their sender left) and no
// delivery arrived for a poll interval (a mailbox being drained holds
// chats on their way to the client), or until timeout, and returns the
// ledger's verdict (logged).
func (f *fabric) settle(t *testing.T, timeout time.Duration) testenv.LedgerResult {
	t.Helper()
	deadline := time.Now().Add(timeout)
	prev, stable := -1, 0
	for {
		// Deliveries first: if they have not moved by the end of the
		// snapshot, no drain was writing meanwhile.
		delivered := f.led.Deliveries()
		overlap := 0
		for _, name := range f.led.Recipients() {
			entries, err := testenv.MailboxEntries(f.redis.Addr, route.MailboxKey(f.prefix, name))
			if err != nil {
				t.Fatalf("mailbox of %s: %v", name, err)
			}
			overlap += f.led.Mailbox(name, entries)
		}
		n, ex := f.led.Unsettled()
		if n == 0 && overlap == 0 && delivered == prev && f.led.Deliveries() == delivered {
			if stable++; stable >= 2 {
				break
			}
		} else {
			stable = 0
		}
		prev = delivered
		if time.Now().After(deadline) {
			t.Logf("ledger not settled after %v: %d chats waited for (e.g. %v); %d mailbox entries delivered already", timeout, n, ex, overlap)
			break
		}
		time.Sleep(100 * time.Millisecond) // poll interval: the loop re-reads the mailboxes
	}
	r := f.led.Result()
	t.Logf("ledger: %s", r)
	return r
}

// checkLedger fails the test unless the verdict is clean (a Gap only when
// allowed), and logs the details either way.
func (f *fabric) check(t *testing.T, r testenv.LedgerResult, allowGap bool) {
	t.Helper()
	if !r.OK() || (r.Gap > 0 && !allowGap) || r.Acked == 0 {
		t.Errorf("ledger: %s\n%s", r, r.Details())
		f.traceFirst(t, r.Details())
		return
	}
	t.Logf("ledger details: %s", r.Details())
}

// traceFirst logs the ledger's trace of the pairs in the first
// duplicate and the first reordering that details describe, around the
// sequence numbers they name.
func (f *fabric) traceFirst(t *testing.T, details string) {
	t.Helper()
	rx := regexp.MustCompile(`(\S+)->(\S+) seq (\d+)(?: after (?:stored )?seq (\d+))?`)
	done := map[string]bool{}
	for _, line := range strings.Split(details, "\n") {
		kind := "reorder"
		if strings.Contains(line, "again") || strings.Contains(line, "times and still") {
			kind = "dup"
		}
		m := rx.FindStringSubmatch(line)
		if m == nil || done[kind] {
			continue
		}
		done[kind] = true
		for _, q := range m[3:] {
			if n, err := strconv.Atoi(q); err == nil {
				t.Logf("trace of %s->%s around #%d:\n\t%s", m[1], m[2], n, strings.Join(f.led.Trace(m[1], m[2], n-4, n+4), "\n\t"))
			}
		}
	}
}

// statKeys are the counters stopAll reports, when not zero.
var statKeys = regexp.MustCompile(`^(stream_\w+|stored|requeued|lost_at_close|dropped_\w+|link_auth_failures|peer_refused|kicks|kick_\w+|drop_\w+|lost_bytes|bad_frames|shutdown_drain_left|relayed|errors)$`)

// stopAll stops every running proxy, then every running server, with
// SIGTERM, checks they exit 0, and logs their final counters.
func (f *fabric) stopAll(t *testing.T) {
	t.Helper()
	var procs []*testenv.Proc
	var ids []string
	pids := make([]string, 0, len(f.proxies))
	for id := range f.proxies {
		pids = append(pids, id)
	}
	sort.Strings(pids)
	for _, id := range pids {
		procs, ids = append(procs, f.proxies[id]), append(ids, id)
	}
	for _, s := range f.s {
		procs, ids = append(procs, s.proc), append(ids, s.id)
	}
	for i, p := range procs {
		if !running(p) {
			continue
		}
		p.Signal(t, syscall.SIGTERM)
		if err := p.Wait(t, 3*wait); err != nil {
			t.Errorf("%s after SIGTERM: %v, want exit status 0", ids[i], err)
		}
		t.Logf("%s counters: %s", ids[i], finalStats(p))
	}
}

// finalStats returns the non-zero counters of interest in a process's
// "stopped" log line.
func finalStats(p *testenv.Proc) string {
	for _, l := range p.Lines() {
		m := regexp.MustCompile(`msg=stopped stats="map\[([^\]]*)\]"`).FindStringSubmatch(l)
		if m == nil {
			continue
		}
		var out []string
		for _, kv := range strings.Fields(m[1]) {
			k, v, _ := strings.Cut(kv, ":")
			if statKeys.MatchString(k) && v != "0" {
				out = append(out, kv)
			}
		}
		return strings.Join(out, " ")
	}
	return "(no stopped line)"
}

// statOf returns counter key of p's "stopped" line (-1 if absent).
func statOf(p *testenv.Proc, key string) int {
	for _, l := range p.Lines() {
		if m := regexp.MustCompile(`msg=stopped stats=".*\b` + key + `:(\d+)`).FindStringSubmatch(l); m != nil {
			n, _ := strconv.Atoi(m[1])
			return n
		}
	}
	return -1
}

// wchar reads how many bytes a process has written (/proc/PID/io).
func wchar(t *testing.T, p *testenv.Proc) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", p.Pid()))
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	m := regexp.MustCompile(`(?m)^wchar: (\d+)`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("%s: no wchar in /proc/%d/io", p, p.Pid())
	}
	n, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return n
}

// crossTraffic logs in users per server on every server (names "u<i>x")
// and starts, for each, a pump of n chats to every user on the other
// servers. It returns the clients by server and the pumps.
func (f *fabric) crossTraffic(t *testing.T, perServer, n, pad int, rate float64, stop <-chan struct{}) ([][]*fclient, []*pump) {
	t.Helper()
	users := make([][]*fclient, len(f.s))
	for i := range f.s {
		for range perServer {
			users[i] = append(users[i], f.login(t, i, f.name(fmt.Sprintf("u%d-", i+1))))
		}
	}
	var pumps []*pump
	for i := range f.s {
		var recv []string
		for j := range f.s {
			if j != i {
				for _, u := range users[j] {
					recv = append(recv, u.name)
				}
			}
		}
		for _, u := range users[i] {
			pumps = append(pumps, f.startPumpRate(u, recv, n, pad, rate, stop))
		}
	}
	return users, pumps
}

// TestFabricProxyKill: one proxy, killed with kill -9 while thousands of
// acked cross-server chats stream both ways, and started again a moment
// later (once chats are held), three times. The servers hold what they
// could not send and resend their unacknowledged tails over the new
// proxy. The proxy is back within about a second, far within -hold-age
// (5s), so every acked chat must be delivered, once and in order: an
// error (allowed by the contract) would mean a stream did not recover.
func TestFabricProxyKill(t *testing.T) {
	t.Parallel()
	f := startFabric(t, fabricConfig{servers: 2, proxies: []string{"p1"}, serverArgs: []string{"-hold-age", "5s"}})
	stop, _ := stopper(t)
	const perServer, n, rounds = 3, 800, 3 // 6 senders × 800 = 4800 chats
	_, pumps := f.crossTraffic(t, perServer, n, 40, 0, stop)

	total := 2 * perServer * n
	for k := range rounds {
		f.waitAnswered(t, (k+1)*total/(rounds+1))
		from := f.marks()
		f.proxies["p1"].Kill()
		f.waitProxyDown(t, "p1", from)
		f.waitHeld(t, 200)
		f.startProxy(t, "p1")
	}

	waitPumps(t, 3*wait, pumps, nil)
	r := f.settle(t, fabricSettle)
	f.check(t, r, false)
	f.expectAllDelivered(t, r)
	f.stopAll(t)
}

// expectAllDelivered fails the test unless every acked chat was
// delivered live: in scenarios where a path to every server comes back
// well within -hold-age, nothing has to be stored or errored. It names
// the servers' counters that point at a stuck stream.
func (f *fabric) expectAllDelivered(t *testing.T, r testenv.LedgerResult) {
	t.Helper()
	if r.Delivered == r.Acked {
		return
	}
	t.Errorf("%d of %d acked chats not delivered (%s), although a path to every server was up again well within -hold-age\n%s", r.Acked-r.Delivered, r.Acked, r, r.Details())
	for _, s := range f.s {
		t.Logf("%s logged %d frames dropped as from a server the link does not reach, %d holds expired",
			s.id, countLog(s.proc, 0, `msg="dropping frame from a server this link does not reach"`), countLog(s.proc, 0, `msg="chats waited past -hold-age`))
	}
}

// busiest returns the running proxy among ids that wrote the most bytes
// while cond became true: the one carrying streams.
func (f *fabric) busiest(t *testing.T, ids []string, cond func()) string {
	t.Helper()
	before := map[string]int64{}
	for _, id := range ids {
		before[id] = wchar(t, f.proxies[id])
	}
	cond()
	best, most := "", int64(-1)
	for _, id := range ids {
		if d := wchar(t, f.proxies[id]) - before[id]; d > most {
			best, most = id, d
		}
		t.Logf("%s wrote %d bytes meanwhile", id, wchar(t, f.proxies[id])-before[id])
	}
	return best
}

// TestFabricProxyKillOfTwo: three servers and two proxies; the proxy that
// carries streams is killed with kill -9 mid-stream and not restarted.
// Every stream it carried moves to the other proxy with its
// unacknowledged tail: nothing lost, duplicated or reordered.
func TestFabricProxyKillOfTwo(t *testing.T) {
	t.Parallel()
	f := startFabric(t, fabricConfig{servers: 3, proxies: []string{"p1", "p2"}, serverArgs: []string{"-hold-age", "5s"}})
	stop, _ := stopper(t)
	const perServer, n = 2, 700 // 6 senders × 700 = 4200 chats
	_, pumps := f.crossTraffic(t, perServer, n, 40, 0, stop)

	total := 3 * perServer * n
	f.waitAnswered(t, total/4)
	victim := f.busiest(t, []string{"p1", "p2"}, func() { f.waitAnswered(t, total/4+400) })
	from := f.marks()
	f.proxies[victim].Kill()
	f.waitProxyDown(t, victim, from)

	waitPumps(t, 3*wait, pumps, nil)
	r := f.settle(t, fabricSettle)
	f.check(t, r, false)
	f.expectAllDelivered(t, r)
	f.stopAll(t)
}

// TestFabricProxyStall: three servers, two proxies; the one carrying
// streams is stopped (SIGSTOP), a third proxy starts meanwhile, the
// servers resend their unacknowledged tails over the live proxies, then
// the stalled proxy resumes (SIGCONT) and relays its stale backlog. The
// receivers drop what they already have: 0 duplicates, 0 reorderings.
func TestFabricProxyStall(t *testing.T) {
	t.Parallel()
	f := startFabric(t, fabricConfig{servers: 3, proxies: []string{"p1", "p2"}, serverArgs: []string{"-hold-age", "5s"}})
	stop, _ := stopper(t)
	const perServer, n = 2, 700
	_, pumps := f.crossTraffic(t, perServer, n, 40, 0, stop)

	total := 3 * perServer * n
	f.waitAnswered(t, total/5)
	victim := f.busiest(t, []string{"p1", "p2"}, func() { f.waitAnswered(t, total/5+400) })
	vp := f.proxies[victim]
	from := f.marks()
	vp.Signal(t, syscall.SIGSTOP)
	defer func() { _ = syscall.Kill(vp.Pid(), syscall.SIGCONT) }() // if the test fails before SIGCONT
	stalled := time.Now()
	f.startProxy(t, "p3")
	eventually(t, wait, func() (bool, string) {
		n := 0
		for i, s := range f.s {
			n += countLog(s.proc, from[i], `msg="stream not acknowledged; resending over another path"`)
		}
		return n > 0, "no server resent a stalled stream over another path"
	})
	vp.Signal(t, syscall.SIGCONT)
	t.Logf("%s stalled for %v", victim, time.Since(stalled).Round(time.Millisecond))

	waitPumps(t, 3*wait, pumps, nil)
	r := f.settle(t, fabricSettle)
	f.check(t, r, false)
	f.expectAllDelivered(t, r)
	for i, s := range f.s {
		if n := countLog(s.proc, from[i], `msg="proxy link down"`); n > 0 {
			t.Logf("%s: %d proxy links went down during the stall", s.id, n)
		}
	}
	f.stopAll(t)
}

// TestFabricProxyStop: SIGTERM to a proxy mid-stream, twice. The first
// time another proxy is up and takes the streams over; the second time
// none is, the servers hold, and a new proxy delivers what they held.
// Each proxy drains, says goodbye and exits 0; nothing is lost.
func TestFabricProxyStop(t *testing.T) {
	t.Parallel()
	f := startFabric(t, fabricConfig{servers: 2, proxies: []string{"p1", "p2"}, serverArgs: []string{"-hold-age", "5s"}})
	stop, _ := stopper(t)
	const perServer, n = 3, 700
	_, pumps := f.crossTraffic(t, perServer, n, 40, 0, stop)
	total := 2 * perServer * n

	for k, id := range []string{"p1", "p2"} {
		f.waitAnswered(t, (k+1)*total/3)
		from := f.marks()
		f.proxies[id].Signal(t, syscall.SIGTERM)
		if err := f.proxies[id].Wait(t, 3*wait); err != nil {
			t.Errorf("%s after SIGTERM: %v, want exit status 0", id, err)
		}
		f.waitProxyDown(t, id, from)
		for i, s := range f.s {
			if countLog(s.proc, from[i], `msg="peer is stopping; moving its streams".*\bpeer=`+id+`\b`) == 0 {
				t.Errorf("%s never heard %s's goodbye (SIGTERM to a proxy should say goodbye before closing); its log:\n%s",
					s.id, id, strings.Join(s.proc.Lines()[from[i]:], "\n"))
			}
		}
		t.Logf("%s counters: %s", id, finalStats(f.proxies[id]))
	}
	f.startProxy(t, "p3")

	waitPumps(t, 3*wait, pumps, nil)
	r := f.settle(t, fabricSettle)
	f.check(t, r, false)
	f.expectAllDelivered(t, r)
	f.stopAll(t)
}

// TestFabricServerStopHolding: no proxy is up, and s1 holds acked chats
// for s2, which it cannot reach. SIGTERM to s1 (while its users still
// send): every chat it acked is stored in its recipient's mailbox (never
// sent) or errored to its sender by id (sent, unconfirmed); none is
// silent, and s1 exits 0. s2's users keep sending to s1's users
// throughout: what s2 held for s1 goes to their mailboxes at -hold-age,
// what they send after s1 released their routes is stored at once, and
// each pair's chats stay in order in the mailbox. Everyone logs in again
// and gets the stored chats, in order.
func TestFabricServerStopHolding(t *testing.T) {
	t.Parallel()
	f := startFabric(t, fabricConfig{servers: 2, proxies: []string{"p1"}, serverArgs: []string{"-hold-age", "2s"}})
	stop, halt := stopper(t)
	users, pumps := f.crossTraffic(t, 3, 1<<30, 40, 200, stop)
	f.waitAnswered(t, 300) // some chats went through the proxy
	from := f.marks()
	f.proxies["p1"].Kill()
	f.waitProxyDown(t, "p1", from)
	f.waitHeld(t, 200)

	s1 := f.s[0].proc
	s1.Signal(t, syscall.SIGTERM)
	if err := s1.Wait(t, 3*wait); err != nil {
		t.Errorf("s1 after SIGTERM: %v, want exit status 0", err)
	}
	t.Logf("s1 counters: %s", finalStats(s1))
	for _, c := range users[0] {
		select {
		case <-c.done:
		case <-time.After(wait):
			t.Fatalf("%s still open after s1 exited", c.label)
		}
	}
	// s1's users are gone; s2's users keep sending to them, past the
	// hold-age of what s2 holds for s1.
	_, answered, _ := f.led.Counts()
	f.waitAnswered(t, answered+1500)
	halt()
	waitPumps(t, 3*wait, pumps, func(p *pump) bool { return strings.Contains(p.c.label, "@s1#") })
	onS1 := map[string]bool{}
	for _, c := range users[0] {
		onS1[c.name] = true
	}
	fromS1 := func(send, recv string) bool { return onS1[send] }
	first := f.settle(t, fabricSettle)
	r := f.led.ResultWhere(fromS1)
	t.Logf("chats from s1's users: %s", r)
	if r.Silent != 0 || r.Acked == 0 {
		t.Errorf("chats s1 acked: %s\n%s", r, r.Details())
	}
	if r.Stored == 0 {
		t.Errorf("chats s1 acked: %s: none was stored, want the held ones stored", r)
	}
	f.check(t, first, false)

	// The stored chats reach their recipients at their next login.
	f.restartServer(t, 0)
	f.startProxy(t, "p1")
	for i := range users {
		for _, c := range users[i] {
			f.login(t, i, c.name)
		}
	}
	final := f.settle(t, fabricSettle)
	f.check(t, final, false)
	if final.Stored != first.Stored {
		t.Errorf("stored chats: %d before the logins, %d after", first.Stored, final.Stored)
	}
	for _, name := range f.led.Recipients() {
		if entries, _ := testenv.MailboxEntries(f.redis.Addr, route.MailboxKey(f.prefix, name)); len(entries) > 0 {
			t.Errorf("%s logged in again and its mailbox still holds %d chats", name, len(entries))
		}
	}
	f.stopAll(t)
}

// TestFabricKickPartition: bob is logged in on s2 when the only proxy
// dies; he logs in again on s1, whose kick for the s2 session cannot go
// through. While the partition lasts both sessions are reachable from
// their own server. Once a proxy is back, the older session must be
// kicked and closed, and from then on only the newer one receives
// (checked by the ledger's cross-session order, and by the session
// states).
func TestFabricKickPartition(t *testing.T) {
	t.Parallel()
	f := startFabric(t, fabricConfig{servers: 2, proxies: []string{"p1"}, serverArgs: []string{"-hold-age", "2s"}})
	bob := f.name("bob")
	old := f.login(t, 1, bob)
	carol, alice := f.login(t, 1, f.name("carol")), f.login(t, 0, f.name("alice"))
	stop, halt := stopper(t)
	pumps := []*pump{
		f.startPumpRate(carol, []string{bob, alice.name}, 1<<30, 0, 300, stop),
		f.startPumpRate(alice, []string{bob, carol.name}, 1<<30, 0, 300, stop),
	}
	f.waitAnswered(t, 300)
	from := f.marks()
	f.proxies["p1"].Kill()
	f.waitProxyDown(t, "p1", from)

	fresh := f.login(t, 0, bob) // the kick for old is queued: no path to s2
	_, answered, _ := f.led.Counts()
	f.waitAnswered(t, answered+400) // through the partition, past -hold-age
	if old.closed() {
		t.Logf("the older session closed during the partition (nothing could reach s2)")
	}
	f.startProxy(t, "p1")
	select {
	case <-old.done:
	case <-time.After(2 * wait):
		t.Fatalf("%s still open %v after a proxy came back: the kick was never delivered (%v)", old.label, 2*wait, f.led.SessionState(old.label))
	}
	if st := f.led.SessionState(old.label); !st.Kicked {
		t.Errorf("%s closed without a kicked notice: %+v; control lines %q", old.label, st, old.ctlLines())
	}
	kicked := f.led.SessionState(old.label).Deliveries
	before := f.led.SessionState(fresh.label).Deliveries
	_, answered, _ = f.led.Counts()
	f.waitAnswered(t, answered+600)
	halt()
	waitPumps(t, 3*wait, pumps, nil)
	r := f.settle(t, fabricSettle)
	f.check(t, r, false)
	if st := f.led.SessionState(old.label); st.Deliveries != kicked {
		t.Errorf("%s got %d chats after its kick", old.label, st.Deliveries-kicked)
	}
	if st := f.led.SessionState(fresh.label); st.Closed || st.Kicked || st.Deliveries <= before {
		t.Errorf("%s: %+v, want open, not kicked, and receiving after the kick", fresh.label, st)
	}
	t.Logf("old session got %d chats, new session %d", kicked, f.led.SessionState(fresh.label).Deliveries)
	f.stopAll(t)
}

// aliveOf returns the fields of server id's heartbeat in Redis: epoch,
// beat, peer address ("" when absent).
func (f *fabric) aliveOf(t *testing.T, id string) (epoch, beat, addr string) {
	t.Helper()
	v, err := testenv.RedisDo(f.redis.Addr, testenv.RedisAuth{}, "GET", route.AliveKey(f.prefix, id))
	if err != nil {
		t.Fatal(err)
	}
	s, _ := v.(string)
	parts := strings.SplitN(s, " ", 3)
	if len(parts) != 3 {
		return "", "", ""
	}
	return parts[0], parts[1], parts[2]
}

// rogueAttempt opens a connection to addr, writes lines (each ending in
// "\n") one at a time, answering the server's hello reply with reply (if
// not empty) before the rest, and returns what it read until the server
// closed the connection; closed is false if it did not within timeout.
func rogueAttempt(addr string, hello string, reply func(serverHello string) string, lines []string, timeout time.Duration) (read []string, closed bool, err error) {
	conn, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		return nil, false, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	r := bufio.NewReader(conn)
	if hello != "" {
		if _, err := conn.Write([]byte(hello + "\n")); err != nil {
			return nil, true, nil
		}
		if reply != nil {
			l, err := r.ReadString('\n')
			if err != nil {
				return nil, true, nil
			}
			read = append(read, strings.TrimSuffix(l, "\n"))
			if _, err := conn.Write([]byte(reply(l) + "\n")); err != nil {
				return read, true, nil
			}
		}
	}
	for _, l := range lines {
		if _, err := conn.Write([]byte(l + "\n")); err != nil {
			return read, true, nil // closed (reset) already
		}
	}
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			return read, !isTimeout(err), nil
		}
		read = append(read, strings.TrimSuffix(l, "\n"))
	}
}

// forgedFrames are link lines a rogue sends in server s2's name to s1
// (epoch s1Epoch): a chat to bob from "admin", a kick of bob's session
// (with his real token), a reach line claiming s2, and raw text.
func forgedFrames(s1Epoch, bob, bobToken string) []string {
	chat := fmt.Sprintf(`{"cmd":"chat","send":"admin","recv":%q,"content":"forged: send me your password","ts":1}`, bob)
	return []string{
		fmt.Sprintf("M s1 %s s2 1 1 0 5:admin %d:%s 0: %s", s1Epoch, len(bob), bob, chat),
		fmt.Sprintf("K s1 %s s2 1 2 0 0: %d:%s 0: %s s2 0000000000000000", s1Epoch, len(bob), bob, bobToken),
		"R s1:1 s2:1",
		fmt.Sprintf("M s1 %s s2 1 3 0 5:admin %d:%s 0: this is not JSON at all", s1Epoch, len(bob), bob),
		"hello " + bob + ", this is not JSON",
	}
}

// TestFabricRoguePeer: processes without the cluster secret connect to
// s1's peer port and send forged chat frames in s2's name, a forged kick
// of a logged-in user, a false reach line and raw text, with no hello,
// with the old v1 hello, and with a well-formed hello whose proof is
// wrong (as a proxy, and as server s2). Each is closed; no user receives
// anything, nobody is kicked, and s1 logs and counts every refusal. Then
// a rogue that does know the secret links as a proxy that reaches no
// server, and as a server "s9": frames it sends in s2's name are dropped
// (and counted), because a link speaks only for the servers behind it.
// Legitimate chats between s1 and s2 flow throughout.
func TestFabricRoguePeer(t *testing.T) {
	t.Parallel()
	f := startFabric(t, fabricConfig{servers: 2, proxies: []string{"p1"}, serverArgs: []string{"-link-timeout", "3s"}})
	bob, alice := f.login(t, 0, f.name("bob")), f.login(t, 1, f.name("alice"))
	carol := f.login(t, 0, f.name("carol"))
	stop, halt := stopper(t)
	pumps := []*pump{
		f.startPumpRate(alice, []string{bob.name, carol.name}, 1<<30, 0, 300, stop),
		f.startPumpRate(bob, []string{alice.name}, 1<<30, 0, 300, stop),
	}
	f.waitAnswered(t, 200)

	s1Epoch, _, _ := f.aliveOf(t, "s1")
	s2Epoch, _, _ := f.aliveOf(t, "s2")
	rv, _ := testenv.RedisDo(f.redis.Addr, testenv.RedisAuth{}, "GET", route.RouteKey(f.prefix, bob.name))
	routeVal, _ := rv.(string)
	_, bobToken, _ := strings.Cut(routeVal, " ")
	if s1Epoch == "" || s2Epoch == "" || bobToken == "" {
		t.Fatalf("test bug: epochs %q %q, bob's route %q", s1Epoch, s2Epoch, routeVal)
	}
	forged := forgedFrames(s1Epoch, bob.name, bobToken)
	nonce := "AAAAAAAAAAAAAAAAAAAAAA" // 16 bytes, base64url
	badProof := func(string) string { return "V " + strings.Repeat("x", 43) }
	attempts := []struct {
		name  string
		hello string
		reply func(string) string
	}{
		{"no hello", "", nil},
		{"v1 hello", "H proxy evil -", nil},
		{"hello as a proxy, wrong proof", "H proxy evil 0 " + nonce, badProof},
		{"hello as server s2, wrong proof", "H server s2 " + s2Epoch + " " + nonce, badProof},
		{"hello, then frames instead of a proof", "H proxy evil 0 " + nonce, func(string) string { return forged[0] }},
	}
	from := f.marks()
	for _, a := range attempts {
		read, closed, err := rogueAttempt(f.s[0].peer, a.hello, a.reply, forged, 2*wait)
		if err != nil {
			t.Fatalf("%s: %v", a.name, err)
		}
		if !closed {
			t.Errorf("%s: s1 kept the connection open for %v", a.name, 2*wait)
		}
		for _, l := range read {
			if !strings.HasPrefix(l, "H server s1 ") {
				t.Errorf("%s: s1 sent %q to a peer without the secret", a.name, l)
			}
		}
		t.Logf("%s: closed=%v, read %d lines", a.name, closed, len(read))
	}
	eventually(t, wait, func() (bool, string) {
		n := countLog(f.s[0].proc, from[0], `msg="closing link: hello failed"`)
		return n >= len(attempts), fmt.Sprintf("s1 logged %d failed hellos, want %d", n, len(attempts))
	})

	// A rogue with the secret, as a proxy reaching nothing and as a server
	// "s9", sends frames in s2's name (a chat, a kick, an ack).
	sv, err := testenv.RedisDo(f.redis.Addr, testenv.RedisAuth{}, "GET", route.SecretKey(f.prefix))
	secret, _ := sv.(string)
	if err != nil || secret == "" {
		t.Fatalf("cluster secret: %q %v", secret, err)
	}
	ack := fmt.Sprintf("A s1 0 s2 %x 1000000", 1)
	var insiders []*rogueLink
	for _, who := range []peer.Identity{{Role: peer.RoleProxy, ID: "rogue"}, {Role: peer.RoleServer, ID: "s9", Epoch: 1}} {
		rl := dialRogue(t, f.s[0].peer, secret, who)
		insiders = append(insiders, rl)
		rl.send(t, append(forged[:2:2], ack, forged[3])...)
		waitLog(t, f.s[0].proc, from[0], `msg="dropping frame from a server this link does not reach".*\bpeer=`+who.ID+`\b.*\bsrc=s2\b`, wait)
	}

	_, answered, _ := f.led.Counts()
	f.waitAnswered(t, answered+300) // legitimate traffic still flows
	expectPongF(t, bob)
	halt()
	waitPumps(t, 3*wait, pumps, nil)
	r := f.settle(t, fabricSettle)
	f.check(t, r, false)
	for _, c := range []*fclient{bob, alice, carol} {
		if st := f.led.SessionState(c.label); st.Closed || st.Kicked {
			t.Errorf("%s: %+v after the attacks", c.label, st)
		}
	}
	for _, rl := range insiders {
		if bad := rl.close(); len(bad) > 0 {
			t.Errorf("%s got lines other than pings: %q", rl.who.ID, bad)
		}
	}
	f.stopAll(t)
	if n := statOf(f.s[0].proc, "link_auth_failures"); n < len(attempts) {
		t.Errorf("s1 counted %d link auth failures, want at least %d", n, len(attempts))
	}
	if n := statOf(f.s[0].proc, "stream_foreign"); n < 2*4 {
		t.Errorf("s1 counted %d foreign frames, want at least 8", n)
	}
}

// expectPongF pings through c and waits for the pong.
func expectPongF(t *testing.T, c *fclient) {
	t.Helper()
	c.send(t, `{"cmd":"ping"}`)
	c.waitCtl(t, wait, func(m map[string]any) bool { return m["cmd"] == "pong" })
}

// rogueLink is an authenticated link a test holds, as a rogue would.
type rogueLink struct {
	who  peer.Identity
	conn net.Conn
	mu   sync.Mutex
	read []string
	done chan struct{}
}

// dialRogue links to addr with the cluster secret as who.
func dialRogue(t *testing.T, addr, secret string, who peer.Identity) *rogueLink {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	hs, first, err := peer.NewDialer([]byte(secret), who)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(wait))
	if _, err := conn.Write(first); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("%s: hello answer: %v", who.ID, err)
	}
	out, done, err := hs.Feed([]byte(strings.TrimSuffix(line, "\n")))
	if err != nil || !done {
		t.Fatalf("%s: hello: done=%v err=%v", who.ID, done, err)
	}
	if _, err := conn.Write(out); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Time{})
	rl := &rogueLink{who: who, conn: conn, done: make(chan struct{})}
	go func() {
		defer close(rl.done)
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return
			}
			rl.mu.Lock()
			rl.read = append(rl.read, strings.TrimSuffix(l, "\n"))
			rl.mu.Unlock()
		}
	}()
	return rl
}

func (rl *rogueLink) send(t *testing.T, lines ...string) {
	t.Helper()
	for _, l := range lines {
		if _, err := rl.conn.Write([]byte(l + "\n")); err != nil {
			t.Fatalf("%s: %v", rl.who.ID, err)
		}
	}
}

// close closes the link and returns what it read besides pings.
func (rl *rogueLink) close() []string {
	_ = rl.conn.Close()
	<-rl.done
	rl.mu.Lock()
	defer rl.mu.Unlock()
	var bad []string
	for _, l := range rl.read {
		if l != "P" {
			bad = append(bad, l)
		}
	}
	return bad
}

// procStatus reads a process's resident set (now and peak) and open
// descriptors.
func procStatus(t *testing.T, pid int) (rss, hwm int64, fds int) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	kb := func(key string) int64 {
		m := regexp.MustCompile(`(?m)^` + key + `:\s+(\d+) kB`).FindSubmatch(b)
		if m == nil {
			t.Fatalf("no %s in /proc/%d/status", key, pid)
		}
		n, _ := strconv.ParseInt(string(m[1]), 10, 64)
		return n << 10
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return kb("VmRSS"), kb("VmHWM"), len(ents)
}

// sampler follows a process's resident set and descriptors on its own
// goroutine, every 10 ms, keeping the maxima.
type sampler struct {
	pid        int
	maxRSS     atomic.Int64
	maxFds     atomic.Int64
	stop, done chan struct{}
	rss0, fds0 int64
	errOnce    sync.Once
	err        error
}

func startSampler(t *testing.T, pid int) *sampler {
	rss, _, fds := procStatus(t, pid)
	sp := &sampler{pid: pid, stop: make(chan struct{}), done: make(chan struct{}), rss0: rss, fds0: int64(fds)}
	sp.maxRSS.Store(rss)
	sp.maxFds.Store(int64(fds))
	go func() {
		defer close(sp.done)
		tk := time.NewTicker(10 * time.Millisecond) // sampling interval
		defer tk.Stop()
		for {
			select {
			case <-sp.stop:
				return
			case <-tk.C:
			}
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
			ents, err2 := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
			if err != nil || err2 != nil {
				sp.errOnce.Do(func() { sp.err = fmt.Errorf("sampling: %v %v", err, err2) })
				return
			}
			if m := regexp.MustCompile(`(?m)^VmRSS:\s+(\d+) kB`).FindSubmatch(b); m != nil {
				n, _ := strconv.ParseInt(string(m[1]), 10, 64)
				if n<<10 > sp.maxRSS.Load() {
					sp.maxRSS.Store(n << 10)
				}
			}
			if n := int64(len(ents)); n > sp.maxFds.Load() {
				sp.maxFds.Store(n)
			}
		}
	}()
	t.Cleanup(func() { sp.halt() })
	return sp
}

// reset starts new maxima from now.
func (sp *sampler) reset(t *testing.T) {
	rss, _, fds := procStatus(t, sp.pid)
	sp.maxRSS.Store(rss)
	sp.maxFds.Store(int64(fds))
}

func (sp *sampler) halt() {
	select {
	case <-sp.stop:
	default:
		close(sp.stop)
	}
	<-sp.done
}

// openIdle opens n connections to addr that never send anything.
func openIdle(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	var out []net.Conn
	for range n {
		c, err := net.DialTimeout("tcp", addr, wait)
		if err != nil {
			t.Fatalf("idle connection %d: %v", len(out), err)
		}
		out = append(out, c)
	}
	t.Cleanup(func() {
		for _, c := range out {
			_ = c.Close()
		}
	})
	return out
}

// TestFabricPreHelloFlood: while chats flow between s1 and s2, s1's peer
// port is flooded with connections that never finish a hello:
//
//  1. twenty that each send 4 MiB without a newline (a hello line is at
//     most 1 KiB: each is closed after its first read);
//  2. four hundred idle ones, held open: s1 keeps at most 64 of them
//     (-max-peer-pending), closes the rest at once, and closes the 64 at
//     the hello deadline (-link-timeout);
//  3. for four seconds, openers that re-open whatever s1 closes, while a
//     new proxy tries to link.
//
// Throughout, s1's memory grows by less than 100 MiB and its descriptors
// stay bounded (64 pending, plus connections accepted and not yet
// refused, which the flood's own concurrency bounds); its proxy link
// stays up, its clients keep chatting, and once the flood ends the new
// proxy links.
func TestFabricPreHelloFlood(t *testing.T) {
	t.Parallel()
	const linkTimeout = 3 * time.Second
	f := startFabric(t, fabricConfig{servers: 2, proxies: []string{"p1"}, serverArgs: []string{"-link-timeout", linkTimeout.String()}})
	stop, halt := stopper(t)
	_, pumps := f.crossTraffic(t, 2, 1<<30, 40, 200, stop)
	f.waitAnswered(t, 500)

	s1 := f.s[0]
	from := f.marks()
	sp := startSampler(t, s1.proc.Pid())
	fds0 := sp.fds0

	// 1. Twenty times 4 MiB without a newline.
	junk := []byte(strings.Repeat("x", 4<<20))
	var wg sync.WaitGroup
	var junkTaken atomic.Int64
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", s1.peer, wait)
			if err != nil {
				return
			}
			defer c.Close()
			_ = c.SetWriteDeadline(time.Now().Add(wait))
			n, _ := c.Write(junk)
			junkTaken.Add(int64(n))
		}()
	}
	wg.Wait()
	eventually(t, wait, func() (bool, string) {
		n := countLog(s1.proc, from[0], `msg="closing link: line too long"`)
		return n == 20, fmt.Sprintf("s1 closed %d of the 20 long-line connections", n)
	})
	t.Logf("phase 1: %d MiB of junk taken by the kernel; s1 RSS peak %d MiB (from %d MiB), descriptors at most %d (from %d)",
		junkTaken.Load()>>20, sp.maxRSS.Load()>>20, sp.rss0>>20, sp.maxFds.Load(), fds0)

	// 2. Four hundred idle connections, held.
	held := openIdle(t, s1.peer, 400)
	eventually(t, wait, func() (bool, string) {
		_, _, fds := procStatus(t, s1.proc.Pid())
		return int64(fds) <= fds0+64+4, fmt.Sprintf("s1 holds %d descriptors with 400 idle peer connections open (%d before)", fds, fds0)
	})
	t.Logf("phase 2: s1 descriptors at most %d while 400 idle connections were opened (from %d)", sp.maxFds.Load(), fds0)
	eventually(t, linkTimeout+wait, func() (bool, string) {
		_, _, fds := procStatus(t, s1.proc.Pid())
		return int64(fds) <= fds0+4, fmt.Sprintf("s1 holds %d descriptors %v after 400 idle peer connections (%d before)", fds, linkTimeout, fds0)
	})
	for _, c := range held {
		_ = c.Close()
	}

	// 3. Churn: openers keep 400 connections open, re-opening whatever s1
	// closes, while a new proxy starts.
	sp.reset(t)
	churn := make(chan struct{})
	var opened atomic.Int64
	const openers, each = 8, 50
	for range openers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var open []net.Conn
			defer func() {
				for _, c := range open {
					_ = c.Close()
				}
			}()
			for {
				select {
				case <-churn:
					return
				default:
				}
				alive := open[:0]
				for _, c := range open {
					_ = c.SetReadDeadline(time.Now().Add(time.Millisecond))
					var b [1]byte
					if _, err := c.Read(b[:]); err != nil && !isTimeout(err) {
						_ = c.Close()
						continue
					}
					alive = append(alive, c)
				}
				open = alive
				for len(open) < each {
					c, err := net.DialTimeout("tcp", s1.peer, time.Second)
					if err != nil {
						break
					}
					opened.Add(1)
					open = append(open, c)
				}
				time.Sleep(20 * time.Millisecond) // the openers' pace
			}
		}()
	}
	var list []string
	for _, s := range f.s {
		list = append(list, s.id+"="+s.peer)
	}
	p2 := testenv.Start(t, filepath.Join(f.bin, "chat-proxy"),
		"-id", "p2", "-servers", strings.Join(list, ","), "-redis", f.redis.Addr, "-redis-prefix", f.prefix)
	f.proxies["p2"] = p2
	churnStart := time.Now()
	for time.Since(churnStart) < 4*time.Second {
		time.Sleep(50 * time.Millisecond) // the flood's duration: a poll of the clock
	}
	p2During := countLog(s1.proc, from[0], `msg="proxy link up".*\bproxy=p2\b`) > 0
	close(churn)
	wg.Wait()
	sp.halt()
	if sp.err != nil {
		t.Fatal(sp.err)
	}
	_, hwm, fdsAfter := procStatus(t, s1.proc.Pid())
	t.Logf("phase 3: %d connections opened in 4s; s1 descriptors at most %d (from %d), %d after; RSS peak %d MiB, VmHWM %d MiB (from %d MiB); p2 linked to s1 during the churn: %v",
		opened.Load(), sp.maxFds.Load(), fds0, fdsAfter, sp.maxRSS.Load()>>20, hwm>>20, sp.rss0>>20, p2During)
	if grow := max(sp.maxRSS.Load(), hwm) - sp.rss0; grow > 100<<20 {
		t.Errorf("s1 grew by %d MiB during the flood, want under 100 MiB", grow>>20)
	}
	if limit := fds0 + 64 + openers*each + 16; sp.maxFds.Load() > limit {
		t.Errorf("s1 held %d descriptors during the churn (%d before), want at most %d", sp.maxFds.Load(), fds0, limit)
	}
	if n := countLog(s1.proc, from[0], `msg="proxy link down"`); n > 0 {
		t.Errorf("s1's proxy link went down %d times during the flood", n)
	}
	t.Logf("s1 logged: %d refusals at the pending cap (1 in 100 logged), %d hello deadlines, %d long lines",
		countLog(s1.proc, from[0], `refusing peer connections`), countLog(s1.proc, from[0], `hello not finished in time`), countLog(s1.proc, from[0], `closing link: line too long`))

	// Clients still chat (the pumps go on), and the new proxy links.
	_, answered, _ := f.led.Counts()
	f.waitAnswered(t, answered+300)
	waitLog(t, p2, 0, proxyReadyRE, 2*wait)
	for i, s := range f.s {
		waitLog(t, s.proc, from[i], `msg="proxy link up".*\bproxy=p2\b`, wait)
	}
	_, answered, _ = f.led.Counts()
	f.waitAnswered(t, answered+300)
	halt()
	waitPumps(t, 3*wait, pumps, nil)
	f.check(t, f.settle(t, fabricSettle), false)
	f.stopAll(t)
	t.Logf("s1 peer_refused=%d link_auth_failures=%d", statOf(s1.proc, "peer_refused"), statOf(s1.proc, "link_auth_failures"))
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// keysSnapshot returns every key under the fabric's prefix with its type
// and value (strings, and lists joined), except heartbeat beats.
func (f *fabric) keysSnapshot(t *testing.T) map[string]string {
	t.Helper()
	v, err := testenv.RedisDo(f.redis.Addr, testenv.RedisAuth{}, "KEYS", f.prefix+"*")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, k := range v.([]any) {
		key := k.(string)
		typ, err := testenv.RedisDo(f.redis.Addr, testenv.RedisAuth{}, "TYPE", key)
		if err != nil {
			t.Fatal(err)
		}
		var val any
		switch typ {
		case "string":
			val, err = testenv.RedisDo(f.redis.Addr, testenv.RedisAuth{}, "GET", key)
		case "list":
			val, err = testenv.RedisDo(f.redis.Addr, testenv.RedisAuth{}, "LRANGE", key, "0", "-1")
		}
		if err != nil {
			t.Fatal(err)
		}
		s := fmt.Sprint(val)
		if strings.Contains(key, ":alive:") {
			p := strings.SplitN(s, " ", 3) // epoch beat addr: the beat moves
			if len(p) == 3 {
				s = p[0] + " <beat> " + p[2]
			}
		}
		out[key] = fmt.Sprintf("%v %s", typ, s)
	}
	return out
}

// TestFabricDuplicateID: a second chat-server started with the id of a
// running one exits non-zero with a clear message, and changes nothing in
// Redis: the first one's heartbeat (epoch, address), its users' routes and
// everything else stay, and the first server keeps serving.
func TestFabricDuplicateID(t *testing.T) {
	t.Parallel()
	for _, mesh := range []bool{false, true} {
		t.Run(map[bool]string{false: "proxy", true: "mesh"}[mesh], func(t *testing.T) {
			cfg := fabricConfig{servers: 2, mesh: mesh}
			if !mesh {
				cfg.proxies = []string{"p1"}
			}
			f := startFabric(t, cfg)
			a, b := f.login(t, 0, f.name("a")), f.login(t, 1, f.name("b"))
			c := f.login(t, 0, f.name("c"))
			before := f.keysSnapshot(t)
			from := f.marks()
			args := []string{"-id", "s1", "-listen", "127.0.0.1:0", "-peer-listen", "127.0.0.1:0", "-redis", f.redis.Addr, "-redis-prefix", f.prefix}
			if mesh {
				args = append(args, "-topology", "mesh")
			}
			dup := testenv.Start(t, filepath.Join(f.bin, "chat-server"), args...)
			err := dup.Wait(t, 3*wait)
			if err == nil {
				t.Fatalf("the second s1 exited 0; output:\n%s", strings.Join(dup.Lines(), "\n"))
			}
			out := strings.Join(dup.Lines(), "\n")
			if !strings.Contains(out, "in use") || !strings.Contains(out, "s1") {
				t.Errorf("the second s1 exited (%v) without saying the id is in use:\n%s", err, out)
			}
			t.Logf("second s1: %v; last line: %s", err, dup.Lines()[len(dup.Lines())-1])
			after := f.keysSnapshot(t)
			for k, v := range before {
				if after[k] != v {
					t.Errorf("Redis key %s changed: %q -> %q", k, v, after[k])
				}
			}
			for k, v := range after {
				if _, ok := before[k]; !ok {
					t.Errorf("Redis key %s appeared: %q", k, v)
				}
			}
			for i, s := range f.s {
				if n := countLog(s.proc, from[i], `took this server's id over|mesh link (up|down)|proxy link down`); n > 0 {
					t.Errorf("%s logged %d link or id changes while the duplicate ran", s.id, n)
				}
			}
			// The first s1 still serves, across servers too.
			stop, _ := stopper(t)
			pumps := []*pump{
				f.startPump(a, []string{b.name, c.name}, 300, 0, stop),
				f.startPump(b, []string{a.name, c.name}, 300, 0, stop),
			}
			waitPumps(t, 3*wait, pumps, nil)
			f.check(t, f.settle(t, fabricSettle), false)
		})
	}
}

// TestFabricMeshRestart: three servers in mesh mode, no proxy, every user
// chatting with every user on the other servers. s1 (which dials the
// others: the lower id dials) is stopped with SIGTERM and started again
// with the same id and ports; then s3 (which the others dial) is killed
// with kill -9 and started again. The restarted server's users log in
// again each time. Chats to them while their server is away are held,
// then stored (or, sent to the dead run and unconfirmed, errored); the
// one silence allowed is the kill -9 gap (chats s3 had taken for its own
// users), counted apart as gap. Every stop must exit 0.
func TestFabricMeshRestart(t *testing.T) {
	t.Parallel()
	f := startFabric(t, fabricConfig{servers: 3, mesh: true, serverArgs: []string{"-hold-age", "3s"}})
	stop, halt := stopper(t)
	users, pumps := f.crossTraffic(t, 2, 1<<30, 40, 150, stop)
	recvOf := func(i int) []string {
		var out []string
		for j := range f.s {
			if j != i {
				for _, u := range users[j] {
					out = append(out, u.name)
				}
			}
		}
		return out
	}
	f.waitAnswered(t, 500)

	for _, step := range []struct {
		i   int
		how string
	}{{0, "SIGTERM"}, {2, "kill -9"}} {
		s := f.s[step.i]
		from := f.marks()
		if step.how == "SIGTERM" {
			s.proc.Signal(t, syscall.SIGTERM)
			start := time.Now()
			if err := s.proc.Wait(t, 3*wait); err != nil {
				t.Errorf("%s after SIGTERM: %v after %v, want exit status 0; last lines:\n%s", s.id, err, time.Since(start).Round(time.Millisecond),
					strings.Join(s.proc.Lines()[max(0, len(s.proc.Lines())-8):], "\n"))
			}
			t.Logf("%s stopped in %v; counters: %s", s.id, time.Since(start).Round(time.Millisecond), finalStats(s.proc))
		} else {
			killed := time.Now()
			s.proc.Kill()
			var names []string
			for _, u := range users[step.i] {
				names = append(names, u.name)
			}
			f.led.Gap(names, killed)
		}
		for j := range f.s {
			if j != step.i {
				waitLog(t, f.s[j].proc, from[j], `msg="mesh link down".*\bpeer=`+s.id+`\b`, wait)
			}
		}
		_, answered, _ := f.led.Counts()
		f.waitAnswered(t, answered+300) // chats for its users pile up
		f.restartServer(t, step.i)
		for k, u := range users[step.i] {
			users[step.i][k] = f.login(t, step.i, u.name)
			pumps = append(pumps, f.startPumpRate(users[step.i][k], recvOf(step.i), 1<<30, 40, 150, stop))
		}
		_, answered, _ = f.led.Counts()
		f.waitAnswered(t, answered+500)
	}
	halt()
	// The senders on the stopped servers lost their connections.
	waitPumps(t, 3*wait, pumps, func(p *pump) bool { return p.c.closed() })
	f.check(t, f.settle(t, fabricSettle), true)
	f.stopAll(t)
}

// lossyProxy is a proxy the test runs itself, with the cluster secret: it
// links to every server, announces that it reaches them all, relays stream
// frames by their destination, answers pings, and drops the data frames
// drop selects (as a real proxy drops a frame for a congested link, which
// it does not nak). It stands for any loss on the only path.
type lossyProxy struct {
	mu      sync.Mutex
	conns   map[string]*lossyConn
	drop    func(kind byte, src, dst string, n int) bool
	counts  map[string]int // data frames seen per "src>dst"
	dropped atomic.Int64
	done    chan struct{}
	wg      sync.WaitGroup
}

type lossyConn struct {
	id   string
	conn net.Conn
	r    *bufio.Reader
	wmu  sync.Mutex
}

func (lc *lossyConn) write(b []byte) {
	lc.wmu.Lock()
	defer lc.wmu.Unlock()
	_ = lc.conn.SetWriteDeadline(time.Now().Add(wait))
	_, _ = lc.conn.Write(b)
}

// startLossyProxy links to every server of f as proxy "lossy".
func (f *fabric) startLossyProxy(t *testing.T, drop func(kind byte, src, dst string, n int) bool) *lossyProxy {
	t.Helper()
	v, err := testenv.RedisDo(f.redis.Addr, testenv.RedisAuth{}, "GET", route.SecretKey(f.prefix))
	secret, _ := v.(string)
	if err != nil || secret == "" {
		t.Fatalf("cluster secret: %q %v", secret, err)
	}
	lp := &lossyProxy{conns: map[string]*lossyConn{}, drop: drop, counts: map[string]int{}, done: make(chan struct{})}
	var reach []string
	from := f.marks()
	for _, s := range f.s {
		conn, err := net.DialTimeout("tcp", s.peer, wait)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		hs, first, err := peer.NewDialer([]byte(secret), peer.Identity{Role: peer.RoleProxy, ID: "lossy"})
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(wait))
		if _, err := conn.Write(first); err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(conn)
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("lossy proxy: hello answer from %s: %v", s.id, err)
		}
		out, done, err := hs.Feed([]byte(strings.TrimSuffix(line, "\n")))
		if err != nil || !done {
			t.Fatalf("lossy proxy: hello with %s: done=%v err=%v", s.id, done, err)
		}
		if _, err := conn.Write(out); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Time{})
		lp.conns[s.id] = &lossyConn{id: s.id, conn: conn, r: r}
		reach = append(reach, fmt.Sprintf("%s:%x", s.id, hs.Remote().Epoch))
	}
	line := []byte("R " + strings.Join(reach, " ") + "\n")
	for _, lc := range lp.conns {
		lc.write(line)
	}
	for i, s := range f.s {
		waitLog(t, s.proc, from[i], `msg="proxy link up".*\bproxy=lossy\b`, wait)
	}
	for _, lc := range lp.conns {
		lp.wg.Add(1)
		go lp.relay(lc)
	}
	t.Cleanup(lp.close)
	return lp
}

func (lp *lossyProxy) relay(from *lossyConn) {
	defer lp.wg.Done()
	for {
		line, err := from.r.ReadString('\n')
		if err != nil {
			return
		}
		body := strings.TrimSuffix(line, "\n")
		if body == "P" {
			from.write([]byte("Q\n"))
			continue
		}
		kind, dst, src, err := codec.FrameRoute([]byte(body))
		if err != nil {
			continue // pongs, goodbyes
		}
		to := lp.conns[string(dst)]
		if to == nil {
			continue
		}
		if kind == codec.KindMsg || kind == codec.KindError || kind == codec.KindKick || kind == codec.KindKicked {
			key := string(src) + ">" + string(dst)
			lp.mu.Lock()
			lp.counts[key]++
			n := lp.counts[key]
			lp.mu.Unlock()
			if lp.drop(kind, string(src), string(dst), n) {
				lp.dropped.Add(1)
				continue
			}
		}
		to.write([]byte(line))
	}
}

func (lp *lossyProxy) close() {
	select {
	case <-lp.done:
		return
	default:
		close(lp.done)
	}
	for _, lc := range lp.conns {
		_ = lc.conn.Close()
	}
	lp.wg.Wait()
}

// TestFabricLossyPath: the only path between s1 and s2 is a proxy that
// loses one chat frame from s1 to s2 (as a proxy drops a frame for a
// congested link, without a nak). The stream must recover: s2 drops the
// frames after the gap until the resend brings it, and s1 resends its
// unacknowledged tail once s2 stops acknowledging (ResendAfter). With the
// path up all along, every acked chat must be delivered, once and in
// order; and chats sent long after the loss must flow as before.
func TestFabricLossyPath(t *testing.T) {
	t.Parallel()
	f := startFabric(t, fabricConfig{servers: 2, serverArgs: []string{"-hold-age", "3s"}})
	lp := f.startLossyProxy(t, func(kind byte, src, dst string, n int) bool {
		return kind == codec.KindMsg && src == "s1" && dst == "s2" && n == 100
	})
	alice, bob := f.login(t, 0, f.name("alice")), f.login(t, 1, f.name("bob"))
	stop, _ := stopper(t)
	pumps := []*pump{
		f.startPumpRate(alice, []string{bob.name}, 1500, 0, 300, stop),
		f.startPumpRate(bob, []string{alice.name}, 1500, 0, 300, stop),
	}
	waitPumps(t, 3*wait, pumps, nil)
	if lp.dropped.Load() != 1 {
		t.Fatalf("the lossy proxy dropped %d frames, want 1", lp.dropped.Load())
	}
	r := f.settle(t, fabricSettle)
	f.check(t, r, false)
	f.expectAllDelivered(t, r)
	lp.close()
	f.stopAll(t)
}

// TestFabricFlowControl: the only proxy stops reading (SIGSTOP) while
// clients send as fast as their windows let them. Chats are acked once
// their frame reached the kernel, so without flow control the streams
// would fill the socket buffers and then -hold-bytes, and refuse chats as
// "congested". With it, a client whose chat finds an eighth of
// -hold-bytes in flight is not read until the receiving side catches up:
// every chat is delivered, none refused, and the pauses are counted.
func TestFabricFlowControl(t *testing.T) {
	t.Parallel()
	f := startFabric(t, fabricConfig{servers: 2, proxies: []string{"p1"}, serverArgs: []string{"-hold-bytes", "131072", "-hold-age", "20s", "-resend-after", "5s"}})
	stop, _ := stopper(t)
	const perServer, n = 8, 800
	_, pumps := f.crossTraffic(t, perServer, n, 200, 0, stop)
	total := 2 * perServer * n
	f.waitAnswered(t, total/5)
	p := f.proxies["p1"]
	p.Signal(t, syscall.SIGSTOP)
	defer func() { _ = syscall.Kill(p.Pid(), syscall.SIGCONT) }() // if the test fails first
	// The streams fill the socket buffers, then reach the window: the
	// clients end up with (nearly) full windows of unanswered chats.
	stalled := time.Now()
	f.waitHeld(t, 2*perServer*fabricWindow*9/10)
	p.Signal(t, syscall.SIGCONT)
	t.Logf("proxy stopped for %v", time.Since(stalled).Round(time.Millisecond))
	waitPumps(t, 3*wait, pumps, nil)
	r := f.settle(t, fabricSettle)
	f.check(t, r, false)
	f.expectAllDelivered(t, r)
	f.stopAll(t)
	paused := 0
	for _, s := range f.s {
		if n := statOf(s.proc, "stream_paused"); n > 0 {
			paused += n
		}
		if n := statOf(s.proc, "stream_full"); n != 0 {
			t.Errorf("%s refused %d chats as congested", s.id, n)
		}
	}
	if paused == 0 {
		t.Errorf("no client was paused by a stream's window")
	}
	t.Logf("clients paused %d times", paused)
}
