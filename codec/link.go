package codec

import (
	"bytes"
	"errors"
	"strconv"
)

// Link frames travel between message servers, directly (mesh) or through a
// forwarding proxy, one per line, newline-terminated. Fields are separated
// by one space.
//
// Control lines, between the two ends of one link (never relayed):
//
//	H ...                 hello and its answer (package peer)
//	V <proof>             the dialer's proof (package peer)
//	P                     ping
//	Q                     pong
//	R [<id>:<epoch> ...]  reach: the servers a proxy links to now, with
//	                      the epoch (run) of each
//	G                     goodbye: the sender is stopping; use other paths
//
// Stream frames, relayed by proxies by their dst field:
//
//	<kind> <dst> <dstEpoch> <src> <stream> <seq> <hops> <send> <recv> <id> <payload>
//	A <dst> <dstEpoch> <src> <stream> <seq>
//	S <dst> <dstEpoch> <src> <stream> <seq>
//	N <dst> 0 <src> <stream> <seq>
//
// A data frame (kinds M, E, K, C) is number seq of stream <stream>, which
// server src opened towards run dstEpoch of server dst. kind is one of
//
//	M  a chat: payload is the recipient's delivery line (JSON, no "\n")
//	E  an error for the chat's sender (recv): payload is the error line
//	K  a kick: recv is the name, payload "<token> <reply-server> <reply-token>":
//	   kick the session of recv holding token, then tell reply-server
//	   (C frame) that its login reply-token may go ahead
//	C  kick done: the kick for recv's login (payload: that login's token)
//	   has finished; chats the kicked session left are in the mailbox
//
// An ack (A) says that server src has settled every frame up to seq of
// stream <stream>, which dst sends it: delivered to a connection, stored,
// or answered with an error frame (dstEpoch is 0: the stream id names it).
//
// A skip (S) starts every transmission of a stream from its oldest frame
// not yet acknowledged (seq): frames before it will never come (they were
// acknowledged, or given up on with an error to their senders), so the
// receiver may go on from there.
//
// A nak (N) is a proxy's answer to a data frame it could not relay (it has
// no link to the frame's destination): frame seq of stream <stream>, sent
// by dst towards src, did not go through it. Proxies send it back on the
// link the frame came from; it is never relayed.
//
// Epochs and stream ids are hex, seq and hops decimal. send, recv and id are
// length-prefixed ("<bytes>:<text>", "0:" when absent), since a user name
// may be any non-space text, "-" included, and a JSON id may hold spaces.
const (
	KindHello   = 'H'
	KindVerify  = 'V'
	KindPing    = 'P'
	KindPong    = 'Q'
	KindReach   = 'R'
	KindGoodbye = 'G'
	KindAck     = 'A'
	KindSkip    = 'S'
	KindNak     = 'N'
	KindMsg     = 'M'
	KindError   = 'E'
	KindKick    = 'K'
	KindKicked  = 'C'
)

// IsStreamKind reports whether kind is a relayed frame kind (data, ack or
// skip), or a nak.
func IsStreamKind(kind byte) bool {
	switch kind {
	case KindMsg, KindError, KindKick, KindKicked, KindAck, KindSkip, KindNak:
		return true
	}
	return false
}

// MaxFrameLine caps one link line, in bytes. A chat frame carries a delivery
// line, whose content came from a client line of at most MaxClientLine
// bytes, plus names and ids: 4 MiB leaves room for both.
const MaxFrameLine = 4 << 20

// MaxClientLine is the largest -max-line a server accepts, so that every
// chat it forwards fits in a link frame.
const MaxClientLine = 1 << 20

// maxNameLen bounds a length-prefixed name field (names are at most 64
// bytes; the slack tolerates nothing larger).
const maxNameLen = 64

// ErrBadFrame is returned for a link line that does not parse.
var ErrBadFrame = errors.New("codec: malformed link frame")

// Frame is a parsed stream frame. Its slices alias the line it was parsed
// from.
type Frame struct {
	Kind     byte
	Dst      []byte
	DstEpoch uint64
	Src      []byte
	Stream   uint64
	Seq      uint64
	Hops     int
	Send     []byte // nil when absent
	Recv     []byte
	ID       []byte // nil when the request had no id
	Payload  []byte
}

