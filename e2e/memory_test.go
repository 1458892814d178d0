package e2e

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestOfflineNamesBoundedMemory sends chats to 500,000 distinct names that
// never log in and checks that the server's heap stays under 64 MiB.
//
// Why that bound: nothing the server keeps grows with the number of names
// looked up. The route table holds online users only (no negative
// entries); rueidis' own client-side cache, which does keep "no such key"
// answers, is capped at 8 MiB per Redis connection (the server has at most
// a few); the release queue, the Redis queue and the stream buffers are
// bounded by count or bytes, not by names. A server that kept anything per
// name would pass 64 MiB well before 500,000 names (the same run grew the
// heap to 506 MiB before the bounds); one that keeps nothing stays near its
// idle size plus the caches (measured: 15 MiB live before, 39 MiB after).
// The binaries are built without the race detector: this is a load.
//
// The mailbox is off here, so every chat is a lookup through the cache (the
// path that used to keep every name); with it on, each chat is a store
// attempt that keeps nothing in the server either.
func TestOfflineNamesBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("500,000 chats: not in -short")
	}
	// Not parallel: it uses both cores for its duration, which would make
	// the other tests' waits time out.
	cl := startCluster(t, clusterConfig{plain: true, serverArgs: []string{"-mailbox-max", "0", "-metrics", "127.0.0.1:0", "-max-inflight", "8192"}})
	maddr := metricsAddr(t, cl.s[0].proc)
	const names, conns, window = 500_000, 32, 128
	// The live heap as of the last GC: what the server keeps, without the
	// garbage a busy process carries between collections.
	heap := func() float64 { return value(scrape(t, maddr), "go_gc_heap_live_bytes") }
	base := heap()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for w := 0; w < conns; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			errs <- ghostChats(cl.s[0].addr, fmt.Sprintf("%s-w%d", cl.name("sender"), w), w, conns, names, window)
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	peak := heap()
	t.Logf("%d chats to distinct offline names in %v: live heap %.1f MiB before, %.1f MiB after",
		names, time.Since(start).Round(time.Millisecond), base/(1<<20), peak/(1<<20))
	if peak > 64<<20 {
		t.Fatalf("live heap %.1f MiB after chats to %d distinct offline names, want under 64 MiB", peak/(1<<20), names)
	}
}

// ghostChats logs in as name on addr and sends the chats of worker w (every
// conns-th of n names), keeping at most window unanswered; every chat must
// be answered "recipient not online".
func ghostChats(addr, name string, w, conns, n, window int) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Minute))
	r := bufio.NewReaderSize(c, 64<<10)
	fmt.Fprintf(c, `{"cmd":"login","name":%q}`+"\n", name)
	if l, err := r.ReadString('\n'); err != nil || !strings.Contains(l, `"ok":true`) {
		return fmt.Errorf("login %s: %q %v", name, l, err)
	}
	bw := bufio.NewWriter(c)
	sent, answered := 0, 0
	total := 0
	for i := w; i < n; i += conns {
		total++
	}
	next := w
	for answered < total {
		for sent < total && sent-answered < window {
			fmt.Fprintf(bw, `{"cmd":"chat","recv":"ghost-%d","content":"boo"}`+"\n", next)
			next += conns
			sent++
		}
		if err := bw.Flush(); err != nil {
			return err
		}
		l, err := r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("%s after %d answers: %v", name, answered, err)
		}
		if !strings.Contains(l, "recipient not online") {
			return fmt.Errorf("%s: chat to a ghost answered %q", name, l)
		}
		answered++
	}
	return nil
}
