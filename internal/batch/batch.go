// Package batch gathers the output an event-loop callback produces and
// hands it over with as few system calls and wake-ups as possible: each
// destination connection gets one write per callback, and each other event
// loop gets one hand-over per callback (not one per destination
// connection), through an inbox that also carries tasks in the same order.
//
// Order: everything one loop posts to another loop (writes and tasks) runs
// there in the order it was posted. gnet's own task queues can run a newer
// task before an older one once they are long, so cross-loop work goes
// through the inbox only, never through gnet's AsyncWrite.
package batch

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/panjf2000/gnet/v2"
)

// Mark tells the hooks where one tracked item (a chat) sits in a written
// buffer, and of what kind it is.
type Mark struct {
	Start, End int32
	Kind       uint8
}

// Hooks, when an Endpoint has them, follow its tracked output. Both run on
// the endpoint's own loop.
type Hooks interface {
	// Written is called after buf was handed to the connection (its bytes
	// are in the kernel or in gnet's outbound buffer). buf and marks are
	// only valid during the call.
	Written(buf []byte, marks []Mark)
	// Lost is called instead when the connection was closed before buf
	// could be written.
	Lost(buf []byte, marks []Mark)
}

// Endpoint is a destination connection. C and Loop are set before the
// endpoint is published to other loops and never change.
type Endpoint struct {
	C    gnet.Conn
	Loop *Loop // the loop that owns C
	// MaxOut, when > 0, is the outbound backlog (bytes in gnet's buffer)
	// past which Hooks' Slow is called once (if Hooks is SlowHooks), on
	// the owning loop.
	MaxOut int
	// Hooks, when not nil, is told of every write (see Hooks).
	Hooks Hooks
	// Framer, when not nil, turns the bytes of each write before they go
	// (e.g. one WebSocket frame per line). One per endpoint: it keeps its
	// output buffer.
	Framer *Framer

	closed  atomic.Bool
	slow    atomic.Bool
	pending atomic.Int64
}

// SlowHooks is Hooks that also hears, once, that the endpoint's backlog
// passed MaxOut. (A method, not a func field: an endpoint per client
// connection should not cost a closure each.)
type SlowHooks interface {
	Hooks
	Slow()
}

// Framer turns a buffer of newline-terminated lines into the bytes to
// write, moving the marks along; Frame runs on the owning loop just before
// the write. An endpoint that needs it holds one, so endpoints that do not
// (plain TCP clients, links) pay one pointer.
type Framer struct {
	Frame func(dst, lines []byte, marks []Mark) ([]byte, []Mark)
	buf   []byte // Frame's output, owning loop only
}

// MarkClosed records that the connection is closed (call it in OnClose).
// Later writes go to Hooks.Lost.
func (e *Endpoint) MarkClosed() { e.closed.Store(true) }

// Closed reports whether MarkClosed was called. Safe from any goroutine.
func (e *Endpoint) Closed() bool { return e.closed.Load() }

// Pending returns the outbound backlog seen after the last write, in
// bytes. Safe from any goroutine.
func (e *Endpoint) Pending() int64 { return e.pending.Load() }

// WriteNow writes buf to the connection at once, with its tracked items:
// the same path as a flushed buffer. Owning loop only; buf may be reused
// afterwards.
func (e *Endpoint) WriteNow(buf []byte, marks []Mark) { e.write(buf, marks) }

// write hands buf to the connection on its own loop.
func (e *Endpoint) write(buf []byte, marks []Mark) {
	if e.closed.Load() {
		if e.Hooks != nil {
			e.Hooks.Lost(buf, marks)
		}
		return
	}
	if f := e.Framer; f != nil {
		f.buf, marks = f.Frame(f.buf[:0], buf, marks)
		buf = f.buf
	}
	e.handOver(buf)
	if e.closed.Load() {
		// The write failed and gnet closed the connection inside Write
		// (OnClose has run): buf is reported lost whole. (When a raw write
		// took a first part just before the failure, that part reached a
		// connection being reset, whose unsent bytes the kernel drops;
		// putting it back may at worst repeat a line the client read just
		// before it reset: the side the close path errs on too.)
		if e.Hooks != nil {
			e.Hooks.Lost(buf, marks)
		}
		return
	}
	if e.Hooks != nil {
		e.Hooks.Written(buf, marks)
	}
	e.CheckOutbound()
}

// CheckOutbound refreshes Pending and calls Hooks' Slow once when the backlog
// is over MaxOut. Owning loop only.
func (e *Endpoint) CheckOutbound() {
	if e.closed.Load() {
		return
	}
	n := e.C.OutboundBuffered()
	e.pending.Store(int64(n))
	if e.MaxOut > 0 && n > e.MaxOut && e.slow.CompareAndSwap(false, true) {
		if h, ok := e.Hooks.(SlowHooks); ok {
			h.Slow()
		}
	}
}

