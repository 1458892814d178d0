package testenv

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// wsMaxFrame bounds what the test client accepts in one server frame.
const wsMaxFrame = 16 << 20

// WSClient is a WebSocket client (gobwas/ws's dialer) with the line-client
// helpers of Client: each text frame the server sends is one "line" (its
// payload, without one trailing "\n" or "\r\n"), so ReadJSON, Expect,
// ExpectNothing and ExpectClosed work as they do over TCP. A frame holding
// more than one line therefore shows up as a line that is not one JSON
// object. A binary frame shows up as the line "<binary frame: N bytes>".
//
// Everything written through the embedded Client goes out as masked text
// frames, one per write: Send(line) sends a frame holding line, and
// Client.SendRaw(b) a frame holding b, so helpers written for TCP clients
// (which send line+"\n") send one request per frame, newline included, as
// the contract allows. SendFrame and Ping send other frames; SendBytes
// writes raw bytes to the socket (e.g. hand-made frames).
//
// A background goroutine reads frames: it answers pings, queues pongs for
// ExpectPong, and on a close frame records its status (CloseStatus) and
// ends the lines. The methods are for the test goroutine.
type WSClient struct {
	*Client
	raw   net.Conn // the socket itself; Client.conn frames what it writes
	pongs chan []byte
	// closeCode and closeReason are written by the reader before it closes
	// lines, and read by the test goroutine only after seeing lines closed.
	closeCode   ws.StatusCode
	closeReason string
	gotClose    bool
}

// DialWS connects to ws://addr+path (5s timeout) and closes the connection
// in t.Cleanup. It fails the test if the connection or the upgrade fails.
func DialWS(t testing.TB, addr, path string) *WSClient {
	t.Helper()
	return DialWSURL(t, "ws://"+addr+path, nil)
}

// DialWSURL connects to a ws:// or wss:// URL; tlsConfig is used for wss://
// (nil: the system roots). See DialWS.
func DialWSURL(t testing.TB, url string, tlsConfig *tls.Config) *WSClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d := ws.Dialer{TLSConfig: tlsConfig, Timeout: 5 * time.Second}
	conn, br, _, err := d.Dial(ctx, url)
	if err != nil {
		t.Fatalf("testenv: websocket dial %s: %v", url, err)
	}
	c := &WSClient{
		Client: &Client{
			addr:  url,
			conn:  textFramer{conn},
			lines: make(chan string, clientQueue),
			stop:  make(chan struct{}),
		},
		raw:   conn,
		pongs: make(chan []byte, 16),
	}
	var r io.Reader = conn
	if br != nil {
		// Frames that arrived with the 101 are in br.
		r = io.MultiReader(br, conn)
	}
	go c.readFrames(r)
	t.Cleanup(c.Close)
	return c
}

func (c *WSClient) readFrames(r io.Reader) {
	var (
		msg    []byte // the message so far (text)
		size   int    // its size so far (text or binary)
		binary bool
	)
	for {
		h, err := ws.ReadHeader(r)
		if err == nil && h.Length > wsMaxFrame {
			err = fmt.Errorf("server frame of %d bytes, over the test client's %d", h.Length, wsMaxFrame)
		}
		if err == nil && h.Masked {
			err = errors.New("server sent a masked frame (RFC 6455 section 5.1 forbids it)")
		}
		var p []byte
		if err == nil {
			p = make([]byte, h.Length)
			_, err = io.ReadFull(r, p)
		}
		if err != nil {
			c.finish(err)
			return
		}
		switch h.OpCode {
		case ws.OpPing:
			_ = c.write(ws.NewPongFrame(p))
			continue
		case ws.OpPong:
			select {
			case c.pongs <- p:
			default:
			}
			continue
		case ws.OpClose:
			c.gotClose = true
			c.closeCode, c.closeReason = ws.ParseCloseFrameData(p)
			_ = c.write(ws.NewCloseFrame(p)) // echo, as RFC 6455 section 5.5.1 asks
			c.finish(fmt.Errorf("websocket close frame, status %d %q", c.closeCode, c.closeReason))
			return
		case ws.OpText, ws.OpBinary:
			msg, size, binary = append(msg[:0], p...), len(p), h.OpCode == ws.OpBinary
		case ws.OpContinuation:
			msg, size = append(msg, p...), size+len(p)
		}
		if !h.Fin {
			continue
		}
		line := strings.TrimSuffix(strings.TrimSuffix(string(msg), "\n"), "\r")
		if binary {
			line = fmt.Sprintf("<binary frame: %d bytes>", size)
		}
		select {
		case c.lines <- line:
		case <-c.stop:
			c.finish(errClosedByTest)
			return
		}
	}
}

