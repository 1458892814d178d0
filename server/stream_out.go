package server

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/relaychat/relaychat/codec"
	"github.com/relaychat/relaychat/internal/batch"
	"github.com/relaychat/relaychat/route"
)

// Reliable streams, sending side.
//
// Everything this server sends to server X (chats, errors for X's users,
// kicks, kick-done notices) is one stream: each frame gets the next
// sequence number and stays in the stream's buffer, in order, until X
// acknowledges it. The buffer is also what is written to the link: a flush
// task on the link's loop writes everything appended since its last run in
// one write. When the path changes (a link goes, a better one comes, X
// stops acknowledging for ResendAfter and another path exists), the whole
// unacknowledged tail is written again on the new path, after a skip line
// saying where it starts; X drops what it already has. So a pair's chats
// are never reordered or duplicated, whatever proxies come and go.
//
// Bounds: MaxHoldBytes of unacknowledged frames per destination (new chats
// are refused past it), and MaxHoldAge per frame: an older frame that was
// never transmitted is decided again (stored in the mailbox, since its
// recipient's server is out of reach); one that was transmitted but not
// acknowledged may or may not have arrived, and its sender is told so.
//
// X restarting (a new epoch, learned from a hello or a reach line) ends
// X's old run: frames transmitted to it and unacknowledged are unconfirmed
// (errors to their senders); the others are addressed to the new run.

// outStreams holds one stream per destination server.
type outStreams struct {
	s  *Server
	mu sync.RWMutex
	m  map[string]*outStream
	// nextID makes stream ids unique within this run: epoch + n.
	nextID atomic.Uint64
}

func newOutStreams(s *Server) *outStreams {
	o := &outStreams{s: s, m: make(map[string]*outStream)}
	o.nextID.Store(s.epoch)
	return o
}

// get returns the stream to dst, creating it (with its best path) if need be.
func (os *outStreams) get(dst string) *outStream {
	os.mu.RLock()
	o := os.m[dst]
	os.mu.RUnlock()
	if o != nil {
		return o
	}
	os.mu.Lock()
	if o = os.m[dst]; o == nil {
		o = &outStream{s: os.s, dst: dst, dstB: []byte(dst), id: os.nextID.Add(1), next: 1}
		os.m[dst] = o
	}
	os.mu.Unlock()
	o.repath()
	return o
}

// all returns every stream.
func (os *outStreams) all() []*outStream {
	os.mu.RLock()
	defer os.mu.RUnlock()
	out := make([]*outStream, 0, len(os.m))
	for _, o := range os.m {
		out = append(out, o)
	}
	return out
}

// find returns the stream to dst, or nil.
func (os *outStreams) find(dst string) *outStream {
	os.mu.RLock()
	defer os.mu.RUnlock()
	return os.m[dst]
}

// outStream is the stream to one destination server.
type outStream struct {
	s    *Server
	dst  string
	dstB []byte
	id   uint64

	mu       sync.Mutex
	dstEpoch uint64 // the run of dst frames are addressed to; 0 until known
	next     uint64 // seq of the next frame
	buf      []byte // frames from buf[head:], oldest first; bytes are not changed while a flush writes them (writing)
	head     int
	frames   []outFrame // metadata, from frames[fh:]
	fh       int
	sent     int   // buf offset up to which the current path has been written
	path     *link // nil: held
	flushing bool  // a flush task is posted
	// writing counts flushes writing a slice of buf with o.mu released;
	// while one does, compact moves the live bytes to a fresh array.
	writing  int
	progress time.Time     // last ack that moved, or last path change
	rto      time.Duration // wait for an ack before resending; doubles while none comes
	resent   int64         // frames written again over a new path
	// waiters are the sessions paused because their chat found more than
	// streamWindow bytes in flight; resumed below half of it.
	waiters []*session
}

// outFrame is the metadata of one unacknowledged frame.
type outFrame struct {
	seq  uint64
	end  int   // buf offset just past its "\n"
	at   int64 // unix nanos it was pushed
	ts   int64 // chats: receive time, unix ms
	kind byte
	// sentOn is the path the frame was written to, nil if none, or
	// manyPaths; inKernel records that it reached the kernel on a path (it
	// has left this process: the current run of dst may have it). A nak
	// from a proxy clears both if that proxy was the only path.
	sentOn   *link
	inKernel bool
	from     *session // chats: the sender, when on this server
	// owed is the sender's request id (noID when it had none) while its
	// ack has not gone out: the ack goes once the frame reached the kernel
	// (or the receiver acknowledged it, or it was stored instead). fw is
	// released once the receiver acknowledged it, or it was decided again
	// (see follow.go).
	owed []byte
	fw   *follow
}

