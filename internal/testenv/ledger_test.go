package testenv

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// ledgerReq decodes a request line the ledger wrote.
func ledgerReq(t *testing.T, line string) (recv, content, id string) {
	t.Helper()
	var m struct{ Cmd, Send, Recv, Content, ID string }
	if err := json.Unmarshal([]byte(line), &m); err != nil || m.Cmd != "chat" {
		t.Fatalf("ledger wrote %q (%v), want a chat request", line, err)
	}
	return m.Recv, m.Content, m.ID
}

// deliveryOf is the delivery line a server would write for a request line.
func deliveryOf(t *testing.T, send, line string, stored bool) string {
	t.Helper()
	recv, content, _ := ledgerReq(t, line)
	b, _ := json.Marshal(map[string]any{"cmd": "chat", "send": send, "recv": recv, "content": content, "ts": 1})
	s := string(b)
	if stored {
		s = strings.TrimSuffix(s, "}") + `,"stored":true}`
	}
	return s
}

func ack(id string, stored bool) string {
	if stored {
		return fmt.Sprintf(`{"cmd":"ack","id":%q,"stored":true}`, id)
	}
	return fmt.Sprintf(`{"cmd":"ack","id":%q}`, id)
}

func errLine(id, reason string) string {
	return fmt.Sprintf(`{"cmd":"error","error":%q,"id":%q}`, reason, id)
}

const unconfirmed = "recipient's server did not confirm delivery; the chat may or may not have arrived"

// TestLedgerFates: each acked chat lands in exactly one class.
func TestLedgerFates(t *testing.T) {
	l := NewLedger("t")
	l.Session("a", "alice")
	l.Session("b", "bob")
	var ids, lines []string
	for range 7 {
		id, line := l.Chat("a", "bob", 3)
		ids, lines = append(ids, id), append(lines, line)
	}
	if recv, content, id := ledgerReq(t, lines[0]); recv != "bob" || id != ids[0] || content != ids[0]+" 1 ppp" {
		t.Fatalf("first chat: recv %q content %q id %q", recv, content, id)
	}
	if n := l.Outstanding("a"); n != 7 {
		t.Fatalf("outstanding %d, want 7", n)
	}
	l.Read("a", ack(ids[0], false))
	l.Read("b", deliveryOf(t, "alice", lines[0], false)) // delivered
	l.Read("a", ack(ids[1], true))
	l.Read("b", deliveryOf(t, "alice", lines[1], true)) // stored, delivered at login
	l.Read("a", ack(ids[2], false))                     // stored: still in the mailbox
	l.Read("a", ack(ids[3], false))
	l.Read("a", errLine(ids[3], unconfirmed)) // errored
	l.Read("a", ack(ids[4], false))           // silent
	l.Read("a", errLine(ids[5], "server shutting down"))
	// ids[6]: unanswered
	if n := l.Outstanding("a"); n != 1 {
		t.Fatalf("outstanding %d, want 1", n)
	}
	if sent, answered, acked := l.Counts(); sent != 7 || answered != 6 || acked != 5 {
		t.Fatalf("counts %d %d %d, want 7 6 5", sent, answered, acked)
	}
	if n, ex := l.Unsettled(); n != 3 { // ids[2] (not yet in a snapshot), ids[4], ids[6]
		t.Fatalf("unsettled %d %v, want 3", n, ex)
	}
	mb := []string{"123 " + deliveryOf(t, "alice", lines[2], false)}
	if overlap := l.Mailbox("bob", mb); overlap != 0 {
		t.Fatalf("overlap %d", overlap)
	}
	l.Closed("a")
	if n, ex := l.Unsettled(); n != 1 {
		t.Fatalf("unsettled %d %v, want 1 (the silent one)", n, ex)
	}
	r := l.Result()
	want := "acked=5 delivered=1 stored=2 errored=1 silent=1 dup=0 reordered=0"
	if r.String() != want {
		t.Fatalf("got  %s\nwant %s\n%s", r, want, r.Details())
	}
	if r.Sent != 7 || r.Refused != 1 || r.Unanswered != 1 || r.StoredAcks != 1 || r.OK() {
		t.Fatalf("details: %+v", r)
	}
	if r.Errors[unconfirmed] != 1 || len(r.SilentIDs) != 1 || !strings.HasPrefix(r.SilentIDs[0], ids[4]) {
		t.Fatalf("errors %v silent %v", r.Errors, r.SilentIDs)
	}
	if r := l.ResultWhere(func(send, recv string) bool { return recv == "carol" }); r.Sent != 0 || r.Acked != 0 {
		t.Fatalf("filtered: %+v", r)
	}
	// Snapshots replace each other.
	l.Mailbox("bob", nil)
	if r := l.Result(); r.Stored != 1 || r.Silent != 2 {
		t.Fatalf("after an empty snapshot: %s", r)
	}
}

