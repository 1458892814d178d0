package codec

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestNextLine(t *testing.T) {
	cases := []struct {
		in   string
		max  int
		line string
		n    int
		err  error
	}{
		{"", 10, "", 0, nil},
		{"abc", 10, "", 0, nil},
		{"abc\n", 10, "abc", 4, nil},
		{"abc\r\n", 10, "abc", 5, nil},
		{"\n", 10, "", 1, nil},
		{"\r\n", 10, "", 2, nil},
		{"a\rb\n", 10, "a\rb", 4, nil},
		{"abc\ndef\n", 10, "abc", 4, nil},
		{"0123456789\n", 10, "0123456789", 11, nil},
		{"0123456789\r\n", 10, "0123456789", 12, nil},
		{"0123456789a\n", 10, "", 0, ErrLineTooLong},
		{"0123456789a", 10, "", 0, ErrLineTooLong},
		{"0123456789\r", 10, "", 0, nil}, // may still become a legal line
		{strings.Repeat("x", 100), 10, "", 0, ErrLineTooLong},
	}
	for _, c := range cases {
		line, n, err := NextLine([]byte(c.in), c.max)
		if string(line) != c.line || n != c.n || err != c.err {
			t.Errorf("NextLine(%q,%d) = %q,%d,%v; want %q,%d,%v", c.in, c.max, line, n, err, c.line, c.n, c.err)
		}
	}
}

// splitLines drives NextLine the way a server does, feeding the stream in
// chunks of the given size and consuming every complete line after each.
func splitLines(stream []byte, chunk, max int) (lines []string, err error) {
	var buf []byte
	for off := 0; off < len(stream); off += chunk {
		end := min(off+chunk, len(stream))
		buf = append(buf, stream[off:end]...)
		for {
			line, n, err := NextLine(buf, max)
			if err != nil {
				return lines, err
			}
			if n == 0 {
				break
			}
			if !IsBlank(line) {
				lines = append(lines, string(line))
			}
			buf = buf[n:]
		}
		if len(buf) > max+1 {
			return lines, errors.New("buffered past the cap")
		}
	}
	return lines, nil
}

func TestNextLineByteAtATime(t *testing.T) {
	stream := []byte("{\"cmd\":\"login\",\"name\":\"zhima201\"}\r\n\r\n  \n{\"cmd\":\"chat\",\"send\":\"zhima201\",\"recv\":\"zhima202\",\"content\":\"how are youe\"}\n{\"cmd\":\"ping\"}\n")
	want := []string{`{"cmd":"login","name":"zhima201"}`, `{"cmd":"chat","send":"zhima201","recv":"zhima202","content":"how are youe"}`, `{"cmd":"ping"}`}
	for chunk := 1; chunk <= len(stream); chunk++ {
		got, err := splitLines(stream, chunk, 1024)
		if err != nil || strings.Join(got, "|") != strings.Join(want, "|") {
			t.Fatalf("chunk %d: got %q, %v", chunk, got, err)
		}
	}
	// An over-long line is caught one byte after the cap, whatever the split.
	long := append(bytes.Repeat([]byte("a"), 40), '\n')
	for chunk := 1; chunk <= len(long); chunk++ {
		if _, err := splitLines(long, chunk, 32); err != ErrLineTooLong {
			t.Fatalf("chunk %d: err %v, want ErrLineTooLong", chunk, err)
		}
	}
}

