package bench

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
)

// Message content layout. Every chat the bench sends carries, inside its
// content, the run tag, the sender's global client index, the sender's pair
// slot, the per-pair sequence number and the send time (nanoseconds on the
// sending process's monotonic clock, which is also the receiving process's,
// since pairs never span worker processes):
//
//	<tag 8 hex>:<sender>:<slot>:<seq>:<ts>:xxxxxxxx...
//
// padded with 'x' to the requested size. The header holds only characters
// that JSON never escapes, so the receiver can slice the content out of the
// delivery line without unescaping.
const (
	tagLen = 8
	// maxHeaderLen bounds the header: tag, four decimal numbers and colons.
	maxHeaderLen = tagLen + 1 + 20 + 1 + 20 + 1 + 10 + 1 + 20 + 1
	padByte      = 'x'
)

// stamp is what the receiver learns from a delivery's content.
type stamp struct {
	sender int    // global client index of the sender
	slot   int    // pair slot of the sender (which recipient)
	seq    uint32 // per-pair sequence number, starting at 1
	ts     int64  // send time, nanoseconds since the engine's base
}

var padding = bytes.Repeat([]byte{padByte}, 4096)

// appendContent appends the content of one chat to dst: the header, then
// padding so the content is size bytes long. When the header alone is
// longer than size, the content is just the header.
func appendContent(dst []byte, tag *[tagLen]byte, st stamp, size int) []byte {
	start := len(dst)
	dst = append(dst, tag[:]...)
	dst = append(dst, ':')
	dst = strconv.AppendInt(dst, int64(st.sender), 10)
	dst = append(dst, ':')
	dst = strconv.AppendInt(dst, int64(st.slot), 10)
	dst = append(dst, ':')
	dst = strconv.AppendUint(dst, uint64(st.seq), 10)
	dst = append(dst, ':')
	dst = strconv.AppendInt(dst, st.ts, 10)
	dst = append(dst, ':')
	for n := size - (len(dst) - start); n > 0; {
		k := min(n, len(padding))
		dst = append(dst, padding[:k]...)
		n -= k
	}
	return dst
}

// parseContent reads the header of a content written by appendContent with
// the same tag. ok is false for content from another run or not written by
// the bench at all.
func parseContent(c []byte, tag *[tagLen]byte) (st stamp, ok bool) {
	if len(c) < tagLen+1 || !bytes.Equal(c[:tagLen], tag[:]) || c[tagLen] != ':' {
		return st, false
	}
	p := c[tagLen+1:]
	var v [4]uint64
	for i := range v {
		n, rest, ok := parseUint(p)
		if !ok || len(rest) == 0 || rest[0] != ':' {
			return st, false
		}
		v[i] = n
		p = rest[1:]
	}
	if v[0] > 1<<31 || v[1] > 1<<16 || v[2] > 1<<32-1 || v[3] > 1<<63-1 {
		return st, false
	}
	return stamp{sender: int(v[0]), slot: int(v[1]), seq: uint32(v[2]), ts: int64(v[3])}, true
}

// parseUint parses a decimal prefix of p (at most 19 digits).
func parseUint(p []byte) (n uint64, rest []byte, ok bool) {
	i := 0
	for ; i < len(p) && i < 19; i++ {
		d := p[i] - '0'
		if d > 9 {
			break
		}
		n = n*10 + uint64(d)
	}
	return n, p[i:], i > 0
}

var (
	lineChatPrefix = []byte(`{"cmd":"chat","recv":"`)
	lineContent    = []byte(`","content":"`)
)

// appendChat appends one chat request line (with its '\n') to dst. id is
// added as "id" when withID is set, which makes the server answer with an
// ack.
func appendChat(dst []byte, recv string, tag *[tagLen]byte, st stamp, size int, id uint64, withID bool) []byte {
	dst = append(dst, lineChatPrefix...)
	dst = append(dst, recv...)
	dst = append(dst, lineContent...)
	dst = appendContent(dst, tag, st, size)
	dst = append(dst, '"')
	if withID {
		dst = append(dst, `,"id":`...)
		dst = strconv.AppendUint(dst, id, 10)
	}
	return append(dst, "}\n"...)
}

// appendLogin appends a login request line, the bytes a telnet user types.
func appendLogin(dst []byte, name string) []byte {
	dst = append(dst, `{"cmd":"login","name":"`...)
	dst = append(dst, name...)
	return append(dst, "\"}\n"...)
}

var (
	keyCmd     = []byte(`"cmd"`)
	keyContent = []byte(`"content"`)
	keyServer  = []byte(`"server"`)
	keyOK      = []byte(`"ok"`)
	keyError   = []byte(`"error"`)
	keyReason  = []byte(`"reason"`)
	keyID      = []byte(`"id"`)
)

// jsonField finds the top-level-looking member key (given with its quotes)
// in one JSON object line and returns its raw value: for a string, the bytes
// between the quotes, still escaped; otherwise the literal up to the next
// ',' or '}'. It does not validate the line; it is a cheap scan for lines a
// server wrote. The returned slice aliases line.
func jsonField(line, key []byte) (val []byte, isString, ok bool) {
	off := 0
	for {
		i := bytes.Index(line[off:], key)
		if i < 0 {
			return nil, false, false
		}
		p := off + i + len(key)
		off = p
		p = skipSpace(line, p)
		if p >= len(line) || line[p] != ':' {
			continue
		}
		p = skipSpace(line, p+1)
		if p >= len(line) {
			return nil, false, false
		}
		if line[p] == '"' {
			start := p + 1
			for q := start; q < len(line); q++ {
				switch line[q] {
				case '\\':
					q++
				case '"':
					return line[start:q], true, true
				}
			}
			return nil, false, false
		}
		start := p
		for p < len(line) && line[p] != ',' && line[p] != '}' && line[p] != ' ' {
			p++
		}
		return line[start:p], false, true
	}
}

func skipSpace(b []byte, p int) int {
	for p < len(b) && (b[p] == ' ' || b[p] == '\t') {
		p++
	}
	return p
}

// jsonText returns the field's string value unescaped (for rare lines such
// as errors, where allocating is fine), or its raw literal.
func jsonText(line, key []byte) (string, bool) {
	v, isStr, ok := jsonField(line, key)
	if !ok {
		return "", false
	}
	if !isStr {
		return string(v), true
	}
	if bytes.IndexByte(v, '\\') < 0 {
		return string(v), true
	}
	var s string
	q := make([]byte, 0, len(v)+2)
	q = append(append(append(q, '"'), v...), '"')
	if json.Unmarshal(q, &s) != nil {
		return string(v), true
	}
	return s, true
}

// maxLine bounds one line the bench will read from a server; past it the
// connection counts as broken.
const maxLine = 1 << 20

var errLineTooLong = errors.New("bench: line longer than 1 MiB from server")

// readLine returns the next line from br without its "\n" or "\r\n". The
// slice is valid until the next call. Lines longer than br's buffer are
// collected in *long, which is reused across calls.
func readLine(br *bufio.Reader, long *[]byte) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		buf := append((*long)[:0], line...)
		for err == bufio.ErrBufferFull {
			line, err = br.ReadSlice('\n')
			buf = append(buf, line...)
			if len(buf) > maxLine {
				return nil, errLineTooLong
			}
		}
		*long = buf
		line = buf
	}
	if err != nil {
		return nil, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}