// TestLedgerDuplicates: a second delivery, live or stored or left in the
// mailbox, is a duplicate; Mailbox reports the overlap with deliveries.
func TestLedgerDuplicates(t *testing.T) {
	l := NewLedger("d")
	l.Session("a", "alice")
	l.Session("b", "bob")
	id1, c1 := l.Chat("a", "bob", 0)
	id2, c2 := l.Chat("a", "bob", 0)
	l.Read("a", ack(id1, false))
	l.Read("a", ack(id2, false))
	l.Read("b", deliveryOf(t, "alice", c1, false))
	l.Read("b", deliveryOf(t, "alice", c1, false))
	l.Read("b", deliveryOf(t, "alice", c2, false))
	if overlap := l.Mailbox("bob", []string{"1 " + deliveryOf(t, "alice", c2, false)}); overlap != 1 {
		t.Fatalf("overlap %d, want 1", overlap)
	}
	r := l.Result()
	if r.Dup != 2 || r.Delivered != 2 || r.Reordered != 0 || r.OK() {
		t.Fatalf("%s\n%s", r, r.Details())
	}
	if n := l.Deliveries(); n != 3 {
		t.Fatalf("deliveries %d, want 3", n)
	}
	tr := l.Trace("alice", "bob", 1, 1)
	if len(tr) != 1 || !strings.Contains(tr[0], "live@b, live@b") && !strings.Contains(tr[0], "[live@b live@b]") {
		t.Fatalf("trace %q", tr)
	}
}

// TestLedgerOrder: the order rules of the Ledger comment.
func TestLedgerOrder(t *testing.T) {
	type step struct {
		session string
		seq     int // 1-based chat of alice->bob
		stored  bool
	}
	cases := []struct {
		name            string
		steps           []step
		mailbox         []int
		reordered, late int
	}{
		{name: "in order", steps: []step{{"b1", 1, false}, {"b1", 2, false}, {"b1", 3, false}}},
		{name: "live swap", steps: []step{{"b1", 2, false}, {"b1", 1, false}}, reordered: 1},
		{name: "stored then live", steps: []step{{"b1", 1, true}, {"b1", 2, true}, {"b1", 3, false}}},
		{name: "live older than stored", steps: []step{{"b1", 2, true}, {"b1", 1, false}}, reordered: 1},
		{name: "late stored", steps: []step{{"b1", 1, false}, {"b1", 3, false}, {"b1", 2, true}}, late: 1},
		{name: "stored swap across sessions", steps: []step{{"b1", 2, true}, {"b2", 1, true}}, reordered: 1},
		{name: "next session", steps: []step{{"b1", 1, false}, {"b1", 2, false}, {"b2", 3, false}}},
		// b2 logged in later, but the older b1 still got a newer chat: fed
		// in any order, the sessions' sets overlap.
		{name: "old session keeps receiving", steps: []step{{"b2", 2, false}, {"b1", 3, false}}, reordered: 1},
		{name: "mailbox in order", steps: []step{{"b1", 1, true}}, mailbox: []int{2, 3}},
		{name: "mailbox swap", mailbox: []int{3, 2}, reordered: 1},
		{name: "mailbox before stored", steps: []step{{"b1", 2, true}}, mailbox: []int{1}, reordered: 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := NewLedger("o")
			l.Session("a", "alice")
			l.Session("b1", "bob")
			l.Session("b2", "bob")
			var lines []string
			for range 3 {
				id, line := l.Chat("a", "bob", 0)
				l.Read("a", ack(id, false))
				lines = append(lines, line)
			}
			for _, s := range tc.steps {
				l.Read(s.session, deliveryOf(t, "alice", lines[s.seq-1], s.stored))
			}
			var mb []string
			for _, q := range tc.mailbox {
				mb = append(mb, "5 "+deliveryOf(t, "alice", lines[q-1], false))
			}
			l.Mailbox("bob", mb)
			r := l.Result()
			if r.Reordered != tc.reordered || r.LateStored != tc.late || r.Dup != 0 {
				t.Fatalf("reordered %d late %d dup %d, want %d %d 0\n%s", r.Reordered, r.LateStored, r.Dup, tc.reordered, tc.late, r.Details())
			}
		})
	}
}

