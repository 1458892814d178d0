package server_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/relaychat/relaychat/server"
)

// slowStartRouter is a memRouter whose ClearServer, the last routing-store
// step of Start, waits for the test: the listeners are bound and the peer
// address announced, but the server has not started.
type slowStartRouter struct {
	*memRouter
	entered chan struct{}
	release chan struct{}
}

func (r *slowStartRouter) ClearServer(ctx context.Context, id string) (int, error) {
	close(r.entered)
	<-r.release
	return r.memRouter.ClearServer(ctx, id)
}

// TestConnectWhileStarting: a peer that found the announced address while
// the server is still starting gets a plain close (its dialer retries
// quietly), not a line it would take for a failed hello; a client is told
// the server is starting, not that it is shutting down.
func TestConnectWhileStarting(t *testing.T) {
	r := &slowStartRouter{memRouter: newMemRouter(), entered: make(chan struct{}), release: make(chan struct{})}
	srv, err := server.New(server.Options{
		ID: "st1", Listen: "127.0.0.1:0", PeerListen: "127.0.0.1:0", PeerSecret: "s3cret",
		Router: r, Logger: testLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan error, 1)
	go func() { started <- srv.Start() }()
	released := false
	defer func() {
		if !released {
			close(r.release)
		}
	}()
	select {
	case <-r.entered:
	case err := <-started:
		t.Fatalf("Start returned before clearing routes: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("Start never reached ClearServer")
	}
	r.mu.Lock()
	peerAddr := r.alive["st1"].Addr
	r.mu.Unlock()

	readAll := func(addr string) string {
		t.Helper()
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(bufio.NewReader(conn))
		if err != nil {
			t.Fatalf("%s: %v after %q (want the server to close)", addr, err, b)
		}
		return string(b)
	}
	if got := readAll(peerAddr); got != "" {
		t.Errorf("peer connection while starting: got %q, want a close without a line", got)
	}
	if got := readAll(srv.ClientAddr()); !strings.Contains(got, `"server starting, try again"`) {
		t.Errorf("client connection while starting: got %q, want the starting error", got)
	}

	close(r.release)
	released = true
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	if n := srv.Stats().LinkAuthFailures.Load(); n != 0 {
		t.Errorf("link_auth_failures = %d, want 0", n)
	}
	if ok, why := srv.Ready(); !ok {
		t.Errorf("not ready after Start: %s", why)
	}
}