// AppendFrame appends a data frame line, "\n" included. payload must not
// contain "\n"; server ids must be ValidServerID and names ValidName.
func AppendFrame(dst []byte, f *Frame) []byte {
	dst = AppendFrameHead(dst, f)
	dst = append(dst, f.Payload...)
	return append(dst, '\n')
}

// AppendFrameHead appends a data frame up to its payload (f.Payload is not
// used): the caller appends the payload and the "\n".
func AppendFrameHead(dst []byte, f *Frame) []byte {
	return AppendDataHead(dst, f.Kind, f.Dst, f.DstEpoch, f.Src, f.Stream, f.Seq, f.Hops, string(f.Send), string(f.Recv), f.ID)
}

// AppendDataHead is AppendFrameHead with the fields given one by one, the
// names as strings (no conversion on the hot path).
func AppendDataHead(b []byte, kind byte, dstID []byte, dstEpoch uint64, srcID []byte, stream, seq uint64, hops int, send, recv string, id []byte) []byte {
	b = append(b, kind, ' ')
	b = append(b, dstID...)
	b = append(b, ' ')
	b = strconv.AppendUint(b, dstEpoch, 16)
	b = append(b, ' ')
	b = append(b, srcID...)
	b = append(b, ' ')
	b = strconv.AppendUint(b, stream, 16)
	b = append(b, ' ')
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, int64(hops), 10)
	b = append(b, ' ')
	b = appendStrField(b, send)
	b = append(b, ' ')
	b = appendStrField(b, recv)
	b = append(b, ' ')
	b = appendField(b, id)
	return append(b, ' ')
}

func appendStrField(dst []byte, s string) []byte {
	dst = strconv.AppendInt(dst, int64(len(s)), 10)
	dst = append(dst, ':')
	return append(dst, s...)
}

// AppendAckFrame appends an ack line: from acknowledges stream (which to
// sends it) up to seq.
func AppendAckFrame(dst []byte, to string, toEpoch uint64, from string, stream, seq uint64) []byte {
	return appendShort(dst, KindAck, to, toEpoch, from, stream, seq)
}

// AppendNakFrame appends a nak line: frame seq of stream, which to sent
// towards from, was not relayed.
func AppendNakFrame(dst []byte, to, from string, stream, seq uint64) []byte {
	return appendShort(dst, KindNak, to, 0, from, stream, seq)
}

// AppendSkipFrame appends a skip line: stream (from -> to, run toEpoch)
// goes on at seq.
func AppendSkipFrame(dst []byte, to string, toEpoch uint64, from string, stream, seq uint64) []byte {
	return appendShort(dst, KindSkip, to, toEpoch, from, stream, seq)
}

func appendShort(dst []byte, kind byte, to string, toEpoch uint64, from string, stream, seq uint64) []byte {
	dst = append(dst, kind, ' ')
	dst = append(dst, to...)
	dst = append(dst, ' ')
	dst = strconv.AppendUint(dst, toEpoch, 16)
	dst = append(dst, ' ')
	dst = append(dst, from...)
	dst = append(dst, ' ')
	dst = strconv.AppendUint(dst, stream, 16)
	dst = append(dst, ' ')
	dst = strconv.AppendUint(dst, seq, 10)
	return append(dst, '\n')
}

func appendField(dst, b []byte) []byte {
	dst = strconv.AppendInt(dst, int64(len(b)), 10)
	dst = append(dst, ':')
	return append(dst, b...)
}

// FrameRoute returns a stream frame's kind, destination and source server
// ids without parsing the rest: what a proxy needs to check and relay it.
// dst and src alias line.
func FrameRoute(line []byte) (kind byte, dst, src []byte, err error) {
	if len(line) < 2 || line[1] != ' ' || !IsStreamKind(line[0]) {
		return 0, nil, nil, ErrBadFrame
	}
	rest := line[2:]
	var ok bool
	if dst, rest, ok = cut(rest); !ok || len(dst) == 0 {
		return 0, nil, nil, ErrBadFrame
	}
	if _, rest, ok = cut(rest); !ok { // dstEpoch
		return 0, nil, nil, ErrBadFrame
	}
	if src, _, ok = cut(rest); !ok || len(src) == 0 {
		return 0, nil, nil, ErrBadFrame
	}
	return line[0], dst, src, nil
}

