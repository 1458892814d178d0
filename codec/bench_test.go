package codec

import "testing"

var chatLine = []byte(`{"cmd":"chat","recv":"user1234","content":"0123456789012345678901234567890123456789012345678901234567890123","id":17}`)

func BenchmarkDecodeChat(b *testing.B) {
	_ = Pretouch()
	var r Request
	b.ReportAllocs()
	b.SetBytes(int64(len(chatLine)))
	for b.Loop() {
		if err := Decode(chatLine, &r); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendDelivery(b *testing.B) {
	buf := make([]byte, 0, 512)
	content := "0123456789012345678901234567890123456789012345678901234567890123"
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendDelivery(buf[:0], "user0001", "user1234", content, 1700000000000)
	}
}

func BenchmarkFrameDst(b *testing.B) {
	line := AppendFrame(nil, KindMsg, "B", "A", 0, "user0001", "user1234", []byte("17"), chatLine)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := FrameDst(line); err != nil {
			b.Fatal(err)
		}
	}
}
