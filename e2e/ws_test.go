package e2e

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/gobwas/ws"

	"github.com/relaychat/relaychat/internal/testenv"
)

// wsListenerReadyRE matches a server's log line for its WebSocket listener,
// the same shape as "client listener ready".
const wsListenerReadyRE = `msg="websocket listener ready".*\baddr="?([^"\s]+)`

// startWSCluster starts the usual cluster with -ws-listen 127.0.0.1:0 on
// both servers and returns it with the servers' WebSocket addresses.
func startWSCluster(t *testing.T, cfg clusterConfig) (*cluster, [2]string) {
	t.Helper()
	cfg.serverArgs = append(append([]string(nil), cfg.serverArgs...), "-ws-listen", "127.0.0.1:0")
	cl := startCluster(t, cfg)
	var addrs [2]string
	rx := regexp.MustCompile(wsListenerReadyRE)
	for i, s := range cl.s {
		// The line may come before the listener lines startCluster waited
		// for (WaitLine skips what it passes), so look at every line.
		eventually(t, wait, func() (bool, string) {
			for _, l := range s.proc.Lines() {
				if m := rx.FindStringSubmatch(l); m != nil {
					addrs[i] = m[1]
					return true, ""
				}
			}
			return false, fmt.Sprintf("%s logged no line matching %q (is -ws-listen implemented?)", s.id, wsListenerReadyRE)
		})
	}
	return cl, addrs
}

// wsLogin opens a WebSocket to addr (on path /ws, as the page does), logs
// in as name and checks the reply.
func wsLogin(t *testing.T, addr, name, serverID string) *testenv.WSClient {
	t.Helper()
	w := testenv.DialWS(t, addr, "/ws")
	w.Send(t, mustJSON(t, map[string]any{"cmd": "login", "name": name}))
	expectLogin(t, w.Client, name, serverID)
	return w
}

