package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relaychat/relaychat/route"
	"github.com/relaychat/relaychat/server"
)

// memRouter is an in-memory Router for tests that do not need Redis.
type memRouter struct {
	mu sync.Mutex
	m  map[string]route.Route
}

var _ server.Router = (*memRouter)(nil)

func newMemRouter() *memRouter { return &memRouter{m: make(map[string]route.Route)} }

func (r *memRouter) CachedLookup(name string) (route.Route, bool, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	v, ok := r.m[name]
	return v, ok, true
}
func (r *memRouter) Lookup(_ context.Context, name string) (route.Route, bool, error) {
	v, ok, _ := r.CachedLookup(name)
	return v, ok, nil
}
func (r *memRouter) FreshLookup(ctx context.Context, name string) (route.Route, bool, error) {
	return r.Lookup(ctx, name)
}
func (r *memRouter) Claim(_ context.Context, name string, rt route.Route) (route.Route, bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	prev, had := r.m[name]
	r.m[name] = rt
	return prev, had, nil
}
func (r *memRouter) Release(_ context.Context, name string, rt route.Route) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m[name] == rt {
		delete(r.m, name)
		return true, nil
	}
	return false, nil
}
func (r *memRouter) ReleaseAll(ctx context.Context, routes map[string]route.Route) (int, error) {
	n := 0
	for name, rt := range routes {
		if ok, _ := r.Release(ctx, name, rt); ok {
			n++
		}
	}
	return n, nil
}
func (r *memRouter) ClearServer(context.Context, string) (int, error)               { return 0, nil }
func (r *memRouter) Heartbeat(context.Context, string, string, time.Duration) error { return nil }
func (r *memRouter) Reassert(context.Context, map[string]route.Route) (int, error)  { return 0, nil }
func (r *memRouter) Drops() uint64                                                  { return 0 }

// FuzzClientInput writes arbitrary bytes at a server as a client would and
// checks that every line it answers is one JSON object, that the connection
// still answers a ping unless the server closed it on purpose, and that the
// server keeps serving.
func FuzzClientInput(f *testing.F) {
	srv, err := server.New(server.Options{
		ID: "f1", Listen: "127.0.0.1:0", PeerListen: "127.0.0.1:0",
		Router: newMemRouter(), MaxLine: 4096, Logger: testLogger(),
	})
	if err != nil {
		f.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		f.Fatal(err)
	}
	defer func() { _ = srv.Shutdown(context.Background()) }()
	for _, seed := range []string{
		`{"cmd":"login","name":"a"}` + "\n" + `{"cmd":"chat","recv":"a","content":"hi","id":1}`,
		`{"cmd":"chat","send":"x","recv":"a","content":"hi"}`,
		`{"cmd":"logout"}` + "\r\n\r\n" + `{"cmd":"ping","id":"p"}`,
		"\x00\xff{\"cmd\":",
		strings.Repeat("[", 5000),
		`{"cmd":"login","name":"` + strings.Repeat("n", 70) + `"}`,
		strings.Repeat("x", 5000),
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		conn, err := net.DialTimeout("tcp", srv.ClientAddr(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		msg := append(append([]byte(nil), in...), []byte("\n{\"cmd\":\"ping\",\"id\":\"end\"}\n")...)
		if _, err := conn.Write(msg); err != nil {
			return // the server may close first (line too long); fine
		}
		br := bufio.NewReader(conn)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				if line != "" {
					t.Fatalf("unterminated line %q", line)
				}
				// Closed by the server: only for an over-long line.
				if !hasLongLine(in, 4096) {
					t.Fatalf("connection closed (%v) although no line was over the cap", err)
				}
				return
			}
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) != nil || m == nil {
				t.Fatalf("reply is not one JSON object: %q", line)
			}
			if m["cmd"] == "pong" && m["id"] == "end" {
				return
			}
		}
	})
}

// hasLongLine reports whether in holds a line (between newlines, without a
// trailing \r) longer than max; the fuzzer's own terminator ends the last.
func hasLongLine(in []byte, max int) bool {
	for _, l := range strings.Split(string(in), "\n") {
		if len(strings.TrimSuffix(l, "\r")) > max {
			return true
		}
	}
	return false
}
