package bench

import (
	"bufio"
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// serverFrame is an unmasked frame as a server sends it.
func serverFrame(t *testing.T, fin bool, op ws.OpCode, payload string) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := ws.WriteFrame(&b, ws.Frame{Header: ws.Header{Fin: fin, OpCode: op, Length: int64(len(payload))}, Payload: []byte(payload)}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestWSLines(t *testing.T) {
	var in []byte
	in = append(in, serverFrame(t, true, ws.OpText, `{"cmd":"login","ok":true}`)...)
	in = append(in, serverFrame(t, true, ws.OpText, "{\"cmd\":\"pong\"}\n")...)       // trailing newline
	in = append(in, serverFrame(t, true, ws.OpText, "{\"a\":1}\r\n\n{\"b\":2}")...)   // several objects
	in = append(in, serverFrame(t, false, ws.OpText, `{"cmd":"ch`)...)                // fragmented...
	in = append(in, serverFrame(t, true, ws.OpPing, "p1")...)                         // ...with a ping inside
	in = append(in, serverFrame(t, true, ws.OpContinuation, `at","content":"x"}`)...) // ...end
	in = append(in, serverFrame(t, true, ws.OpText, strings.Repeat("y", 70000))...)   // 64-bit length
	in = append(in, serverFrame(t, true, ws.OpClose, "")...)
	var out bytes.Buffer
	var mu sync.Mutex
	w := newWSLines(bufio.NewReaderSize(bytes.NewReader(in), 16), &out, &mu)
	want := []string{`{"cmd":"login","ok":true}`, `{"cmd":"pong"}`, `{"a":1}`, `{"b":2}`, `{"cmd":"chat","content":"x"}`, strings.Repeat("y", 70000)}
	for _, s := range want {
		got, err := w.next()
		if err != nil || string(got) != s {
			t.Fatalf("got %.40q, %v; want %.40q", got, err, s)
		}
	}
	if _, err := w.next(); err != errWSClosed {
		t.Fatalf("after close frame: %v", err)
	}
	// The ping got a masked pong with its payload.
	f, err := ws.ReadFrame(&out)
	if err != nil || f.Header.OpCode != ws.OpPong || !f.Header.Masked {
		t.Fatalf("pong frame %+v, %v", f.Header, err)
	}
	if p := ws.UnmaskFrame(f).Payload; string(p) != "p1" {
		t.Fatalf("pong payload %q", p)
	}
}

func TestWSFrameRoundTrip(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 65535, 65536, 70000} {
		line := append(bytes.Repeat([]byte{'z'}, n), '\n')
		b := appendWSText([]byte("prefix"), line, maskOf(0xdeadbeef))
		f, err := ws.ReadFrame(bytes.NewReader(b[len("prefix"):]))
		if err != nil {
			t.Fatal(err)
		}
		f = ws.UnmaskFrame(f)
		if !f.Header.Fin || f.Header.OpCode != ws.OpText || len(f.Payload) != n || (n > 0 && f.Payload[n-1] != 'z') {
			t.Fatalf("n=%d: header %+v, payload %d bytes", n, f.Header, len(f.Payload))
		}
	}
}

// TestRunWebSocket runs the bench over WebSocket against fake servers that
// speak it: the same checks as over TCP.
func TestRunWebSocket(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    fault
		lost int64
		dup  int64
	}{{"clean", faultNone, 0, 0}, {"drop", faultDrop, 1, 0}, {"duplicate", faultDup, 0, 1}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := newFakeDir(tc.f, 40)
			s1, s2 := startFakeWS(t, "s1", dir), startFakeWS(t, "s2", dir)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			r, err := Run(ctx, Options{Servers: []string{s1.addr(), s2.addr()}, Transport: TransportWS, Clients: 30,
				Fanout: 1, Ack: true, Ping: 50 * time.Millisecond, Duration: 400 * time.Millisecond, Drain: 2 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			k := r.Counters
			if r.Connect.Connected != 30 || k.Sent < 100 || r.Lost != tc.lost || k.Duplicated != tc.dup || k.Reordered != 0 ||
				k.Delivered != k.Sent-tc.lost || k.Acked != k.Sent || k.Pongs == 0 || r.Latency.Count == 0 {
				var b strings.Builder
				_ = r.WriteText(&b)
				t.Fatalf("report:\n%s", b.String())
			}
			if r.Options.Transport != TransportWS || r.ServerIDs[s2.addr()] != "s2" {
				t.Errorf("transport %q, server ids %v", r.Options.Transport, r.ServerIDs)
			}
		})
	}
}
