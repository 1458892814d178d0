package route_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/relaychat/relaychat/internal/testenv"
	"github.com/relaychat/relaychat/route"
)

func TestMailboxStoreReadRemove(t *testing.T) {
	rd := testenv.Redis(t)
	s := newStore(t, rd.Addr, route.Options{})
	ctx := context.Background()
	now := time.Now().UnixMilli()
	const max, ttl = 3, time.Hour
	var reqs []route.StoreReq
	for i := 0; i < 4; i++ {
		reqs = append(reqs, route.StoreReq{Name: "bob", Line: []byte(fmt.Sprintf(`{"n":%d}`, i)), TS: now})
	}
	res, err := s.StoreChats(ctx, reqs, max, ttl)
	if err != nil {
		t.Fatal(err)
	}
	want := []route.StoreOutcome{route.Stored, route.Stored, route.Stored, route.Full}
	for i, r := range res {
		if r.Err != nil || r.Outcome != want[i] {
			t.Fatalf("store %d: %+v, want outcome %v", i, r, want[i])
		}
	}
	// A requeue goes in beyond the bound.
	if res, err := s.StoreChats(ctx, []route.StoreReq{{Name: "bob", Line: []byte(`{"n":"requeued"}`), TS: now, Requeue: true}}, max, ttl); err != nil || res[0].Outcome != route.Stored {
		t.Fatalf("requeue: %+v %v", res, err)
	}
	// But not for a user online elsewhere.
	if _, _, err := s.Claim(ctx, "zed", route.Route{Server: "s9", Token: "z"}); err != nil {
		t.Fatal(err)
	}
	if res, err := s.StoreChats(ctx, []route.StoreReq{{Name: "zed", Line: []byte(`{}`), TS: now, Requeue: true, Here: "s1"}}, max, ttl); err != nil || res[0].Outcome != route.Online {
		t.Fatalf("requeue for a user online elsewhere: %+v %v", res, err)
	}
	got, expired, err := s.ReadMailbox(ctx, "bob", 2, ttl)
	if err != nil || expired != 0 || len(got) != 2 || got[0].Line != `{"n":0}` || got[1].Line != `{"n":1}` || got[0].TS != now {
		t.Fatalf("read: %+v expired=%d err=%v", got, expired, err)
	}
	if ok, err := s.RemoveMailbox(ctx, "bob", got); err != nil || !ok {
		t.Fatalf("remove: %v %v", ok, err)
	}
	if ok, err := s.RemoveMailbox(ctx, "bob", got); err != nil || ok {
		t.Fatalf("second remove of the same entries: %v %v (must refuse)", ok, err)
	}
	rest, _, err := s.ReadMailbox(ctx, "bob", 10, ttl)
	if err != nil || len(rest) != 2 || rest[0].Line != `{"n":2}` || rest[1].Line != `{"n":"requeued"}` {
		t.Fatalf("rest: %+v %v", rest, err)
	}

	// Online: not stored; the route comes back. A route naming Here is offline.
	live := route.Route{Server: "s2", Token: "t"}
	if _, _, err := s.Claim(ctx, "carol", live); err != nil {
		t.Fatal(err)
	}
	res, err = s.StoreChats(ctx, []route.StoreReq{
		{Name: "carol", Line: []byte(`{}`), TS: now},
		{Name: "carol", Line: []byte(`{}`), TS: now, Here: "s2"},
		{Name: "carol", Line: []byte(`{}`), TS: now, Here: "s"}, // a prefix of s2 is another server
	}, max, ttl)
	if err != nil || res[0].Outcome != route.Online || res[0].Route != live || res[1].Outcome != route.Stored || res[1].Route != live || res[2].Outcome != route.Online {
		t.Fatalf("online/dead: %+v %v", res, err)
	}
	if n, _ := s.MailboxLen(ctx, "carol"); n != 1 {
		t.Fatalf("carol's mailbox holds %d, want 1", n)
	}
}

func TestMailboxRetention(t *testing.T) {
	rd := testenv.Redis(t)
	s := newStore(t, rd.Addr, route.Options{})
	ctx := context.Background()
	old := time.Now().Add(-2 * time.Hour).UnixMilli()
	now := time.Now().UnixMilli()
	const ttl = time.Hour
	// Requeues never trim (a drain may be running), conditional stores do.
	store := func(name string, ts int64, requeue bool) route.StoreResult {
		t.Helper()
		res, err := s.StoreChats(ctx, []route.StoreReq{{Name: name, Line: []byte(`{}`), TS: ts, Requeue: requeue}}, 10, ttl)
		if err != nil || res[0].Err != nil {
			t.Fatal(err, res[0].Err)
		}
		return res[0]
	}
	store("dave", old, true)
	store("dave", old, true)
	if r := store("dave", now, false); r.Expired != 2 {
		t.Fatalf("store after two expired: %+v, want Expired 2", r)
	}
	store("erin", old, true)
	store("erin", now, true)
	if got, expired, err := s.ReadMailbox(ctx, "erin", 10, ttl); err != nil || expired != 1 || len(got) != 1 {
		t.Fatalf("read: %d entries, expired %d, %v", len(got), expired, err)
	}
	store("fay", old, true)
	store("gus", old, true)
	if _, _, err := s.Claim(ctx, "gus", route.Route{Server: "s1", Token: "t"}); err != nil {
		t.Fatal(err)
	}
	n, err := s.SweepMailboxes(ctx, ttl)
	if err != nil || n != 1 {
		t.Fatalf("sweep dropped %d (%v), want 1: fay's, not online gus's", n, err)
	}
}

// TestInvalidationOfOddNames: names whose keys are tagged by hash are
// mapped back from the invalidated key.
func TestInvalidationOfOddNames(t *testing.T) {
	rd := testenv.Redis(t)
	reader := newStore(t, rd.Addr, route.Options{Prefix: "odd:"})
	writer := newStore(t, rd.Addr, route.Options{Prefix: "odd:"})
	ctx := context.Background()
	for _, name := range []string{"}x", "a{b}c", "-"} {
		a, b := route.Route{Server: "s1", Token: "a"}, route.Route{Server: "s2", Token: "b"}
		if _, _, err := writer.Claim(ctx, name, a); err != nil {
			t.Fatal(err)
		}
		if r, ok, err := reader.Lookup(ctx, name); err != nil || !ok || r != a {
			t.Fatalf("%q: lookup %v %v %v", name, r, ok, err)
		}
		if _, _, err := writer.Claim(ctx, name, b); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			r, _, hit := reader.CachedLookup(name)
			if !hit || r == b {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%q: table still serves %v after another client's write", name, r)
			}
			time.Sleep(time.Millisecond) // poll interval
		}
	}
}