// Loop is the batching state of one gnet event loop. The gathering methods
// (Out, OutMarked, Append, Flush) run on that loop only; Post and the
// inbox are safe from anywhere.
type Loop struct {
	el gnet.EventLoop

	// g gathers this callback's output; Flush swaps it for idle while it
	// writes, so that a write closing a connection, whose OnClose gathers
	// more output, does not touch what is being written.
	g, idle  *gather
	flushing bool
	// Scratch is a buffer for building lines on this loop.
	Scratch []byte

	// byLoop groups this callback's hand-overs per destination loop.
	byLoop map[*Loop][]item

	mu        sync.Mutex
	inbox     []item
	scheduled bool
	spare     []item
	drainer   drainTask
}

// gather is the output of one callback, per endpoint.
type gather struct {
	index   map[*Endpoint]int
	targets []*Endpoint
	bufs    [][]byte
	marks   [][]Mark
}

func newGather() *gather { return &gather{index: make(map[*Endpoint]int)} }

// item is one hand-over: a write for an endpoint, or a task.
type item struct {
	e     *Endpoint
	buf   []byte
	marks []Mark
	fn    func()
}

// NewLoop returns the batching state for el.
func NewLoop(el gnet.EventLoop) *Loop {
	l := &Loop{el: el, g: newGather(), idle: newGather(), byLoop: make(map[*Loop][]item)}
	l.drainer.l = l
	return l
}

// ReadBufferCap is the most an event loop reads from one connection per
// readiness event (gnet's ReadBufferCap; one buffer per loop, shared by its
// connections); the server's and the proxy's loops use it. gnet's default,
// 64 KiB, is plenty for a client but paced the links: a loop serving a
// thousand clients reads a link once per turn, so a stream's frames and the
// peer's acknowledgements queued behind each other, the flow-control window
// stayed full (1.29 MB unacknowledged, a sender paused for every fifth chat
// forwarded) and each pause cost a wake-up and a late ack. At 1 MiB: 251 KB
// unacknowledged, a pause per 18 chats, and `anchor` 16.5-19.6 us per
// message against 19.9-26.0 (5 interleaved runs; README). 4 MiB was a little
// faster again but its buffer, part of the live heap, cost about 100 B per
// client in `trickle`.
const ReadBufferCap = 1 << 20

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

func getBuf() []byte { return (*bufPool.Get().(*[]byte))[:0] }

func putBuf(b []byte) {
	if cap(b) > 1<<20 {
		return // let an outsized buffer go rather than pin it in the pool
	}
	b = b[:0]
	bufPool.Put(&b)
}

// Out returns the buffer gathering this callback's output for e.
func (l *Loop) Out(e *Endpoint) *[]byte {
	return &l.g.bufs[l.g.slot(e)]
}

func (g *gather) slot(e *Endpoint) int {
	if i, ok := g.index[e]; ok {
		return i
	}
	i := len(g.targets)
	g.index[e] = i
	g.targets = append(g.targets, e)
	if i < len(g.bufs) {
		if g.bufs[i] == nil {
			g.bufs[i] = getBuf()
		}
	} else {
		g.bufs = append(g.bufs, getBuf())
		g.marks = append(g.marks, nil)
	}
	return i
}

// OutMarked appends what add appends to e's buffer and records it as one
// tracked item of the given kind.
func (l *Loop) OutMarked(e *Endpoint, kind uint8, add func([]byte) []byte) {
	g := l.g
	i := g.slot(e)
	start := len(g.bufs[i])
	g.bufs[i] = add(g.bufs[i])
	g.marks[i] = append(g.marks[i], Mark{Start: int32(start), End: int32(len(g.bufs[i])), Kind: kind})
}

// Append appends b to e's buffer.
func (l *Loop) Append(e *Endpoint, b []byte) {
	p := l.Out(e)
	*p = append(*p, b...)
}

// Flush writes what this callback gathered: at once for connections on
// this loop, and as one hand-over per other loop for the rest. A Flush
// called while one runs (a write failed, gnet closed the connection at
// once and its OnClose flushed) returns at once: the running one writes
// what was gathered meanwhile.
func (l *Loop) Flush() {
	if l.flushing {
		return
	}
	l.flushing = true
	for len(l.g.targets) > 0 {
		g := l.g
		l.g, l.idle = l.idle, nil
		l.flushGather(g)
		l.idle = g
	}
	l.flushing = false
	for dst, items := range l.byLoop {
		dst.receive(items...)
		clear(items)
		l.byLoop[dst] = items[:0]
	}
}

