package wsproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

var testMask = [4]byte{0x37, 0xfa, 0x21, 0x3d}

// cf encodes a client frame with gobwas/ws (an encoder independent of the
// code under test), masked with testMask.
func cf(op ws.OpCode, fin bool, payload string) []byte {
	f := ws.NewFrame(op, fin, []byte(payload))
	return ws.MustCompileFrame(ws.MaskFrameWith(f, testMask))
}

// unmasked encodes a client frame without a mask (a protocol error).
func unmasked(op ws.OpCode, payload string) []byte {
	return ws.MustCompileFrame(ws.NewFrame(op, true, []byte(payload)))
}

// rawHeader encodes a masked header declaring length n, without payload.
func rawHeader(op ws.OpCode, fin bool, n int64) []byte {
	var b bytes.Buffer
	if err := ws.WriteHeader(&b, ws.Header{Fin: fin, OpCode: op, Masked: true, Mask: testMask, Length: n}); err != nil {
		panic(err)
	}
	return b.Bytes()
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// got is one message as a comparable string: "Text:hi", "Ping:x",
// "Close:1000", "Binary".
func got(m Message) string {
	switch m.Kind {
	case Text, Ping:
		return m.Kind.String() + ":" + string(m.Payload)
	case Close:
		return fmt.Sprintf("Close:%d", m.Code)
	}
	return m.Kind.String()
}

// drain feeds stream to r in chunks of chunk bytes (0 = all at once),
// keeping the unconsumed bytes like gnet's inbound buffer does, and returns
// the messages and the error. It checks the package's promises on every
// call: n never exceeds the input, Next touches nothing past n, and the
// unconsumed rest never exceeds one capped frame.
func drain(t testing.TB, r *Reader, stream []byte, chunk int) ([]string, error) {
	t.Helper()
	stream = bytes.Clone(stream)
	if chunk <= 0 {
		chunk = len(stream) + 1
	}
	limit := r.Max
	if limit <= 0 {
		limit = DefaultMax
	}
	var out []string
	var pending []byte
	for off := 0; ; {
		end := min(off+chunk, len(stream))
		pending = append(pending, stream[off:end]...)
		off = end
		for {
			before := bytes.Clone(pending)
			m, n, err := r.Next(pending)
			if n < 0 || n > len(pending) {
				t.Fatalf("Next consumed %d of %d bytes", n, len(pending))
			}
			if !bytes.Equal(before[n:], pending[n:]) {
				t.Fatalf("Next modified bytes past the %d it consumed", n)
			}
			pending = pending[n:]
			if err != nil {
				return out, err
			}
			if m.Kind == None {
				break
			}
			out = append(out, got(m))
			if m.Kind == Close {
				return out, nil // the caller closes; Next would say ErrClosed
			}
		}
		if lim := max(limit, ws.MaxControlFramePayloadSize) + ws.MaxHeaderSize; len(pending) > lim {
			t.Fatalf("%d bytes left unconsumed after Next said None, over one capped frame (%d)", len(pending), lim)
		}
		if r.Buffered() > limit {
			t.Fatalf("Reader holds %d bytes, over Max %d", r.Buffered(), limit)
		}
		if off == len(stream) {
			return out, nil
		}
	}
}

func TestReader(t *testing.T) {
	long := strings.Repeat("L", 70000)
	tests := []struct {
		name   string
		max    int
		stream []byte
		want   []string
		code   ws.StatusCode // 0: no error expected
		cause  error
	}{
		{name: "text", stream: cf(ws.OpText, true, `{"cmd":"ping"}`), want: []string{`Text:{"cmd":"ping"}`}},
		{name: "empty text", stream: cf(ws.OpText, true, ""), want: []string{"Text:"}},
		{name: "16-bit length", stream: cf(ws.OpText, true, strings.Repeat("a", 126)), want: []string{"Text:" + strings.Repeat("a", 126)}},
		{name: "64-bit length", max: 100000, stream: cf(ws.OpText, true, long), want: []string{"Text:" + long}},
		{name: "two frames", stream: cat(cf(ws.OpText, true, "a"), cf(ws.OpText, true, "b")), want: []string{"Text:a", "Text:b"}},
		{
			name:   "fragmented",
			stream: cat(cf(ws.OpText, false, "he"), cf(ws.OpContinuation, false, "ll"), cf(ws.OpContinuation, true, "o")),
			want:   []string{"Text:hello"},
		},
		{
			name:   "ping and pong inside a fragmented message",
			stream: cat(cf(ws.OpText, false, "he"), cf(ws.OpPing, true, "p1"), cf(ws.OpPong, true, "ignored"), cf(ws.OpContinuation, true, "llo"), cf(ws.OpText, true, "next")),
			want:   []string{"Ping:p1", "Text:hello", "Text:next"},
		},
		{name: "ping", stream: cf(ws.OpPing, true, "are you there"), want: []string{"Ping:are you there"}},
		{name: "empty ping", stream: cf(ws.OpPing, true, ""), want: []string{"Ping:"}},
		{name: "pong alone", stream: cat(cf(ws.OpPong, true, "x"), cf(ws.OpText, true, "t")), want: []string{"Text:t"}},
		{name: "binary", stream: cat(cf(ws.OpBinary, true, "\x00\x01"), cf(ws.OpText, true, "t")), want: []string{"Binary", "Text:t"}},
		{name: "fragmented binary", stream: cat(cf(ws.OpBinary, false, "\x00"), cf(ws.OpContinuation, true, "\x01")), want: []string{"Binary"}},
		{name: "close with status", stream: cat(cf(ws.OpClose, true, "\x03\xe8bye"), cf(ws.OpText, true, "after")), want: []string{"Close:1000"}},
		{name: "close without status", stream: cf(ws.OpClose, true, ""), want: []string{"Close:0"}},

		{name: "exactly max", max: 10, stream: cf(ws.OpText, true, "0123456789"), want: []string{"Text:0123456789"}},
		{name: "over max, header only", max: 10, stream: rawHeader(ws.OpText, true, 11), code: ws.StatusMessageTooBig, cause: ErrTooBig},
		{name: "over max, declared huge", stream: rawHeader(ws.OpText, true, 1<<40), code: ws.StatusMessageTooBig, cause: ErrTooBig},
		{name: "binary over max", max: 10, stream: rawHeader(ws.OpBinary, true, 11), code: ws.StatusMessageTooBig, cause: ErrTooBig},
		{
			name: "fragments over max", max: 10,
			stream: cat(cf(ws.OpText, false, "012345"), cf(ws.OpContinuation, true, "6789X")),
			code:   ws.StatusMessageTooBig, cause: ErrTooBig,
		},
		{name: "control frames ignore a small max", max: 4, stream: cf(ws.OpPing, true, "0123456789"), want: []string{"Ping:0123456789"}},

		{name: "unmasked", stream: unmasked(ws.OpText, "hi"), code: ws.StatusProtocolError, cause: ws.ErrProtocolMaskRequired},
		{name: "rsv1", stream: []byte{0x80 | 0x40 | 0x1, 0x80, 1, 2, 3, 4}, code: ws.StatusProtocolError, cause: ws.ErrProtocolNonZeroRsv},
		{name: "reserved data opcode", stream: cf(0x3, true, ""), code: ws.StatusProtocolError, cause: ws.ErrProtocolOpCodeReserved},
		{name: "reserved control opcode", stream: cf(0xb, true, ""), code: ws.StatusProtocolError, cause: ws.ErrProtocolOpCodeReserved},
		{name: "continuation first", stream: cf(ws.OpContinuation, true, "x"), code: ws.StatusProtocolError, cause: ws.ErrProtocolContinuationUnexpected},
		{
			name:   "text inside a fragmented message",
			stream: cat(cf(ws.OpText, false, "a"), cf(ws.OpText, true, "b")),
			code:   ws.StatusProtocolError, cause: ws.ErrProtocolContinuationExpected,
		},
		{name: "long ping", stream: rawHeader(ws.OpPing, true, 126), code: ws.StatusProtocolError, cause: ws.ErrProtocolControlPayloadOverflow},
		{name: "fragmented ping", stream: cf(ws.OpPing, false, "x"), code: ws.StatusProtocolError, cause: ws.ErrProtocolControlNotFinal},
		{name: "one-byte close", stream: cf(ws.OpClose, true, "\x03"), code: ws.StatusProtocolError, cause: errCloseBody},
		{name: "close 1005", stream: cf(ws.OpClose, true, "\x03\xed"), code: ws.StatusProtocolError},
		{name: "close 999", stream: cf(ws.OpClose, true, "\x03\xe7"), code: ws.StatusProtocolError},
		{name: "close reason not UTF-8", stream: cf(ws.OpClose, true, "\x03\xe8\xff"), code: ws.StatusProtocolError, cause: ws.ErrProtocolInvalidUTF8},
		{name: "64-bit length with MSB", stream: []byte{0x81, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}, code: ws.StatusProtocolError, cause: ws.ErrHeaderLengthMSB},
	}
	for _, tc := range tests {
		for _, chunk := range []int{0, 1, 2, 3, 7, 64} {
			if chunk > 0 && chunk < 64 && len(tc.stream) > 4096 {
				continue // drain's checks copy the input per call: quadratic
			}
			t.Run(fmt.Sprintf("%s/chunk%d", tc.name, chunk), func(t *testing.T) {
				r := &Reader{Max: tc.max}
				msgs, err := drain(t, r, tc.stream, chunk)
				if strings.Join(msgs, "|") != strings.Join(tc.want, "|") {
					t.Fatalf("messages %q, want %q", msgs, tc.want)
				}
				if tc.code == 0 {
					if err != nil {
						t.Fatalf("error %v, want none", err)
					}
					return
				}
				var ce *CloseError
				if !errors.As(err, &ce) || ce.Code != tc.code {
					t.Fatalf("error %v, want a CloseError with code %d", err, tc.code)
				}
				if CloseCode(err) != tc.code {
					t.Fatalf("CloseCode = %d, want %d", CloseCode(err), tc.code)
				}
				if tc.cause != nil && !errors.Is(err, tc.cause) {
					t.Fatalf("error %v, want cause %v", err, tc.cause)
				}
				// Sticky: the connection is done.
				if _, n, again := r.Next(cf(ws.OpText, true, "x")); again == nil || n != 0 {
					t.Fatalf("Next after %v returned n=%d err=%v, want the error again", err, n, again)
				}
			})
		}
	}
}

// TestReaderByteAtATime feeds a long mixed stream one byte at a time (and
// in other chunk sizes) and checks every message comes out exactly once.
func TestReaderByteAtATime(t *testing.T) {
	var stream []byte
	var want []string
	for i := range 200 {
		s := fmt.Sprintf(`{"cmd":"chat","recv":"b","content":"m%d%s"}`, i, strings.Repeat("x", i*7))
		switch i % 5 {
		case 0:
			stream = append(stream, cf(ws.OpText, true, s)...)
			want = append(want, "Text:"+s)
		case 1:
			a, b := s[:len(s)/3], s[len(s)/3:]
			stream = append(stream, cat(cf(ws.OpText, false, a), cf(ws.OpPing, true, fmt.Sprint(i)), cf(ws.OpContinuation, true, b))...)
			want = append(want, "Ping:"+fmt.Sprint(i), "Text:"+s)
		case 2:
			stream = append(stream, cat(cf(ws.OpPong, true, "p"), cf(ws.OpBinary, true, s))...)
			want = append(want, "Binary")
		case 3:
			parts := cat(cf(ws.OpText, false, ""), cf(ws.OpContinuation, false, s[:1]), cf(ws.OpContinuation, false, ""), cf(ws.OpContinuation, true, s[1:]))
			stream = append(stream, parts...)
			want = append(want, "Text:"+s)
		case 4:
			stream = append(stream, cf(ws.OpPing, true, "")...)
			want = append(want, "Ping:")
		}
	}
	stream = append(stream, cf(ws.OpClose, true, "\x03\xe9going")...)
	want = append(want, "Close:1001")
	for _, chunk := range []int{1, 2, 5, 13, 100, 4096, 0} {
		r := &Reader{Max: 2048}
		msgs, err := drain(t, r, stream, chunk)
		if !errors.Is(err, ErrClosed) && err != nil {
			t.Fatalf("chunk %d: error %v", chunk, err)
		}
		if len(msgs) != len(want) {
			t.Fatalf("chunk %d: %d messages, want %d", chunk, len(msgs), len(want))
		}
		for i := range want {
			if msgs[i] != want[i] {
				t.Fatalf("chunk %d: message %d is %.60q, want %.60q", chunk, i, msgs[i], want[i])
			}
		}
	}
}

// TestReaderDropsBigBuffer checks that a big reassembly buffer is not kept
// between messages.
func TestReaderDropsBigBuffer(t *testing.T) {
	r := &Reader{}
	big := strings.Repeat("b", 3*retainCap)
	msgs, err := drain(t, r, cat(cf(ws.OpText, false, big), cf(ws.OpContinuation, true, "!")), 0)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("got %d messages, err %v", len(msgs), err)
	}
	if _, _, err := r.Next(nil); err != nil {
		t.Fatal(err)
	}
	if cap(r.msg) > retainCap {
		t.Fatalf("reader keeps %d bytes of buffer between messages", cap(r.msg))
	}
}

