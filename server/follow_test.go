package server

import (
	"fmt"
	"testing"
)

func TestFollows(t *testing.T) {
	var f follows
	if _, ok := f.to("bob"); ok {
		t.Fatal("empty set follows bob")
	}
	a := f.add("bob", "s2")
	b := f.add("bob", "s3") // an active entry keeps its stream
	if dst, ok := f.to("bob"); !ok || dst != "s2" || a != b {
		t.Fatalf("to(bob) = %q, %v; same entry %v", dst, ok, a == b)
	}
	a.done()
	if dst, ok := f.to("bob"); !ok || dst != "s2" {
		t.Fatalf("one chat still unsettled: to(bob) = %q, %v", dst, ok)
	}
	b.done()
	if _, ok := f.to("bob"); ok || f.active.Load() != 0 {
		t.Fatalf("all settled, still followed (active %d)", f.active.Load())
	}
	// A settled entry is reused, on the new stream.
	c := f.add("bob", "s4")
	if dst, _ := f.to("bob"); dst != "s4" || c != a {
		t.Fatalf("reused entry: dst %q, same %v", dst, c == a)
	}
	c.done()
	// Settled entries are bounded.
	for i := range 3 * maxIdleFollows {
		f.add(fmt.Sprint("u", i), "s2").done()
	}
	if len(f.m) > maxIdleFollows+1 || f.active.Load() != 0 {
		t.Fatalf("%d entries kept, %d active; want at most %d idle", len(f.m), f.active.Load(), maxIdleFollows+1)
	}
	var nilFollow *follow
	nilFollow.done() // no panic
}