func (l *Loop) flushGather(g *gather) {
	for i, e := range g.targets {
		buf, marks := g.bufs[i], g.marks[i]
		g.targets[i] = nil
		if len(buf) == 0 {
			g.marks[i] = marks[:0]
			continue
		}
		if e.Loop == l {
			e.write(buf, marks)
			g.bufs[i], g.marks[i] = buf[:0], marks[:0]
			continue
		}
		var m []Mark
		if len(marks) > 0 {
			m = append([]Mark(nil), marks...)
		}
		l.byLoop[e.Loop] = append(l.byLoop[e.Loop], item{e: e, buf: buf, marks: m})
		g.bufs[i], g.marks[i] = nil, marks[:0]
	}
	g.targets = g.targets[:0]
	clear(g.index)
	g.trim()
}

// keepSlots is how many per-destination buffers a gather keeps between
// callbacks. A callback that wrote to more (a stream's batch fanning out
// to hundreds of sessions) gives the rest back to the pool, which the
// garbage collector empties, rather than each loop pinning a buffer per
// destination it ever wrote to in one go.
const keepSlots = 64

func (g *gather) trim() {
	if len(g.bufs) <= keepSlots {
		return
	}
	for i := keepSlots; i < len(g.bufs); i++ {
		if g.bufs[i] != nil {
			putBuf(g.bufs[i])
		}
		g.bufs[i], g.marks[i] = nil, nil
	}
	g.bufs, g.marks = g.bufs[:keepSlots], g.marks[:keepSlots]
}

// Post runs fn on l's event loop, after everything posted to l before it.
// Safe from any goroutine.
func (l *Loop) Post(fn func()) { l.receive(item{fn: fn}) }

// Send writes buf to e from any goroutine, on e's loop, in order with
// everything else posted there. It takes ownership of buf.
func Send(e *Endpoint, buf []byte, marks []Mark) { e.Loop.receive(item{e: e, buf: buf, marks: marks}) }

func (l *Loop) receive(items ...item) {
	l.mu.Lock()
	l.inbox = append(l.inbox, items...)
	schedule := !l.scheduled
	l.scheduled = true
	l.mu.Unlock()
	if !schedule {
		return
	}
	if err := l.el.Execute(context.Background(), &l.drainer); err != nil {
		// The engine is shutting down: run the hand-overs here, where a
		// closed endpoint reports its loss.
		l.drain()
	}
}

type drainTask struct{ l *Loop }

func (d *drainTask) Run(context.Context) error { d.l.drain(); return nil }

// drain runs the inbox on the loop. Between two tasks, the writes for one
// endpoint are joined into one write (in the order they were posted), so a
// busy link gets one write per wake-up, not one per posting loop.
func (l *Loop) drain() {
	l.mu.Lock()
	items := l.inbox
	l.inbox = l.spare[:0]
	l.scheduled = false
	l.mu.Unlock()
	for i := 0; i < len(items); {
		if items[i].fn != nil {
			items[i].fn()
			items[i] = item{}
			i++
			continue
		}
		j := i
		for j < len(items) && items[j].fn == nil {
			j++
		}
		l.writeRun(items[i:j])
		clear(items[i:j])
		i = j
	}
	l.spare = items[:0]
}

// writeRun writes a run of write items, joining those for one endpoint.
func (l *Loop) writeRun(run []item) {
	if len(run) == 1 {
		run[0].e.write(run[0].buf, run[0].marks)
		putBuf(run[0].buf)
		return
	}
	for i := range run {
		first := &run[i]
		if first.e == nil {
			continue
		}
		buf, marks := first.buf, first.marks
		for k := i + 1; k < len(run); k++ {
			it := &run[k]
			if it.e != first.e {
				continue
			}
			off := int32(len(buf))
			for _, m := range it.marks {
				marks = append(marks, Mark{Start: m.Start + off, End: m.End + off, Kind: m.Kind})
			}
			buf = append(buf, it.buf...)
			putBuf(it.buf)
			*it = item{}
		}
		first.e.write(buf, marks)
		putBuf(buf)
		*first = item{}
	}
}

// Loops maps gnet event loops to their batching state.
type Loops struct{ m sync.Map }

// Get returns the state of el, creating it on first use.
func (ls *Loops) Get(el gnet.EventLoop) *Loop {
	if v, ok := ls.m.Load(el); ok {
		return v.(*Loop)
	}
	v, _ := ls.m.LoadOrStore(el, NewLoop(el))
	return v.(*Loop)
}

// Consume discards n bytes of c's inbound buffer. It is the one place that
// knows gnet's Discard(n <= 0) empties the whole buffer.
func Consume(c gnet.Conn, n int) {
	if n > 0 {
		_, _ = c.Discard(n)
	}
}
