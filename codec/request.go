package codec

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"unicode"
	"unicode/utf8"
	"unsafe"

	"github.com/bytedance/sonic"
	"github.com/bytedance/sonic/decoder"
)

// Cmd is a client request's command.
type Cmd uint8

// The commands of the client protocol. The zero Cmd is no command.
const (
	CmdLogin Cmd = iota + 1
	CmdChat
	CmdPing
	CmdLogout
)

var cmdNames = [...]string{CmdLogin: "login", CmdChat: "chat", CmdPing: "ping", CmdLogout: "logout"}

func (c Cmd) String() string {
	if int(c) < len(cmdNames) && c != 0 {
		return cmdNames[c]
	}
	return fmt.Sprintf("Cmd(%d)", uint8(c))
}

// MaxNameLen is the longest user name, in bytes.
const MaxNameLen = 64

// MaxIDLen is the longest request id, in bytes of its JSON text.
const MaxIDLen = 128

// Request is one decoded client request.
//
// Its strings and ID do not alias the decoded line: they stay valid after the
// line's buffer is reused.
type Request struct {
	Cmd     Cmd
	Name    string // login
	Token   string // login, when the server requires authentication
	Send    string // chat; meaningful only when HasSend
	HasSend bool
	Recv    string // chat
	Content string // chat
	// ID is the request's "id" as compact JSON text (a string with its quotes,
	// or a number), or nil when the request has none. Errors and acks echo it.
	ID []byte
}

// wire mirrors the JSON object. Decode presets the fields that must tell
// "missing" from "empty" to absent and checks afterwards, by data pointer,
// whether sonic replaced them: this costs no allocation, where a *string
// per field would cost one each on every request.
type wire struct {
	Cmd     string          `json:"cmd"`
	Name    string          `json:"name"`
	Token   string          `json:"token"`
	Send    string          `json:"send"`
	Recv    string          `json:"recv"`
	Content string          `json:"content"`
	ID      json.RawMessage `json:"id"`
}

// absent is the sentinel of a field the line did not set (or set to null,
// which leaves a Go string unchanged). No decoded string can share its
// backing array.
var absentByte = [1]byte{0}
var absent = unsafe.String(&absentByte[0], 1)

func isAbsent(s string) bool { return unsafe.StringData(s) == &absentByte[0] }

// decodeState is what decodeWire hands to sonic besides the line. Both
// escape to the heap through sonic's interface, so they are pooled: two
// allocations per request otherwise, about a quarter of a server's
// allocated bytes under load (pprof allocs, SCENARIO=anchor).
type decodeState struct {
	w   wire
	dec decoder.Decoder
}

var decodePool = sync.Pool{New: func() any { return new(decodeState) }}

// Pretouch compiles the decoder ahead of the first request, so the first
// client does not pay sonic's JIT warm-up (milliseconds). Call it at start.
func Pretouch() error {
	return sonic.Pretouch(reflect.TypeOf(wire{}))
}

