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

func BenchmarkFrameRoute(b *testing.B) {
	line := AppendFrame(nil, &Frame{Kind: KindMsg, Dst: []byte("B"), DstEpoch: 0x18a3f5c2d4e6f701, Src: []byte("A"), Stream: 0x18a3f5c2d4e6f702,
		Seq: 123456, Send: []byte("user0001"), Recv: []byte("user1234"), ID: []byte("17"), Payload: chatLine})
	b.ReportAllocs()
	for b.Loop() {
		if _, _, _, err := FrameRoute(line); err != nil {
			b.Fatal(err)
		}
	}
}
