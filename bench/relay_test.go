package bench

import (
	"bufio"
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

// relayImpls are the relay's transports, each tested the same way.
var relayImpls = []struct {
	name  string
	start func(addrs []string) (*Relay, error)
}{
	{"epoll", func(a []string) (*Relay, error) { return StartRelay(a, 2) }},
	{"net", StartNetRelay},
}

func startTestRelay(t *testing.T, start func([]string) (*Relay, error), addrs ...string) *Relay {
	t.Helper()
	r, err := start(addrs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// TestRelayProtocol: login in the server's shape, delivery with send and
// ts, pong, and the errors the bench can meet, over both listeners.
func TestRelayProtocol(t *testing.T) {
	for _, impl := range relayImpls {
		t.Run(impl.name, func(t *testing.T) { testRelayProtocol(t, impl.start) })
	}
}

func testRelayProtocol(t *testing.T, start func([]string) (*Relay, error)) {
	r := startTestRelay(t, start, "127.0.0.1:0", "127.0.0.1:0")
	a := r.Addrs()
	if len(a) != 2 || a[0] == a[1] || strings.HasSuffix(a[0], ":0") {
		t.Fatalf("addrs %v", a)
	}
	dial := func(addr string) (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		return c, bufio.NewReader(c)
	}
	expect := func(br *bufio.Reader, want ...string) {
		t.Helper()
		l, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range want {
			if !strings.Contains(l, w) {
				t.Fatalf("got %q, want it to contain %q", l, w)
			}
		}
	}
	ca, ra := dial(a[0])
	cb, rb := dial(a[1])
	_, _ = ca.Write([]byte(`{"cmd":"chat","recv":"bob","content":"early","id":1}` + "\n"))
	expect(ra, `"error":"not logged in"`, `"id":1`)
	_, _ = ca.Write([]byte(`{"cmd":"login","name":"alice"}` + "\r\n"))
	expect(ra, `{"cmd":"login","ok":true,"name":"alice","server":"relay"}`)
	// bob logs in with the login split across two writes
	_, _ = cb.Write([]byte(`{"cmd":"login",`))
	_, _ = cb.Write([]byte(`"name":"bob"}` + "\n"))
	expect(rb, `"ok":true`, `"name":"bob"`)
	_, _ = ca.Write([]byte(`{"cmd":"chat","recv":"bob","content":"hi"}` + "\n" + `{"cmd":"chat","recv":"bob","content":"again","id":"x"}` + "\n"))
	expect(rb, `{"cmd":"chat","send":"alice","recv":"bob","content":"hi","ts":`)
	expect(rb, `"content":"again"`)
	expect(ra, `{"cmd":"ack","id":"x"}`)
	_, _ = ca.Write([]byte(`{"cmd":"chat","recv":"carol","content":"?"}` + "\n" + `{"cmd":"ping","id":7}` + "\n" + `{"cmd":"nope"}` + "\n"))
	expect(ra, `recipient not online`)
	expect(ra, `{"cmd":"pong","id":7}`)
	expect(ra, `unknown cmd`)
	if d, f := r.Stats(); d != 2 || f != 1 {
		t.Fatalf("stats delivered %d refused %d", d, f)
	}
}

// TestRelayUnderBench runs the load generator against the relay: a few
// hundred clients over its two listeners for a second, every message
// checked.
func TestRelayUnderBench(t *testing.T) {
	for _, impl := range relayImpls {
		t.Run(impl.name, func(t *testing.T) { testRelayUnderBench(t, impl.start) })
	}
}

func testRelayUnderBench(t *testing.T, start func([]string) (*Relay, error)) {
	r := startTestRelay(t, start, "127.0.0.1:0", "127.0.0.1:0")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rep, err := Run(ctx, Options{Servers: r.Addrs(), Clients: 300, Duration: time.Second, Drain: 5 * time.Second, Size: 64})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	_ = rep.WriteText(&b)
	t.Logf("report:\n%s", b.String())
	k := rep.Counters
	if rep.Connect.Connected != 300 || k.Sent < 1000 || k.Delivered != k.Sent || rep.Lost != 0 ||
		k.Duplicated != 0 || k.Reordered != 0 || k.Misrouted != 0 || k.Foreign != 0 || k.Errors != 0 || len(rep.Errors) != 0 {
		t.Fatalf("connected %d sent %d delivered %d lost %d dup %d reord %d misrouted %d foreign %d errors %v",
			rep.Connect.Connected, k.Sent, k.Delivered, rep.Lost, k.Duplicated, k.Reordered, k.Misrouted, k.Foreign, rep.Errors)
	}
	if rep.ServerIDs[r.Addrs()[0]] != "relay" {
		t.Errorf("server ids %v", rep.ServerIDs)
	}
	if d, _ := r.Stats(); d != k.Delivered {
		t.Errorf("relay delivered %d, bench received %d", d, k.Delivered)
	}
}
