package bench

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"

	"github.com/gobwas/ws"
)

// Transports a client can speak. The same requests, replies and checks run
// over either; only the framing differs.
const (
	// TransportTCP is the line protocol: one JSON object per line.
	TransportTCP = "tcp"
	// TransportWS is WebSocket (RFC 6455): each request goes out as one
	// masked text frame, and each text frame received holds one JSON
	// object (or several, separated by newlines; a trailing newline is
	// allowed).
	TransportWS = "ws"
)

// lineSource yields the JSON objects a server sends a client, one per
// call, without line ends. A returned slice is valid until the next call.
// Only the client's reader goroutine calls it.
type lineSource interface {
	next() ([]byte, error)
}

// tcpLines reads newline-terminated lines.
type tcpLines struct {
	br   *bufio.Reader
	long []byte // reused for lines longer than br's buffer
}

func (t *tcpLines) next() ([]byte, error) { return readLine(t.br, &t.long) }

// wsLines reads WebSocket frames and yields the lines of each text
// message. It answers pings with pongs through c's writer.
type wsLines struct {
	br   *bufio.Reader
	conn io.Writer   // where pongs go: the client's connection
	wmu  *sync.Mutex // the client's write lock
	hdr  []byte      // header scratch for ws.ReadHeaderBuffer
	buf  []byte      // the current frame's payload
	msg  []byte      // a fragmented message being put together
	frag bool        // inside a fragmented message
	rest []byte      // lines of the current message not yet returned
}

func newWSLines(br *bufio.Reader, conn io.Writer, wmu *sync.Mutex) *wsLines {
	return &wsLines{br: br, conn: conn, wmu: wmu, hdr: make([]byte, 2, ws.MaxHeaderSize-2)}
}

// errWSClosed is returned when the server sends a close frame.
var errWSClosed = errors.New("websocket closed by the server")

func (w *wsLines) next() ([]byte, error) {
	for {
		for len(w.rest) > 0 {
			line := w.rest
			if i := indexByte(line, '\n'); i >= 0 {
				line, w.rest = line[:i], line[i+1:]
			} else {
				w.rest = nil
			}
			if n := len(line); n > 0 && line[n-1] == '\r' {
				line = line[:n-1]
			}
			if len(line) > 0 {
				return line, nil
			}
		}
		h, err := ws.ReadHeaderBuffer(w.br, w.hdr)
		if err != nil {
			return nil, err
		}
		if h.Length > maxLine || (w.frag && int64(len(w.msg))+h.Length > maxLine) {
			return nil, errLineTooLong
		}
		n := int(h.Length)
		if cap(w.buf) < n {
			w.buf = make([]byte, n, max(n, 2*cap(w.buf)))
		}
		p := w.buf[:n]
		if _, err := io.ReadFull(w.br, p); err != nil {
			return nil, err
		}
		if h.Masked { // servers must not mask, but unmasking costs nothing to allow
			ws.Cipher(p, h.Mask, 0)
		}
		switch h.OpCode {
		case ws.OpPing:
			pong := appendWSFrame(nil, ws.OpPong, p, ws.NewMask())
			w.wmu.Lock()
			_, err := w.conn.Write(pong)
			w.wmu.Unlock()
			if err != nil {
				return nil, err
			}
		case ws.OpPong:
		case ws.OpClose:
			return nil, errWSClosed
		case ws.OpContinuation:
			if !w.frag {
				return nil, errors.New("websocket continuation frame outside a message")
			}
			w.msg = append(w.msg, p...)
			if h.Fin {
				w.frag, w.rest = false, w.msg
			}
		case ws.OpText:
			if w.frag {
				return nil, errors.New("websocket text frame inside a fragmented message")
			}
			if h.Fin {
				w.rest = p
			} else {
				w.frag, w.msg = true, append(w.msg[:0], p...)
			}
		default:
			return nil, fmt.Errorf("websocket frame with opcode %d", h.OpCode)
		}
	}
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// appendWSFrame appends one final client frame (masked with mask, as RFC
// 6455 requires of clients) carrying payload.
func appendWSFrame(dst []byte, op ws.OpCode, payload []byte, mask [4]byte) []byte {
	dst = append(dst, 0x80|byte(op))
	n := len(payload)
	switch {
	case n < 126:
		dst = append(dst, 0x80|byte(n))
	case n <= 0xffff:
		dst = append(dst, 0x80|126)
		dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, 0x80|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	dst = append(dst, mask[:]...)
	start := len(dst)
	dst = append(dst, payload...)
	ws.Cipher(dst[start:], mask, 0)
	return dst
}

// appendWSText frames one request line (its '\n' dropped) as a text frame.
func appendWSText(dst, line []byte, mask [4]byte) []byte {
	if n := len(line); n > 0 && line[n-1] == '\n' {
		line = line[:n-1]
	}
	return appendWSFrame(dst, ws.OpText, line, mask)
}

// maskOf turns 32 random bits into a masking key.
func maskOf(v uint32) (m [4]byte) {
	binary.LittleEndian.PutUint32(m[:], v)
	return m
}

// wsUpgrade runs the WebSocket opening handshake on conn, connected to
// addr, and returns the reader to read frames from.
func wsUpgrade(conn net.Conn, addr string) (*bufio.Reader, error) {
	u := &url.URL{Scheme: "ws", Host: addr, Path: "/"}
	br, _, err := ws.Dialer{}.Upgrade(conn, u)
	if err != nil {
		return nil, err
	}
	if br == nil {
		br = bufio.NewReaderSize(conn, readBufSize)
	}
	return br, nil
}
