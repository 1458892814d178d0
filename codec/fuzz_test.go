package codec

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/bytedance/sonic"
)

// FuzzDecode: Decode never panics, and whatever it accepts re-encodes to JSON
// that decodes back to the same values.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"cmd":"login","name":"zhima201"}`,
		`{"cmd":"chat","send":"zhima201","recv":"zhima202","content":"how are youe"}`,
		`{"cmd":"chat","recv":"bob","content":"x\u0000y","id":"1"}`,
		`{"cmd":"ping","id":12345678901234567890}`,
		`{"cmd":"chat","recv":"bob","content":"hi","id":-0}`, ` { "cmd" : "login" , "name" : "al" , "token" : "t" } `,
		`{"cmd":"chat","recv":"bob","content":"hi","id":1.5}`, `{"cmd":"chat","recv":"bob","content":"hi","id":01}`,
		`{"Cmd":"ping"}`, `{"cmd":"ping","cmd":"chat"}`, `{"cmd":null}`, `{"cmd":"ping","id":1 }`, `{}`, `{"cmd":"ping",}`,
		`[[[[[[`, "\x00\xff", `{"cmd":"chat","recv":1}`, `{"cmd":"ping"} {}`, "{\"cmd\":\"chat\",\"recv\":\"b\",\"content\":\"a\x01b\"}",
	} {
		f.Add([]byte(s))
	}
	ref := sonic.Config{ValidateString: true}.Froze()
	f.Fuzz(func(t *testing.T, line []byte) {
		// The pooled decoder agrees with sonic's own Unmarshal.
		got, gerr := decodeWire(line)
		want := wire{Cmd: absent, Name: absent, Send: absent, Recv: absent, Content: absent}
		werr := ref.Unmarshal(line, &want)
		// (Decode answers a type mismatch and other errors differently.)
		if (gerr == nil) != (werr == nil) || isMismatch(gerr) != isMismatch(werr) || !sameWire(got, want) {
			t.Fatalf("decodeWire(%q) = %+v, %v; sonic's Unmarshal = %+v, %v", line, got, gerr, want, werr)
		}
		// The fast path, wherever it answers, answers as sonic does.
		if utf8.Valid(line) {
			if fast, ok := fastWire(line); ok && (werr != nil || !sameWire(fast, want)) {
				t.Fatalf("fastWire(%q) = %+v; sonic's Unmarshal = %+v, %v", line, fast, want, werr)
			}
		}
		var r Request
		err := Decode(line, &r)
		// Nothing decoded aliases the caller's buffer, which it reuses.
		before := r
		before.Name, before.Token, before.Send = strings.Clone(r.Name), strings.Clone(r.Token), strings.Clone(r.Send)
		before.Recv, before.Content, before.ID = strings.Clone(r.Recv), strings.Clone(r.Content), bytes.Clone(r.ID)
		for i := range line {
			line[i] = '#'
		}
		if r.Name != before.Name || r.Token != before.Token || r.Send != before.Send || r.Recv != before.Recv ||
			r.Content != before.Content || !bytes.Equal(r.ID, before.ID) {
			t.Fatalf("decoded request changed with the line's buffer: %+v, then %+v", before, r)
		}
		if err != nil {
			if _, ok := err.(ProtoError); !ok && !isWrappedProto(err) {
				t.Fatalf("error %T %v is not a ProtoError", err, err)
			}
			return
		}
		if r.Cmd == 0 {
			t.Fatalf("accepted %q without a command", line)
		}
		if r.ID != nil && !json.Valid(r.ID) {
			t.Fatalf("id %q is not JSON", r.ID)
		}
		if r.Cmd == CmdChat {
			out := AppendDelivery(nil, "s", r.Recv, r.Content, 1)
			var d struct{ Recv, Content string }
			if err := json.Unmarshal(out, &d); err != nil {
				t.Fatalf("delivery %q not JSON: %v", out, err)
			}
			if d.Recv != r.Recv || (utf8.ValidString(r.Content) && d.Content != r.Content) {
				t.Fatalf("round trip changed %q/%q into %q/%q", r.Recv, r.Content, d.Recv, d.Content)
			}
		}
	})
}