// ParseFrame parses a stream frame line (without "\n") into f: a data frame
// or an ack (whose Seq is the acknowledged seq and whose other fields after
// it are zero), or a skip (likewise).
func ParseFrame(line []byte, f *Frame) error {
	*f = Frame{}
	if len(line) < 2 || line[1] != ' ' || !IsStreamKind(line[0]) {
		return ErrBadFrame
	}
	f.Kind = line[0]
	rest := line[2:]
	var tok []byte
	var ok bool
	if f.Dst, rest, ok = cut(rest); !ok || !ValidServerID(string(f.Dst)) {
		return ErrBadFrame
	}
	if tok, rest, ok = cut(rest); !ok || !parseHex(tok, &f.DstEpoch) {
		return ErrBadFrame
	}
	if f.Src, rest, ok = cut(rest); !ok || !ValidServerID(string(f.Src)) {
		return ErrBadFrame
	}
	if tok, rest, ok = cut(rest); !ok || !parseHex(tok, &f.Stream) {
		return ErrBadFrame
	}
	if f.Kind == KindAck || f.Kind == KindSkip || f.Kind == KindNak {
		n, err := strconv.ParseUint(string(rest), 10, 64)
		if err != nil || len(rest) == 0 || rest[0] == '+' {
			return ErrBadFrame
		}
		f.Seq = n
		return nil
	}
	if tok, rest, ok = cut(rest); !ok {
		return ErrBadFrame
	}
	n, err := strconv.ParseUint(string(tok), 10, 64)
	if err != nil || tok[0] == '+' || n == 0 {
		return ErrBadFrame
	}
	f.Seq = n
	if tok, rest, ok = cut(rest); !ok {
		return ErrBadFrame
	}
	h, err := strconv.Atoi(string(tok))
	if err != nil || h < 0 || h > 255 || tok[0] == '+' {
		return ErrBadFrame
	}
	f.Hops = h
	for _, p := range [...]struct {
		dst *[]byte
		max int
	}{{&f.Send, maxNameLen}, {&f.Recv, maxNameLen}, {&f.ID, MaxIDLen}} {
		if *p.dst, rest, ok = cutField(rest, p.max); !ok {
			return ErrBadFrame
		}
	}
	f.Payload = rest
	return nil
}

// cutField cuts a length-prefixed field and the space after it.
func cutField(b []byte, max int) (field, rest []byte, ok bool) {
	colon := bytes.IndexByte(b, ':')
	if colon <= 0 || colon > 4 {
		return nil, nil, false
	}
	n, err := strconv.Atoi(string(b[:colon]))
	if err != nil || n < 0 || n > max || b[0] == '+' || b[0] == '-' || colon+1+n >= len(b) || b[colon+1+n] != ' ' {
		return nil, nil, false
	}
	if n > 0 {
		field = b[colon+1 : colon+1+n]
	}
	return field, b[colon+2+n:], true
}

func parseHex(b []byte, v *uint64) bool {
	if len(b) == 0 || len(b) > 16 {
		return false
	}
	n, err := strconv.ParseUint(string(b), 16, 64)
	*v = n
	return err == nil && b[0] != '+'
}

func cut(b []byte) (tok, rest []byte, ok bool) {
	i := bytes.IndexByte(b, ' ')
	if i < 0 {
		return nil, nil, false
	}
	return b[:i], b[i+1:], true
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

// Reach is one entry of a reach line: a server a proxy links to, and the
// run (epoch) of it that the link reaches.
type Reach struct {
	ID    string
	Epoch uint64
}

// AppendReach appends a reach line: "R id:epoch ...\n", or "R\n" for none.
func AppendReach(dst []byte, servers []Reach) []byte {
	dst = append(dst, KindReach)
	for _, r := range servers {
		dst = append(dst, ' ')
		dst = append(dst, r.ID...)
		dst = append(dst, ':')
		dst = strconv.AppendUint(dst, r.Epoch, 16)
	}
	return append(dst, '\n')
}

// ParseReach parses a reach line (without "\n").
func ParseReach(line []byte) ([]Reach, error) {
	if len(line) == 0 || line[0] != KindReach || (len(line) > 1 && line[1] != ' ') {
		return nil, ErrBadFrame
	}
	var out []Reach
	for _, f := range bytes.Fields(line[1:]) {
		id, ep, ok := bytes.Cut(f, []byte{':'})
		var r Reach
		if !ok || !ValidServerID(string(id)) || !parseHex(ep, &r.Epoch) {
			return nil, ErrBadFrame
		}
		r.ID = string(id)
		out = append(out, r)
	}
	return out, nil
}
