package route_test

import (
	"context"
	"testing"
	"time"

	"github.com/relaychat/relaychat/internal/testenv"
	"github.com/relaychat/relaychat/route"
)

func TestRetryQueueAcrossOutage(t *testing.T) {
	rd := testenv.Redis(t)
	s := newStore(t, rd.Addr, route.Options{Timeout: 300 * time.Millisecond})
	ctx := context.Background()
	alice := route.Route{Server: "s1", Token: "a1"}
	bob := route.Route{Server: "s1", Token: "b1"}
	carol := route.Route{Server: "s1", Token: "c1"}

	rd.Kill()
	n, err := s.Reassert(ctx, map[string]route.Route{"alice": alice, "bob": bob, "carol": carol})
	if n != 0 || err != nil {
		t.Fatalf("Reassert with Redis down = %d, %v; want 0, nil (queued)", n, err)
	}
	if got := s.RetryStats(); got.Pending != 3 || got.Queued != 3 {
		t.Fatalf("after Reassert: %+v, want 3 pending", got)
	}
	// bob's session ends: his queued re-assertion must not come back.
	if ok, err := s.Release(ctx, "bob", bob); ok || err != nil {
		t.Fatalf("Release with Redis down = %v, %v; want false, nil (queued)", ok, err)
	}
	// carol logs in again (fails: Redis is down): her older route must not
	// be re-asserted either.
	if _, _, err := s.Claim(ctx, "carol", route.Route{Server: "s1", Token: "c2"}); err == nil {
		t.Fatal("Claim succeeded with Redis down")
	}

	rd.Restart(t) // empty
	waitRetries(t, s, 10*time.Second)
	if r, ok, err := s.FreshLookup(ctx, "alice"); err != nil || !ok || r != alice {
		t.Fatalf("alice after recovery: %v %v %v, want %v", r, ok, err, alice)
	}
	for _, name := range []string{"bob", "carol"} {
		if r, ok, err := s.FreshLookup(ctx, name); err != nil || ok {
			t.Fatalf("%s after recovery: %v %v %v, want no route", name, r, ok, err)
		}
	}
	st := s.RetryStats()
	t.Logf("%+v", st)
	if st.GivenUp != 0 || st.Failed != 0 || st.Recovered == 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestRetryQueueReleaseBeforeReassert(t *testing.T) {
	rd := testenv.Redis(t)
	s := newStore(t, rd.Addr, route.Options{Timeout: 300 * time.Millisecond})
	ctx := context.Background()
	old := route.Route{Server: "s1", Token: "old"}
	cur := route.Route{Server: "s1", Token: "new"}
	if _, _, err := s.Claim(ctx, "dave", old); err != nil {
		t.Fatal(err)
	}
	// Redis pauses (kill + restart with the data kept is not available, so
	// the old route is written again after the restart to stand for it).
	rd.Kill()
	if ok, err := s.Release(ctx, "dave", old); ok || err != nil {
		t.Fatalf("Release = %v, %v", ok, err)
	}
	if n, err := s.Reassert(ctx, map[string]route.Route{"dave": cur}); n != 0 || err != nil {
		t.Fatalf("Reassert = %d, %v", n, err)
	}
	if got := s.RetryStats().Pending; got != 1 {
		t.Fatalf("pending %d, want 1 entry for dave", got)
	}
	rd.Restart(t)
	// The queue may have run already against the empty Redis; either way
	// the outcome is dave's current route.
	waitRetries(t, s, 10*time.Second)
	if r, ok, err := s.FreshLookup(ctx, "dave"); err != nil || !ok || r != cur {
		t.Fatalf("dave: %v %v %v, want %v", r, ok, err, cur)
	}
}

func TestCloseGivesUpAfterTimeout(t *testing.T) {
	rd := testenv.Redis(t)
	s := newStore(t, rd.Addr, route.Options{Timeout: 200 * time.Millisecond})
	rd.Kill()
	if _, err := s.ReleaseAll(context.Background(), map[string]route.Route{"x": {Server: "s1", Token: "t"}, "y": {Server: "s1", Token: "u"}}); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	s.Close()
	if d := time.Since(t0); d > 2*time.Second {
		t.Fatalf("Close took %v with Redis down", d)
	}
	if st := s.RetryStats(); st.GivenUp != 2 || st.Pending != 0 {
		t.Fatalf("after Close: %+v, want 2 given up", st)
	}
}
