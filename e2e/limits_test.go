package e2e

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/relaychat/relaychat/internal/testenv"
)

// TestLongLine runs servers with -max-line 1024: a longer line, whole or
// still unterminated, gets "line too long" and its connection is closed;
// every other client carries on.
func TestLongLine(t *testing.T) {
	t.Parallel()
	const maxLine = 1024
	cl := startCluster(t, clusterConfig{maxLine: maxLine})

	an, bn, cn := cl.name("alice"), cl.name("bob"), cl.name("carol")
	b, c := cl.login(t, 0, bn), cl.login(t, 1, cn)

	// Under the cap is fine, on both servers, locally and across.
	a := cl.login(t, 0, an)
	fits := strings.Repeat("f", maxLine-200)
	a.Send(t, chatReq(t, an, bn, fits, nil))
	expectDelivery(t, b, an, bn, fits)
	a.Send(t, chatReq(t, an, cn, fits, nil))
	expectDelivery(t, c, an, cn, fits)

	// The cap counts the line without its "\n" or "\r\n": exactly
	// maxLine bytes pass with either ending, maxLine+1 do not.
	t.Run("Boundary", func(t *testing.T) {
		for _, end := range []string{"\n", "\r\n"} {
			line, content := lineOfLen(t, an, cn, "edge", maxLine)
			a.SendRaw(t, []byte(line+end))
			expectAck(t, a, "edge")
			expectDelivery(t, c, an, cn, content)
		}
		n := cl.name("edge")
		x := cl.login(t, 0, n)
		line, _ := lineOfLen(t, n, cn, "over", maxLine+1)
		x.SendRaw(t, []byte(line+"\r\n"))
		expectTooLongAndClosed(t, x)
	})

	t.Run("WholeLine", func(t *testing.T) {
		for i := range 2 {
			n := cl.name("long")
			x := cl.login(t, i, n)
			x.Send(t, chatReq(t, n, bn, strings.Repeat("x", 2*maxLine), "big"))
			expectTooLongAndClosed(t, x)
		}
	})

	t.Run("Unterminated", func(t *testing.T) {
		// Never ends: the server must give up once it holds more than
		// the cap, not wait for a newline.
		for i := range 2 {
			x := cl.dial(t, i)
			x.SendRaw(t, []byte(`{"cmd":"ping","pad":"`+strings.Repeat("u", 4*maxLine)))
			expectTooLongAndClosed(t, x)
		}
	})

	t.Run("BeforeLogin", func(t *testing.T) {
		x := cl.dial(t, 1)
		x.Send(t, strings.Repeat(" ", maxLine+1)+`{"cmd":"ping"}`)
		expectTooLongAndClosed(t, x)
	})

	// Nothing of the long lines reached anyone, and the other sessions
	// work: bob's next line is carol's message.
	t.Run("OthersUnaffected", func(t *testing.T) {
		expectPong(t, b)
		expectPong(t, c)
		c.Send(t, chatReq(t, cn, bn, "still here?", "o1"))
		expectAck(t, c, "o1")
		expectDelivery(t, b, cn, bn, "still here?")
		a.Send(t, chatReq(t, an, cn, "me too", "o2"))
		expectAck(t, a, "o2")
		expectDelivery(t, c, an, cn, "me too")
		// New connections are accepted.
		cl.login(t, 0, cl.name("late"))
		cl.login(t, 1, cl.name("late"))
	})
}

// expectTooLongAndClosed checks that x gets a "line too long" error and is
// then closed.
func expectTooLongAndClosed(t *testing.T, x *testenv.Client) {
	t.Helper()
	lines := x.ExpectClosed(t, wait)
	if len(lines) != 1 {
		t.Fatalf("got %d lines before close, want one \"line too long\" error: %q", len(lines), lines)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &m); err != nil {
		t.Fatalf("got %q before close, want a JSON error", lines[0])
	}
	if e, _ := m["error"].(string); m["cmd"] != "error" || !strings.Contains(e, "line too long") {
		t.Fatalf("got %v before close, want an error containing \"line too long\"", m)
	}
}