// TestLedgerViolations: foreign and misdelivered chats, chats delivered
// after a hard error, and a tolerated unconfirmed one; Gap excuses only
// the declared silence.
func TestLedgerViolations(t *testing.T) {
	l := NewLedger("v")
	l.Session("a", "alice")
	l.Session("b", "bob")
	l.Session("c", "carol")
	id1, c1 := l.Chat("a", "bob", 0)
	id2, c2 := l.Chat("a", "bob", 0)
	id3, c3 := l.Chat("a", "carol", 0)
	l.Read("a", ack(id1, false))
	l.Read("a", errLine(id1, unconfirmed))
	l.Read("b", deliveryOf(t, "alice", c1, false)) // unconfirmed, delivered: fine
	l.Read("a", errLine(id2, "forwarding tier unavailable"))
	l.Read("b", deliveryOf(t, "alice", c2, false)) // refused, delivered: violation
	l.Read("a", ack(id3, false))
	l.Read("b", deliveryOf(t, "alice", c3, false)) // carol's chat at bob: misdelivered
	l.Read("b", `{"cmd":"chat","send":"admin","recv":"bob","content":"forged","ts":1}`)
	l.Read("b", `not json`)
	r := l.Result()
	if r.Unconfirmed != 1 || r.ErrDelivered != 1 || r.Misdelivered != 1 || r.Foreign != 1 || r.Junk != 1 || r.OK() {
		t.Fatalf("%+v\n%s", r, r.Details())
	}
	if r.String() != "acked=2 delivered=1 stored=0 errored=0 silent=1 dup=0 reordered=0" {
		t.Fatalf("%s", r)
	}

	g := NewLedger("g")
	g.Session("a", "alice")
	early, _ := g.Chat("a", "bob", 0)
	g.Read("a", ack(early, false))
	kill := time.Now().Add(time.Millisecond)
	for time.Now().Before(kill.Add(time.Millisecond)) {
		time.Sleep(time.Millisecond) // poll: until the clock passes the kill
	}
	late, _ := g.Chat("a", "bob", 0)
	g.Read("a", ack(late, false))
	other, _ := g.Chat("a", "carol", 0)
	g.Read("a", ack(other, false))
	g.Gap([]string{"bob"}, kill)
	if r := g.Result(); r.Gap != 1 || r.Silent != 2 || r.String() != "acked=3 delivered=0 stored=0 errored=0 silent=2 dup=0 reordered=0 gap=1" {
		t.Fatalf("gap: %s", r)
	}
}

// TestMailboxEntries reads a list back from a real Redis.
func TestMailboxEntries(t *testing.T) {
	rd := Redis(t)
	key := "test:mbox:{bob}"
	if _, err := RedisDo(rd.Addr, RedisAuth{}, "RPUSH", key, "1 {\"a\":1}", "2 two words"); err != nil {
		t.Fatal(err)
	}
	got, err := MailboxEntries(rd.Addr, key)
	if err != nil || len(got) != 2 || got[0] != `1 {"a":1}` || got[1] != "2 two words" {
		t.Fatalf("got %q, %v", got, err)
	}
	if got, err := MailboxEntries(rd.Addr, "test:none"); err != nil || len(got) != 0 {
		t.Fatalf("empty list: %q, %v", got, err)
	}
	if v, err := RedisDo(rd.Addr, RedisAuth{}, "GET", "test:none"); err != nil || v != nil {
		t.Fatalf("GET missing: %v %v", v, err)
	}
	if _, err := RedisDo(rd.Addr, RedisAuth{}, "GET", key); err == nil {
		t.Fatal("GET of a list: want a WRONGTYPE error")
	}
}
