package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/relaychat/relaychat/internal/testenv"
)

// TestMailbox: the offline mailbox as CONTRACT.md describes it.
func TestMailbox(t *testing.T) {
	t.Parallel()
	cfg := clusterConfig{serverArgs: []string{"-mailbox-max", "5"}}
	cl := startCluster(t, cfg)

	t.Run("StoredThenLiveInOrder", func(t *testing.T) {
		an, bn := cl.name("alice"), cl.name("bob")
		a := cl.login(t, 0, an)
		a.Send(t, chatReq(t, an, bn, "s1", "1"))
		expectStoredAck(t, a, "1")
		a.Send(t, chatReq(t, an, bn, "s2", "2"))
		expectStoredAck(t, a, "2")
		// bob logs in on the other server while alice keeps sending: the
		// stored chats come first, then the live ones, in the order sent.
		// Chats 3 to 5 race bob's login (stored, or parked for the login
		// at his server, or live: each is fine, and all fit the mailbox);
		// the rest are sent once he is in.
		b := cl.dial(t, 1)
		b.Send(t, `{"cmd":"login","name":"`+bn+`"}`)
		for i := 3; i <= 5; i++ {
			a.Send(t, chatReq(t, an, bn, fmt.Sprintf("s%d", i), strconv.Itoa(i)))
		}
		expectLogin(t, b, bn, "s2")
		for i := 6; i <= 40; i++ {
			a.Send(t, chatReq(t, an, bn, fmt.Sprintf("s%d", i), strconv.Itoa(i)))
		}
		acks := 0
		for i := 3; i <= 40; i++ {
			m := next(t, a)
			if m["cmd"] != "ack" {
				t.Fatalf("chat %d: got %v, want an ack", i, m)
			}
			acks++
		}
		for i := 1; i <= 40; i++ {
			m := next(t, b)
			checkDelivery(t, m, an, bn, fmt.Sprintf("s%d", i))
			if i <= 2 && m["stored"] != true {
				t.Fatalf("chat %d: %v, want it marked stored", i, m)
			}
		}
		b.ExpectNothing(t, quiet)
	})

	t.Run("Full", func(t *testing.T) {
		an, bn := cl.name("alice"), cl.name("bob")
		a := cl.login(t, 1, an)
		for i := 0; i < 5; i++ {
			a.Send(t, chatReq(t, an, bn, fmt.Sprint(i), i))
			expectStoredAck(t, a, i)
		}
		a.Send(t, chatReq(t, an, bn, "one too many", "full"))
		expectError(t, a, "recipient's mailbox is full", "full")
		b := cl.login(t, 0, bn)
		for i := 0; i < 5; i++ {
			expectStoredDelivery(t, b, an, bn, fmt.Sprint(i))
		}
		b.ExpectNothing(t, quiet)
		// Drained: room again (and bob is online: live).
		a.Send(t, chatReq(t, an, bn, "now", "now"))
		expectAck(t, a, "now")
		expectDelivery(t, b, an, bn, "now")
	})

	t.Run("NameDash", func(t *testing.T) {
		// "-" once meant "no name" on the link; it is a name like any other.
		an := cl.name("alice")
		a := cl.login(t, 0, an)
		d := cl.login(t, 1, "-")
		a.Send(t, chatReq(t, an, "-", "to dash", "d"))
		expectAck(t, a, "d")
		expectDelivery(t, d, an, "-", "to dash")
		d.Send(t, chatReq(t, "-", an, "from dash", "e"))
		expectAck(t, d, "e")
		expectDelivery(t, a, "-", an, "from dash")
	})

	// Last: servers started in a subtest stop when it ends.
	t.Run("SurvivesServerRestarts", func(t *testing.T) {
		an, bn := cl.name("alice"), cl.name("bob")
		a := cl.login(t, 0, an)
		a.Send(t, chatReq(t, an, bn, "kept", "k"))
		expectStoredAck(t, a, "k")
		// Both servers stop (SIGTERM) and start again: the mailbox is in
		// Redis.
		for i := range cl.s {
			cl.s[i].proc.Signal(t, syscall.SIGTERM)
			if err := cl.s[i].proc.Wait(t, wait); err != nil {
				t.Fatalf("%s after SIGTERM: %v", cl.s[i].id, err)
			}
			cl.restartServer(t, i, cfg.serverArgs...)
		}
		cl.proxy.WaitLine(t, `msg="link up".*server=s1`, wait)
		b := cl.login(t, 1, bn)
		expectStoredDelivery(t, b, an, bn, "kept")
	})
}

