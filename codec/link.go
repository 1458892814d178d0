package codec

import (
	"bytes"
	"errors"
	"strconv"
)

// Link frames travel between message servers and the forwarding proxy, one
// per line, newline-terminated. The proxy reads only the kind and the
// destination; the payload is relayed byte for byte.
//
//	H <role> <id> <secret|->                          hello, first line each way
//	P                                                 heartbeat ping
//	Q                                                 heartbeat pong
//	R [<id> ...]                                      reach: the servers the proxy
//	                                                  links to now (proxy -> server)
//	<kind> <dst> <src> <hops> <send> <recv> <idlen>:<id> <payload>
//
// where kind is one of
//
//	M  a chat: payload is the recipient's delivery line (JSON, no "\n")
//	E  a bounced error: recv is the original sender, payload the error line
//	K  a kick: recv is the name, payload the token of the session to kick
//
// dst and src are server ids; hops counts re-routes; send and recv are user
// names ("-" when none); id is the request's id as JSON text, length-prefixed
// because a JSON string may contain spaces (0: means none).
const (
	KindHello = 'H'
	KindPing  = 'P'
	KindPong  = 'Q'
	KindReach = 'R'
	KindMsg   = 'M'
	KindError = 'E'
	KindKick  = 'K'
)

// MaxFrameLine caps one link line, in bytes. A chat frame carries a delivery
// line, whose content came from a client line of at most MaxClientLine
// bytes, plus names and ids: 4 MiB leaves room for both.
const MaxFrameLine = 4 << 20

// MaxClientLine is the largest -max-line a server accepts, so that every
// chat it forwards fits in a link frame.
const MaxClientLine = 1 << 20

// ErrBadFrame is returned for a link line that does not parse.
var ErrBadFrame = errors.New("codec: malformed link frame")

// Frame is a parsed data frame (kinds M, E, K). Its slices alias the line
// it was parsed from.
type Frame struct {
	Kind    byte
	Dst     []byte
	Src     []byte
	Hops    int
	Send    []byte
	Recv    []byte
	ID      []byte // nil when the request had no id
	Payload []byte
}

// AppendFrame appends a data frame line, "\n" included. payload must not
// contain "\n"; ids and names must not contain spaces (ValidName and
// ValidServerID guarantee it). An empty send or recv is written as "-".
func AppendFrame(dst []byte, kind byte, dstID, srcID string, hops int, send, recv string, id, payload []byte) []byte {
	dst = append(dst, kind, ' ')
	dst = append(dst, dstID...)
	dst = append(dst, ' ')
	dst = append(dst, srcID...)
	dst = append(dst, ' ')
	dst = strconv.AppendInt(dst, int64(hops), 10)
	dst = append(dst, ' ')
	dst = appendToken(dst, send)
	dst = append(dst, ' ')
	dst = appendToken(dst, recv)
	dst = append(dst, ' ')
	dst = strconv.AppendInt(dst, int64(len(id)), 10)
	dst = append(dst, ':')
	dst = append(dst, id...)
	dst = append(dst, ' ')
	dst = append(dst, payload...)
	return append(dst, '\n')
}

func appendToken(dst []byte, s string) []byte {
	if s == "" {
		return append(dst, '-')
	}
	return append(dst, s...)
}

// FrameDst returns a data frame's kind and destination server id without
// parsing the rest: what the proxy needs to relay it. dst aliases line.
func FrameDst(line []byte) (kind byte, dst []byte, err error) {
	if len(line) < 3 || line[1] != ' ' {
		return 0, nil, ErrBadFrame
	}
	rest := line[2:]
	i := bytes.IndexByte(rest, ' ')
	if i <= 0 {
		return 0, nil, ErrBadFrame
	}
	return line[0], rest[:i], nil
}

// ParseFrame parses a data frame line (without "\n") into f.
func ParseFrame(line []byte, f *Frame) error {
	*f = Frame{}
	if len(line) < 2 || line[1] != ' ' {
		return ErrBadFrame
	}
	f.Kind = line[0]
	rest := line[2:]
	var tok []byte
	var ok bool
	fields := [5]*[]byte{&f.Dst, &f.Src, nil, &f.Send, &f.Recv}
	for i, p := range fields {
		if tok, rest, ok = cut(rest); !ok || len(tok) == 0 {
			return ErrBadFrame
		}
		if p == nil {
			h, err := strconv.Atoi(string(tok))
			if err != nil || h < 0 {
				return ErrBadFrame
			}
			f.Hops = h
			continue
		}
		if i >= 3 && len(tok) == 1 && tok[0] == '-' {
			tok = nil
		}
		*p = tok
	}
	colon := bytes.IndexByte(rest, ':')
	if colon <= 0 || colon > 4 {
		return ErrBadFrame
	}
	n, err := strconv.Atoi(string(rest[:colon]))
	if err != nil || n < 0 || n > MaxIDLen || colon+1+n >= len(rest) || rest[colon+1+n] != ' ' {
		return ErrBadFrame
	}
	if n > 0 {
		f.ID = rest[colon+1 : colon+1+n]
	}
	f.Payload = rest[colon+2+n:]
	return nil
}

func cut(b []byte) (tok, rest []byte, ok bool) {
	i := bytes.IndexByte(b, ' ')
	if i < 0 {
		return nil, nil, false
	}
	return b[:i], b[i+1:], true
}

// AppendHello appends a hello line: role is "proxy" or "server"; an empty
// secret is written as "-".
func AppendHello(dst []byte, role, id, secret string) []byte {
	dst = append(dst, KindHello, ' ')
	dst = append(dst, role...)
	dst = append(dst, ' ')
	dst = append(dst, id...)
	dst = append(dst, ' ')
	dst = appendToken(dst, secret)
	return append(dst, '\n')
}

// ParseHello parses a hello line (without "\n"). secret is "" when absent.
func ParseHello(line []byte) (role, id, secret string, err error) {
	if len(line) < 2 || line[0] != KindHello || line[1] != ' ' {
		return "", "", "", ErrBadFrame
	}
	parts := bytes.Split(line[2:], []byte{' '})
	if len(parts) != 3 || len(parts[0]) == 0 || !ValidServerID(string(parts[1])) {
		return "", "", "", ErrBadFrame
	}
	secret = string(parts[2])
	if secret == "-" {
		secret = ""
	}
	return string(parts[0]), string(parts[1]), secret, nil
}

// ValidServerID reports whether s is a legal server or proxy id: 1 to 64
// bytes of ASCII letters, digits, '-', '_' and '.'.
func ValidServerID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// AppendReach appends a reach line listing server ids (sorted by the
// caller if order matters): "R id id ...\n", or "R\n" for none.
func AppendReach(dst []byte, ids []string) []byte {
	dst = append(dst, KindReach)
	for _, id := range ids {
		dst = append(dst, ' ')
		dst = append(dst, id...)
	}
	return append(dst, '\n')
}

// ParseReach parses a reach line (without "\n") into its server ids.
func ParseReach(line []byte) ([]string, error) {
	if len(line) == 0 || line[0] != KindReach || (len(line) > 1 && line[1] != ' ') {
		return nil, ErrBadFrame
	}
	var ids []string
	for _, f := range bytes.Fields(line[1:]) {
		if !ValidServerID(string(f)) {
			return nil, ErrBadFrame
		}
		ids = append(ids, string(f))
	}
	return ids, nil
}
