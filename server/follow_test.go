package server

import (
	"fmt"
	"testing"
	"unsafe"
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

// TestSessionShed: a session lets go of its in-flight buffers only once
// nothing is held for its client and nothing is unsettled on a stream.
func TestSessionShed(t *testing.T) {
	ss := &session{}
	fw := ss.follows.add("bob", "s2")
	ss.out = &heldOut{held: []heldChat{{end: 10, at: 0, n: 10, recv: "carol"}}, tail: []byte("0123456789")}
	if ss.shed() {
		t.Fatal("shed with a chat held for the client")
	}
	ss.prune(10)
	if ss.shed() {
		t.Fatal("shed with a chat unsettled on a stream")
	}
	if ss.follows.m == nil {
		t.Fatal("an unsettled follow entry was dropped")
	}
	fw.done()
	if !ss.shed() {
		t.Fatal("nothing in flight, yet not shed")
	}
	if ss.out != nil || ss.follows.m != nil {
		t.Fatalf("buffers kept: out %v, follows %v", ss.out, ss.follows.m)
	}
	// The entries come back on the next chat.
	if ss.follows.add("bob", "s3").dst != "s3" {
		t.Fatal("no entry after shedding")
	}
}

// TestSessionAside: the aside state is kept while any of it is in use and
// let go once all of it is back to zero, by tidy and by the retain sweep's
// shed.
func TestSessionAside(t *testing.T) {
	ss := &session{}
	if ss.storingTo("bob") != 0 || ss.draining() || ss.kickReplyOf() != nil || ss.needsWatch() {
		t.Fatal("a session without aside state reports some")
	}
	ss.tidy() // nothing to let go
	a := ss.more()
	if ss.more() != a {
		t.Fatal("more allocated twice")
	}
	a.storing = map[string]int{"bob": 1}
	a.storingN, a.storingBytes = 1, 40
	a.drainEnds = []int64{100}
	ss.tidy()
	if ss.aside == nil || ss.storingTo("bob") != 1 || !ss.draining() || !ss.needsWatch() {
		t.Fatal("aside state in use was let go")
	}
	a.storing, a.storingN, a.storingBytes = nil, 0, 0
	ss.tidy()
	if ss.aside == nil {
		t.Fatal("let go while a mailbox page is in flight")
	}
	a.drainEnds = nil
	a.storingBytes = 40
	ss.tidy()
	if ss.aside == nil {
		t.Fatal("let go while storingBytes is not back to zero")
	}
	a.storingBytes = 0
	if !ss.shed() {
		t.Fatal("nothing in flight, yet not shed")
	}
	if ss.aside != nil {
		t.Fatal("shed kept the aside state, all of it zero")
	}
}

// TestSessionSizeClass: a session is allocated per connection; at 256
// bytes or less it takes the allocator's 256-byte class (it was 576 bytes,
// then 512, 384, 320: 18,000 connections at 256 save 1.2 MB against 320,
// and a quarter to all of that again in the collector's headroom). A field that pushes it over should be a
// conscious choice: move state that is in use only for a while into
// sessionAside (or behind a pointer, as the pending queue), or raise this
// budget here.
func TestSessionSizeClass(t *testing.T) {
	if n := unsafe.Sizeof(session{}); n > 256 {
		t.Fatalf("session is %d bytes, over its 256-byte budget", n)
	}
}
