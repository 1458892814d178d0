package codec

import "unsafe"

// fastWire decodes the common shape of a request without sonic: an object
// of distinct lower-case known keys whose values are strings without
// escapes or control characters, the id also a JSON integer, with JSON
// whitespace between tokens and nothing after the object. Anything else
// (an escape, null, a float, an unknown, repeated or differently cased key,
// a value of the wrong type, trailing bytes, any syntax error) returns false
// and is left to decodeWire, which it must then agree with: FuzzDecode holds
// the two to the same result on every line this accepts. line must be valid
// UTF-8 (Decode checks first).
//
// The strings are substrings of one copy of the line, as sonic's are: they
// outlive the line's buffer. The id aliases that copy too (capacity capped,
// so an append copies).
//
// Decode tries it only on lines up to fastMax bytes: it scans byte by byte,
// so sonic's vectorised scan is faster on long lines (1 KiB of content:
// about 1.45 µs against 1.24), and a long line that falls back late would
// be scanned twice.
func fastWire(line []byte) (w wire, ok bool) {
	w = wire{Cmd: absent, Name: absent, Send: absent, Recv: absent, Content: absent}
	i := skipWS(line, 0)
	if i == len(line) || line[i] != '{' {
		return w, false
	}
	i = skipWS(line, i+1)
	if i < len(line) && line[i] == '}' {
		return w, skipWS(line, i+1) == len(line)
	}
	type span struct{ a, b int }
	var vals [7]span // by field: cmd, name, token, send, recv, content, id
	var seen uint8
	for {
		// Key.
		if i == len(line) || line[i] != '"' {
			return w, false
		}
		ka := i + 1
		kb := scanString(line, ka)
		if kb < 0 {
			return w, false
		}
		f := fieldOf(line[ka:kb])
		if f < 0 || seen&(1<<f) != 0 {
			return w, false
		}
		seen |= 1 << f
		i = skipWS(line, kb+1)
		if i == len(line) || line[i] != ':' {
			return w, false
		}
		i = skipWS(line, i+1)
		if i == len(line) {
			return w, false
		}
		// Value: a string, or for the id an integer right before , or }.
		switch c := line[i]; {
		case c == '"':
			b := scanString(line, i+1)
			if b < 0 {
				return w, false
			}
			if f == fieldID {
				vals[f] = span{i, b + 1} // the id keeps its quotes
			} else {
				vals[f] = span{i + 1, b}
			}
			i = b + 1
		case f == fieldID && (c == '-' || (c >= '0' && c <= '9')):
			b := scanInt(line, i)
			if b < 0 || b == len(line) || (line[b] != ',' && line[b] != '}') {
				return w, false
			}
			vals[f] = span{i, b}
			i = b
		default:
			return w, false
		}
		i = skipWS(line, i)
		if i == len(line) {
			return w, false
		}
		if line[i] == '}' {
			if skipWS(line, i+1) != len(line) {
				return w, false
			}
			break
		}
		if line[i] != ',' {
			return w, false
		}
		i = skipWS(line, i+1)
	}
	s := string(line)
	str := func(f int, dst *string) {
		if seen&(1<<f) != 0 {
			*dst = s[vals[f].a:vals[f].b]
		}
	}
	str(fieldCmd, &w.Cmd)
	str(fieldName, &w.Name)
	str(fieldToken, &w.Token)
	str(fieldSend, &w.Send)
	str(fieldRecv, &w.Recv)
	str(fieldContent, &w.Content)
	if seen&(1<<fieldID) != 0 {
		id := s[vals[fieldID].a:vals[fieldID].b]
		w.ID = unsafe.Slice(unsafe.StringData(id), len(id))[:len(id):len(id)]
	}
	return w, true
}

const fastMax = 512

const (
	fieldCmd = iota
	fieldName
	fieldToken
	fieldSend
	fieldRecv
	fieldContent
	fieldID
)

func fieldOf(k []byte) int {
	switch string(k) {
	case "cmd":
		return fieldCmd
	case "name":
		return fieldName
	case "token":
		return fieldToken
	case "send":
		return fieldSend
	case "recv":
		return fieldRecv
	case "content":
		return fieldContent
	case "id":
		return fieldID
	}
	return -1
}

func skipWS(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\r', '\n':
			i++
		default:
			return i
		}
	}
	return i
}

// scanString returns the index of the quote closing a string whose body
// starts at i, or -1 at an escape, a control character or the end.
func scanString(b []byte, i int) int {
	for ; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			return i
		case c == '\\' || c < 0x20:
			return -1
		}
	}
	return -1
}

// scanInt returns the end of a JSON integer (-?(0|[1-9][0-9]*)) at i, or
// -1; a fraction or exponent after it is left to the caller's check of the
// next byte.
func scanInt(b []byte, i int) int {
	if b[i] == '-' {
		i++
	}
	if i == len(b) || b[i] < '0' || b[i] > '9' {
		return -1
	}
	if b[i] == '0' {
		return i + 1
	}
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i
}
