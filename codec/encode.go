package codec

import (
	"strconv"
	"unicode/utf8"
)

// The Append functions append one complete JSON line, "\n" included, to dst
// and return the extended slice, like strconv.Append*. They allocate only
// when dst has too little capacity. Strings are escaped per RFC 8259; invalid
// UTF-8 is replaced with U+FFFD, so the output is always valid JSON.

// AppendLoginOK appends {"cmd":"login","ok":true,"name":...,"server":...}.
func AppendLoginOK(dst []byte, name, server string) []byte {
	dst = append(dst, `{"cmd":"login","ok":true,"name":`...)
	dst = AppendString(dst, name)
	dst = append(dst, `,"server":`...)
	dst = AppendString(dst, server)
	return append(dst, "}\n"...)
}

// AppendPong appends {"cmd":"pong"}, with the request's id when it had one.
func AppendPong(dst, id []byte) []byte {
	dst = append(dst, `{"cmd":"pong"`...)
	return closeWithID(dst, id)
}

// AppendLogoutOK appends {"cmd":"logout","ok":true}, with id when present.
func AppendLogoutOK(dst, id []byte) []byte {
	dst = append(dst, `{"cmd":"logout","ok":true`...)
	return closeWithID(dst, id)
}

// AppendAck appends {"cmd":"ack","id":<id>}. id must be non-empty JSON text
// (as Request.ID).
func AppendAck(dst, id []byte) []byte {
	dst = append(dst, `{"cmd":"ack","id":`...)
	dst = append(dst, id...)
	return append(dst, "}\n"...)
}

// AppendAckStored appends {"cmd":"ack","id":<id>,"stored":true}: the chat
// was stored in the offline recipient's mailbox.
func AppendAckStored(dst, id []byte) []byte {
	dst = append(dst, `{"cmd":"ack","id":`...)
	dst = append(dst, id...)
	return append(dst, `,"stored":true}`+"\n"...)
}

// AppendStoredDelivery appends a stored chat's delivery: line (a delivery
// object as AppendDelivery writes it, without the newline) with
// "stored":true added.
func AppendStoredDelivery(dst, line []byte) []byte {
	if n := len(line); n > 0 && line[n-1] == '}' {
		line = line[:n-1]
	}
	dst = append(dst, line...)
	return append(dst, `,"stored":true}`+"\n"...)
}

// AppendError appends {"cmd":"error","error":<reason>}, with "id" when id is
// non-nil.
func AppendError(dst []byte, reason string, id []byte) []byte {
	dst = append(dst, `{"cmd":"error","error":`...)
	dst = AppendString(dst, reason)
	return closeWithID(dst, id)
}

// AppendKicked appends {"cmd":"kicked","reason":<reason>}.
func AppendKicked(dst []byte, reason string) []byte {
	dst = append(dst, `{"cmd":"kicked","reason":`...)
	dst = AppendString(dst, reason)
	return append(dst, "}\n"...)
}

// AppendDelivery appends the line a recipient receives:
// {"cmd":"chat","send":...,"recv":...,"content":...,"ts":<unix ms>}.
func AppendDelivery(dst []byte, send, recv, content string, tsMillis int64) []byte {
	dst = append(dst, `{"cmd":"chat","send":`...)
	dst = AppendString(dst, send)
	dst = append(dst, `,"recv":`...)
	dst = AppendString(dst, recv)
	dst = append(dst, `,"content":`...)
	dst = AppendString(dst, content)
	dst = append(dst, `,"ts":`...)
	dst = strconv.AppendInt(dst, tsMillis, 10)
	return append(dst, "}\n"...)
}

func closeWithID(dst, id []byte) []byte {
	if id != nil {
		dst = append(dst, `,"id":`...)
		dst = append(dst, id...)
	}
	return append(dst, "}\n"...)
}

const hexDigits = "0123456789abcdef"

// safe[c] is true for ASCII bytes that need no escaping inside a JSON string.
var safe = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return
}()

// AppendString appends s as a JSON string, quotes included.
func AppendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if safe[c] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