// outMeta is what push records about a frame.
type outMeta struct {
	from *session
	id   []byte // the sender's request id (or noID): an ack is owed
	fw   *follow
	ts   int64
	// pace: pause from (register it as a waiter) if the stream is over
	// its window; push reports it. Only on from's loop.
	pace bool
}

// frameHead is what a caller says about a frame; push adds the routing.
type frameHead struct {
	kind       byte
	hops       int
	send, recv string
	id         []byte
}

// push appends a frame to the stream; payload appends its payload. It
// fails with the error for the sender when the stream is at its byte bound.
func (o *outStream) push(h frameHead, payload func([]byte) []byte, m outMeta) error {
	_, err := o.pushPaced(h, payload, m)
	return err
}

// pushPaced is push; with m.pace, it also reports whether m.from must
// pause (it was registered as a waiter: see waiters).
func (o *outStream) pushPaced(h frameHead, payload func([]byte) []byte, m outMeta) (pause bool, err error) {
	o.mu.Lock()
	if o.path == nil && o.s.opt.noHold && h.kind == codec.KindMsg {
		o.mu.Unlock()
		return false, codec.ErrNoForwarding
	}
	seq := o.next
	start := len(o.buf)
	o.buf = codec.AppendDataHead(o.buf, h.kind, o.dstB, o.dstEpoch, o.s.idB, o.id, seq, h.hops, h.send, h.recv, h.id)
	o.buf = payload(o.buf)
	o.buf = append(o.buf, '\n')
	if len(o.buf)-o.head > o.s.opt.MaxHoldBytes && o.fh < len(o.frames) {
		o.buf = o.buf[:start] // bytes past len are never sent
		held := o.path == nil
		o.mu.Unlock()
		if held {
			return false, codec.ErrNoForwarding
		}
		return false, codec.ErrCongested
	}
	o.next++
	o.frames = append(o.frames, outFrame{seq: seq, end: len(o.buf), at: time.Now().UnixNano(), ts: m.ts, kind: h.kind, from: m.from, owed: m.id, fw: m.fw})
	if m.pace && o.path != nil && len(o.buf)-o.head > o.s.opt.streamWindow {
		o.waiters = append(o.waiters, m.from)
		pause = true
	}
	lk := o.schedule()
	o.mu.Unlock()
	if lk != nil {
		lk.Loop.Post(func() { o.flush(lk) })
	}
	return pause, nil
}

// resumeLocked resumes the paused senders once the bytes in flight are
// below half the window, or nothing is in flight any more (held: the hold
// has its own bounds). o.mu held.
func (o *outStream) resumeLocked() {
	if len(o.waiters) == 0 || (o.path != nil && len(o.buf)-o.head > o.s.opt.streamWindow/2) {
		return
	}
	for i, ss := range o.waiters {
		ss.Loop.Post(func() { o.s.resumeSender(ss) })
		o.waiters[i] = nil
	}
	o.waiters = o.waiters[:0]
}

// resumeSender lets a session paused by a stream's window read again
// (on its loop).
func (s *Server) resumeSender(ss *session) {
	if !ss.streamWait {
		return
	}
	ss.streamWait = false
	if ss.Closed() {
		return
	}
	for a := ss.aside; a != nil && len(a.deferred) > 0 && !ss.streamWait; {
		d := a.deferred[0]
		a.deferred[0] = deferredChat{}
		a.deferred = a.deferred[1:]
		s.forward(nil, d.c, d.dst) // may pause the session again
	}
	if a := ss.aside; a != nil && len(a.deferred) == 0 {
		a.deferred = nil
		ss.tidy()
	}
	ss.wakeIfFree()
}

// schedule returns the path to post a flush to, if one is needed; o.mu held.
func (o *outStream) schedule() *link {
	if o.path == nil || o.flushing || o.sent == len(o.buf) {
		return nil
	}
	o.flushing = true
	return o.path
}