// TestMailboxOff: with -mailbox-max 0 an offline recipient is an error, as
// before the mailbox existed, and nothing is stored.
func TestMailboxOff(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, clusterConfig{serverArgs: []string{"-mailbox-max", "0"}})
	an, bn := cl.name("alice"), cl.name("bob")
	a := cl.login(t, 0, an)
	a.Send(t, chatReq(t, an, bn, "hello?", "x"))
	expectError(t, a, "recipient not online", "x")
	a.Send(t, chatReq(t, an, bn, "hello?", nil))
	expectError(t, a, "recipient not online", nil)
	b := cl.login(t, 1, bn)
	b.ExpectNothing(t, quiet)
	if v, ok := redisGet(t, cl.redis.Addr, mailboxKey(cl.prefix, bn)); ok {
		t.Fatalf("mailbox of %s exists (%q) with the mailbox off", bn, v)
	}
}

// mailboxKey mirrors route.MailboxKey for plain names.
func mailboxKey(prefix, name string) string { return prefix + "mbox:{" + name + "}" }

// backlog is a recipient that does not read: it logs in with a small
// receive buffer and lets the server's output to it back up.
type backlog struct {
	conn  net.Conn
	lines []string // what it read once it started reading
}

func dialBacklog(t *testing.T, addr, name string) *backlog {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.(*net.TCPConn).SetReadBuffer(4096)
	fmt.Fprintf(c, `{"cmd":"login","name":%q}`+"\n", name)
	return &backlog{conn: c}
}

// drain reads everything until the server closes the connection.
func (b *backlog) drain(t *testing.T) {
	t.Helper()
	_ = b.conn.SetReadDeadline(time.Now().Add(2 * wait))
	r := bufio.NewReader(b.conn)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			if err != io.EOF && !isReset(err) {
				t.Fatalf("reading the backlog: %v", err)
			}
			return
		}
		b.lines = append(b.lines, strings.TrimSuffix(line, "\n"))
	}
}

func isReset(err error) bool {
	return strings.Contains(err.Error(), "connection reset")
}

// fates counts what became of n acked chats whose contents are "c<i>":
// delivered to the old session (read from its socket after the close),
// delivered to the new one (live or stored), errored to the sender.
type fates struct {
	acked, delivered, stored, errored, dup int
	seen                                   map[int]int
}

func (f *fates) note(content string, stored bool) {
	i, err := strconv.Atoi(strings.TrimPrefix(content, "c"))
	if err != nil {
		return
	}
	f.seen[i]++
	if f.seen[i] > 1 {
		f.dup++
		return
	}
	if stored {
		f.stored++
	} else {
		f.delivered++
	}
}

func (f *fates) String() string {
	silent := f.acked - f.delivered - f.stored - f.errored
	return fmt.Sprintf("acked=%d delivered=%d stored=%d errored=%d silent=%d dup=%d", f.acked, f.delivered, f.stored, f.errored, silent, f.dup)
}