func TestDecode(t *testing.T) {
	cases := []struct {
		in   string
		want Request
		err  error
	}{
		{`{"cmd":"login","name":"zhima201"}`, Request{Cmd: CmdLogin, Name: "zhima201"}, nil},
		{`{"cmd":"login","name":"alice","token":"t1","extra":[1,{"a":2}]}`, Request{Cmd: CmdLogin, Name: "alice", Token: "t1"}, nil},
		{`{"cmd":"chat","send":"zhima201","recv":"zhima202","content":"how are youe"}`,
			Request{Cmd: CmdChat, Send: "zhima201", HasSend: true, Recv: "zhima202", Content: "how are youe"}, nil},
		{`{"cmd":"chat","recv":"bob","content":"","id":7}`, Request{Cmd: CmdChat, Recv: "bob", ID: []byte("7")}, nil},
		{`{"cmd":"chat","recv":"bob","content":"x\n\"y\"","id":"a b"}`, Request{Cmd: CmdChat, Recv: "bob", Content: "x\n\"y\"", ID: []byte(`"a b"`)}, nil},
		{` { "cmd" : "ping" , "id" : -1.5e3 } `, Request{Cmd: CmdPing, ID: []byte("-1.5e3")}, nil},
		{`{"cmd":"logout"}`, Request{Cmd: CmdLogout}, nil},
		{`{"cmd":"ping","id":null}`, Request{Cmd: CmdPing}, nil},
		{`not json`, Request{}, ErrInvalidJSON},
		{`{"cmd":"chat"`, Request{}, ErrInvalidJSON},
		{`{"cmd":"chat"} x`, Request{}, ErrInvalidJSON},
		{`[1,2]`, Request{}, ErrNotObject},
		{`"str"`, Request{}, ErrNotObject},
		{`42`, Request{}, ErrNotObject},
		{`null`, Request{}, ErrNotObject},
		{"\xff\xfe", Request{}, ErrInvalidUTF8},
		{"{\"cmd\":\"chat\",\"content\":\"\xff\"}", Request{}, ErrInvalidUTF8},
		{"{\"cmd\":\"a\x01\"}", Request{}, ErrInvalidJSON},
		{`{}`, Request{}, ErrMissingCmd},
		{`{"cmd":""}`, Request{}, ErrMissingCmd},
		{`{"cmd":null}`, Request{}, ErrMissingCmd},
		{`{"cmd":"dance","id":3}`, Request{ID: []byte("3")}, ErrUnknownCmd},
		{`{"cmd":5}`, Request{}, ErrFieldType},
		{`{"cmd":"chat","recv":"bob","content":5,"id":"q"}`, Request{ID: []byte(`"q"`)}, ErrFieldType},
		{`{"cmd":"login"}`, Request{Cmd: CmdLogin}, ErrMissingName},
		{`{"cmd":"login","name":""}`, Request{Cmd: CmdLogin}, ErrBadName},
		{`{"cmd":"login","name":"a b"}`, Request{Cmd: CmdLogin, Name: "a b"}, ErrBadName},
		{`{"cmd":"login","name":"` + strings.Repeat("n", 65) + `"}`, Request{Cmd: CmdLogin, Name: strings.Repeat("n", 65)}, ErrBadName},
		{`{"cmd":"chat","content":"hi"}`, Request{Cmd: CmdChat}, ErrMissingRecv},
		{`{"cmd":"chat","recv":"bob"}`, Request{Cmd: CmdChat, Recv: "bob"}, ErrMissingContent},
		{`{"cmd":"chat","recv":"b\u0000b","content":"x"}`, Request{Cmd: CmdChat}, ErrBadName},
		{`{"cmd":"ping","id":{"a":1}}`, Request{}, ErrBadID},
		{`{"cmd":"ping","id":true}`, Request{}, ErrBadID},
		{`{"cmd":"ping","id":"` + strings.Repeat("i", 200) + `"}`, Request{}, ErrBadID},
		{`{"cmd":"chat","x":` + strings.Repeat("[", 10000) + strings.Repeat("]", 10000) + `}`, Request{}, ErrInvalidJSON},
	}
	for _, c := range cases {
		var r Request
		err := Decode([]byte(c.in), &r)
		if !errors.Is(err, c.err) {
			t.Errorf("Decode(%.60q) err = %v, want %v", c.in, err, c.err)
			continue
		}
		if err != nil {
			var pe ProtoError
			if !errors.As(err, &pe) {
				t.Errorf("Decode(%.60q) err %T is not a ProtoError", c.in, err)
			}
			if !bytes.Equal(r.ID, c.want.ID) {
				t.Errorf("Decode(%.60q) ID = %q, want %q (errors carry the id)", c.in, r.ID, c.want.ID)
			}
			continue
		}
		if r.Cmd != c.want.Cmd || r.Name != c.want.Name || r.Token != c.want.Token || r.Send != c.want.Send ||
			r.HasSend != c.want.HasSend || r.Recv != c.want.Recv || r.Content != c.want.Content || !bytes.Equal(r.ID, c.want.ID) {
			t.Errorf("Decode(%.60q) = %+v, want %+v", c.in, r, c.want)
		}
	}
}

