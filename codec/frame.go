package codec

import "bytes"

// DefaultMaxLine is the default cap on one request line, in bytes, not
// counting the terminating "\n" or a "\r" just before it.
const DefaultMaxLine = 65536

// NextLine finds the first complete line in buf.
//
// It returns the line without its "\n" and without a "\r" just before it, and
// n, the number of bytes of buf the line used, terminator included. n == 0
// means buf holds no complete line yet: keep the bytes and wait for more.
// line aliases buf, so it is valid only as long as buf is.
//
// If the line is longer than max bytes, or buf holds more than max bytes with
// no "\n" (max+1 are tolerated when the last is a "\r"), err is
// ErrLineTooLong and n is 0:
// the caller must not buffer more. The check looks at no more than max+2
// bytes of buf, so it costs the same however much is buffered.
func NextLine(buf []byte, max int) (line []byte, n int, err error) {
	limit := len(buf)
	if limit > max+2 {
		limit = max + 2
	}
	i := bytes.IndexByte(buf[:limit], '\n')
	if i < 0 {
		if len(buf) > max+1 || (len(buf) == max+1 && buf[max] != '\r') {
			return nil, 0, ErrLineTooLong
		}
		return nil, 0, nil
	}
	line = buf[:i]
	if i > 0 && line[i-1] == '\r' {
		line = line[:i-1]
	}
	if len(line) > max {
		return nil, 0, ErrLineTooLong
	}
	return line, i + 1, nil
}

// IsBlank reports whether line holds only spaces and tabs (or nothing).
// Blank lines are ignored by the protocol.
func IsBlank(line []byte) bool {
	for _, c := range line {
		if c != ' ' && c != '\t' {
			return false
		}
	}
	return true
}