// flush writes what the path has not had yet, on lk's loop. Nothing is
// written under o.mu: a failing write closes the link at once, and its
// OnClose re-paths this stream.
func (o *outStream) flush(lk *link) {
	o.mu.Lock()
	o.flushing = false
	if o.path != lk || lk.Closed() || o.sent == len(o.buf) {
		o.mu.Unlock()
		return
	}
	if lk.Pending() > int64(o.s.opt.MaxLinkOutbound) {
		o.mu.Unlock() // the ticker tries again once the link drains
		return
	}
	var skip []byte
	if o.sent == o.head && o.fh < len(o.frames) {
		skip = codec.AppendSkipFrame(nil, o.dst, o.dstEpoch, o.s.opt.ID, o.id, o.frames[o.fh].seq)
	}
	data := o.buf[o.sent:]
	base := lk.sent + int64(len(skip)) - int64(o.sent) // link offset of buf[0]
	for i := len(o.frames) - 1; i >= o.fh && o.frames[i].end > o.sent; i-- {
		fr := &o.frames[i]
		switch fr.sentOn {
		case nil:
			fr.sentOn = lk
		case lk:
		default:
			fr.sentOn = manyPaths
		}
		if !fr.inKernel {
			lk.inFlight = append(lk.inFlight, linkFrame{end: base + int64(fr.end), o: o, seq: fr.seq})
		}
	}
	o.sent = len(o.buf)
	o.writing++
	o.mu.Unlock()
	if skip != nil {
		lk.sent += int64(len(skip))
		_, _ = lk.C.Write(skip)
	}
	if !lk.Closed() { // a failed write closed the link inside Write: its descriptor may be another's by now
		lk.sent += int64(len(data))
		_, _ = lk.C.Write(data) // gnet copies what the socket does not take
	}
	o.mu.Lock()
	o.writing--
	o.mu.Unlock()
	lk.CheckOutbound()
	lk.kernelProgress()
}

// linkFrame is a stream frame written to a link and not known to have
// reached the kernel: end is its link offset.
type linkFrame struct {
	end int64
	o   *outStream
	seq uint64
}

// kernelProgress marks the frames written to lk that the kernel has taken
// (gnet holds none of their bytes any more), and sends their senders'
// acks. On lk's loop.
func (lk *link) kernelProgress() {
	if len(lk.inFlight) == 0 || lk.Closed() {
		return
	}
	kernel := lk.sent - int64(lk.C.OutboundBuffered())
	i := 0
	for i < len(lk.inFlight) && lk.inFlight[i].end <= kernel {
		i++
	}
	if i == 0 {
		return
	}
	// Frames of one stream come in order: mark each run at once.
	for _, f := range lk.inFlight[:i] {
		f.o.reachedKernel(lk, f.seq)
	}
	n := copy(lk.inFlight, lk.inFlight[i:])
	clear(lk.inFlight[n:])
	lk.inFlight = lk.inFlight[:n]
}

// reachedKernel records that frame seq, written to lk, is in the kernel,
// and acknowledges it to its sender if that is still owed.
func (o *outStream) reachedKernel(lk *link, seq uint64) {
	o.mu.Lock()
	var from *session
	var id []byte
	if i := o.find(seq); i >= 0 {
		if fr := &o.frames[i]; fr.sentOn == lk || fr.sentOn == manyPaths {
			fr.inKernel = true
			from, id = fr.from, fr.owed
			fr.owed = nil
		}
	}
	o.mu.Unlock()
	o.s.ackSender(from, nil, id, false) // fw waits for the receiver's ack
}

// find returns the index of frame seq, or -1; o.mu held. Seqs are
// contiguous from frames[fh] except after a new run of dst dropped some,
// hence the check and the search.
func (o *outStream) find(seq uint64) int {
	if o.fh == len(o.frames) || seq < o.frames[o.fh].seq {
		return -1
	}
	if i := o.fh + int(seq-o.frames[o.fh].seq); i < len(o.frames) && o.frames[i].seq == seq {
		return i
	}
	for i := o.fh; i < len(o.frames); i++ {
		if o.frames[i].seq == seq {
			return i
		}
	}
	return -1
}

// noID is the owed id of a chat sent without one: its settlement is
// tracked (fw), but no ack goes out.
var noID = []byte{}