func TestDecodeDoesNotAliasInput(t *testing.T) {
	line := []byte(`{"cmd":"chat","recv":"bob","content":"hello","id":"abc"}`)
	var r Request
	if err := Decode(line, &r); err != nil {
		t.Fatal(err)
	}
	for i := range line {
		line[i] = 'X'
	}
	if r.Recv != "bob" || r.Content != "hello" || string(r.ID) != `"abc"` {
		t.Fatalf("request changed with its buffer: %+v", r)
	}
}

func TestValidName(t *testing.T) {
	good := []string{"a", "zhima201", "用户", strings.Repeat("x", 64), "a.b-c_d@e"}
	bad := []string{"", "a b", "a\tb", "a\nb", "\x00", "a\x7f", strings.Repeat("x", 65), "\xff", "a\u00a0b", "a\u2028b"}
	for _, s := range good {
		if !ValidName(s) {
			t.Errorf("ValidName(%q) = false", s)
		}
	}
	for _, s := range bad {
		if ValidName(s) {
			t.Errorf("ValidName(%q) = true", s)
		}
	}
}

func TestEncodeIsJSON(t *testing.T) {
	weird := "quote\" back\\ nl\n cr\r tab\t nul\x00 bell\x07 del\x7f uni☃ emoji😀 bad\xff end"
	lines := [][]byte{
		AppendLoginOK(nil, "alice", "A"),
		AppendPong(nil, nil),
		AppendPong(nil, []byte(`"p"`)),
		AppendLogoutOK(nil, []byte("9")),
		AppendAck(nil, []byte(`"x y"`)),
		AppendError(nil, weird, []byte("1")),
		AppendError(nil, "plain", nil),
		AppendKicked(nil, "logged in elsewhere"),
		AppendDelivery(nil, "alice", "bob", weird, 1700000000123),
	}
	for _, l := range lines {
		if len(l) == 0 || l[len(l)-1] != '\n' || bytes.Count(l, []byte("\n")) != 1 {
			t.Fatalf("not one line: %q", l)
		}
		var m map[string]any
		if err := json.Unmarshal(l, &m); err != nil {
			t.Fatalf("invalid JSON %q: %v", l, err)
		}
	}
	var d struct {
		Cmd, Send, Recv, Content string
		Ts                       int64
	}
	if err := json.Unmarshal(lines[8], &d); err != nil {
		t.Fatal(err)
	}
	wantContent := strings.ToValidUTF8(weird, "\ufffd")
	if d.Cmd != "chat" || d.Send != "alice" || d.Recv != "bob" || d.Content != wantContent || d.Ts != 1700000000123 {
		t.Fatalf("delivery decoded as %+v", d)
	}
	if got := string(AppendAck(nil, []byte("5"))); got != "{\"cmd\":\"ack\",\"id\":5}\n" {
		t.Fatalf("ack = %q", got)
	}
}

