package server_test

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relaychat/relaychat/route"
	"github.com/relaychat/relaychat/server"
)

// outageRouter is a memRouter whose route releases wait out their context
// and fail, as against a Redis that stopped answering.
type outageRouter struct {
	*memRouter
	releaseCalls atomic.Int64
}

func (r *outageRouter) ReleaseAll(ctx context.Context, _ map[string]route.Route) (int, error) {
	r.releaseCalls.Add(1)
	<-ctx.Done()
	return 0, ctx.Err()
}

// TestShutdownLeavesReleaseBacklog: thousands of sessions close while
// Redis does not answer, so their route releases queue up; Shutdown must
// not work through the backlog at a timeout per batch: the release worker
// stops at the first failed batch once the server is stopping (the routes
// name this server, so its next start clears them).
func TestShutdownLeavesReleaseBacklog(t *testing.T) {
	const n = 3000 // about 12 batches of releases
	r := &outageRouter{memRouter: newMemRouter()}
	srv, err := server.New(server.Options{
		ID: "r1", Listen: "127.0.0.1:0", PeerListen: "127.0.0.1:0",
		Router: r, RedisTimeout: 200 * time.Millisecond, Logger: testLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 0, n)
	for i := range n {
		conn, err := net.Dial("tcp", srv.ClientAddr())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, `{"cmd":"login","name":"r%d"}`+"\n", i)
		conns = append(conns, conn)
	}
	deadline := time.Now().Add(30 * time.Second)
	for srv.Stats().Logins.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d logged in", srv.Stats().Logins.Load(), n)
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
	for _, conn := range conns {
		conn.Close()
	}
	for srv.Stats().Connections.Load() > 0 || r.releaseCalls.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions still open, %d release batches tried", srv.Stats().Connections.Load(), r.releaseCalls.Load())
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	calls := r.releaseCalls.Load()
	t.Logf("Shutdown took %v; %d release batches tried for %d closed sessions", time.Since(start).Round(time.Millisecond), calls, n)
	if calls > 4 {
		t.Fatalf("%d release batches tried against a Redis that does not answer: Shutdown worked through the backlog", calls)
	}
}