// TestWebSocket checks the contract's WebSocket section against a cluster
// whose servers both listen for WebSocket clients: the same sessions,
// routing and errors as TCP, one request per text frame (or several
// separated by newlines), one reply or delivery per text frame.
func TestWebSocket(t *testing.T) {
	t.Parallel()
	cl, wsAddr := startWSCluster(t, clusterConfig{})

	t.Run("OriginalDesign", func(t *testing.T) {
		a := testenv.DialWS(t, wsAddr[0], "/")
		a.Send(t, `{"cmd":"login","name":"zhima201"}`)
		expectLogin(t, a.Client, "zhima201", "s1")
		b := cl.dial(t, 1)
		b.Send(t, `{"cmd":"login","name":"zhima202"}`)
		expectLogin(t, b, "zhima202", "s2")
		a.Send(t, `{"cmd":"chat","send":"zhima201","recv":"zhima202","content":"how are youe"}`)
		expectDelivery(t, b, "zhima201", "zhima202", "how are youe")
		b.Send(t, `{"cmd":"chat","send":"zhima202","recv":"zhima201","content":"fine, thanks"}`)
		expectDelivery(t, a.Client, "zhima202", "zhima201", "fine, thanks")
		a.ExpectNothing(t, quiet)
	})

	t.Run("WithTCPUsers", func(t *testing.T) {
		wn, w2n, tn, t2n := cl.name("ws1"), cl.name("ws2"), cl.name("tcp1"), cl.name("tcp2")
		w := wsLogin(t, wsAddr[0], wn, "s1")   // WebSocket on s1
		w2 := wsLogin(t, wsAddr[1], w2n, "s2") // WebSocket on s2
		tc := cl.login(t, 0, tn)               // TCP on s1
		t2 := cl.login(t, 1, t2n)              // TCP on s2
		cl.waitRoute(t, w2n, "s2")

		steps := []struct {
			from   func(t testing.TB, line string)
			to     *testenv.Client
			ack    *testenv.Client
			sn, rn string
		}{
			{from: w.Send, ack: w.Client, to: tc, sn: wn, rn: tn},   // WS -> TCP, same server
			{from: tc.Send, ack: tc, to: w.Client, sn: tn, rn: wn},  // TCP -> WS, same server
			{from: w.Send, ack: w.Client, to: t2, sn: wn, rn: t2n},  // WS -> TCP, across
			{from: t2.Send, ack: t2, to: w.Client, sn: t2n, rn: wn}, // TCP -> WS, across
			{from: w.Send, ack: w.Client, to: w2.Client, sn: wn, rn: w2n},
			{from: w2.Send, ack: w2.Client, to: w.Client, sn: w2n, rn: wn},
			{from: w.Send, ack: w.Client, to: w.Client, sn: wn, rn: wn}, // to oneself
		}
		for i, s := range steps {
			content := fmt.Sprintf("step %d: %s to %s, ünïcödé ✓ \"quoted\"", i, s.sn, s.rn)
			id := fmt.Sprintf("c%d", i)
			s.from(t, chatReq(t, "", s.rn, content, id))
			if s.to == s.ack { // chat to oneself: ack and delivery in either order
				m1, m2 := next(t, s.to), next(t, s.to)
				if m1["cmd"] == "chat" {
					m1, m2 = m2, m1
				}
				if m1["cmd"] != "ack" || m1["id"] != id {
					t.Fatalf("step %d: got %v, want the ack", i, m1)
				}
				checkDelivery(t, m2, s.sn, s.rn, content)
				continue
			}
			expectAck(t, s.ack, id)
			expectDelivery(t, s.to, s.sn, s.rn, content)
		}
		// Many in a row keep their order across transports and servers.
		for i := range 50 {
			w.Send(t, chatReq(t, "", t2n, fmt.Sprintf("seq %d", i), nil))
		}
		for i := range 50 {
			expectDelivery(t, t2, wn, t2n, fmt.Sprintf("seq %d", i))
		}
		for _, c := range []*testenv.Client{w.Client, w2.Client, tc, t2} {
			c.ExpectNothing(t, quiet)
		}
	})

	t.Run("SeveralRequestsInOneFrame", func(t *testing.T) {
		an, bn := cl.name("alice"), cl.name("bob")
		a := testenv.DialWS(t, wsAddr[0], "/ws")
		b := cl.login(t, 1, bn)
		a.Send(t, mustJSON(t, map[string]any{"cmd": "login", "name": an})+"\n"+
			`{"cmd":"ping","id":1}`+"\r\n"+
			"\n"+ // blank lines are ignored
			chatReq(t, an, bn, "from a batch", "b1")+"\n")
		expectLogin(t, a.Client, an, "s1")
		m := next(t, a.Client)
		if m["cmd"] != "pong" {
			t.Fatalf("got %v, want the pong (each reply in a frame of its own)", m)
		}
		expectAck(t, a.Client, "b1")
		expectDelivery(t, b, an, bn, "from a batch")
		// A trailing newline in a frame is allowed.
		a.Send(t, `{"cmd":"ping"}`+"\n")
		if m := next(t, a.Client); m["cmd"] != "pong" {
			t.Fatalf("got %v, want a pong", m)
		}
	})

	t.Run("Errors", func(t *testing.T) {
		an := cl.name("alice")
		a := testenv.DialWS(t, wsAddr[1], "/ws")
		a.Send(t, chatReq(t, "", "bob", "before login", "e1"))
		expectError(t, a.Client, "not logged in", "e1")
		a.Send(t, "hello?")
		expectError(t, a.Client, "invalid JSON", nil)
		a.Send(t, `{"cmd":"nope","id":"e2"}`)
		expectError(t, a.Client, "unknown cmd", "e2")
		a.Send(t, mustJSON(t, map[string]any{"cmd": "login", "name": an}))
		expectLogin(t, a.Client, an, "s2")
		a.Send(t, chatReq(t, "mallory", "bob", "spoof", 7))
		expectError(t, a.Client, "send does not match the logged-in name", 7)
		a.Send(t, chatReq(t, "", cl.name("nobody"), "anyone?", "e3"))
		m := next(t, a.Client) // refused or stored, depending on the mailbox
		if m["cmd"] == "error" {
			checkError(t, m, "recipient not online", "e3")
		} else if m["cmd"] != "ack" || m["id"] != "e3" || m["stored"] != true {
			t.Fatalf("chat to an offline user: got %v, want an error or a stored ack", m)
		}
		expectPong(t, a.Client)
	})

	t.Run("Fragmented", func(t *testing.T) {
		an, bn := cl.name("alice"), cl.name("bob")
		a := wsLogin(t, wsAddr[0], an, "s1")
		b := wsLogin(t, wsAddr[1], bn, "s2")
		cl.waitRoute(t, bn, "s2")
		req := chatReq(t, "", bn, "pieced together", "f1")
		a.SendFrame(t, ws.OpText, false, []byte(req[:5]))
		a.Ping(t, []byte("mid-message"))
		a.SendFrame(t, ws.OpContinuation, false, []byte(req[5:12]))
		a.SendFrame(t, ws.OpContinuation, false, nil)
		a.SendFrame(t, ws.OpContinuation, true, []byte(req[12:]))
		if p := a.ExpectPong(t, wait); string(p) != "mid-message" {
			t.Fatalf("pong payload %q, want the ping's", p)
		}
		expectAck(t, a.Client, "f1")
		expectDelivery(t, b.Client, an, bn, "pieced together")
		// Split at every byte.
		req = chatReq(t, "", bn, "one byte a frame", "f2")
		a.SendFrame(t, ws.OpText, false, []byte(req[:1]))
		for i := 1; i < len(req); i++ {
			a.SendFrame(t, ws.OpContinuation, i == len(req)-1, []byte(req[i:i+1]))
		}
		expectAck(t, a.Client, "f2")
		expectDelivery(t, b.Client, an, bn, "one byte a frame")
	})

	t.Run("PingPong", func(t *testing.T) {
		a := testenv.DialWS(t, wsAddr[1], "/")
		a.Ping(t, nil)
		if p := a.ExpectPong(t, wait); len(p) != 0 {
			t.Fatalf("pong payload %q, want empty", p)
		}
		payload := []byte(strings.Repeat("p", 125)) // the largest a control frame holds
		a.Ping(t, payload)
		if p := a.ExpectPong(t, wait); string(p) != string(payload) {
			t.Fatalf("pong payload %q, want the ping's", p)
		}
		a.SendFrame(t, ws.OpPong, true, []byte("unsolicited")) // ignored
		expectPong(t, a.Client)                                // the JSON ping still works
	})

	t.Run("Binary", func(t *testing.T) {
		an := cl.name("alice")
		a := wsLogin(t, wsAddr[0], an, "s1")
		a.SendFrame(t, ws.OpBinary, true, []byte(`{"cmd":"ping"}`))
		m := next(t, a.Client)
		if m["cmd"] != "error" || m["error"] == "" {
			t.Fatalf("binary frame: got %v, want an error", m)
		}
		// An error that does not close the connection.
		expectPong(t, a.Client)
		a.SendFrame(t, ws.OpBinary, false, []byte{1})
		a.SendFrame(t, ws.OpContinuation, true, []byte{2})
		if m := next(t, a.Client); m["cmd"] != "error" {
			t.Fatalf("fragmented binary message: got %v, want an error", m)
		}
		expectPong(t, a.Client)
	})

	t.Run("CloseHandshake", func(t *testing.T) {
		an := cl.name("leaver")
		a := wsLogin(t, wsAddr[0], an, "s1")
		cl.waitRoute(t, an, "s1")
		a.SendFrame(t, ws.OpClose, true, ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye"))
		if lines := a.ExpectClosed(t, wait); len(lines) != 0 {
			t.Fatalf("got %q after the close frame, want nothing", lines)
		}
		if code, _, ok := a.CloseStatus(); !ok || code != ws.StatusNormalClosure {
			t.Fatalf("server's close: status %d (close frame seen: %v), want the client's 1000 echoed", code, ok)
		}
		cl.waitRoute(t, an, "")
	})

	t.Run("ProtocolErrorCloses", func(t *testing.T) {
		a := testenv.DialWS(t, wsAddr[1], "/")
		a.SendBytes(t, []byte{0x81, 0x02, 'h', 'i'}) // unmasked: RFC 6455 section 5.1
		a.ExpectClosed(t, wait)
		if code, _, ok := a.CloseStatus(); ok && code != ws.StatusProtocolError {
			t.Fatalf("close status %d, want 1002 (protocol error)", code)
		}
		b := testenv.DialWS(t, wsAddr[1], "/")
		b.SendFrame(t, 0x3, true, nil) // a reserved opcode
		b.ExpectClosed(t, wait)
	})

	t.Run("KickAcrossTransports", func(t *testing.T) {
		// TCP first, then WebSocket on the other server and on the same
		// one: the older session gets kicked and is closed.
		for i := range 2 {
			xn, pn := cl.name("x"), cl.name("peer")
			p := cl.login(t, 1, pn)
			old := cl.login(t, 0, xn)
			cl.waitRoute(t, xn, "s1")
			newer := wsLogin(t, wsAddr[i], xn, cl.s[i].id)
			expectKickedAndClosed(t, old)
			cl.waitRoute(t, xn, cl.s[i].id)
			p.Send(t, chatReq(t, "", xn, "to the newest", "k"))
			expectAck(t, p, "k")
			expectDelivery(t, newer.Client, pn, xn, "to the newest")
		}
		// WebSocket first, then TCP.
		xn := cl.name("x")
		old := wsLogin(t, wsAddr[1], xn, "s2")
		cl.waitRoute(t, xn, "s2")
		newer := cl.login(t, 0, xn)
		expectKickedAndClosed(t, old.Client)
		cl.waitRoute(t, xn, "s1")
		expectPong(t, newer)
	})

	t.Run("Page", func(t *testing.T) {
		for _, addr := range wsAddr {
			resp, err := http.Get("http://" + addr + "/")
			if err != nil {
				t.Fatalf("GET / on %s: %v", addr, err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatalf("GET / on %s: %v", addr, err)
			}
			if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
				t.Fatalf("GET / on %s: %d %q, want 200 text/html", addr, resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			if !strings.Contains(strings.ToLower(string(body)), "<html") || !strings.Contains(string(body), "WebSocket") {
				t.Fatalf("GET / on %s: body is not the chat page:\n%.300s", addr, body)
			}
		}
	})

	t.Run("BadHandshakes", func(t *testing.T) {
		addr := wsAddr[0]
		up := func(version, key string) string {
			h := "GET /ws HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
			if key != "" {
				h += "Sec-WebSocket-Key: " + key + "\r\n"
			}
			return h + "Sec-WebSocket-Version: " + version + "\r\n\r\n"
		}
		const key = "dGhlIHNhbXBsZSBub25jZQ=="
		for _, tc := range []struct {
			name, req string
			header    string // a header the response must carry
		}{
			// RFC 6455 section 4.2.2: a version the server does not speak
			// gets an error listing the versions it does.
			{name: "wrong version", req: up("8", key), header: "Sec-WebSocket-Version: 13"},
			{name: "missing key", req: up("13", "")},
			{name: "POST", req: strings.Replace(up("13", key), "GET", "POST", 1)},
			{name: "POST without upgrade", req: "POST / HTTP/1.1\r\nHost: " + addr + "\r\nContent-Length: 2\r\n\r\n{}"},
			{name: "a JSON line", req: `{"cmd":"login","name":"telnet-user"}` + "\n"},
		} {
			resp := testenv.RawHTTP(t, addr, tc.req) // returns once the server closed
			status, _, _ := strings.Cut(resp, "\r\n")
			if !regexp.MustCompile(`^HTTP/1\.[01] 4\d\d `).MatchString(status) {
				t.Fatalf("%s: response %q, want a 4xx HTTP error and a close", tc.name, resp)
			}
			if tc.header != "" && !strings.Contains(strings.ToLower(resp), "\r\n"+strings.ToLower(tc.header)+"\r\n") {
				t.Fatalf("%s: response lacks %q:\n%s", tc.name, tc.header, resp)
			}
		}
		// The good handshake still works.
		if resp := testenv.RawHTTP(t, addr, up("13", key)+"\x88\x80\x00\x00\x00\x00"); !strings.HasPrefix(resp, "HTTP/1.1 101 ") ||
			!strings.Contains(resp, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") {
			t.Fatalf("valid upgrade (then a close frame): got %q, want 101 with the RFC's accept key", resp)
		}
		wsLogin(t, addr, cl.name("after"), "s1")
	})
}

// TestWebSocketLimits runs servers with -max-line 1024: a frame or a
// fragmented message over it gets "line too long" and its connection is
// closed, like an over-long line on TCP; every other client carries on.
func TestWebSocketLimits(t *testing.T) {
	t.Parallel()
	const maxLine = 1024
	cl, wsAddr := startWSCluster(t, clusterConfig{maxLine: maxLine})
	bn := cl.name("bob")
	b := cl.login(t, 1, bn)

	t.Run("Boundary", func(t *testing.T) {
		an := cl.name("edge")
		a := wsLogin(t, wsAddr[0], an, "s1")
		line, content := lineOfLen(t, "", bn, "edge", maxLine)
		a.Send(t, line)
		expectAck(t, a.Client, "edge")
		expectDelivery(t, b, an, bn, content)
		line, _ = lineOfLen(t, "", bn, "over", maxLine+1)
		a.Send(t, line)
		expectTooLongAndClosed(t, a.Client)
	})

	t.Run("WholeFrame", func(t *testing.T) {
		for i := range 2 {
			x := wsLogin(t, wsAddr[i], cl.name("long"), cl.s[i].id)
			x.Send(t, chatReq(t, "", bn, strings.Repeat("x", 2*maxLine), "big"))
			expectTooLongAndClosed(t, x.Client)
		}
	})

	t.Run("DeclaredTooBig", func(t *testing.T) {
		// Only the header of a 1 MiB frame: the server must refuse it from
		// the header, not wait for the payload.
		x := testenv.DialWS(t, wsAddr[1], "/")
		x.SendBytes(t, []byte{0x81, 0xff, 0, 0, 0, 0, 0, 0x10, 0, 0, 1, 2, 3, 4})
		expectTooLongAndClosed(t, x.Client)
	})

	t.Run("Fragments", func(t *testing.T) {
		x := testenv.DialWS(t, wsAddr[0], "/")
		part := []byte(strings.Repeat(" ", maxLine/2+1))
		x.SendFrame(t, ws.OpText, false, part)
		x.SendFrame(t, ws.OpContinuation, true, part)
		expectTooLongAndClosed(t, x.Client)
	})

	t.Run("OthersUnaffected", func(t *testing.T) {
		expectPong(t, b)
		an := cl.name("late")
		a := wsLogin(t, wsAddr[0], an, "s1")
		a.Send(t, chatReq(t, "", bn, "still here?", "o1"))
		expectAck(t, a.Client, "o1")
		expectDelivery(t, b, an, bn, "still here?")
	})
}