// ackSender settles a chat of a local sender and sends its ack (stored:
// "stored":true), from any goroutine; nothing is sent when the chat had no
// id or the sender has left.
func (s *Server) ackSender(from *session, fw *follow, id []byte, stored bool) {
	fw.done()
	if from == nil || len(id) == 0 || from.Closed() {
		return
	}
	var line []byte
	if stored {
		line = codec.AppendAckStored(nil, id)
	} else {
		line = codec.AppendAck(nil, id)
	}
	batch.Send(&from.Endpoint, line, nil)
}

// manyPaths marks a frame written to more than one path.
var manyPaths = &link{}

// nak records that proxy lk did not relay frame seq of stream id.
func (o *outStream) nak(lk *link, id, seq uint64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if id != o.id {
		return
	}
	if i := o.find(seq); i >= 0 {
		if fr := &o.frames[i]; fr.sentOn == lk {
			fr.sentOn, fr.inKernel = nil, false
		}
	}
}

// ack drops the frames stream id acknowledged up to seq.
func (o *outStream) ack(id, seq uint64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if id != o.id {
		return
	}
	i := o.fh
	for i < len(o.frames) && o.frames[i].seq <= seq {
		if fr := &o.frames[i]; fr.owed != nil || fr.fw != nil {
			// The receiver has it: the sender's ack cannot wait for the
			// kernel bookkeeping of a path that may be gone; its later
			// chats to this recipient need not follow this one any more.
			o.s.ackSender(fr.from, fr.fw, fr.owed, false)
			fr.owed, fr.fw = nil, nil
		}
		i++
	}
	if i == o.fh {
		return
	}
	o.head = o.frames[i-1].end
	clear(o.frames[o.fh:i])
	o.fh = i
	o.sent = max(o.sent, o.head)
	o.progress = time.Now()
	o.rto = 0
	o.compact()
	o.resumeLocked()
}

// compact moves the live part of the buffers to their front once the
// dead part dominates, reusing the arrays (a busy stream would otherwise
// grow a fresh buffer from nothing after every full acknowledgement).
// While a flush is writing from buf with o.mu released, the bytes go to a
// fresh array instead: buf's bytes never change under a writer. A buffer
// grown past four times the flow-control window (a hold) is let go once
// empty. (Not twice: a stream kept at its window holds up to a window of
// unacknowledged bytes behind as many acknowledged ones before it is
// compacted, so its array grows past twice the window by append's
// rounding, and was let go and grown again from nothing at each full
// acknowledgement.)
// o.mu held.
func (o *outStream) compact() {
	if o.fh == len(o.frames) {
		if o.writing == 0 && cap(o.buf) <= 4*o.s.opt.streamWindow {
			o.buf = o.buf[:0]
		} else {
			o.buf = o.buf[:0:0]
		}
		o.head, o.sent = 0, 0
		o.frames, o.fh = o.frames[:0], 0
		return
	}
	if o.head < 64<<10 || o.head < len(o.buf)/2 {
		if o.fh > 1024 && o.fh > len(o.frames)/2 {
			o.dropAcked()
		}
		return
	}
	live := len(o.buf) - o.head
	if o.writing == 0 {
		copy(o.buf, o.buf[o.head:])
		o.buf = o.buf[:live]
	} else {
		nb := make([]byte, live, max(4096, 2*live))
		copy(nb, o.buf[o.head:])
		o.buf = nb
	}
	shift := o.head
	o.head, o.sent = 0, max(0, o.sent-shift)
	o.dropAcked()
	for i := range o.frames {
		o.frames[i].end -= shift
	}
}

// dropAcked moves the unacknowledged frames' metadata to the front of
// frames (the acknowledged ones were cleared by ack). o.mu held.
func (o *outStream) dropAcked() {
	n := copy(o.frames, o.frames[o.fh:])
	clear(o.frames[n:])
	o.frames, o.fh = o.frames[:n], 0
}

// unacked returns the frames and bytes waiting for an acknowledgement.
func (o *outStream) unacked() (frames, bytes int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.frames) - o.fh, len(o.buf) - o.head
}

// repath points the stream at the best path to dst now (see pathTo), and
// moves it to a newer run of dst when a path announces one.
func (o *outStream) repath() {
	lk, epoch := o.s.pathTo(o.dst, nil)
	o.setPath(lk, epoch, false)
}

