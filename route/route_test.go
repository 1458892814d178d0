package route_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relaychat/relaychat/internal/testenv"
	"github.com/relaychat/relaychat/route"
)

func newStore(t *testing.T, addr string, o route.Options) *route.Store {
	t.Helper()
	o.Addrs = []string{addr}
	if o.Prefix == "" {
		o.Prefix = "t" + strings.ReplaceAll(t.Name(), "/", "_") + ":"
	}
	s, err := route.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func TestParseRoute(t *testing.T) {
	for _, bad := range []string{"", "s1", "s1 ", " tok", "s1 a b", "s1\ttok"} {
		if _, err := route.ParseRoute(bad); !errors.Is(err, route.ErrMalformed) {
			t.Errorf("ParseRoute(%q) = %v, want ErrMalformed", bad, err)
		}
	}
	r, err := route.ParseRoute("s1 abc")
	if err != nil || r != (route.Route{Server: "s1", Token: "abc"}) {
		t.Fatalf("ParseRoute = %v, %v", r, err)
	}
	if r.Encode() != "s1 abc" {
		t.Fatalf("Encode = %q", r.Encode())
	}
}

func TestRoutePatternEscapesPrefix(t *testing.T) {
	if got := route.RoutePattern("a*b:"); got != `a\*b:route:*` {
		t.Fatalf("RoutePattern = %q", got)
	}
}

func TestClaimReleaseCompareAndDelete(t *testing.T) {
	rd := testenv.Redis(t)
	s := newStore(t, rd.Addr, route.Options{})
	ctx := context.Background()
	a := route.Route{Server: "s1", Token: "t1"}
	b := route.Route{Server: "s2", Token: "t2"}

	if _, had, err := s.Claim(ctx, "alice", a); err != nil || had {
		t.Fatalf("first claim: had=%v err=%v", had, err)
	}
	prev, had, err := s.Claim(ctx, "alice", b)
	if err != nil || !had || prev != a {
		t.Fatalf("second claim: prev=%v had=%v err=%v, want %v", prev, had, err, a)
	}
	// The older session's release must not erase the newer login.
	if ok, err := s.Release(ctx, "alice", a); err != nil || ok {
		t.Fatalf("stale release: deleted=%v err=%v", ok, err)
	}
	if r, ok, err := s.FreshLookup(ctx, "alice"); err != nil || !ok || r != b {
		t.Fatalf("after stale release: %v %v %v, want %v", r, ok, err, b)
	}
	if ok, err := s.Release(ctx, "alice", b); err != nil || !ok {
		t.Fatalf("own release: deleted=%v err=%v", ok, err)
	}
	if _, ok, err := s.FreshLookup(ctx, "alice"); err != nil || ok {
		t.Fatalf("after release: ok=%v err=%v", ok, err)
	}
	if _, _, err := s.Claim(ctx, "x", route.Route{Server: "s 1", Token: "t"}); err == nil {
		t.Fatal("claim with a space in the server id succeeded")
	}
}

// TestConcurrentReleaseAndClaim races a stale release against a new claim
// many times: the newest claim must always survive.
func TestConcurrentReleaseAndClaim(t *testing.T) {
	rd := testenv.Redis(t)
	s := newStore(t, rd.Addr, route.Options{})
	ctx := context.Background()
	for i := 0; i < 200; i++ {
		name := fmt.Sprintf("u%d", i)
		old := route.Route{Server: "s1", Token: "old"}
		newer := route.Route{Server: "s2", Token: "new"}
		if _, _, err := s.Claim(ctx, name, old); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Add(2)
		var relErr, claimErr error
		go func() { defer wg.Done(); _, relErr = s.Release(ctx, name, old) }()
		go func() { defer wg.Done(); _, _, claimErr = s.Claim(ctx, name, newer) }()
		wg.Wait()
		if relErr != nil || claimErr != nil {
			t.Fatal(relErr, claimErr)
		}
		if r, ok, err := s.FreshLookup(ctx, name); err != nil || !ok || r != newer {
			t.Fatalf("%s: route %v ok=%v err=%v, want %v", name, r, ok, err, newer)
		}
	}
}

func TestClearServerAndReleaseAll(t *testing.T) {
	rd := testenv.Redis(t)
	s := newStore(t, rd.Addr, route.Options{})
	ctx := context.Background()
	const n = 700 // more than one SCAN page and one batch
	mine := make(map[string]route.Route)
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("u%d", i)
		server := "s1"
		if i%3 == 0 {
			server = "s10" // shares the prefix "s1" but is another server
		}
		r := route.Route{Server: server, Token: fmt.Sprint(i)}
		if _, _, err := s.Claim(ctx, name, r); err != nil {
			t.Fatal(err)
		}
		if server == "s10" {
			mine[name] = r
		}
	}
	deleted, err := s.ClearServer(ctx, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if want := n - len(mine); deleted != want {
		t.Fatalf("ClearServer deleted %d, want %d", deleted, want)
	}
	// s10's routes are intact; one is now stale (claimed elsewhere).
	mine["u0"] = route.Route{Server: "s10", Token: "stale"}
	deleted, err = s.ReleaseAll(ctx, mine)
	if err != nil {
		t.Fatal(err)
	}
	if want := len(mine) - 1; deleted != want {
		t.Fatalf("ReleaseAll deleted %d, want %d", deleted, want)
	}
	if _, ok, _ := s.FreshLookup(ctx, "u0"); !ok {
		t.Fatal("ReleaseAll deleted a route whose token did not match")
	}
}

// TestCachedLookupInvalidation: a route read through the cache is served
// locally afterwards, and another client's write invalidates it.
func TestCachedLookupInvalidation(t *testing.T) {
	rd := testenv.Redis(t)
	prefix := "inv:"
	reader := newStore(t, rd.Addr, route.Options{Prefix: prefix})
	writer := newStore(t, rd.Addr, route.Options{Prefix: prefix})
	ctx := context.Background()
	a := route.Route{Server: "s1", Token: "a"}
	if _, _, err := writer.Claim(ctx, "bob", a); err != nil {
		t.Fatal(err)
	}
	if _, _, hit := reader.CachedLookup("bob"); hit {
		t.Fatal("hit before any lookup")
	}
	if r, ok, err := reader.Lookup(ctx, "bob"); err != nil || !ok || r != a {
		t.Fatalf("Lookup = %v %v %v", r, ok, err)
	}
	if r, ok, hit := reader.CachedLookup("bob"); !hit || !ok || r != a {
		t.Fatalf("CachedLookup after Lookup = %v ok=%v hit=%v", r, ok, hit)
	}
	b := route.Route{Server: "s2", Token: "b"}
	if _, _, err := writer.Claim(ctx, "bob", b); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		r, _, hit := reader.CachedLookup("bob")
		if !hit || r == b {
			break // invalidated (miss) or already refreshed
		}
		if time.Now().After(deadline) {
			t.Fatalf("cache still serves %v 5s after another client's write", r)
		}
		time.Sleep(time.Millisecond) // poll interval, not synchronisation
	}
	if r, ok, err := reader.Lookup(ctx, "bob"); err != nil || !ok || r != b {
		t.Fatalf("Lookup after move = %v %v %v, want %v", r, ok, err, b)
	}
	// Offline users are never kept: a miss, always resolved off the loop.
	if _, ok, err := reader.Lookup(ctx, "nobody"); err != nil || ok {
		t.Fatalf("Lookup(nobody) ok=%v err=%v", ok, err)
	}
	if _, _, hit := reader.CachedLookup("nobody"); hit {
		t.Fatal("CachedLookup(nobody) hit: names with no route must not be cached")
	}
}

