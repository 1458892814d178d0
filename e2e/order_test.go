package e2e

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/relaychat/relaychat/internal/testenv"
)

// orderN is how many messages each ordering stream carries.
const orderN = 1000

// TestOrdering checks that messages from one sender to one recipient arrive
// in the order sent, across servers and mixed with local traffic. Senders
// write all their requests in one go, as fast as TCP takes them.
func TestOrdering(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, clusterConfig{})

	t.Run("CrossServer", func(t *testing.T) {
		an, bn := cl.name("alice"), cl.name("bob")
		a, b := cl.login(t, 0, an), cl.login(t, 1, bn)
		var buf bytes.Buffer
		for i := range orderN {
			buf.WriteString(chatReq(t, an, bn, fmt.Sprintf("seq %d", i), nil))
			buf.WriteByte('\n')
		}
		a.SendRaw(t, buf.Bytes())
		for i := range orderN {
			expectSeq(t, b, an, bn, "seq", i, "")
		}
		b.ExpectNothing(t, quiet)
		a.ExpectNothing(t, quiet)
	})

	// Big messages make the link and client reads end mid-line: 100
	// messages of 30 kB each way between s1 and s2, all intact, in order.
	t.Run("LargeMessages", func(t *testing.T) {
		const n, size = 100, 30000
		an, bn := cl.name("alice"), cl.name("bob")
		a, b := cl.login(t, 0, an), cl.login(t, 1, bn)
		body := strings.Repeat("0123456789", size/10)
		var ab, ba bytes.Buffer
		for i := range n {
			ab.WriteString(chatReq(t, an, bn, fmt.Sprintf("big %d %s", i, body), nil) + "\n")
			ba.WriteString(chatReq(t, bn, an, fmt.Sprintf("big %d %s", i, body), nil) + "\n")
		}
		a.SendRaw(t, ab.Bytes())
		b.SendRaw(t, ba.Bytes())
		for i := range n {
			expectSeq(t, b, an, bn, "big", i, " "+body)
			expectSeq(t, a, bn, an, "big", i, " "+body)
		}
		a.ExpectNothing(t, quiet)
		b.ExpectNothing(t, quiet)
	})

	// alice (s1) alternates between bob (s2) and carol (s1), with ids on
	// every fourth message; dave (s2) sends to bob at the same time. Each
	// recipient sees each sender's messages in order.
	t.Run("InterleavedWithLocal", func(t *testing.T) {
		an, bn, cn, dn := cl.name("alice"), cl.name("bob"), cl.name("carol"), cl.name("dave")
		a, b, c, d := cl.login(t, 0, an), cl.login(t, 1, bn), cl.login(t, 0, cn), cl.login(t, 1, dn)
		var ab, db bytes.Buffer
		acks := 0
		for i := range orderN {
			var id any
			if i%4 == 0 {
				id = fmt.Sprintf("x%d", i)
				acks++
			}
			ab.WriteString(chatReq(t, an, bn, fmt.Sprintf("a2b %d", i), id) + "\n")
			if i%4 == 0 {
				id = fmt.Sprintf("l%d", i)
				acks++
			}
			ab.WriteString(chatReq(t, "", cn, fmt.Sprintf("a2c %d", i), id) + "\n")
			db.WriteString(chatReq(t, dn, bn, fmt.Sprintf("d2b %d", i), nil) + "\n")
		}
		d.SendRaw(t, db.Bytes())
		a.SendRaw(t, ab.Bytes())

		// bob: two interleaved streams, each in order.
		nextFrom := map[string]int{an: 0, dn: 0}
		tag := map[string]string{an: "a2b", dn: "d2b"}
		for range 2 * orderN {
			m := next(t, b)
			send, _ := m["send"].(string)
			want, ok := nextFrom[send]
			if !ok || want >= orderN {
				t.Fatalf("bob got %v, not the next message of a stream (next: %v)", m, nextFrom)
			}
			checkDelivery(t, m, send, bn, fmt.Sprintf("%s %d", tag[send], want))
			nextFrom[send]++
		}
		for i := range orderN {
			expectSeq(t, c, an, cn, "a2c", i, "")
		}
		// alice's acks: the contract does not order acks against each
		// other (local ones may overtake forwarded ones), so count them.
		want := map[string]bool{}
		for i := 0; i < orderN; i += 4 {
			want[fmt.Sprintf("x%d", i)] = true
			want[fmt.Sprintf("l%d", i)] = true
		}
		if len(want) != acks {
			t.Fatalf("test bug: %d ids, %d acks", len(want), acks)
		}
		for range acks {
			m := next(t, a)
			id, _ := m["id"].(string)
			if m["cmd"] != "ack" || !want[id] {
				t.Fatalf("alice got %v, want an ack of an outstanding id", m)
			}
			delete(want, id)
		}
		for _, x := range []*testenv.Client{a, b, c, d} {
			x.ExpectNothing(t, quiet)
		}
	})
}

// expectSeq checks that the next line is delivery number i of a stream:
// content "<tag> <i><rest>".
func expectSeq(t *testing.T, c *testenv.Client, send, recv, tag string, i int, rest string) {
	t.Helper()
	m := next(t, c)
	want := fmt.Sprintf("%s %d%s", tag, i, rest)
	if got, _ := m["content"].(string); m["cmd"] != "chat" || got != want {
		n := len(got)
		if n > 80 {
			got = got[:80] + "..."
		}
		t.Fatalf("%s expected message %d from %s; got cmd=%v send=%v error=%v content %q (%d bytes), want %q... (%d bytes)",
			recv, i, send, m["cmd"], m["send"], m["error"], got, n, fmt.Sprintf("%s %d", tag, i), len(want))
	}
	checkDelivery(t, m, send, recv, want)
}