func TestLinkFrames(t *testing.T) {
	payload := AppendDelivery(nil, "alice", "bob", "hi there", 1)
	payload = payload[:len(payload)-1]
	for _, tc := range []Frame{
		{Kind: KindMsg, Dst: []byte("B"), DstEpoch: 0x18a3, Src: []byte("A"), Stream: 0xffffffffffffffff, Seq: 1, Send: []byte("alice"), Recv: []byte("bob"), Payload: payload},
		{Kind: KindMsg, Dst: []byte("B"), DstEpoch: 1, Src: []byte("A"), Stream: 7, Seq: 99, Hops: 2, Send: []byte("-"), Recv: []byte("-"), ID: []byte("42"), Payload: payload},
		{Kind: KindError, Dst: []byte("s.1"), DstEpoch: 1, Src: []byte("s_2"), Stream: 3, Seq: 5, Recv: []byte("a:b c"[:3]), ID: []byte(`"with spaces: and 9:colons"`), Payload: []byte(`{"cmd":"error"}`)},
		{Kind: KindKick, Dst: []byte("B"), DstEpoch: 1, Src: []byte("A"), Stream: 3, Seq: 6, Recv: []byte("bob"), Payload: []byte("tok A tok2")},
	} {
		line := AppendFrame(nil, &tc)
		if bytes.Count(line, []byte("\n")) != 1 || line[len(line)-1] != '\n' {
			t.Fatalf("frame not one line: %q", line)
		}
		line = line[:len(line)-1]
		kind, dst, src, err := FrameRoute(line)
		if err != nil || kind != tc.Kind || !bytes.Equal(dst, tc.Dst) || !bytes.Equal(src, tc.Src) {
			t.Fatalf("FrameRoute(%q) = %c %q %q %v", line, kind, dst, src, err)
		}
		var f Frame
		if err := ParseFrame(line, &f); err != nil {
			t.Fatalf("ParseFrame(%q): %v", line, err)
		}
		if f.Kind != tc.Kind || !bytes.Equal(f.Dst, tc.Dst) || f.DstEpoch != tc.DstEpoch || !bytes.Equal(f.Src, tc.Src) || f.Stream != tc.Stream ||
			f.Seq != tc.Seq || f.Hops != tc.Hops || !bytes.Equal(f.Send, tc.Send) || !bytes.Equal(f.Recv, tc.Recv) ||
			!bytes.Equal(f.ID, tc.ID) || !bytes.Equal(f.Payload, tc.Payload) {
			t.Fatalf("ParseFrame(%q) = %+v, want %+v", line, f, tc)
		}
	}
	ack := AppendAckFrame(nil, "A", 0x10, "B", 0x20, 77)
	var f Frame
	if err := ParseFrame(ack[:len(ack)-1], &f); err != nil || f.Kind != KindAck || string(f.Dst) != "A" || f.DstEpoch != 0x10 ||
		string(f.Src) != "B" || f.Stream != 0x20 || f.Seq != 77 {
		t.Fatalf("ack %q parsed as %+v, %v", ack, f, err)
	}
	for _, bad := range []string{"", "M", "MB", "M B 1 A", "X B 1 A 1 1 0 0: 0: 0: p", "M B 1 A 1 0 0 0: 0: 0: p",
		"M B 1 A 1 1 -1 0: 0: 0: p", "M B 1 A 1 1 0 5:ab 0: 0: p", "M B 1 A 1 1 0 0: 0: 0:", "M B 1 A 1 1 0 :x 0: 0: p",
		"M B 1 A 1 1 0 99999:x 0: 0: p", "M B g A 1 1 0 0: 0: 0: p", "M B 1 A 1 x 0 0: 0: 0: p", "M b/c 1 A 1 1 0 0: 0: 0: p",
		"A B 1 A 1", "A B 1 A 1 x", "M B 1 A 1 1 0 65:" + strings.Repeat("n", 65) + " 0: 0: p"} {
		if err := ParseFrame([]byte(bad), &f); err == nil {
			t.Errorf("ParseFrame(%q) accepted %+v", bad, f)
		}
	}
}

