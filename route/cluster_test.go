package route_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/relaychat/relaychat/internal/testenv"
	"github.com/relaychat/relaychat/route"
)

// The cluster suite: one real Redis Cluster (3 masters, 3 replicas,
// cluster-node-timeout 1s) shared by the subtests, which run in order and
// each heal the cluster before they start.

const clusterUsers = 300

func clusterStore(t *testing.T, rc *testenv.RedisClusterProc, prefix string) *route.Store {
	t.Helper()
	s, err := route.New(route.Options{Addrs: rc.Addrs(), Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if s.Mode() != "cluster" {
		t.Fatalf("Mode = %q, want cluster", s.Mode())
	}
	return s
}

// claimAll claims users u0..u(n-1) for server and returns their routes.
func claimAll(t *testing.T, s *route.Store, server string, n int) map[string]route.Route {
	t.Helper()
	routes := make(map[string]route.Route, n)
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("u%d", i)
		r := route.Route{Server: server, Token: fmt.Sprintf("t%d", i)}
		if _, _, err := s.Claim(context.Background(), name, r); err != nil {
			t.Fatalf("claim %s: %v", name, err)
		}
		routes[name] = r
	}
	return routes
}

// routeKeys counts the route keys under prefix on the masters.
func routeKeys(t *testing.T, rc *testenv.RedisClusterProc, prefix string) int {
	t.Helper()
	return len(rc.Keys(t, route.RoutePattern(prefix)))
}

// waitRetries waits until s's retry queue is empty.
func waitRetries(t *testing.T, s *route.Store, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for s.RetryStats().Pending > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("retry queue not drained after %v: %+v", timeout, s.RetryStats())
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
}

func TestCluster(t *testing.T) {
	rc := testenv.RedisCluster(t, testenv.RedisClusterConfig{})
	prefix := func(t *testing.T) string {
		return "t" + strings.ReplaceAll(t.Name(), "/", "_") + ":"
	}

	t.Run("Basics", func(t *testing.T) {
		rc.Heal(t)
		p := prefix(t)
		s := clusterStore(t, rc, p)
		ctx := context.Background()
		routes := claimAll(t, s, "s1", clusterUsers)
		if n := routeKeys(t, rc, p); n != clusterUsers {
			t.Fatalf("%d route keys on the masters, want %d", n, clusterUsers)
		}
		if r, ok, err := s.Lookup(ctx, "u7"); err != nil || !ok || r != routes["u7"] {
			t.Fatalf("lookup u7 = %v %v %v", r, ok, err)
		}
		if err := s.AcquireID(ctx, "s1", "e1", "127.0.0.1:1", 3*time.Second, 100*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		srv, err := s.Servers(ctx)
		if err != nil || len(srv) != 1 || srv["s1"].Epoch != "e1" {
			t.Fatalf("Servers = %v, %v", srv, err)
		}
		res, err := s.StoreChats(ctx, []route.StoreReq{{Name: "off1", Line: []byte(`{"x":1}`), TS: time.Now().UnixMilli()}}, 10, time.Hour)
		if err != nil || res[0].Outcome != route.Stored {
			t.Fatalf("StoreChats = %+v, %v", res, err)
		}
		n, err := s.ClearServer(ctx, "s1")
		if err != nil || n != clusterUsers {
			t.Fatalf("ClearServer = %d, %v; want %d", n, err, clusterUsers)
		}
		if n := routeKeys(t, rc, p); n != 0 {
			t.Fatalf("%d route keys left after ClearServer", n)
		}
	})

	t.Run("ReplicaDown", func(t *testing.T) {
		rc.Heal(t)
		p := prefix(t)
		s := clusterStore(t, rc, p)
		ctx := context.Background()
		routes := claimAll(t, s, "s1", clusterUsers)
		before := routeKeys(t, rc, p)
		rc.Replicas(t)[0].Kill()
		half := make(map[string]route.Route)
		for name, r := range routes {
			if len(half) < clusterUsers/2 {
				half[name] = r
			}
		}
		n, err := s.ReleaseAll(ctx, half)
		if err != nil || n != len(half) {
			t.Fatalf("ReleaseAll with a replica down = %d, %v; want %d", n, err, len(half))
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		n, err = s.ClearServer(cctx, "s1")
		cancel()
		if err != nil || n != clusterUsers-len(half) {
			t.Fatalf("ClearServer with a replica down = %d, %v; want %d", n, err, clusterUsers-len(half))
		}
		if _, err := s.Servers(ctx); err != nil {
			t.Fatalf("Servers with a replica down: %v", err)
		}
		res, err := s.StoreChats(ctx, []route.StoreReq{{Name: "off1", Line: []byte(`{}`), TS: time.Now().UnixMilli()}}, 10, time.Hour)
		if err != nil || res[0].Outcome != route.Stored {
			t.Fatalf("StoreChats with a replica down = %+v, %v", res, err)
		}
		if _, err := s.SweepMailboxes(ctx, time.Hour); err != nil {
			t.Fatalf("SweepMailboxes with a replica down: %v", err)
		}
		after := routeKeys(t, rc, p)
		t.Logf("replica killed: route keys before %d, after releases and clean-up %d; retries %+v", before, after, s.RetryStats())
		if after != 0 || s.RetryStats().Queued != 0 {
			t.Fatalf("%d route keys left, retry stats %+v", after, s.RetryStats())
		}
	})

	t.Run("MasterKilled", func(t *testing.T) {
		rc.Heal(t)
		p := prefix(t)
		s := clusterStore(t, rc, p)
		ctx := context.Background()
		routes := claimAll(t, s, "s1", clusterUsers)
		before := routeKeys(t, rc, p)
		m := rc.MasterOf(t, route.RouteKey(p, "u0"))
		rc.WaitReplicated(t) // a kill must not take unreplicated claims along
		t0 := time.Now()
		m.Kill()
		n, err := s.ReleaseAll(ctx, routes)
		if err != nil {
			t.Fatalf("ReleaseAll with a master down: %v", err)
		}
		queued := s.RetryStats().Queued // (Pending may be 0 already if the failover was quick)
		if queued == 0 {
			t.Fatalf("ReleaseAll deleted %d with a master down and queued nothing", n)
		}
		fo := rc.WaitFailover(t, m, t0)
		waitRetries(t, s, 20*time.Second)
		drained := time.Since(t0)
		after := routeKeys(t, rc, p)
		t.Logf("master killed: route keys before %d; released at once %d, queued %d; failover after %v, queue drained after %v; route keys after %d; %+v",
			before, n, queued, fo.Round(time.Millisecond), drained.Round(time.Millisecond), after, s.RetryStats())
		if after != 0 {
			t.Fatalf("%d route keys left", after)
		}

		// Start-up clean-up while a master dies: ClearServer follows the
		// slots to the promoted replica.
		rc.Heal(t)
		claimAll(t, s, "s2", clusterUsers)
		before = routeKeys(t, rc, p)
		m = rc.MasterOf(t, route.RouteKey(p, "u1"))
		rc.WaitReplicated(t)
		m.Kill()
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		t1 := time.Now()
		n, err = s.ClearServer(cctx, "s2")
		cancel()
		if err != nil {
			t.Fatalf("ClearServer across a failover = %d, %v", n, err)
		}
		after = routeKeys(t, rc, p)
		t.Logf("master killed during ClearServer: route keys before %d, cleared %d in %v, after %d", before, n, time.Since(t1).Round(time.Millisecond), after)
		if after != 0 {
			t.Fatalf("%d route keys left", after)
		}
	})

	t.Run("MasterFrozen", func(t *testing.T) {
		rc.Heal(t)
		p := prefix(t)
		s := clusterStore(t, rc, p)
		m := rc.MasterOf(t, route.RouteKey(p, "frozen"))
		// Warm the connection to m so that the freeze hits a live one.
		if _, _, err := s.Claim(context.Background(), "frozen", route.Route{Server: "s1", Token: "t0"}); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		m.Pause(t)
		// Claim a key on the frozen master every 50ms until one succeeds,
		// off the test goroutine.
		firstOK := make(chan time.Duration, 1)
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			for i := 1; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				_, _, err := s.Claim(ctx, "frozen", route.Route{Server: "s1", Token: fmt.Sprintf("t%d", i)})
				cancel()
				if err == nil {
					firstOK <- time.Since(t0)
					return
				}
				time.Sleep(50 * time.Millisecond) // sampling interval
			}
		}()
		fo := rc.WaitFailover(t, m, t0)
		var outage time.Duration
		select {
		case outage = <-firstOK:
		case <-time.After(20 * time.Second):
			t.Fatalf("no claim succeeded 20s after the freeze (failover took %v)", fo)
		}
		t.Logf("master frozen (SIGSTOP): failover after %v, writes to its slots back after %v (%v after the failover)",
			fo.Round(time.Millisecond), outage.Round(time.Millisecond), (outage - fo).Round(time.Millisecond))
		if outage > fo+3*time.Second {
			t.Fatalf("writes came back %v after the failover, want within 3s", outage-fo)
		}
	})
}
