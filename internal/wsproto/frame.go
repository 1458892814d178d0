package wsproto

import (
	"bytes"
	"errors"
	"io"
	"strconv"

	"github.com/gobwas/ws"
)

// DefaultMax is a Reader's message cap when its Max is 0: the server's
// default -max-line.
const DefaultMax = 65536

// retainCap is how much reassembly buffer a Reader keeps between
// fragmented messages; a bigger one, grown for a big message, is dropped so
// an idle connection does not hold it.
const retainCap = 4096

// Kind is the kind of a Message.
type Kind uint8

const (
	// None: no complete message in the bytes given; feed more.
	None Kind = iota
	// Text: a complete text message in Payload.
	Text
	// Binary: a complete binary message. Its payload is discarded (Payload
	// is nil): the contract answers binary frames with an error line.
	Binary
	// Ping: answer with AppendPong(dst, Payload).
	Ping
	// Close: the peer closes. Answer with AppendClose(dst, Code, "") (an
	// echo of its status, or an empty close when Code is 0), then close the
	// connection. The Reader reports nothing after a Close.
	Close
)

// String returns the kind's name, for logs and test messages.
func (k Kind) String() string {
	switch k {
	case None:
		return "None"
	case Text:
		return "Text"
	case Binary:
		return "Binary"
	case Ping:
		return "Ping"
	case Close:
		return "Close"
	}
	return "Kind(?)"
}

// Message is one thing Reader.Next found.
//
// Payload aliases the buffer given to Next (unmasked in place) or the
// Reader's reassembly buffer: it is valid until the next call to Next, and
// only while the caller still holds that buffer (for gnet: until the next
// Discard, Next or Read on the connection). Copy what must outlive that.
type Message struct {
	Kind    Kind
	Payload []byte
	// Code is the status code of a Close (0 when the peer sent none).
	Code ws.StatusCode
}

// ErrTooBig is the cause of a CloseError for a frame or message over the
// Reader's Max: the server answers it like an over-long line.
var ErrTooBig = errors.New("wsproto: message too big")

// errCloseBody is the cause for a close frame whose body is one byte: a
// status code takes two (RFC 6455 section 5.5.1).
var errCloseBody = ws.ProtocolError("close frame body of one byte")

// ErrClosed is the cause of the CloseError Next returns once a Close has
// been reported, or after an earlier error.
var ErrClosed = errors.New("wsproto: connection is closing")

// CloseError is every error Next returns: the connection has failed. Send
// AppendClose(dst, Code, "") (best effort) and close the connection.
type CloseError struct {
	// Code is the close status to send: 1009 (message too big) for
	// ErrTooBig, 1002 (protocol error) otherwise.
	Code ws.StatusCode
	// Err is the cause: ErrTooBig, ErrClosed, or one of gobwas/ws's
	// ws.ProtocolError values or header errors.
	Err error
}

func (e *CloseError) Error() string {
	return "wsproto: closing with status " + strconv.Itoa(int(e.Code)) + ": " + e.Err.Error()
}

// Unwrap returns the cause, for errors.Is.
func (e *CloseError) Unwrap() error { return e.Err }

// Reader is the per-connection state of the frame parser. The zero value
// is ready to use, with Max = DefaultMax. A Reader is not safe for
// concurrent use; an event loop owns it with its connection.
type Reader struct {
	// Max caps a message's payload in bytes (after reassembly of its
	// fragments); the server sets its -max-line. 0 means DefaultMax.
	// Control frames are capped at 125 bytes by the RFC whatever Max is.
	Max int

	br   bytes.Reader           // over the unparsed input, for ws.ReadHeaderBuffer
	hdr  [ws.MaxHeaderSize]byte // ws.ReadHeaderBuffer's scratch
	frag ws.OpCode              // opcode of the fragmented message in progress, 0 if none
	size int                    // payload bytes of that message so far
	msg  []byte                 // its text payload so far
	err  *CloseError            // set once failed or closed: every later Next returns it
}