// TestReaderFastPathAllocs: an unfragmented masked text frame costs no
// allocation.
func TestReaderFastPathAllocs(t *testing.T) {
	frame := cf(ws.OpText, true, `{"cmd":"chat","recv":"bob","content":"hello there","id":17}`)
	buf := make([]byte, len(frame))
	r := &Reader{}
	allocs := testing.AllocsPerRun(1000, func() {
		copy(buf, frame)
		m, n, err := r.Next(buf)
		if err != nil || m.Kind != Text || n != len(frame) {
			t.Fatalf("Next = %v, %d, %v", m.Kind, n, err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per frame, want 0", allocs)
	}
	dst := make([]byte, 0, 256)
	allocs = testing.AllocsPerRun(1000, func() {
		dst = AppendText(dst[:0], frame)
		dst, _ = FrameLines(dst[:0], []byte("{\"cmd\":\"pong\"}\n"))
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per AppendText+FrameLines, want 0", allocs)
	}
}

// TestWriters checks the server frames with gobwas/ws's client-side reader.
func TestWriters(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 127, 65535, 65536, 70000} {
		p := bytes.Repeat([]byte{'x'}, n)
		for name, frame := range map[string][]byte{
			"AppendText": AppendText([]byte("prefix"), p)[len("prefix"):],
			"BeginText":  beginEnd(p),
		} {
			got, op, err := wsutil.ReadServerData(rw{bytes.NewReader(frame)})
			if err != nil || op != ws.OpText || !bytes.Equal(got, p) {
				t.Fatalf("%s(%d bytes): read back %d bytes op %v err %v", name, n, len(got), op, err)
			}
			if n <= 125 && len(frame) != 2+n || n > 125 && n <= 65535 && len(frame) != 4+n || n > 65535 && len(frame) != 10+n {
				t.Fatalf("%s(%d bytes): frame of %d bytes, not the minimal header", name, n, len(frame))
			}
		}
	}
	pong := AppendPong(nil, []byte("abc"))
	f, err := ws.ReadFrame(bytes.NewReader(pong))
	if err != nil || f.Header.OpCode != ws.OpPong || string(f.Payload) != "abc" || f.Header.Masked || !f.Header.Fin {
		t.Fatalf("pong frame %+v, %v", f, err)
	}
	for _, tc := range []struct {
		code   ws.StatusCode
		reason string
		body   int
	}{
		{code: 0, body: 0},
		{code: ws.StatusMessageTooBig, reason: "line too long", body: 2 + len("line too long")},
		{code: ws.StatusProtocolError, reason: strings.Repeat("é", 100), body: 2 + 122}, // cut at a rune boundary
	} {
		f, err := ws.ReadFrame(bytes.NewReader(AppendClose(nil, tc.code, tc.reason)))
		if err != nil || f.Header.OpCode != ws.OpClose || len(f.Payload) != tc.body {
			t.Fatalf("close %d: frame %+v, %v; want a %d-byte body", tc.code, f.Header, err, tc.body)
		}
		if tc.code != 0 {
			code, reason := ws.ParseCloseFrameData(f.Payload)
			if code != tc.code || !strings.HasPrefix(tc.reason, reason) || ws.CheckCloseFrameData(code, reason) != nil {
				t.Fatalf("close %d: read back %d %q", tc.code, code, reason)
			}
		}
	}
}

func beginEnd(p []byte) []byte {
	out, start := BeginText([]byte("prefix"))
	out = append(out, p...)
	return EndText(out, start)[len("prefix"):]
}

func TestFrameLines(t *testing.T) {
	out, rest := FrameLines(nil, []byte("{\"a\":1}\n\n{\"b\":2}\r\n{\"c\""))
	if string(rest) != `{"c"` {
		t.Fatalf("rest %q", rest)
	}
	var msgs []string
	r := bytes.NewReader(out)
	for r.Len() > 0 {
		p, op, err := wsutil.ReadServerData(rw{r})
		if err != nil || op != ws.OpText {
			t.Fatal(op, err)
		}
		msgs = append(msgs, string(p))
	}
	if strings.Join(msgs, "|") != `{"a":1}|{"b":2}` {
		t.Fatalf("frames %q", msgs)
	}
}

// rw is a reader whose writes (control frame replies) are discarded.
type rw struct{ *bytes.Reader }

func (rw) Write(p []byte) (int, error) { return len(p), nil }

func BenchmarkNextText(b *testing.B) {
	for _, size := range []int{64, 1024} {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			frame := cf(ws.OpText, true, strings.Repeat("x", size))
			buf := make([]byte, len(frame))
			r := &Reader{}
			b.SetBytes(int64(len(frame)))
			b.ReportAllocs()
			for b.Loop() {
				copy(buf, frame) // the frame is unmasked in place: restore it
				if m, _, err := r.Next(buf); err != nil || m.Kind != Text {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkAppendText(b *testing.B) {
	p := []byte(`{"cmd":"chat","send":"alice","recv":"bob","content":"hello there","ts":1795686247104}`)
	dst := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		dst = AppendText(dst[:0], p)
	}
}

// TestHeaderSizes pins the header encodings against the RFC's length forms.
func TestHeaderSizes(t *testing.T) {
	h := appendHeader(nil, ws.OpText, 70000)
	if len(h) != 10 || h[1] != 127 || binary.BigEndian.Uint64(h[2:]) != 70000 {
		t.Fatalf("64-bit header %x", h)
	}
}

func TestReaderAfterClose(t *testing.T) {
	r := &Reader{}
	m, n, err := r.Next(cat(cf(ws.OpClose, true, "\x03\xe8"), cf(ws.OpText, true, "after")))
	if err != nil || m.Kind != Close || m.Code != ws.StatusNormalClosure || n != 2+4+2 {
		t.Fatalf("Next = %v %d %v", m, n, err)
	}
	if _, n, err := r.Next(cf(ws.OpText, true, "after")); !errors.Is(err, ErrClosed) || n != 0 {
		t.Fatalf("Next after a close = %d, %v; want ErrClosed", n, err)
	}
}
