package wsproto

import (
	"slices"
	"testing"

	"github.com/gobwas/ws"
)

// FuzzFrames feeds arbitrary bytes to a Reader, whole and in chunks: it
// must never panic, never consume more than it was given, never touch bytes
// past what it consumed, never hold or leave unconsumed more than one capped
// frame (drain checks all of that), and find the same messages and the same
// error however the stream is split.
func FuzzFrames(f *testing.F) {
	seeds := [][]byte{
		cf(ws.OpText, true, `{"cmd":"ping"}`),
		cat(cf(ws.OpText, false, "he"), cf(ws.OpPing, true, "p"), cf(ws.OpContinuation, true, "llo")),
		cat(cf(ws.OpBinary, false, "\x00"), cf(ws.OpContinuation, true, "\x01"), cf(ws.OpPong, true, "")),
		cf(ws.OpClose, true, "\x03\xe8bye"),
		cf(ws.OpText, true, string(make([]byte, 300))),
		rawHeader(ws.OpText, true, 1<<40),
		unmasked(ws.OpText, "x"),
		{0x81, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4},
	}
	for _, s := range seeds {
		f.Add(s, uint16(0), uint8(1))
		f.Add(s, uint16(64), uint8(3))
	}
	f.Fuzz(func(t *testing.T, stream []byte, max uint16, chunk uint8) {
		if len(stream) > 1<<14 {
			stream = stream[:1<<14] // drain's checks are quadratic in the input
		}
		whole, errWhole := drain(t, &Reader{Max: int(max)}, stream, 0)
		split, errSplit := drain(t, &Reader{Max: int(max)}, stream, int(chunk%32)+1)
		if !slices.Equal(whole, split) {
			t.Fatalf("whole stream gave %q, split in %d-byte chunks %q", whole, chunk%32+1, split)
		}
		if CloseCode(errWhole) != CloseCode(errSplit) || (errWhole == nil) != (errSplit == nil) {
			t.Fatalf("whole stream ended with %v, split with %v", errWhole, errSplit)
		}
		if 6*len(whole) > len(stream) { // a client frame has at least 6 bytes
			t.Fatalf("%d messages from %d bytes", len(whole), len(stream))
		}
	})
}