// TestBacklogAtClose: a recipient that does not read is streamed thousands
// of acked 1 KB chats, then its session ends with output still queued, in
// each of the ways a session ends. Every acked chat must be delivered
// once (to the old session: what reached the kernel, read afterwards; or
// to the new one), stored (handed to the new session or the next login
// from the mailbox), or errored: silent 0, duplicates 0.
func TestBacklogAtClose(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, clusterConfig{serverArgs: []string{"-mailbox-max", "10000", "-max-outbound", "8388608"}})
	for _, tc := range []struct {
		name string
		end  func(t *testing.T, bn string, b *backlog) *testenv.Client // ends the session; returns the session that gets the rest
	}{
		{"KickFromOtherServer", func(t *testing.T, bn string, b *backlog) *testenv.Client {
			return cl.login(t, 0, bn)
		}},
		{"KickSameServer", func(t *testing.T, bn string, b *backlog) *testenv.Client {
			return cl.login(t, 1, bn)
		}},
		{"ClientClosesWriteSide", func(t *testing.T, bn string, b *backlog) *testenv.Client {
			_ = b.conn.(*net.TCPConn).CloseWrite() // EOF for the server; we still read
			b.drain(t)
			cl.waitRoute(t, bn, "")
			return cl.login(t, 0, bn)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			an, bn := cl.name("alice"), cl.name("bob")
			a := cl.login(t, 0, an)
			b := dialBacklog(t, cl.s[1].addr, bn)
			cl.waitRoute(t, bn, "s2")
			const n = 3800
			content := strings.Repeat("x", 1000)
			f := &fates{seen: map[int]int{}}
			// The sender keeps at most 256 chats unanswered, as a client
			// with flow control does (a sender that never waits is cut
			// off past -max-pending while Redis answers for it).
			errored := map[string]bool{}
			sent := 0
			for f.acked+len(errored) < n {
				for sent < n && sent-f.acked-len(errored) < 256 {
					a.Send(t, fmt.Sprintf(`{"cmd":"chat","recv":%q,"content":"c%d %s","id":%d}`, bn, sent, content, sent))
					sent++
				}
				m := next(t, a)
				switch m["cmd"] {
				case "ack":
					f.acked++
				case "error":
					errored[fmt.Sprint(m["id"])] = true
				default:
					t.Fatalf("sender got %v", m)
				}
			}
			if len(errored) > 0 {
				t.Fatalf("%d chats refused before the session ended (the backlog was meant to fit): %v", len(errored), errored)
			}
			newer := tc.end(t, bn, b)
			if tc.name != "ClientClosesWriteSide" {
				b.drain(t) // the kicked session: its kernel buffers
			}
			kicked := false
			for _, l := range b.lines {
				var m map[string]any
				if json.Unmarshal([]byte(l), &m) != nil {
					t.Fatalf("old session read %q", l)
				}
				switch m["cmd"] {
				case "chat":
					if kicked {
						t.Fatalf("old session got a chat after its kicked line: %v", m)
					}
					f.note(strings.Fields(fmt.Sprint(m["content"]))[0], false)
				case "kicked":
					kicked = true
				}
			}
			// The new session: first what the old one left (stored), then
			// nothing else; mailbox chats arrive marked stored.
			for f.delivered+f.stored+f.dup < n {
				m := newer.ReadJSON(t, wait)
				if m["cmd"] != "chat" {
					t.Fatalf("new session got %v", m)
				}
				f.note(strings.Fields(fmt.Sprint(m["content"]))[0], m["stored"] == true)
			}
			newer.ExpectNothing(t, quiet)
			t.Logf("%s: %v (old session read %d lines)", tc.name, f, len(b.lines))
			if f.delivered+f.stored+f.errored != f.acked || f.dup != 0 {
				t.Fatalf("%s: %v", tc.name, f)
			}
			for i := 0; i < n; i++ {
				if f.seen[i] != 1 {
					t.Fatalf("chat c%d seen %d times", i, f.seen[i])
				}
			}
		})
	}
}

// storeForBob has alice (on server 0) send n chats to the offline bob,
// each "<i>:<pad>", and checks that each is stored.
func storeForBob(t *testing.T, cl *cluster, n int, pad string) (a *testenv.Client, an, bn string) {
	t.Helper()
	an, bn = cl.name("alice"), cl.name("bob")
	a = cl.login(t, 0, an)
	for i := 0; i < n; i++ {
		a.Send(t, chatReq(t, an, bn, fmt.Sprintf("%d:%s", i, pad), i))
		expectStoredAck(t, a, i)
	}
	return a, an, bn
}

// smallReader logs name in on addr through a 4 KiB receive buffer, so that
// a mailbox page of 150 KB waits in the server's send queue,
// unacknowledged, until the client reads it. It returns the connection
// and a function reading one JSON line (the login's reply included).
func smallReader(t *testing.T, addr, name string) (net.Conn, func() map[string]any) {
	t.Helper()
	c := dialBacklog(t, addr, name).conn
	_ = c.SetDeadline(time.Now().Add(2 * wait))
	r := bufio.NewReader(c)
	return c, func() map[string]any {
		t.Helper()
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("%s: %q: %v", name, line, err)
		}
		return m
	}
}

// storedIndex is i of a stored delivery "<i>:...", failing on anything
// else.
func storedIndex(t *testing.T, m map[string]any, n int) int {
	t.Helper()
	content, _ := m["content"].(string)
	i, err := strconv.Atoi(strings.SplitN(content, ":", 2)[0])
	if m["cmd"] != "chat" || m["stored"] != true || err != nil || i < 0 || i >= n {
		t.Fatalf("got %.80v, want a stored chat", m)
	}
	return i
}

func expectLoginOK(t *testing.T, m map[string]any) {
	t.Helper()
	if m["cmd"] != "login" || m["ok"] != true {
		t.Fatalf("login reply %v", m)
	}
}