// setPath switches to lk (nil: hold), whose run of dst is epoch. A switch
// rewrites the whole unacknowledged tail on the new path.
func (o *outStream) setPath(lk *link, epoch uint64, resend bool) {
	var lost []lostFrame
	o.mu.Lock()
	if lk != nil && epoch != o.dstEpoch {
		if epoch < o.dstEpoch {
			// An announcement of an older run: not a path to dst.
			lk = nil
		} else {
			lost = o.newRunLocked(epoch)
		}
	}
	if lk == o.path && !resend {
		o.mu.Unlock()
		o.s.dropLost(o.dst, lost)
		return
	}
	if o.path != nil || resend {
		o.s.stats.StreamResent.Add(int64(o.sent - o.head))
		o.resent += int64(len(o.frames) - o.fh)
	}
	if lk != o.path {
		if lk == nil {
			o.s.log.Warn("stream path down: holding chats for the server", "server", o.dst)
		} else {
			o.s.log.Info("stream path", "server", o.dst, "via", lk.remote.Role+" "+lk.remote.ID, "unacked", len(o.frames)-o.fh)
		}
	}
	o.path = lk
	o.sent = o.head
	o.progress = time.Now()
	post := o.schedule()
	o.mu.Unlock()
	if post != nil {
		post.Loop.Post(func() { o.flush(post) })
	}
	o.s.dropLost(o.dst, lost)
}

// lostFrame is a frame the stream gave up on: the caller decides it again.
type lostFrame struct {
	f         codec.Frame // parsed; its slices are copies
	ts        int64
	from      *session
	owed      []byte // the sender's ack is still owed (with this id, or noID)
	fw        *follow
	delivered bool // it reached the kernel on a path: it may have arrived
}

// newRunLocked re-addresses the stream to run epoch of dst: frames already
// transmitted to the old run are returned as lost (they may or may not
// have arrived), the rest are rewritten for the new run. o.mu held.
func (o *outStream) newRunLocked(epoch uint64) []lostFrame {
	old := o.dstEpoch
	o.dstEpoch = epoch
	if o.fh == len(o.frames) {
		return nil
	}
	var lost []lostFrame
	var nb []byte
	var nf []outFrame
	start := o.head
	for _, m := range o.frames[o.fh:] {
		line := o.buf[start : m.end-1]
		start = m.end
		var f codec.Frame
		if err := codec.ParseFrame(line, &f); err != nil {
			continue
		}
		if m.inKernel && old != 0 {
			lost = append(lost, lostFrame{f: copyFrame(&f), ts: m.ts, from: m.from, owed: m.owed, fw: m.fw, delivered: true})
			continue
		}
		f.DstEpoch = epoch
		nb = codec.AppendFrame(nb, &f)
		m.end = len(nb)
		m.sentOn, m.inKernel = nil, false
		nf = append(nf, m)
	}
	o.buf, o.head, o.sent = nb, 0, 0
	o.frames, o.fh = nf, 0
	return lost
}

// tick runs every streamTick: it resends over another path when the
// current one stopped acknowledging, writes what a congested link held
// back, and gives up on frames older than MaxHoldAge.
func (o *outStream) tick(now time.Time) {
	o.mu.Lock()
	o.resumeLocked() // also after expiry below, at the next tick
	if o.fh == len(o.frames) {
		o.mu.Unlock()
		return
	}
	var post *link
	if o.rto == 0 {
		o.rto = o.s.opt.ResendAfter
	}
	stalled := o.path != nil && now.Sub(o.progress) >= o.rto && o.sent > o.head
	if o.path != nil && !stalled {
		post = o.schedule()
	}
	cutoff := now.Add(-o.s.opt.MaxHoldAge).UnixNano()
	var lost []lostFrame
	i, start := o.fh, o.head
	for i < len(o.frames) && o.frames[i].at < cutoff {
		m := o.frames[i]
		var f codec.Frame
		if codec.ParseFrame(o.buf[start:m.end-1], &f) == nil {
			lost = append(lost, lostFrame{f: copyFrame(&f), ts: m.ts, from: m.from, owed: m.owed, fw: m.fw, delivered: m.inKernel})
		}
		start = m.end
		i++
	}
	if i > o.fh {
		o.head = o.frames[i-1].end
		clear(o.frames[o.fh:i])
		o.fh = i
		o.sent = max(o.sent, o.head)
		o.compact()
		o.s.stats.StreamExpired.Add(int64(len(lost)))
	}
	o.mu.Unlock()
	if post != nil {
		post.Loop.Post(func() { o.flush(post) })
	}
	if stalled {
		// No ack for rto: resend the unacknowledged tail, over another path
		// if there is one, else over the same (a frame may have been lost
		// on it); the wait doubles until an ack comes.
		cur := o.currentPath()
		lk, epoch := o.s.pathTo(o.dst, cur)
		if lk != nil {
			o.mu.Lock()
			rto := o.rto
			o.rto = min(2*o.rto, max(o.s.opt.MaxHoldAge/2, o.s.opt.ResendAfter))
			o.mu.Unlock()
			if lk != cur {
				o.s.log.Info("stream not acknowledged; resending over another path", "server", o.dst, "after", rto)
			} else {
				o.s.log.Info("stream not acknowledged; resending", "server", o.dst, "after", rto)
			}
			o.setPath(lk, epoch, true)
		}
	}
	if len(lost) > 0 {
		o.s.log.Warn("chats waited past -hold-age for their server", "server", o.dst, "frames", len(lost), "max_age", o.s.opt.MaxHoldAge)
		o.s.dropLost(o.dst, lost)
	}
}

