// Package batch gathers the output one gnet event-loop callback produces and
// writes it once per destination when the callback ends: one write(2) per
// destination per callback instead of one per message, and one AsyncWrite per
// destination on another loop. The server and the proxy both use it.
package batch

import (
	"sync"
	"sync/atomic"

	"github.com/panjf2000/gnet/v2"
)

// Endpoint is a connection that loops write to: a client session or a link.
// C and Loop are set before the Endpoint is published and never change.
type Endpoint struct {
	C    gnet.Conn
	Loop *Loop // the loop that owns C
	// MaxOut caps C.OutboundBuffered(), checked on C's loop after each write;
	// OnSlow runs once, on C's loop, when it is exceeded. 0 means no cap.
	MaxOut int
	OnSlow func()
	// OnLost, when set, is told how many gathered bytes could not be
	// handed to C because it had closed. It may run on any loop.
	OnLost func(bytes int)

	co *Coalescer // set by NewCoalescer before e is published

	closed atomic.Bool
	slow   atomic.Bool
	// pending is C.OutboundBuffered() as last seen on C's loop, for other
	// goroutines deciding whether to queue more (backpressure).
	pending atomic.Int64
}

// MarkClosed records, on C's loop in OnClose, that C is gone: flushes skip
// it from then on. (AsyncWrite is safe on a closed conn, but a plain Write
// after OnClose would reach whatever socket reuses the fd.)
func (e *Endpoint) MarkClosed() { e.closed.Store(true) }

// Closed reports whether MarkClosed was called.
func (e *Endpoint) Closed() bool { return e.closed.Load() }

// Pending returns the bytes waiting in C's outbound buffer as last observed
// on its loop, plus what its Coalescer holds; any goroutine may call it.
func (e *Endpoint) Pending() int64 {
	n := e.pending.Load()
	if e.co != nil {
		n += int64(e.co.Buffered())
	}
	return n
}

// CheckOutbound records C's outbound backlog and calls OnSlow once past
// MaxOut. It must run on C's loop; the flush calls it after every write.
func (e *Endpoint) CheckOutbound() {
	if e.closed.Load() {
		return
	}
	n := e.C.OutboundBuffered()
	e.pending.Store(int64(n))
	if e.MaxOut > 0 && n > e.MaxOut && e.slow.CompareAndSwap(false, true) && e.OnSlow != nil {
		e.OnSlow()
	}
}

// Loop is one event loop's output gatherer. Only that loop touches it.
// Bytes for one destination keep the order they were added in, and
// destinations on other loops receive one loop's flushes in order, since
// gnet runs a loop's AsyncWrites in FIFO order.
type Loop struct {
	index   map[*Endpoint]int
	targets []*Endpoint
	bufs    [][]byte
	// Scratch is free space for the loop's own encoding; it is never
	// written anywhere by Flush.
	Scratch []byte
}

// NewLoop returns an empty gatherer.
func NewLoop() *Loop { return &Loop{index: make(map[*Endpoint]int)} }

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// Out returns the buffer collecting bytes for e in this callback; append to
// it in place.
func (l *Loop) Out(e *Endpoint) *[]byte {
	if i, ok := l.index[e]; ok {
		return &l.bufs[i]
	}
	i := len(l.targets)
	l.index[e] = i
	l.targets = append(l.targets, e)
	if i < len(l.bufs) {
		if l.bufs[i] == nil {
			l.bufs[i] = (*bufPool.Get().(*[]byte))[:0]
		}
	} else {
		l.bufs = append(l.bufs, (*bufPool.Get().(*[]byte))[:0])
	}
	return &l.bufs[i]
}

// Append adds b to what e receives at the next Flush.
func (l *Loop) Append(e *Endpoint, b []byte) {
	p := l.Out(e)
	*p = append(*p, b...)
}

// Flush writes everything gathered since the last Flush. Destinations on
// this loop get a direct Write; others their Coalescer if they have one,
// else an AsyncWrite that takes the buffer over and returns it to the pool
// once written.
func (l *Loop) Flush() {
	for i, e := range l.targets {
		buf := l.bufs[i]
		l.targets[i] = nil
		if len(buf) == 0 {
			continue
		}
		if e.Loop == l {
			if e.closed.Load() {
				e.lost(len(buf))
			} else {
				_, _ = e.C.Write(buf)
				e.CheckOutbound()
			}
			l.bufs[i] = buf[:0]
			continue
		}
		if e.co != nil {
			e.co.Append(buf)
			l.bufs[i] = buf[:0]
			continue
		}
		l.bufs[i] = nil
		if e.closed.Load() {
			e.lost(len(buf))
			putBuf(buf)
			continue
		}
		_ = e.C.AsyncWrite(buf, func(c gnet.Conn, err error) error {
			if err == nil {
				e.CheckOutbound()
			} else {
				e.lost(len(buf))
			}
			putBuf(buf)
			return nil
		})
	}
	l.targets = l.targets[:0]
	clear(l.index)
}

func (e *Endpoint) lost(n int) {
	if e.OnLost != nil {
		e.OnLost(n)
	}
}

func putBuf(b []byte) {
	if cap(b) > 1<<20 {
		return // let an outsized buffer go rather than pin it in the pool
	}
	b = b[:0]
	bufPool.Put(&b)
}

// Loops maps gnet event loops to their gatherers. A loop's gatherer is
// created on first use, on that loop.
type Loops struct{ m sync.Map }

// Get returns the gatherer of loop.
func (ls *Loops) Get(loop gnet.EventLoop) *Loop {
	if v, ok := ls.m.Load(loop); ok {
		return v.(*Loop)
	}
	v, _ := ls.m.LoadOrStore(loop, NewLoop())
	return v.(*Loop)
}

// Consume drops the first n bytes of c's inbound buffer, after the caller
// has handled them. n == 0 does nothing: gnet's own Discard(n <= 0) empties
// the whole buffer, which would throw away a line still arriving.
func Consume(c gnet.Conn, n int) {
	if n > 0 {
		_, _ = c.Discard(n)
	}
}