// liveAfterStored has alice send bob (logged in as b) one live chat and
// returns the indices of the stored chats b got before it.
func liveAfterStored(t *testing.T, a, b *testenv.Client, an, bn string, id, n int) []int {
	t.Helper()
	a.Send(t, chatReq(t, an, bn, "live", id))
	expectAck(t, a, id)
	var got []int
	for {
		m := b.ReadJSON(t, wait)
		if m["cmd"] == "chat" && m["content"] == "live" && m["stored"] == nil {
			return got
		}
		got = append(got, storedIndex(t, m, n))
	}
}

// TestLogoutDuringDrain: a logout while a mailbox page is on its way to the
// client waits for the page (it leaves the mailbox only once the client's
// TCP stack has it), so each stored chat arrives once, across this login
// and the next.
func TestLogoutDuringDrain(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, clusterConfig{})
	const n = 150 // two pages (drainPage is 100): the second stays for the next login
	_, _, bn := storeForBob(t, cl, n, strings.Repeat("x", 1500))
	c, readLine := smallReader(t, cl.s[1].addr, bn)
	seen := make([]int, n)
	order := []int{}
	note := func(m map[string]any) {
		t.Helper()
		i := storedIndex(t, m, n)
		seen[i]++
		order = append(order, i)
	}
	expectLoginOK(t, readLine())
	note(readLine()) // the page is being written
	fmt.Fprintf(c, `{"cmd":"logout","id":"out"}`+"\n")
	for {
		m := readLine()
		if m["cmd"] == "logout" {
			if m["ok"] != true || m["id"] != "out" {
				t.Fatalf("logout reply %v", m)
			}
			break
		}
		note(m)
	}
	first := len(order)

	// The next login gets what the first did not, and nothing twice.
	b := cl.login(t, 0, bn)
	for len(order) < n {
		note(b.ReadJSON(t, wait))
	}
	b.ExpectNothing(t, quiet)
	for i, k := range seen {
		if k != 1 {
			t.Fatalf("stored chat %d delivered %d times (first login got %d of %d)", i, k, first, n)
		}
	}
	for i, k := range order {
		if k != i {
			t.Fatalf("stored chats out of order: %v", order)
		}
	}
	t.Logf("stored=%d delivered=%d (first login %d, second %d) duplicated=0 reordered=0", n, len(order), first, len(order)-first)
}

// TestDisconnectDuringDrain: bob reads his mailbox (one page of 150 KB)
// through a small receive buffer, so that his TCP stack acknowledges it
// only as he reads, and drops the connection, after the whole page or
// part of it, before the server's output watcher (every 10 ms) has seen
// what he acknowledged. That (what he read, and the little still unread in
// his buffers, which the server cannot tell apart) leaves the mailbox, the
// rest stays, and all before his route is released: his next login, on
// the other server, gets the rest in order and nothing twice, then alice's
// next chat.
func TestDisconnectDuringDrain(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		read int
	}{{"whole page", 100}, {"mid page", 30}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cl := startCluster(t, clusterConfig{})
			const n = 100 // one page (drainPage is 100)
			a, an, bn := storeForBob(t, cl, n, strings.Repeat("x", 1500))
			c, readLine := smallReader(t, cl.s[1].addr, bn)
			expectLoginOK(t, readLine())
			for i := 0; i < tc.read; i++ {
				if got := storedIndex(t, readLine(), n); got != i {
					t.Fatalf("bob's first login got stored chat %d, want %d", got, i)
				}
			}
			c.Close()

			b := cl.login(t, 0, bn)
			second := liveAfterStored(t, a, b, an, bn, n, n)
			next := n // the first chat the second login gets
			if len(second) > 0 {
				next = second[0]
			}
			for k, i := range second {
				if i != next+k || (k == len(second)-1 && i != n-1) {
					t.Fatalf("second login's stored chats are not the rest of the page in order: %v", second)
				}
			}
			// What bob's TCP stack had taken but he had not read when he
			// closed counts delivered: his receive buffer (4 KiB, doubled
			// by the kernel) and his reader's, a few chats of 1.5 KB.
			gap := next - tc.read
			if gap < 0 {
				t.Fatalf("bob's second login got %d stored chats again, from %d", -gap, next)
			}
			if gap > 16 {
				t.Fatalf("%d chats after the %d bob read left the mailbox: more than his buffers hold", gap, tc.read)
			}
			t.Logf("stored=%d read by the first login=%d, taken by its TCP stack unread=%d, second login=%d, duplicated=0 reordered=0",
				n, tc.read, gap, len(second))
		})
	}
}