// Next parses the frames at the start of buf, the bytes received and not yet
// consumed, and returns the first complete message, or Kind None when buf
// holds none yet. n is the number of bytes it consumed (complete frames,
// including pongs and fragments it absorbed): discard them before calling
// Next again, and call it again while it returns a message, since buf may
// hold more.
//
// Next unmasks each complete frame's payload in place in buf, and touches
// nothing past buf[:n]. So the consumed bytes must not be parsed again: a
// caller that cannot act on a whole Text payload now must copy the rest
// before discarding n bytes.
//
// A frame or message whose declared length exceeds Max is refused from its
// header, before its payload arrives. On error (always a *CloseError), n
// counts the frames consumed before the bad one; the connection must be
// closed.
func (r *Reader) Next(buf []byte) (m Message, n int, err error) {
	if r.err != nil {
		return Message{}, 0, r.err
	}
	if r.frag == 0 && cap(r.msg) > retainCap {
		r.msg = nil
	}
	max := int64(r.Max)
	if max <= 0 {
		max = DefaultMax
	}
	for {
		rest := buf[n:]
		r.br.Reset(rest)
		h, err := ws.ReadHeaderBuffer(&r.br, r.hdr[:])
		switch {
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			return Message{}, n, nil
		case err != nil:
			return Message{}, n, r.fail(ws.StatusProtocolError, err)
		}
		state := ws.StateServerSide
		if r.frag != 0 {
			state |= ws.StateFragmented
		}
		if err := ws.CheckHeader(h, state); err != nil {
			return Message{}, n, r.fail(ws.StatusProtocolError, err)
		}
		if h.OpCode.IsData() && h.Length > max-int64(r.size) {
			return Message{}, n, r.fail(ws.StatusMessageTooBig, ErrTooBig)
		}
		hs := len(rest) - r.br.Len()
		if int64(len(rest)-hs) < h.Length {
			return Message{}, n, nil
		}
		p := rest[hs : hs+int(h.Length)]
		ws.Cipher(p, h.Mask, 0)
		n += hs + len(p)

		switch h.OpCode {
		case ws.OpPong:
			continue
		case ws.OpPing:
			return Message{Kind: Ping, Payload: p}, n, nil
		case ws.OpClose:
			return r.close(p, n)
		case ws.OpText, ws.OpBinary:
			if h.Fin {
				if h.OpCode == ws.OpBinary {
					return Message{Kind: Binary}, n, nil
				}
				return Message{Kind: Text, Payload: p}, n, nil
			}
			r.frag, r.size = h.OpCode, len(p)
			if h.OpCode == ws.OpText {
				r.msg = append(r.msg[:0], p...)
			}
		case ws.OpContinuation:
			r.size += len(p)
			if r.frag == ws.OpText {
				r.msg = append(r.msg, p...)
			}
			if h.Fin {
				op := r.frag
				r.frag, r.size = 0, 0
				if op == ws.OpBinary {
					return Message{Kind: Binary}, n, nil
				}
				return Message{Kind: Text, Payload: r.msg}, n, nil
			}
		}
	}
}

// close checks a close frame's body and reports it.
func (r *Reader) close(p []byte, n int) (Message, int, error) {
	var code ws.StatusCode
	switch {
	case len(p) == 1:
		return Message{}, n, r.fail(ws.StatusProtocolError, errCloseBody)
	case len(p) >= 2:
		var reason string
		code, reason = ws.ParseCloseFrameDataUnsafe(p)
		if err := ws.CheckCloseFrameData(code, reason); err != nil {
			return Message{}, n, r.fail(ws.StatusProtocolError, err)
		}
	}
	r.err = &CloseError{Code: ws.StatusNormalClosure, Err: ErrClosed}
	return Message{Kind: Close, Payload: p, Code: code}, n, nil
}

// fail records the connection's failure; later calls return the same.
func (r *Reader) fail(code ws.StatusCode, cause error) error {
	r.err = &CloseError{Code: code, Err: cause}
	r.frag, r.size, r.msg = 0, 0, nil
	return r.err
}

// Buffered returns the bytes of a fragmented message the Reader holds
// (0 between messages), for accounting.
func (r *Reader) Buffered() int { return len(r.msg) }

// CloseCode returns the close status for an error from Next: the
// CloseError's Code, or 1011 (internal error) for any other error.
func CloseCode(err error) ws.StatusCode {
	var ce *CloseError
	if errors.As(err, &ce) {
		return ce.Code
	}
	return ws.StatusInternalServerError
}
