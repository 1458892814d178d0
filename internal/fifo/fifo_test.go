package fifo

import (
	"sync"
	"testing"
)

func TestOrderGrowthAndBound(t *testing.T) {
	q := New[int](3000)
	next, want := 0, 0
	// Interleave puts and gets so that the ring wraps while it grows.
	for round := range 50 {
		for range round * 7 {
			if !q.Put(next) {
				if q.Len() != q.Limit() {
					t.Fatalf("Put refused with %d of %d held", q.Len(), q.Limit())
				}
				break
			}
			next++
		}
		for range round * 3 {
			v, ok := q.Get()
			if !ok {
				break
			}
			if v != want {
				t.Fatalf("got %d, want %d", v, want)
			}
			want++
		}
	}
	if q.Len() != next-want {
		t.Fatalf("Len %d, want %d", q.Len(), next-want)
	}
	for q.Put(next) {
		next++
	}
	if q.Len() != q.Limit() || next-want != q.Limit() {
		t.Fatalf("Put refused with %d held (%d put, %d taken) of %d", q.Len(), next, want, q.Limit())
	}
	for {
		v, ok := q.Get()
		if !ok {
			break
		}
		if v != want {
			t.Fatalf("draining: got %d, want %d", v, want)
		}
		want++
	}
	if want != next {
		t.Fatalf("drained up to %d, put %d", want, next)
	}
	if q.ring != nil {
		t.Fatalf("a drained ring of %d was kept", len(q.ring))
	}
	if _, ok := q.Get(); ok {
		t.Fatal("Get on an empty queue reported an item")
	}
}

func TestGetClearsSlot(t *testing.T) {
	q := New[*int](4)
	x := 1
	q.Put(&x)
	q.Put(&x)
	q.Get()
	if q.ring[0] != nil {
		t.Fatal("a taken slot still points at its item")
	}
}

func TestReadySignalsEmptyToNonEmpty(t *testing.T) {
	q := New[int](8)
	select {
	case <-q.Ready():
		t.Fatal("ready before any Put")
	default:
	}
	q.Put(1)
	q.Put(2)
	<-q.Ready()
	select {
	case <-q.Ready():
		t.Fatal("a second signal for one empty-to-non-empty change")
	default:
	}
}

// TestConcurrent has producers race one consumer that waits on Ready; every
// item arrives once and each producer's items arrive in its order.
func TestConcurrent(t *testing.T) {
	const producers, each = 4, 5000
	q := New[[2]int](256)
	var wg sync.WaitGroup
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; {
				if q.Put([2]int{p, i}) {
					i++
				}
			}
		}()
	}
	last := make([]int, producers)
	for i := range last {
		last[i] = -1
	}
	for got := 0; got < producers*each; {
		v, ok := q.Get()
		if !ok {
			<-q.Ready()
			continue
		}
		if v[1] != last[v[0]]+1 {
			t.Fatalf("producer %d: got %d after %d", v[0], v[1], last[v[0]])
		}
		last[v[0]] = v[1]
		got++
	}
	wg.Wait()
	if q.Len() != 0 {
		t.Fatalf("%d left", q.Len())
	}
}