func TestHeartbeatAndServers(t *testing.T) {
	rd := testenv.Redis(t)
	s := newStore(t, rd.Addr, route.Options{})
	ctx := context.Background()
	if err := s.Heartbeat(ctx, "s1", "e1", 1, "127.0.0.1:9601", 3*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := s.Heartbeat(ctx, "s2", "e2", 1, "127.0.0.1:9602", 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	m, err := s.Servers(ctx)
	if err != nil || m["s1"] != (route.ServerInfo{Epoch: "e1", Addr: "127.0.0.1:9601"}) || m["s2"].Addr != "127.0.0.1:9602" {
		t.Fatalf("Servers = %v, %v", m, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		m, err = s.Servers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := m["s2"]; !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("expired heartbeat still listed")
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
	if alive, err := s.Alive(ctx, "s1"); err != nil || !alive {
		t.Fatalf("Alive(s1) = %v, %v", alive, err)
	}
	// Another epoch cannot renew s1's heartbeat.
	if err := s.Heartbeat(ctx, "s1", "e9", 1, "127.0.0.1:1", 3*time.Second); !errors.Is(err, route.ErrIDLost) {
		t.Fatalf("foreign renewal: %v, want ErrIDLost", err)
	}
}

// TestAcquireID: a live owner (renewing) keeps its id and nothing changes;
// a dead one (not renewing) is taken over; a released id is free at once.
func TestAcquireID(t *testing.T) {
	rd := testenv.Redis(t)
	s := newStore(t, rd.Addr, route.Options{})
	ctx := context.Background()
	const ttl, wait = 3 * time.Second, 150 * time.Millisecond
	if err := s.AcquireID(ctx, "s1", "e1", "127.0.0.1:1", ttl, wait); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // the live owner renews every 20ms
		defer close(done)
		for beat := uint64(1); ; beat++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			_ = s.Heartbeat(ctx, "s1", "e1", beat, "127.0.0.1:1", ttl)
		}
	}()
	err := s.AcquireID(ctx, "s1", "e2", "127.0.0.1:2", ttl, wait)
	close(stop)
	<-done
	if !errors.Is(err, route.ErrIDInUse) {
		t.Fatalf("second owner while the first renews: %v, want ErrIDInUse", err)
	}
	if m, _ := s.Servers(ctx); m["s1"].Epoch != "e1" {
		t.Fatalf("the refused start changed the heartbeat: %v", m["s1"])
	}
	// e1 stopped renewing: as after a kill -9.
	if err := s.AcquireID(ctx, "s1", "e3", "127.0.0.1:3", ttl, wait); err != nil {
		t.Fatalf("take over a dead owner: %v", err)
	}
	if err := s.Heartbeat(ctx, "s1", "e1", 99, "127.0.0.1:1", ttl); !errors.Is(err, route.ErrIDLost) {
		t.Fatalf("the old owner renewed after the take-over: %v", err)
	}
	if err := s.ReleaseID(ctx, "s1", "e3"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := s.AcquireID(ctx, "s1", "e4", "127.0.0.1:4", ttl, 5*time.Second); err != nil || time.Since(start) > 2*time.Second {
		t.Fatalf("acquire after release: %v after %v", err, time.Since(start))
	}
}

func TestClusterSecret(t *testing.T) {
	rd := testenv.Redis(t)
	a := newStore(t, rd.Addr, route.Options{Prefix: "sec:"})
	b := newStore(t, rd.Addr, route.Options{Prefix: "sec:"})
	ctx := context.Background()
	s1, err := a.ClusterSecret(ctx)
	if err != nil || len(s1) != 64 {
		t.Fatalf("secret %q, %v", s1, err)
	}
	s2, err := b.ClusterSecret(ctx)
	if err != nil || s2 != s1 {
		t.Fatalf("second process read %q, %v; want the first one's", s2, err)
	}
}

func TestKeysShareASlotTag(t *testing.T) {
	for _, name := range []string{"bob", "}x", "a{b}c", "{", "}", "-", "用户"} {
		rk, mk := route.RouteKey("chat:", name), route.MailboxKey("chat:", name)
		if tag(rk) != tag(mk) || tag(rk) == "" {
			t.Errorf("%q: route key %q (tag %q) and mailbox key %q (tag %q) differ", name, rk, tag(rk), mk, tag(mk))
		}
	}
	if route.RouteKey("chat:", "a}b") == route.RouteKey("chat:", "a}c") {
		t.Fatal("two names share a key")
	}
}

// tag is Redis Cluster's hash tag rule.
func tag(key string) string {
	i := strings.IndexByte(key, '{')
	if i < 0 {
		return ""
	}
	j := strings.IndexByte(key[i+1:], '}')
	if j <= 0 {
		return ""
	}
	return key[i+1 : i+1+j]
}

// TestRedisDownFailsFast: with Redis gone, blocking calls fail within the
// timeout and CachedLookup still never blocks.
func TestRedisDownFailsFast(t *testing.T) {
	rd := testenv.Redis(t)
	s := newStore(t, rd.Addr, route.Options{Timeout: 300 * time.Millisecond})
	ctx := context.Background()
	if _, _, err := s.Lookup(ctx, "warm"); err != nil {
		t.Fatal(err)
	}
	rd.Kill()
	start := time.Now()
	if _, _, err := s.Claim(ctx, "x", route.Route{Server: "s1", Token: "t"}); err == nil {
		t.Fatal("Claim succeeded with Redis down")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Claim took %v with a 300ms timeout", d)
	}
	start = time.Now()
	s.CachedLookup("warm")
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Fatalf("CachedLookup blocked %v with Redis down", d)
	}
	rd.Restart(t)
	deadline := time.Now().Add(10 * time.Second)
	for s.Ping(ctx) != nil {
		if time.Now().After(deadline) {
			t.Fatal("store did not reconnect after Redis came back")
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
}

// TestLookupFallsBackWhenRedisDown: once Redis is unreachable, Lookup
// answers from the last route each name resolved to, whatever state the
// client-side cache is in, and fails for names it never resolved.
func TestLookupFallsBackWhenRedisDown(t *testing.T) {
	rd := testenv.Redis(t)
	s := newStore(t, rd.Addr, route.Options{Timeout: 300 * time.Millisecond})
	ctx := context.Background()
	bob := route.Route{Server: "s2", Token: "b"}
	if _, _, err := s.Claim(ctx, "bob", bob); err != nil {
		t.Fatal(err)
	}
	if r, ok, err := s.Lookup(ctx, "bob"); err != nil || !ok || r != bob {
		t.Fatalf("Lookup before the outage = %v %v %v", r, ok, err)
	}
	rd.Kill()
	deadline := time.Now().Add(10 * time.Second)
	for s.Ping(ctx) == nil { // until the store has noticed
		if time.Now().After(deadline) {
			t.Fatal("Ping still answers with Redis killed")
		}
		time.Sleep(5 * time.Millisecond) // poll interval
	}
	for i := 0; i < 20; i++ {
		if r, ok, err := s.Lookup(ctx, "bob"); err != nil || !ok || r != bob {
			t.Fatalf("Lookup %d during the outage = %v %v %v, want the last-known %v", i, r, ok, err, bob)
		}
	}
	if _, _, err := s.Lookup(ctx, "stranger"); err == nil {
		t.Fatal("Lookup of a name never resolved succeeded with Redis down")
	}
}