// Decode parses one request line (without its terminator) into r.
//
// It returns a ProtoError (possibly wrapped with detail) for anything the
// client got wrong. r.ID is filled whenever the line was a JSON object with a
// valid id, even when another check fails, so the error can carry the id.
func Decode(line []byte, r *Request) error {
	*r = Request{}
	if !utf8.Valid(line) {
		return ErrInvalidUTF8
	}
	if first := firstNonSpace(line); first != '{' {
		if first == 0 {
			return ErrInvalidJSON
		}
		if first == '[' || first == '"' || first == 't' || first == 'f' || first == 'n' || first == '-' || (first >= '0' && first <= '9') {
			if !json.Valid(line) {
				return ErrInvalidJSON
			}
			return ErrNotObject
		}
		return ErrInvalidJSON
	}
	var w wire
	var err error
	ok := false
	if len(line) <= fastMax {
		w, ok = fastWire(line)
	}
	if !ok {
		w, err = decodeWire(line)
	}
	if err != nil {
		if !isMismatch(err) {
			return ErrInvalidJSON
		}
	}
	if len(w.ID) > 0 && string(w.ID) != "null" {
		if !validID(w.ID) {
			return ErrBadID
		}
		r.ID = compactID(w.ID)
	}
	if err != nil {
		return ErrFieldType
	}
	if isAbsent(w.Cmd) || w.Cmd == "" {
		return ErrMissingCmd
	}
	switch w.Cmd {
	case "login":
		r.Cmd = CmdLogin
		if isAbsent(w.Name) {
			return ErrMissingName
		}
		r.Name, r.Token = w.Name, w.Token
		if !ValidName(r.Name) {
			return ErrBadName
		}
	case "chat":
		r.Cmd = CmdChat
		if !isAbsent(w.Send) {
			r.Send, r.HasSend = w.Send, true
		}
		if isAbsent(w.Recv) || w.Recv == "" {
			return ErrMissingRecv
		}
		r.Recv = w.Recv
		if !ValidName(r.Recv) {
			return fmt.Errorf("%w (recv)", ErrBadName)
		}
		if isAbsent(w.Content) {
			return ErrMissingContent
		}
		r.Content = w.Content
	case "ping":
		r.Cmd = CmdPing
	case "logout":
		r.Cmd = CmdLogout
	default:
		cmd := w.Cmd
		if len(cmd) > 32 {
			cmd = cmd[:32] + "..."
		}
		return fmt.Errorf("%w %q", ErrUnknownCmd, cmd)
	}
	return nil
}

// decodeWire decodes line as sonic.Config{ValidateString: true}.Froze()'s
// Unmarshal does (sonic's UnmarshalFromString: a copy of the line, the
// decoder with those options, then its check for trailing bytes; FuzzDecode
// holds them to the same result), with the decoder and the struct pooled.
// ValidateString rejects unescaped control characters inside strings.
func decodeWire(line []byte) (wire, error) {
	st := decodePool.Get().(*decodeState)
	st.w = wire{Cmd: absent, Name: absent, Send: absent, Recv: absent, Content: absent}
	st.dec.Reset(string(line)) // a copy: decoded strings outlive the line's buffer
	st.dec.SetOptions(decoder.OptionValidateString)
	err := st.dec.Decode(&st.w)
	if err == nil {
		err = st.dec.CheckTrailings()
	}
	w := st.w
	st.w = wire{} // drop the references to the line
	st.dec.Reset("")
	decodePool.Put(st)
	return w, err
}

// ValidName reports whether s is a legal user name: 1 to MaxNameLen bytes of
// valid UTF-8 with no whitespace and no control characters.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > MaxNameLen {
		return false
	}
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c <= ' ' || c == 0x7f {
				return false
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError || unicode.IsSpace(r) || unicode.IsControl(r) {
			return false
		}
		i += size
	}
	return true
}

// isMismatch reports whether err is only a field of the wrong type, after
// which sonic has still decoded the other fields (as encoding/json does).
func isMismatch(err error) bool {
	var p *decoder.MismatchTypeError
	if errors.As(err, &p) {
		return true
	}
	var v decoder.MismatchTypeError
	return errors.As(err, &v)
}

func firstNonSpace(b []byte) byte {
	for _, c := range b {
		switch c {
		case ' ', '\t', '\r', '\n':
		default:
			return c
		}
	}
	return 0
}

// validID accepts a JSON string or number of at most MaxIDLen bytes.
func validID(raw []byte) bool {
	if len(raw) > MaxIDLen {
		return false
	}
	c := raw[0]
	return c == '"' || c == '-' || (c >= '0' && c <= '9')
}

// compactID trims trailing whitespace, which is not part of the value. raw
// is sonic's own copy, not the caller's line, so it may be kept as is.
func compactID(raw []byte) []byte {
	end := len(raw)
	for end > 0 && (raw[end-1] == ' ' || raw[end-1] == '\t' || raw[end-1] == '\r' || raw[end-1] == '\n') {
		end--
	}
	return raw[:end:end]
}