func (o *outStream) currentPath() *link {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.path
}

// giveUp ends the stream's unacknowledged frames now, as tick does at
// MaxHoldAge (for Shutdown).
func (o *outStream) giveUp() {
	o.mu.Lock()
	var lost []lostFrame
	start := o.head
	for _, m := range o.frames[o.fh:] {
		var f codec.Frame
		if codec.ParseFrame(o.buf[start:m.end-1], &f) == nil {
			lost = append(lost, lostFrame{f: copyFrame(&f), ts: m.ts, from: m.from, owed: m.owed, fw: m.fw, delivered: m.inKernel})
		}
		start = m.end
	}
	o.head, o.sent = len(o.buf), len(o.buf)
	clear(o.frames[o.fh:])
	o.fh = len(o.frames)
	o.compact()
	o.mu.Unlock()
	o.s.dropLost(o.dst, lost)
}

func copyFrame(f *codec.Frame) codec.Frame {
	c := *f
	cp := func(b []byte) []byte {
		if b == nil {
			return nil
		}
		return append([]byte(nil), b...)
	}
	c.Dst, c.Src, c.Send, c.Recv, c.ID, c.Payload = cp(f.Dst), cp(f.Src), cp(f.Send), cp(f.Recv), cp(f.ID), cp(f.Payload)
	return c
}

// dropLost decides again the frames a stream to dst gave up on. A chat
// never transmitted is stored in its recipient's mailbox (their server is
// out of reach, so a route naming it counts as offline) or forwarded where
// the routing store says they are now; a chat that was transmitted may
// have arrived, so its sender is told it is unconfirmed. Errors for a user
// go nowhere (counted); kicks and kick-done notices are queued again.
func (s *Server) dropLost(dst string, lost []lostFrame) {
	for i := range lost {
		lf := &lost[i]
		switch lf.f.Kind {
		case codec.KindMsg:
			c := &chat{send: string(lf.f.Send), recv: string(lf.f.Recv), ts: lf.ts, id: lf.f.ID, hops: lf.f.Hops, payload: lf.f.Payload}
			if lf.delivered || !s.opt.mailboxOn() {
				reason := codec.ErrNoForwarding
				if lf.delivered {
					reason = codec.ErrUnconfirmed
					s.stats.StreamUnconfirmed.Add(1)
				}
				s.tellSender(lf.from, lf.fw, c, reason)
				continue
			}
			s.restore(dst, lf.from, lf.fw, lf.owed, c)
		case codec.KindKick, codec.KindKicked:
			f := lf.f
			payload := f.Payload
			h := frameHead{kind: f.Kind, hops: f.Hops, send: string(f.Send), recv: string(f.Recv), id: f.ID}
			if err := s.out.get(dst).push(h, func(b []byte) []byte { return append(b, payload...) }, outMeta{}); err != nil {
				s.stats.KickUndelivered.Add(1)
				s.log.Warn("kick could not be queued again", "server", dst, "user", string(f.Recv))
			}
		default:
			s.stats.DroppedNoSender.Add(1)
			s.log.Warn("error for a user on another server given up on", "server", dst, "user", string(lf.f.Recv))
		}
	}
}