func TestValidServerID(t *testing.T) {
	for _, s := range []string{"A", "server-1", "node_2.eu"} {
		if !ValidServerID(s) {
			t.Errorf("ValidServerID(%q) = false", s)
		}
	}
	for _, s := range []string{"", "a b", "a:b", "a/b", strings.Repeat("x", 65), "é"} {
		if ValidServerID(s) {
			t.Errorf("ValidServerID(%q) = true", s)
		}
	}
}

// TestDecodeDoesNotAliasLine: the request must survive reuse of the line's
// buffer (gnet reuses its read buffer after the callback).
func TestDecodeDoesNotAliasLine(t *testing.T) {
	line := []byte(`{"cmd":"chat","recv":"bob","content":"hello","id":"abc"}`)
	var r Request
	if err := Decode(line, &r); err != nil {
		t.Fatal(err)
	}
	for i := range line {
		line[i] = 'X'
	}
	if r.Recv != "bob" || r.Content != "hello" || string(r.ID) != `"abc"` {
		t.Fatalf("request changed with its line: %+v id=%s", r, r.ID)
	}
}

// TestDecodeNullAndEmptyFields tells missing (or null) fields from empty ones.
func TestDecodeNullAndEmptyFields(t *testing.T) {
	cases := []struct {
		line string
		want error
	}{
		{`{"cmd":"chat","recv":"bob","content":null}`, ErrMissingContent},
		{`{"cmd":"chat","recv":"bob","content":""}`, nil},
		{`{"cmd":null}`, ErrMissingCmd},
		{`{"cmd":"login","name":null}`, ErrMissingName},
		{`{"cmd":"login","name":""}`, ErrBadName},
		{`{"cmd":"chat","recv":null,"content":"x"}`, ErrMissingRecv},
	}
	for _, c := range cases {
		var r Request
		err := Decode([]byte(c.line), &r)
		if c.want == nil && err != nil || c.want != nil && !errors.Is(err, c.want) {
			t.Errorf("Decode(%s) = %v, want %v", c.line, err, c.want)
		}
	}
	var r Request
	if err := Decode([]byte(`{"cmd":"chat","send":"","recv":"bob","content":"x"}`), &r); err != nil || !r.HasSend || r.Send != "" {
		t.Fatalf("empty send: %+v %v", r, err)
	}
	if err := Decode([]byte(`{"cmd":"chat","recv":"bob","content":"x"}`), &r); err != nil || r.HasSend {
		t.Fatalf("no send: %+v %v", r, err)
	}
}

func TestReachRoundTrip(t *testing.T) {
	for _, rs := range [][]Reach{nil, {{"s1", 1}}, {{"s1", 0xabc}, {"s-2", 2}, {"a.b_c", 0xffffffffffffffff}}} {
		line := AppendReach(nil, rs)
		got, err := ParseReach(line[:len(line)-1])
		if err != nil || len(got) != len(rs) {
			t.Fatalf("ParseReach(%q) = %v, %v", line, got, err)
		}
		for i := range rs {
			if got[i] != rs[i] {
				t.Fatalf("ParseReach(%q) = %v", line, got)
			}
		}
	}
	for _, bad := range []string{"", "X s1:1", "Rs1:1", "R s1", "R s1:", "R s 1:1 bad!:1", "R s1:xyz"} {
		if _, err := ParseReach([]byte(bad)); err == nil {
			t.Errorf("ParseReach(%q) accepted", bad)
		}
	}
}

func TestStoredLines(t *testing.T) {
	d := AppendDelivery(nil, "a", "b", "hi", 5)
	got := string(AppendStoredDelivery(nil, d[:len(d)-1]))
	if got != `{"cmd":"chat","send":"a","recv":"b","content":"hi","ts":5,"stored":true}`+"\n" {
		t.Fatalf("stored delivery %q", got)
	}
	if got := string(AppendAckStored(nil, []byte(`"x"`))); got != `{"cmd":"ack","id":"x","stored":true}`+"\n" {
		t.Fatalf("stored ack %q", got)
	}
}