// finish ends the lines with err, like Client's reader does.
func (c *WSClient) finish(err error) {
	select {
	case <-c.stop:
		err = errClosedByTest
	default:
	}
	c.readErr = err
	close(c.lines)
}

// write sends one masked client frame.
func (c *WSClient) write(f ws.Frame) error {
	if err := c.raw.SetWriteDeadline(time.Now().Add(writeTimeout)); err != nil {
		return err
	}
	return writeFrame(c.raw, f)
}

// writeFrame sends one masked client frame in a single Write (net.Conn and
// tls.Conn keep concurrent Writes whole, so the reader's pongs cannot
// interleave with the test's frames).
func writeFrame(conn net.Conn, f ws.Frame) error {
	b, err := ws.CompileFrame(ws.MaskFrame(f))
	if err != nil {
		return err
	}
	_, err = conn.Write(b)
	return err
}

// textFramer is the connection the embedded Client writes to: each Write
// goes out as one masked text frame.
type textFramer struct{ net.Conn }

func (f textFramer) Write(p []byte) (int, error) {
	if err := writeFrame(f.Conn, ws.NewTextFrame(p)); err != nil {
		return 0, err
	}
	return len(p), nil
}

// SendBytes writes b to the socket as is, not framed: for hand-made frames
// (unmasked, reserved opcodes, a header without its payload).
func (c *WSClient) SendBytes(t testing.TB, b []byte) {
	t.Helper()
	if err := c.raw.SetWriteDeadline(time.Now().Add(writeTimeout)); err != nil {
		t.Fatalf("testenv: %s: %v", c.addr, err)
	}
	if _, err := c.raw.Write(b); err != nil {
		t.Fatalf("testenv: %s: write: %v; read so far:%s", c.addr, err, c.sofar())
	}
}

// Send sends line as one text frame (no newline added).
func (c *WSClient) Send(t testing.TB, line string) {
	t.Helper()
	c.SendFrame(t, ws.OpText, true, []byte(line))
}

// SendFrame sends one masked frame with the given opcode and FIN bit, e.g.
// the parts of a fragmented message or a binary frame.
func (c *WSClient) SendFrame(t testing.TB, op ws.OpCode, fin bool, payload []byte) {
	t.Helper()
	if err := c.write(ws.NewFrame(op, fin, payload)); err != nil {
		t.Fatalf("testenv: %s: write frame: %v; read so far:%s", c.addr, err, c.sofar())
	}
}

// Ping sends a ping frame with payload (at most 125 bytes).
func (c *WSClient) Ping(t testing.TB, payload []byte) {
	t.Helper()
	c.SendFrame(t, ws.OpPing, true, payload)
}

// ExpectPong waits up to timeout for a pong and returns its payload.
func (c *WSClient) ExpectPong(t testing.TB, timeout time.Duration) []byte {
	t.Helper()
	select {
	case p := <-c.pongs:
		return p
	case <-time.After(timeout):
		t.Fatalf("testenv: %s: no pong within %v; read so far:%s", c.addr, timeout, c.sofar())
		return nil
	}
}

// CloseStatus reports the status of the server's close frame, once the
// test has seen the connection end (after ExpectClosed or NextLine said
// so); ok is false if the connection ended without a close frame.
func (c *WSClient) CloseStatus() (code ws.StatusCode, reason string, ok bool) {
	if !c.eof {
		return 0, "", false
	}
	return c.closeCode, c.closeReason, c.gotClose
}

// RawHTTP sends req as is to addr and returns everything the server sends
// until it closes the connection (at most 1 MiB, 10s). For handshakes that
// must fail and for plain HTTP on a WebSocket port.
func RawHTTP(t testing.TB, addr, req string) string {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("testenv: dial %s: %v", addr, err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatalf("testenv: %s: %v", addr, err)
	}
	if _, err := conn.Write([]byte(req)); err != nil {
		t.Fatalf("testenv: %s: write: %v", addr, err)
	}
	var out bytes.Buffer
	_, err = io.Copy(&out, io.LimitReader(conn, 1<<20))
	if err != nil && !errors.Is(err, net.ErrClosed) && !isReset(err) {
		t.Fatalf("testenv: %s: read the response: %v; got %q", addr, err, out.String())
	}
	return out.String()
}

func isReset(err error) bool {
	return strings.Contains(err.Error(), "connection reset by peer")
}

// DialTLS is Dial over TLS (a 5s timeout for connect and handshake), for a
// client port behind a TLS terminator: the same line client, encrypted.
func DialTLS(t testing.TB, addr string, cfg *tls.Config) *Client {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatalf("testenv: TLS dial %s: %v", addr, err)
	}
	c := &Client{
		addr:  "tls://" + addr,
		conn:  conn,
		lines: make(chan string, clientQueue),
		stop:  make(chan struct{}),
	}
	go c.read()
	t.Cleanup(c.Close)
	return c
}
