package route_test

import (
	"context"
	"testing"
	"time"

	"github.com/relaychat/relaychat/internal/testenv"
	"github.com/relaychat/relaychat/route"
)

// sweepUntil sweeps every 50ms until a sweep deletes want routes in all,
// and returns the number of sweeps.
func sweepUntil(t *testing.T, s *route.Store, grace time.Duration, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * grace)
	total := 0
	for total < want {
		n, err := s.SweepDeadServers(context.Background(), grace)
		if err != nil {
			t.Fatal(err)
		}
		total += n
		if time.Now().After(deadline) {
			t.Fatalf("swept %d routes in %v, want %d", total, 10*grace, want)
		}
		time.Sleep(50 * time.Millisecond) // sweep period
	}
	if total != want {
		t.Fatalf("swept %d routes, want %d", total, want)
	}
}

func TestSweepDeadServers(t *testing.T) {
	rd := testenv.Redis(t)
	s := newStore(t, rd.Addr, route.Options{})
	ctx := context.Background()
	const grace = 300 * time.Millisecond
	claim := func(name, server, token string) {
		t.Helper()
		if _, _, err := s.Claim(ctx, name, route.Route{Server: server, Token: token}); err != nil {
			t.Fatal(err)
		}
	}
	routeOf := func(name string) (route.Route, bool) {
		t.Helper()
		r, ok, err := s.FreshLookup(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		return r, ok
	}
	if err := s.AcquireID(ctx, "live", "e1", "127.0.0.1:1", time.Minute, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	claim("u1", "dead", "a")
	claim("u2", "dead", "b")
	claim("u3", "live", "c")

	// The first sweep only notices; the routes go once grace has passed.
	if n, err := s.SweepDeadServers(ctx, grace); n != 0 || err != nil {
		t.Fatalf("first sweep = %d, %v; want 0", n, err)
	}
	t0 := time.Now()
	sweepUntil(t, s, grace, 2)
	if d := time.Since(t0); d < grace {
		t.Fatalf("dead server's routes swept after %v, before grace %v", d, grace)
	}
	if _, ok := routeOf("u1"); ok {
		t.Fatal("u1's route survived the sweep")
	}
	if _, ok := routeOf("u3"); !ok {
		t.Fatal("a live server's route was swept")
	}

	// A server that restarts after the sweep first noticed it: it takes its
	// id, then logs users in; its old route (u4) is for its own
	// ClearServer, and neither that nor the new one (u5) may be swept
	// while it is alive.
	claim("u4", "phoenix", "old")
	if n, err := s.SweepDeadServers(ctx, grace); n != 0 || err != nil {
		t.Fatalf("sweep = %d, %v", n, err)
	}
	time.Sleep(grace) // let grace pass with phoenix still dead
	if err := s.AcquireID(ctx, "phoenix", "e2", "127.0.0.1:2", time.Minute, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	claim("u5", "phoenix", "new")
	if n, err := s.SweepDeadServers(ctx, grace); n != 0 || err != nil {
		t.Fatalf("sweep with phoenix back = %d, %v; want 0", n, err)
	}
	if _, ok := routeOf("u5"); !ok {
		t.Fatal("the restarted server's new route was swept")
	}
	// phoenix stops for good: the wait starts again from the first sweep
	// that sees it gone.
	if err := s.ReleaseID(ctx, "phoenix", "e2"); err != nil {
		t.Fatal(err)
	}
	if n, err := s.SweepDeadServers(ctx, grace); n != 0 || err != nil {
		t.Fatalf("sweep right after phoenix stopped = %d, %v; want 0", n, err)
	}
	sweepUntil(t, s, grace, 2)
	if _, ok := routeOf("u3"); !ok {
		t.Fatal("a live server's route was swept")
	}
}
