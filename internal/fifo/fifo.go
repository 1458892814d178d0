// Package fifo is a bounded first-in-first-out queue for one consumer
// goroutine that costs memory only for what it holds.
//
// A buffered channel of the same bound allocates the whole bound up front,
// and its pages become resident as the ring wraps through them, so a
// queue bounded at 100,000 items of 48 bytes costs a process about 5 MB
// whether or not it ever holds more than a few. Queue grows its ring by
// doubling up to the bound when it fills, and gives a large ring back once
// it has drained.
package fifo

import "sync"

// minRing is the first ring's size; a drained ring larger than shrinkAt is
// dropped so that a burst's memory goes back to the garbage collector.
const (
	minRing  = 64
	shrinkAt = 1024
)

// Queue is a bounded FIFO. Put and Len are safe from any goroutine; Get is
// for one consumer, which waits on Ready. The zero value is not usable:
// use New.
type Queue[T any] struct {
	mu    sync.Mutex
	ring  []T
	head  int // index of the oldest item
	n     int // items held
	limit int
	ready chan struct{}
}

// New returns a queue that holds at most limit items (limit >= 1).
func New[T any](limit int) *Queue[T] {
	if limit < 1 {
		panic("fifo: limit must be at least 1")
	}
	return &Queue[T]{limit: limit, ready: make(chan struct{}, 1)}
}

// Limit returns the most items the queue holds.
func (q *Queue[T]) Limit() int { return q.limit }

// Ready is signalled after a Put into an empty queue: the consumer, having
// found the queue empty, waits on it and then calls Get until it reports
// false. A signal may be stale (the item was taken already); Get decides.
func (q *Queue[T]) Ready() <-chan struct{} { return q.ready }

// Put appends v; false means the queue is full and v was not taken.
func (q *Queue[T]) Put(v T) bool {
	q.mu.Lock()
	if q.n == q.limit {
		q.mu.Unlock()
		return false
	}
	if q.n == len(q.ring) {
		q.grow()
	}
	q.ring[(q.head+q.n)%len(q.ring)] = v
	q.n++
	wake := q.n == 1
	q.mu.Unlock()
	if wake {
		select {
		case q.ready <- struct{}{}:
		default:
		}
	}
	return true
}

// grow doubles the ring (up to the limit), keeping the items in order.
// q.mu held.
func (q *Queue[T]) grow() {
	size := min(max(2*len(q.ring), minRing), q.limit)
	ring := make([]T, size)
	for i := range q.n {
		ring[i] = q.ring[(q.head+i)%len(q.ring)]
	}
	q.ring, q.head = ring, 0
}

// Get removes and returns the oldest item; false when the queue is empty.
func (q *Queue[T]) Get() (T, bool) {
	var zero T
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.n == 0 {
		return zero, false
	}
	v := q.ring[q.head]
	q.ring[q.head] = zero // let the garbage collector have what v points to
	q.head = (q.head + 1) % len(q.ring)
	q.n--
	if q.n == 0 {
		q.head = 0
		if len(q.ring) > shrinkAt {
			q.ring = nil
		}
	}
	return v, true
}

// Len returns the items held.
func (q *Queue[T]) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n
}