// tellSender sends a chat's local sender an error (the chat was acked
// already, or it is settled now: fw), if the sender is still connected.
func (s *Server) tellSender(from *session, fw *follow, c *chat, reason codec.ProtoError) {
	fw.done()
	s.stats.countChatError(reason)
	if from == nil || from.Closed() {
		s.stats.DroppedNoSender.Add(1)
		s.log.Warn("chat given up on; its sender has left", "sender", c.send, "recipient", c.recv, "reason", string(reason))
		return
	}
	s.stats.Errors.Add(1)
	batch.Send(&from.Endpoint, codec.AppendError(nil, string(reason), c.id), nil)
}

// restore stores a chat that could not reach server dst in its
// recipient's mailbox; if the routing store says the recipient is online
// elsewhere, it goes there.
func (s *Server) restore(dst string, from *session, fw *follow, owed []byte, c *chat) {
	req := route.StoreReq{Name: c.recv, Line: c.payload, TS: c.ts, Here: dst}
	if !s.redis.store(req, func(res route.StoreResult) {
		if res.Expired > 0 {
			s.countExpired(c.recv, res.Expired)
		}
		switch {
		case res.Err != nil:
			s.tellSender(from, fw, c, codec.ErrNoForwarding)
		case res.Outcome == route.Stored:
			s.stats.Stored.Add(1)
			s.ackSender(from, fw, owed, true)
			if res.Route.Server == dst && dst != s.opt.ID {
				// The recipient may still be logged in there: once a path
				// is back, tell that session to read its mailbox.
				s.sendKickDone(&kickReply{server: dst, name: c.recv, token: res.Route.Token})
			}
		case res.Outcome == route.Full:
			s.tellSender(from, fw, c, codec.ErrMailboxFull)
		case res.Route.Server == s.opt.ID:
			if dstS := s.reg.get(c.recv); dstS != nil && s.toSession(nil, dstS, c) {
				s.ackSender(from, fw, owed, false)
				return
			}
			s.tellSender(from, fw, c, codec.ErrOffline)
		default:
			c.hops++
			if c.hops > maxHops {
				s.tellSender(from, fw, c, codec.ErrMoving)
				return
			}
			h := frameHead{kind: codec.KindMsg, hops: c.hops, send: c.send, recv: c.recv, id: c.id}
			if err := s.out.get(res.Route.Server).push(h, c.appendLine, outMeta{from: from, id: owed, fw: fw, ts: c.ts}); err != nil {
				s.tellSender(from, fw, c, err.(codec.ProtoError))
			}
		}
	}) {
		s.tellSender(from, fw, c, codec.ErrNoForwarding)
	}
}

// streamTick is how often streams check for stalls and expiry.
const streamTick = 100 * time.Millisecond

// tickStreams runs every stream's tick until stop.
func (s *Server) tickStreams() {
	defer s.bg.Done()
	t := time.NewTicker(streamTick)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			for _, o := range s.out.all() {
				o.tick(now)
			}
			s.in.sweep(now)
		}
	}
}

// StreamState describes the stream to one destination server.
type StreamState struct {
	Frames, Bytes int    // sent (or held) and not yet acknowledged
	Resent        int64  // frames written again over a new path
	Path          string // the link it uses: "proxy <id>", "server <id>", or "" while held
}

// Unacked returns, per destination server, what its stream holds.
func (s *Server) Unacked() map[string]StreamState {
	out := map[string]StreamState{}
	for _, o := range s.out.all() {
		o.mu.Lock()
		st := StreamState{Frames: len(o.frames) - o.fh, Bytes: len(o.buf) - o.head, Resent: o.resent}
		if o.path != nil {
			st.Path = o.path.remote.Role + " " + o.path.remote.ID
		}
		o.mu.Unlock()
		out[o.dst] = st
	}
	return out
}

// LinkState describes one authenticated link.
type LinkState struct {
	Peer, Kind string // Kind: "proxy" or "server"
	Reach      []string
}

// Links returns the authenticated links.
func (s *Server) Links() []LinkState {
	var out []LinkState
	for _, lk := range s.links.up() {
		ls := LinkState{Peer: lk.remote.ID, Kind: lk.remote.Role}
		if m := lk.reach.Load(); m != nil {
			for id := range *m {
				ls.Reach = append(ls.Reach, id)
			}
		}
		out = append(out, ls)
	}
	return out
}
