package batch

import (
	"context"
	"sync"
)

// Coalescer gathers bytes for one endpoint from any number of loops and
// writes them with one write(2) per run of its flush task, instead of one
// AsyncWrite (and one write) per producer callback. Under load, frames from
// many callbacks share a syscall. It is meant for links, which carry many
// small frames from every loop; per-client writes gain little from it.
//
// Bytes appended by one goroutine are written in the order appended; the
// flush runs on the endpoint's loop, after whatever callback is running
// there, so bytes that loop writes itself in that callback go out first.
type Coalescer struct {
	e *Endpoint

	mu        sync.Mutex
	buf       []byte
	scheduled bool // a flush task is queued on e's loop

	spare []byte // the buffer not in use; only the flush task touches it
}

// NewCoalescer returns a coalescer for e and makes Flush use it whenever e
// lives on another loop than the one flushing.
func NewCoalescer(e *Endpoint) *Coalescer {
	c := &Coalescer{e: e}
	e.co = c
	return c
}

// Buffered returns the bytes appended and not yet handed to the socket.
func (c *Coalescer) Buffered() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.buf)
}

// Append adds b (copied) to what the next flush writes, scheduling one if
// none is queued. Any goroutine may call it.
func (c *Coalescer) Append(b []byte) {
	c.mu.Lock()
	c.buf = append(c.buf, b...)
	schedule := !c.scheduled
	c.scheduled = true
	c.mu.Unlock()
	if !schedule {
		return
	}
	if err := c.e.C.EventLoop().Execute(context.Background(), c); err != nil {
		// The engine is shutting down: nothing will run the flush.
		c.mu.Lock()
		n := len(c.buf)
		c.buf = c.buf[:0]
		c.scheduled = false
		c.mu.Unlock()
		c.e.lost(n)
	}
}

// Run is the flush task; it runs on the endpoint's loop.
func (c *Coalescer) Run(context.Context) error {
	c.mu.Lock()
	buf := c.buf
	c.buf = c.spare[:0]
	c.scheduled = false
	c.mu.Unlock()
	if len(buf) > 0 {
		if c.e.closed.Load() {
			c.e.lost(len(buf))
		} else {
			_, _ = c.e.C.Write(buf) // copies what the socket does not take
			c.e.CheckOutbound()
		}
	}
	c.spare = buf[:0]
	return nil
}
