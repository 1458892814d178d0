package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestProtocol runs the client protocol checks against one shared cluster;
// each subtest uses its own user names, so they do not see each other.
func TestProtocol(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, clusterConfig{})

	// The original design's two messages, verbatim, both directions.
	t.Run("OriginalDesign", func(t *testing.T) {
		a := cl.dial(t, 0)
		a.Send(t, `{"cmd":"login","name":"zhima201"}`)
		expectLogin(t, a, "zhima201", "s1")
		b := cl.dial(t, 1)
		b.Send(t, `{"cmd":"login","name":"zhima202"}`)
		expectLogin(t, b, "zhima202", "s2")

		before := time.Now().UnixMilli()
		a.Send(t, `{"cmd":"chat","send":"zhima201","recv":"zhima202","content":"how are youe"}`)
		m := expectDelivery(t, b, "zhima201", "zhima202", "how are youe")
		after := time.Now().UnixMilli()
		if ts := int64(m["ts"].(float64)); ts < before-1000 || ts > after+1000 {
			t.Errorf("ts %d is not the server receive time (sent at %d, received by %d)", ts, before, after)
		}
		b.Send(t, `{"cmd":"chat","send":"zhima202","recv":"zhima201","content":"fine, and you?"}`)
		expectDelivery(t, a, "zhima202", "zhima201", "fine, and you?")
		// Success without an id has no reply.
		a.ExpectNothing(t, quiet)
		b.ExpectNothing(t, quiet)
	})

	t.Run("SameServer", func(t *testing.T) {
		an, bn := cl.name("alice"), cl.name("bob")
		a, b := cl.login(t, 0, an), cl.login(t, 0, bn)
		a.Send(t, chatReq(t, an, bn, "hi bob", nil))
		expectDelivery(t, b, an, bn, "hi bob")
		b.Send(t, chatReq(t, "", an, "hi alice", nil))
		expectDelivery(t, a, bn, an, "hi alice")
		a.ExpectNothing(t, quiet)
		b.ExpectNothing(t, quiet)
	})

	// Chat to oneself is a chat to an online recipient like any other.
	t.Run("ChatToSelf", func(t *testing.T) {
		an := cl.name("alice")
		a := cl.login(t, 1, an)
		a.Send(t, chatReq(t, "", an, "note to self", nil))
		expectDelivery(t, a, an, an, "note to self")
		a.Send(t, chatReq(t, an, an, "with id", "self"))
		m1, m2 := next(t, a), next(t, a) // ack and delivery, in either order
		if m1["cmd"] == "chat" {
			m1, m2 = m2, m1
		}
		if m1["cmd"] != "ack" || m1["id"] != "self" {
			t.Fatalf("got %v and %v, want an ack with id self and a delivery", m1, m2)
		}
		checkDelivery(t, m2, an, an, "with id")
	})

	t.Run("CrossServer", func(t *testing.T) {
		an, bn := cl.name("alice"), cl.name("bob")
		a, b := cl.login(t, 0, an), cl.login(t, 1, bn)
		for i := 0; i < 3; i++ {
			a.Send(t, chatReq(t, an, bn, "s1 to s2 "+strings.Repeat("é", i), nil))
			expectDelivery(t, b, an, bn, "s1 to s2 "+strings.Repeat("é", i))
			b.Send(t, chatReq(t, bn, an, `s2 to s1 "quoted" \ 你好`, nil))
			expectDelivery(t, a, bn, an, `s2 to s1 "quoted" \ 你好`)
		}
		a.ExpectNothing(t, quiet)
		b.ExpectNothing(t, quiet)
	})

	// Telnet sends \r\n; blank lines are ignored.
	t.Run("TelnetLineEndings", func(t *testing.T) {
		an, bn := cl.name("alice"), cl.name("bob")
		b := cl.login(t, 1, bn)
		a := cl.dial(t, 0)
		a.SendRaw(t, []byte("\r\n\n"+`{"cmd":"login","name":"`+an+`"}`+"\r\n\r\n"))
		expectLogin(t, a, an, "s1")
		a.SendRaw(t, []byte(chatReq(t, an, bn, "over telnet", nil)+"\r\n\r\n\n"))
		expectDelivery(t, b, an, bn, "over telnet")
		// Several requests in one write, mixed endings and blank lines.
		a.SendRaw(t, []byte(`{"cmd":"ping","id":1}`+"\r\n\r\n"+`{"cmd":"ping","id":2}`+"\n\n"+`{"cmd":"ping","id":3}`+"\r\n"))
		for i := 1; i <= 3; i++ {
			if m := next(t, a); m["cmd"] != "pong" || !sameJSON(m["id"], i) {
				t.Fatalf("got %v, want pong with id %d", m, i)
			}
		}
		a.ExpectNothing(t, quiet)
		b.ExpectNothing(t, quiet)
	})

	// A line may reach the server in pieces (telnet in character mode, a
	// slow link, TCP segmentation): the server keeps the start of a line
	// until its end arrives.
	t.Run("LineInPieces", func(t *testing.T) {
		an, bn := cl.name("alice"), cl.name("bob")
		b := cl.login(t, 1, bn)
		a := cl.dial(t, 0)
		// Two halves, the first one alone on the wire for a moment: a
		// partial line gets no reply.
		login := mustJSON(t, map[string]any{"cmd": "login", "name": an})
		a.SendRaw(t, []byte(login[:len(login)/2]))
		a.ExpectNothing(t, quiet)
		a.SendRaw(t, []byte(login[len(login)/2:]+"\r\n"))
		expectLogin(t, a, an, "s1")
		// Byte by byte, with \r\n at the end.
		line := chatReq(t, "", bn, "one byte at a time", "bytes") + "\r\n"
		for i := 0; i < len(line); i++ {
			a.SendRaw(t, []byte{line[i]})
		}
		expectAck(t, a, "bytes")
		expectDelivery(t, b, an, bn, "one byte at a time")
		// The end of one line and the start of the next in one write.
		two := `{"cmd":"ping","id":"p1"}` + "\n" + `{"cmd":"ping","id":"p2"}` + "\n"
		a.SendRaw(t, []byte(two[:30]))
		if m := next(t, a); m["cmd"] != "pong" || m["id"] != "p1" {
			t.Fatalf("got %v, want pong p1", m)
		}
		a.SendRaw(t, []byte(two[30:]))
		if m := next(t, a); m["cmd"] != "pong" || m["id"] != "p2" {
			t.Fatalf("got %v, want pong p2", m)
		}
	})

	// A request line of exactly the default -max-line (65536 bytes) is
	// legal: it is delivered whole, locally and across the proxy (whose
	// link frames must hold it plus the envelope), and the link still works.
	t.Run("MaxLineDelivered", func(t *testing.T) {
		const defaultMaxLine = 65536
		for _, far := range []int{0, 1} {
			name := map[int]string{0: "Local", 1: "CrossServer"}[far]
			t.Run(name, func(t *testing.T) {
				an, bn := cl.name("alice"), cl.name("bob")
				a, b := cl.login(t, 0, an), cl.login(t, far, bn)
				line, content := lineOfLen(t, an, bn, "big", defaultMaxLine)
				a.Send(t, line)
				expectAck(t, a, "big")
				expectDelivery(t, b, an, bn, content)
				a.Send(t, chatReq(t, an, bn, "small after big", "small"))
				expectAck(t, a, "small")
				expectDelivery(t, b, an, bn, "small after big")
			})
		}
	})

	t.Run("Acks", func(t *testing.T) {
		an, bn, cn := cl.name("alice"), cl.name("bob"), cl.name("carol")
		a, b, c := cl.login(t, 0, an), cl.login(t, 0, bn), cl.login(t, 1, cn)
		for _, id := range []any{"local-1", 42, 3.25} {
			a.Send(t, chatReq(t, an, bn, "local", id))
			expectAck(t, a, id)
			expectDelivery(t, b, an, bn, "local")
		}
		for _, id := range []any{"cross-1", 43, -7, "ünïcode id"} {
			a.Send(t, chatReq(t, "", cn, "cross", id))
			expectAck(t, a, id)
			expectDelivery(t, c, an, cn, "cross")
		}
		// Ack from the other side too.
		c.Send(t, chatReq(t, cn, an, "back", "c-1"))
		expectAck(t, c, "c-1")
		expectDelivery(t, a, cn, an, "back")
		a.ExpectNothing(t, quiet)
		b.ExpectNothing(t, quiet)
		c.ExpectNothing(t, quiet)
	})

	// "" is a string id like any other: the contract does not set it apart.
	t.Run("EmptyStringID", func(t *testing.T) {
		an, bn := cl.name("alice"), cl.name("bob")
		a, b := cl.login(t, 0, an), cl.login(t, 1, bn)
		a.Send(t, chatReq(t, an, bn, "empty id", ""))
		expectAck(t, a, "")
		expectDelivery(t, b, an, bn, "empty id")
		a.Send(t, `{"cmd":"chat","content":"x","id":""}`)
		expectError(t, a, "missing recv", "")
	})

	// Errors carry the id of the request that caused them, and keep the
	// connection open.
	t.Run("ErrorsCarryID", func(t *testing.T) {
		c := cl.dial(t, 0)
		c.Send(t, `{"cmd":"chat","recv":"x","content":"y","id":"before-login"}`)
		expectError(t, c, "not logged in", "before-login")
		c.Send(t, `{"cmd":"login","name":"bad name","id":7}`)
		expectError(t, c, "invalid name", 7)
		c.Send(t, `{"cmd":"dance","id":"d"}`)
		expectError(t, c, "unknown cmd", "d")
		c.Send(t, `{"id":8}`)
		expectError(t, c, "missing cmd", 8)
		an := cl.name("alice")
		c.Send(t, `{"cmd":"login","name":"`+an+`","id":"l"}`)
		if m := next(t, c); m["cmd"] != "login" || m["ok"] != true || m["name"] != an {
			t.Fatalf("got %v, want a successful login", m)
		}
		c.Send(t, chatReq(t, "", cl.name("nobody"), "hello?", 9))
		expectStoredAck(t, c, 9) // the offline mailbox keeps it
		c.Send(t, `{"cmd":"chat","content":"y","id":"nr"}`)
		expectError(t, c, "missing recv", "nr")
		c.Send(t, `{"cmd":"chat","recv":"x","id":10}`)
		expectError(t, c, "missing content", 10)
		c.Send(t, chatReq(t, "mallory", an, "x", "spoof"))
		expectError(t, c, "send does not match the logged-in name", "spoof")
		expectPong(t, c)
	})

	t.Run("SpoofedSend", func(t *testing.T) {
		an, bn, cn := cl.name("alice"), cl.name("bob"), cl.name("carol")
		a, b, c := cl.login(t, 0, an), cl.login(t, 0, bn), cl.login(t, 1, cn)
		for _, recv := range []string{bn, cn} {
			for _, spoof := range []string{cn, "mallory", strings.ToUpper(an), an + " "} {
				a.Send(t, chatReq(t, spoof, recv, "spoofed", nil))
				expectError(t, a, "send does not match the logged-in name", nil)
				a.Send(t, chatReq(t, spoof, recv, "spoofed", "sp"))
				expectError(t, a, "send does not match the logged-in name", "sp")
			}
			// Nothing was delivered: the next thing recv sees from alice
			// is this genuine message (one sender's messages stay in order).
			a.Send(t, chatReq(t, an, recv, "genuine", nil))
		}
		expectDelivery(t, b, an, bn, "genuine")
		expectDelivery(t, c, an, cn, "genuine")
		b.ExpectNothing(t, quiet)
		c.ExpectNothing(t, quiet)
	})

	t.Run("SendOmitted", func(t *testing.T) {
		an, bn, cn := cl.name("alice"), cl.name("bob"), cl.name("carol")
		a, b, c := cl.login(t, 0, an), cl.login(t, 0, bn), cl.login(t, 1, cn)
		a.Send(t, `{"cmd":"chat","recv":"`+bn+`","content":"no send"}`)
		expectDelivery(t, b, an, bn, "no send")
		a.Send(t, `{"cmd":"chat","recv":"`+cn+`","content":"no send"}`)
		expectDelivery(t, c, an, cn, "no send")
		// Unknown fields are ignored, including a ts the client made up.
		a.Send(t, `{"cmd":"chat","recv":"`+cn+`","content":"extra","ts":1,"colour":"red"}`)
		m := expectDelivery(t, c, an, cn, "extra")
		if m["ts"] == float64(1) {
			t.Errorf("delivery %v carries the client's ts", m)
		}
	})

	t.Run("ChatBeforeLogin", func(t *testing.T) {
		bn := cl.name("bob")
		b := cl.login(t, 1, bn)
		c := cl.dial(t, 0)
		c.Send(t, chatReq(t, "", bn, "anon", nil))
		expectError(t, c, "not logged in", nil)
		c.Send(t, chatReq(t, bn, bn, "impersonated", 1))
		expectError(t, c, "not logged in", 1)
		c.Send(t, `{"cmd":"logout"}`)
		if m := next(t, c); m["cmd"] != "error" && m["cmd"] != "logout" {
			t.Fatalf("logout before login: got %v, want an error or a logout reply", m)
		}
		expectPong(t, c)
		b.ExpectNothing(t, quiet)
	})

	t.Run("OfflineRecipient", func(t *testing.T) {
		an := cl.name("alice")
		a := cl.login(t, 1, an)
		nobody := cl.name("nobody")
		a.Send(t, chatReq(t, an, nobody, "anyone?", nil))
		a.Send(t, chatReq(t, an, nobody, "anyone? 2", "u1"))
		expectStoredAck(t, a, "u1") // nothing for the chat without an id
		expectPong(t, a)
		// The recipient gets both, marked stored, on either server.
		n := cl.login(t, 0, nobody)
		expectStoredDelivery(t, n, an, nobody, "anyone?")
		expectStoredDelivery(t, n, an, nobody, "anyone? 2")
	})

	t.Run("MissingFields", func(t *testing.T) {
		an, bn := cl.name("alice"), cl.name("bob")
		a, b := cl.login(t, 0, an), cl.login(t, 0, bn)
		for _, tc := range []struct{ line, reason string }{
			{`{"cmd":"chat","content":"x"}`, "missing recv"},
			{`{"cmd":"chat","recv":"` + bn + `"}`, "missing content"},
			{`{"cmd":"chat"}`, "missing"},
		} {
			a.Send(t, tc.line)
			expectError(t, a, tc.reason, nil)
		}
		a.Send(t, `{"cmd":"chat","recv":"`+bn+`","id":"m"}`)
		expectError(t, a, "missing content", "m")
		expectPong(t, a)
		b.ExpectNothing(t, quiet)
	})

	t.Run("BadName", func(t *testing.T) {
		c := cl.dial(t, 0)
		c.Send(t, `{"cmd":"login","name":""}`)
		if m := next(t, c); m["cmd"] != "error" {
			t.Fatalf("login with an empty name: got %v, want an error", m)
		}
		for _, name := range []string{"a b", "tab\there", "nl\nx", "cr\rx", "ctl\x01", "del\x7f", strings.Repeat("n", 65)} {
			c.Send(t, mustJSON(t, map[string]any{"cmd": "login", "name": name}))
			expectError(t, c, "invalid name", nil)
		}
		c.Send(t, `{"cmd":"login"}`)
		if m := next(t, c); m["cmd"] != "error" {
			t.Fatalf("login without name: got %v, want an error", m)
		}
		// Still not logged in.
		c.Send(t, chatReq(t, "", "x", "y", nil))
		expectError(t, c, "not logged in", nil)
		// The limits themselves are fine: 64 bytes, and 1 byte.
		long := cl.name(strings.Repeat("n", 50))
		long += strings.Repeat("x", 64-len(long))
		cl.login(t, 1, long)
		cl.login(t, 1, "é"+cl.name("")) // multi-byte UTF-8 is not whitespace
		one := cl.dial(t, 0)
		one.Send(t, `{"cmd":"login","name":"Z"}`)
		expectLogin(t, one, "Z", "s1")
	})

	t.Run("BadJSON", func(t *testing.T) {
		an := cl.name("alice")
		a := cl.login(t, 0, an)
		for _, tc := range []struct{ line, reason string }{
			{`{"cmd":`, "invalid JSON"},
			{`hello`, "invalid JSON"},
			{`{"cmd":"ping"`, "invalid JSON"},
			{`{"cmd":"ping"}}`, "invalid JSON"},
			{`[1,2]`, "request must be a JSON object"},
			{`"ping"`, "request must be a JSON object"},
			{`null`, "request must be a JSON object"},
			{`{"cmd":"chat","recv":"x","content":"` + "\xff\xfe" + `"}`, "invalid UTF-8"},
		} {
			a.Send(t, tc.line)
			expectError(t, a, tc.reason, nil)
		}
		// Errors do not close the connection, and the session is intact.
		expectPong(t, a)
		bn := cl.name("bob")
		b := cl.login(t, 0, bn)
		a.Send(t, chatReq(t, an, bn, "still here", "s"))
		expectAck(t, a, "s")
		expectDelivery(t, b, an, bn, "still here")
	})

	t.Run("UnknownCmd", func(t *testing.T) {
		c := cl.dial(t, 1)
		for _, line := range []string{`{"cmd":"dance"}`, `{"cmd":"dance","name":"x"}`, `{"cmd":""}`} {
			c.Send(t, line)
			m := next(t, c)
			e, _ := m["error"].(string)
			if m["cmd"] != "error" || !(strings.Contains(e, "unknown cmd") || line == `{"cmd":""}` && strings.Contains(e, "missing cmd")) {
				t.Fatalf("%s: got %v, want an unknown cmd error", line, m)
			}
		}
		expectPong(t, c)
	})

	t.Run("MissingCmd", func(t *testing.T) {
		c := cl.dial(t, 1)
		for _, line := range []string{`{}`, `{"name":"x"}`, `{"recv":"x","content":"y"}`} {
			c.Send(t, line)
			expectError(t, c, "missing cmd", nil)
		}
		c.Send(t, `{"name":"x","id":"mc"}`)
		expectError(t, c, "missing cmd", "mc")
		expectPong(t, c)
	})

	t.Run("PingPong", func(t *testing.T) {
		c := cl.dial(t, 0)
		c.Send(t, `{"cmd":"ping"}`)
		if m := next(t, c); m["cmd"] != "pong" {
			t.Fatalf("got %v, want pong", m)
		}
		c.Send(t, `{"cmd":"ping","id":"p1"}`)
		if m := next(t, c); m["cmd"] != "pong" || m["id"] != "p1" {
			t.Fatalf("got %v, want pong with id p1", m)
		}
		c.Send(t, `{"cmd":"ping","id":5}`)
		if m := next(t, c); m["cmd"] != "pong" || m["id"] != float64(5) {
			t.Fatalf("got %v, want pong with id 5", m)
		}
		cl.login(t, 0, cl.name("pinger"))
		c.ExpectNothing(t, quiet)
	})

	t.Run("Logout", func(t *testing.T) {
		an, bn := cl.name("alice"), cl.name("bob")
		a, b := cl.login(t, 0, an), cl.login(t, 0, bn)
		b.Send(t, `{"cmd":"logout"}`)
		if m := next(t, b); m["cmd"] != "logout" || m["ok"] != true {
			t.Fatalf("got %v, want {\"cmd\":\"logout\",\"ok\":true}", m)
		}
		a.Send(t, chatReq(t, an, bn, "gone?", "lo"))
		expectStoredAck(t, a, "lo")
		// The session stays open but gets nothing.
		expectPong(t, b)
		// Chatting needs a login again.
		b.Send(t, chatReq(t, "", an, "x", nil))
		expectError(t, b, "not logged in", nil)
		// Logging in again makes it routable again, after the mailbox.
		b.Send(t, `{"cmd":"login","name":"`+bn+`"}`)
		expectLogin(t, b, bn, "s1")
		expectStoredDelivery(t, b, an, bn, "gone?")
		a.Send(t, chatReq(t, an, bn, "back", nil))
		expectDelivery(t, b, an, bn, "back")
	})

	t.Run("LogoutCrossServer", func(t *testing.T) {
		an, bn := cl.name("alice"), cl.name("bob")
		b := cl.login(t, 0, bn)
		b.Send(t, `{"cmd":"logout","id":"bye"}`)
		if m := next(t, b); m["cmd"] != "logout" || m["ok"] != true {
			t.Fatalf("got %v, want {\"cmd\":\"logout\",\"ok\":true}", m)
		}
		// The route goes; alice on s2 (which never looked bob up) then
		// finds bob offline.
		cl.waitRoute(t, bn, "")
		a := cl.login(t, 1, an)
		a.Send(t, chatReq(t, an, bn, "gone?", "lo"))
		expectStoredAck(t, a, "lo")
		expectPong(t, b)
	})

	t.Run("AlreadyLoggedIn", func(t *testing.T) {
		an, bn, cn := cl.name("alice"), cl.name("bob"), cl.name("carol")
		a, c := cl.login(t, 0, an), cl.login(t, 1, cn)
		a.Send(t, `{"cmd":"login","name":"`+bn+`","id":"again"}`)
		expectError(t, a, "already logged in", "again")
		// alice is still alice.
		a.Send(t, chatReq(t, an, cn, "me", "me"))
		expectAck(t, a, "me")
		expectDelivery(t, c, an, cn, "me")
		if got := cl.routeServer(t, bn); got != "" {
			t.Errorf("refused login of %q left a route naming %q", bn, got)
		}
	})
}
