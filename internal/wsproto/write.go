package wsproto

import (
	"bytes"
	"encoding/binary"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// MaxServerHeader is the longest header of a server frame (unmasked, with a
// 64-bit length).
const MaxServerHeader = 10

// AppendText appends payload as one unfragmented text frame. Server frames
// are never masked (RFC 6455 section 5.1).
func AppendText(dst, payload []byte) []byte {
	return AppendFrame(dst, ws.OpText, payload)
}

// AppendPong appends a pong answering a ping with this payload (at most 125
// bytes, as Reader guarantees for a ping).
func AppendPong(dst, payload []byte) []byte {
	return AppendFrame(dst, ws.OpPong, payload)
}

// AppendClose appends a close frame with code and reason; code 0 sends an
// empty body (no status). The reason is cut to fit the 125-byte control
// frame limit, at a UTF-8 boundary.
func AppendClose(dst []byte, code ws.StatusCode, reason string) []byte {
	if code == 0 {
		return AppendFrame(dst, ws.OpClose, nil)
	}
	if len(reason) > ws.MaxControlFramePayloadSize-2 {
		reason = reason[:ws.MaxControlFramePayloadSize-2]
		for len(reason) > 0 && !utf8.ValidString(reason) {
			reason = reason[:len(reason)-1]
		}
	}
	var body [ws.MaxControlFramePayloadSize]byte
	ws.PutCloseFrameBody(body[:], code, reason)
	return AppendFrame(dst, ws.OpClose, body[:2+len(reason)])
}

// AppendFrame appends one final, unmasked frame of opcode op.
func AppendFrame(dst []byte, op ws.OpCode, payload []byte) []byte {
	dst = appendHeader(dst, op, len(payload))
	return append(dst, payload...)
}

// appendHeader appends the header of a final unmasked frame with an n-byte
// payload: the encoding of ws.WriteHeaderBuffer, without its io.Writer.
func appendHeader(dst []byte, op ws.OpCode, n int) []byte {
	b0 := 0x80 | byte(op)
	switch {
	case n <= 125:
		return append(dst, b0, byte(n))
	case n <= 0xffff:
		return append(dst, b0, 126, byte(n>>8), byte(n))
	default:
		return binary.BigEndian.AppendUint64(append(dst, b0, 127), uint64(n))
	}
}

// BeginText reserves room for a text frame's header at the end of dst, so
// the payload can be appended straight after it (e.g. by a JSON encoder);
// EndText(out, start) then writes the header. Nothing else may be appended
// in between.
func BeginText(dst []byte) (out []byte, start int) {
	start = len(dst)
	return append(dst, make([]byte, MaxServerHeader)...), start
}

// EndText completes the frame begun at start by BeginText: everything
// appended after the reserved room is its payload. The header takes 2, 4
// or 10 bytes; a shorter one than reserved moves the payload back over the
// gap (a memmove of the payload, cheap next to encoding it).
func EndText(dst []byte, start int) []byte {
	payload := len(dst) - start - MaxServerHeader
	var h [MaxServerHeader]byte
	hdr := appendHeader(h[:0], ws.OpText, payload)
	gap := MaxServerHeader - len(hdr)
	copy(dst[start:], hdr)
	copy(dst[start+len(hdr):], dst[start+MaxServerHeader:])
	return dst[:len(dst)-gap]
}

// FrameLines appends one text frame for each complete line in lines (each
// ending in '\n', which is left out of the frame, as is a '\r' before it;
// empty lines are skipped) and returns the bytes after the last '\n'. It
// turns a batch of newline-terminated replies, as the TCP transport writes
// them, into WebSocket frames.
func FrameLines(dst, lines []byte) (out, rest []byte) {
	for {
		i := bytes.IndexByte(lines, '\n')
		if i < 0 {
			return dst, lines
		}
		line := bytes.TrimSuffix(lines[:i], []byte{'\r'})
		if len(line) > 0 {
			dst = AppendText(dst, line)
		}
		lines = lines[i+1:]
	}
}
