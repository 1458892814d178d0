package wsproto

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// echoConn serves one connection the way a gnet OnTraffic callback would:
// everything received is appended to an inbound buffer (gnet's), each
// "callback" parses what it can and discards exactly what was consumed.
// Text messages are echoed upper-cased; binary ones get a text error.
func echoConn(conn net.Conn, max int) {
	defer conn.Close()
	var (
		in       []byte // gnet's inbound buffer
		upgraded bool
		rd       = Reader{Max: max}
		chunk    = make([]byte, 7) // small reads: frames split across callbacks
	)
	for {
		k, err := conn.Read(chunk)
		if err != nil {
			return
		}
		in = append(in, chunk[:k]...)
		// --- OnTraffic ---
		var out []byte
		consumed := 0
		if !upgraded {
			h := ParseHandshake(in, 0)
			switch h.Kind {
			case NeedMore:
				continue
			case Plain:
				_, _ = conn.Write(AppendResponse(nil, Response{ContentType: "text/html; charset=utf-8", Body: []byte("<p>hi</p>"), HeadOnly: h.Method == "HEAD"}))
				return
			case Reject:
				_, _ = conn.Write(h.Response)
				return
			}
			out = append(out, h.Response...)
			consumed, upgraded = h.Consumed, true
		}
		closeNow := false
		for !closeNow {
			m, n, err := rd.Next(in[consumed:])
			consumed += n
			if err != nil {
				if errors.Is(err, ErrTooBig) {
					out = AppendText(out, []byte(`{"cmd":"error","error":"line too long"}`))
				}
				out = AppendClose(out, CloseCode(err), "")
				closeNow = true
				break
			}
			switch m.Kind {
			case None:
			case Text:
				out = AppendText(out, bytes.ToUpper(m.Payload))
			case Binary:
				out = AppendText(out, []byte(`{"cmd":"error","error":"binary frames are not supported"}`))
			case Ping:
				out = AppendPong(out, m.Payload)
			case Close:
				out = AppendClose(out, m.Code, "")
				closeNow = true
			}
			if m.Kind == None {
				break
			}
		}
		in = in[consumed:] // Discard(consumed)
		if _, err := conn.Write(out); err != nil || closeNow {
			return
		}
	}
}

func startEcho(t *testing.T, max int) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go echoConn(c, max)
		}
	}()
	return ln.Addr().String()
}

// TestEchoWithGobwasClient runs a real WebSocket client (gobwas/ws's
// dialer) against the loop above over TCP.
func TestEchoWithGobwasClient(t *testing.T) {
	addr := startEcho(t, 1024)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, br, _, err := ws.Dial(ctx, "ws://"+addr+"/chat")
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	var r io.Reader = conn
	if br != nil {
		r = io.MultiReader(br, conn)
	}
	read := func() ws.Frame {
		t.Helper()
		f, err := ws.ReadFrame(r)
		if err != nil {
			t.Fatalf("read frame: %v", err)
		}
		return f
	}
	expect := func(op ws.OpCode, payload string) {
		t.Helper()
		if f := read(); f.Header.OpCode != op || string(f.Payload) != payload || f.Header.Masked {
			t.Fatalf("got %v %q (masked %v), want %v %q", f.Header.OpCode, f.Payload, f.Header.Masked, op, payload)
		}
	}
	send := func(op ws.OpCode, fin bool, p string) {
		t.Helper()
		if err := ws.WriteFrame(conn, ws.MaskFrame(ws.NewFrame(op, fin, []byte(p)))); err != nil {
			t.Fatal(err)
		}
	}

	if err := wsutil.WriteClientText(conn, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	expect(ws.OpText, "HELLO")

	send(ws.OpText, false, "frag")
	send(ws.OpPing, true, "p")
	send(ws.OpContinuation, true, "mented")
	expect(ws.OpPong, "p")
	expect(ws.OpText, "FRAGMENTED")

	send(ws.OpBinary, true, "\x00")
	expect(ws.OpText, `{"cmd":"error","error":"binary frames are not supported"}`)

	big := strings.Repeat("b", 100*1024)
	if err := wsutil.WriteClientText(conn, []byte(big[:1024])); err != nil {
		t.Fatal(err)
	}
	expect(ws.OpText, strings.ToUpper(big[:1024]))
	// Over the cap: refused from the header alone. (Only the header is
	// sent: unread payload in the server's socket would turn its close
	// into a reset that can destroy the replies before they are read.)
	if _, err := conn.Write(rawHeader(ws.OpText, true, int64(len(big)))); err != nil {
		t.Fatal(err)
	}
	expect(ws.OpText, `{"cmd":"error","error":"line too long"}`)
	f := read()
	if code, _ := ws.ParseCloseFrameData(f.Payload); f.Header.OpCode != ws.OpClose || code != ws.StatusMessageTooBig {
		t.Fatalf("got %v code %d, want a close 1009", f.Header.OpCode, code)
	}
}

func TestEchoCloseHandshake(t *testing.T) {
	addr := startEcho(t, 0)
	conn, br, _, err := ws.Dial(context.Background(), "ws://"+addr+"/")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if br != nil {
		t.Fatal("unexpected bytes after the 101")
	}
	if err := ws.WriteFrame(conn, ws.MaskFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusGoingAway, "bye")))); err != nil {
		t.Fatal(err)
	}
	f, err := ws.ReadFrame(conn)
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := ws.ParseCloseFrameData(f.Payload); f.Header.OpCode != ws.OpClose || code != ws.StatusGoingAway {
		t.Fatalf("got %v %d, want the close echoed", f.Header.OpCode, code)
	}
	if _, err := ws.ReadFrame(conn); err == nil {
		t.Fatal("connection still open after the close")
	}
}

func TestEchoBadHandshakes(t *testing.T) {
	addr := startEcho(t, 0)
	for _, tc := range []struct {
		req    string
		status string
	}{
		{req: replace(upgradeReq("/"), "Sec-WebSocket-Version", "7"), status: "HTTP/1.1 426 "},
		{req: without(upgradeReq("/"), "Sec-WebSocket-Key"), status: "HTTP/1.1 400 "},
		{req: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", status: "HTTP/1.1 405 "},
		{req: "GET / HTTP/1.1\r\nHost: x\r\n\r\n", status: "HTTP/1.1 200 "},
	} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte(tc.req)); err != nil {
			t.Fatal(err)
		}
		resp, err := io.ReadAll(c) // until the server closes
		c.Close()
		if err != nil || !bytes.HasPrefix(resp, []byte(tc.status)) {
			t.Fatalf("%q: got %q (%v), want %q...", tc.req, resp, err, tc.status)
		}
	}
}