// sameWire compares two decoded wires, absent fields included.
func sameWire(a, b wire) bool {
	str := func(x, y string) bool { return isAbsent(x) == isAbsent(y) && x == y }
	return str(a.Cmd, b.Cmd) && str(a.Name, b.Name) && str(a.Token, b.Token) && str(a.Send, b.Send) &&
		str(a.Recv, b.Recv) && str(a.Content, b.Content) && bytes.Equal(a.ID, b.ID)
}

func isWrappedProto(err error) bool {
	for e := err; e != nil; {
		if _, ok := e.(ProtoError); ok {
			return true
		}
		u, ok := e.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		e = u.Unwrap()
	}
	return false
}

// FuzzNextLine: however a stream is split, the same lines come out, and no
// line longer than the cap is ever returned.
func FuzzNextLine(f *testing.F) {
	f.Add([]byte("a\r\nb\n\nccc\n"), uint8(1), uint8(8))
	f.Add([]byte("0123456789abcdef\n"), uint8(3), uint8(4))
	f.Fuzz(func(t *testing.T, stream []byte, chunk, max uint8) {
		c, m := int(chunk)%16+1, int(max)%64
		whole, errWhole := splitLines(stream, len(stream)+1, m)
		split, errSplit := splitLines(stream, c, m)
		if (errWhole == nil) != (errSplit == nil) {
			t.Fatalf("errors differ: whole %v, split %v", errWhole, errSplit)
		}
		n := min(len(whole), len(split))
		for i := 0; i < n; i++ {
			if whole[i] != split[i] {
				t.Fatalf("line %d differs: %q vs %q", i, whole[i], split[i])
			}
			if len(whole[i]) > m {
				t.Fatalf("line %q longer than cap %d", whole[i], m)
			}
		}
	})
}

// FuzzParseFrame: never panics; what parses re-encodes to a line that
// parses to the same frame, and FrameRoute agrees with ParseFrame.
func FuzzParseFrame(f *testing.F) {
	f.Add([]byte(`M B 1a A ff 1 0 5:alice 3:bob 2:42 {"cmd":"chat"}`))
	f.Add([]byte(`K B 1 A 2 3 0 0: 1:- 0: tok A tok2`))
	f.Add([]byte(`A B 1 A 2 3`))
	f.Fuzz(func(t *testing.T, line []byte) {
		var fr Frame
		if ParseFrame(line, &fr) != nil {
			return
		}
		kind, dst, src, err := FrameRoute(line)
		if err != nil || kind != fr.Kind || !bytes.Equal(dst, fr.Dst) || !bytes.Equal(src, fr.Src) {
			t.Fatalf("FrameRoute(%q) = %c %q %q %v, ParseFrame says %+v", line, kind, dst, src, err, fr)
		}
		if bytes.IndexByte(line, '\n') >= 0 {
			return
		}
		var out []byte
		switch fr.Kind {
		case KindAck:
			out = AppendAckFrame(nil, string(fr.Dst), fr.DstEpoch, string(fr.Src), fr.Stream, fr.Seq)
		case KindSkip:
			out = AppendSkipFrame(nil, string(fr.Dst), fr.DstEpoch, string(fr.Src), fr.Stream, fr.Seq)
		case KindNak:
			out = appendShort(nil, KindNak, string(fr.Dst), fr.DstEpoch, string(fr.Src), fr.Stream, fr.Seq)
		default:
			out = AppendFrame(nil, &fr)
		}
		var again Frame
		if err := ParseFrame(out[:len(out)-1], &again); err != nil {
			t.Fatalf("re-encoded %q does not parse: %v", out, err)
		}
		if !bytes.Equal(again.Payload, fr.Payload) || !bytes.Equal(again.ID, fr.ID) || !bytes.Equal(again.Send, fr.Send) ||
			!bytes.Equal(again.Recv, fr.Recv) || again.Hops != fr.Hops || again.Seq != fr.Seq || again.Stream != fr.Stream ||
			again.DstEpoch != fr.DstEpoch {
			t.Fatalf("round trip %q -> %q", line, out)
		}
	})
}
