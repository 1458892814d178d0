package server

import (
	"context"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/relaychat/relaychat/internal/batch"
	"github.com/relaychat/relaychat/route"
)

// Kinds of tracked output (batch.Mark.Kind).
const (
	// markLive is a chat delivered as it came: if the connection closes
	// before it reaches the kernel, it goes back to the mailbox.
	markLive uint8 = 1
	// markStored is a chat from the mailbox: it leaves the mailbox only
	// once it has reached the kernel, so a close needs nothing done.
	markStored uint8 = 2
)

// Phases of a session. A logged-in session takes chats only once it is
// live; before that (its login is waiting for the session it replaced, or
// its mailbox is being delivered) chats for it wait in pending, so stored
// chats come first and each pair keeps its order.
const (
	phaseAnon int32 = iota
	phaseWaitKick
	phaseDraining
	phaseLive
	phaseClosed
)

// session is one client connection. Fields without a note are touched only
// on the connection's own event loop.
type session struct {
	batch.Endpoint
	s *Server

	// ws is the WebSocket state of a WebSocket client; nil for TCP.
	ws *wsState

	// name is the logged-in name, "" before login and after logout: the
	// loop's own copy, for the hot path.
	name string
	// id is the same login as seen from other goroutines (the registry's
	// readers, shutdown): stored before the session enters the registry,
	// replaced, never modified. nil when not logged in.
	id atomic.Pointer[identity]
	// phase is one of phase*; written on the loop (under mu when it leaves
	// a phase that queues into pending), read anywhere.
	phase atomic.Int32

	// The session is busy (see busy) while one of the four below is set:
	// the lines after the request that set it stay in gnet's inbound
	// buffer, so requests are handled in the order they came. Each is
	// cleared by its own event, which then wakes the session if none is
	// left set (wakeIfFree).
	//
	// offloading is set while an offloaded request's result (a login
	// claim, a lookup) is awaited.
	offloading bool
	// throttled is set while the session has maxStoring store attempts
	// (or MaxPending bytes of them) in flight (sessionAside.storing), until
	// half have come back.
	throttled bool
	// result is where the off-loop worker leaves its outcome before waking
	// the connection.
	result atomic.Pointer[outcome]
	// follows tracks this session's chats waiting on streams (follow.go).
	follows follows
	// streamWait is set while a chat found its stream over the
	// flow-control window; the stream's acks resume the session.
	streamWait bool
	// followWait is set while a chat waits behind the session's earlier
	// chats to its recipient (sessionAside.behind).
	followWait bool
	// logoutWait is set while a logout waits for the mailbox page on its
	// way to the client (see finishLogout).
	logoutWait bool
	retained   bool // in Server.retaining (retain)
	// wrote is set when Written holds a chat and cleared by the retain
	// sweep: a session that wrote since the last sweep keeps its buffers
	// (shed would drop them, and a busy session would grow them again
	// from nothing, twice a second).
	wrote bool
	// gone is set when the session is kicked, cut off as a slow consumer,
	// or the server shuts down: it takes no more requests. Its close
	// releases the route as any close does (a kicked session's is already
	// the newer login's, which the release compares and leaves; a shutdown
	// releases in bulk).
	gone atomic.Bool

	// lastActive is the unix-nano time of the last bytes received, read by
	// the idle sweeper.
	lastActive atomic.Int64
	// tokens and refilled are the rate limiter's bucket.
	tokens   float64
	refilled int64

	// mu guards pending, which other loops fill while the session is not
	// live yet: nil when empty, as it is for the whole life of most
	// sessions.
	mu      sync.Mutex
	pending *pendingQueue

	// Output tracking (see Written): sent counts every byte handed to the
	// connection; out keeps the live chats the client's TCP stack may not
	// have acknowledged yet, so that a close can put back exactly those.
	sent   int64
	out    *heldOut // nil while the session holds no chat
	sndbuf int64    // the kernel's send buffer: it never holds more

	// aside is the state in use only for a while (see sessionAside); nil
	// when none of it is.
	aside *sessionAside
}

// sessionAside is the part of a session's state that is in use only for a
// while: around a login (the kick wait, the mailbox drain), after a kick,
// while chats are on their way to a mailbox, or while the session is
// paused. more allocates it when a field is first set and tidy lets it go
// once every field is back to zero, so that a session that is idle, or
// chats to online users, carries a pointer instead of ~130 bytes (the
// session stays in the 384-byte size class; TestSessionSizeClass). Only
// the session's loop touches it.
type sessionAside struct {
	// storing counts, per recipient, this session's chats on their way to
	// a mailbox (store attempts in the Redis queue); storingN sums it and
	// storingBytes their lines (see throttled).
	storing      map[string]int
	storingN     int
	storingBytes int
	// deferred are chats whose store attempts answered "online on another
	// server" while the session was paused (streamWait): resumeSender puts
	// them on their streams before the session reads again.
	deferred []deferredChat
	// behind is a chat to a recipient who logged in here while the
	// session's earlier chats to them were still unsettled on a stream:
	// written now, it would overtake them. followWait is set until they
	// settle (resumeBehind).
	behind *chat

	// Login and drain state.
	kickTimer func() bool // stops the KickWait timer
	drain     []route.MailEntry
	// drainEnds holds the sent offset each written entry of the page in
	// flight ends at, in order; empty when none is in flight.
	drainEnds  []int64
	drainAgain bool  // a late kick-done arrived while draining: read once more
	drainStart int64 // unix nanos the mailbox drain began; 0 = none
	// kickedBy is the login that replaced this session and waits for its
	// unsent chats (set when kicked; read at close).
	kickedBy *kickReply
	kickAt   int64 // unix nanos the kick began, for KickFlush
	// logoutID is the id of the logout waiting for the page in flight
	// (session.logoutWait).
	logoutID []byte
	// removing is set while an acknowledged page's removal from the
	// mailbox has not answered: a logout waits for it too (a login that
	// followed could read the page again).
	removing bool
}

// more returns the session's aside state, allocating it if need be.
func (ss *session) more() *sessionAside {
	if ss.aside == nil {
		ss.aside = &sessionAside{}
	}
	return ss.aside
}

// tidy lets the aside state go if none of it is in use.
func (ss *session) tidy() {
	a := ss.aside
	if a == nil || ss.logoutWait || a.logoutID != nil || a.removing || a.storing != nil || a.storingN != 0 || a.storingBytes != 0 ||
		a.deferred != nil || a.behind != nil || a.kickTimer != nil || a.drain != nil || a.drainEnds != nil ||
		a.drainAgain || a.drainStart != 0 || a.kickedBy != nil || a.kickAt != 0 {
		return
	}
	ss.aside = nil
}

// stopKickWait stops the login's KickWait timer, if one is set.
func (ss *session) stopKickWait() {
	if a := ss.aside; a != nil && a.kickTimer != nil {
		a.kickTimer()
		a.kickTimer = nil
	}
}

// storingTo returns the session's store attempts in flight for recv.
func (ss *session) storingTo(recv string) int {
	if a := ss.aside; a != nil {
		return a.storing[recv]
	}
	return 0
}

// draining reports whether a mailbox page is in flight to the client.
func (ss *session) draining() bool {
	a := ss.aside
	return a != nil && len(a.drainEnds) > 0
}

// pageUnsettled reports whether a mailbox page is in flight to the client
// or its removal from the mailbox has not answered yet.
func (ss *session) pageUnsettled() bool {
	a := ss.aside
	return a != nil && (len(a.drainEnds) > 0 || a.removing)
}

// kickReplyOf returns the login waiting for this kicked session, or nil.
func (ss *session) kickReplyOf() *kickReply {
	if a := ss.aside; a != nil {
		return a.kickedBy
	}
	return nil
}

// pendingChat is a chat for a session that it has not received yet: its
// delivery line ("\n" included) and its recipient (the session's name when
// it was delivered).
type pendingChat struct {
	recv string
	ts   int64
	line []byte
}

// heldOut is what a session keeps of the live chats it wrote and the
// client's TCP stack may not have acknowledged: held, from heldHead on,
// with copies of their lines in tail. A session has one from its first
// held chat until the retain sweep finds it idle (shed), so that thousands
// of sessions that chat now and then carry a nil pointer between chats
// rather than 64 bytes (TestSessionSizeClass).
type heldOut struct {
	tail     []byte
	tailBase int64 // tail offset of tail[0] (bytes dropped from its front)
	held     []heldChat
	heldHead int
}

// heldChat is a live chat written to the connection and not known to be
// acknowledged by the client's TCP stack.
type heldChat struct {
	end  int64 // sent offset its line ends at
	at   int64 // tail offset of its line copy
	n    int32
	recv string
}

// identity is one login of a session. It is immutable.
type identity struct {
	name, token string
	// claimedOver is the token the route held before this login's claim:
	// a concurrent login of the same name that claimed earlier but finished
	// later recognises this one as newer by it.
	claimedOver string
}

func (id *identity) route(server string) route.Route {
	return route.Route{Server: server, Token: id.token}
}

// outcome is the result of an off-loop operation for a session.
type outcome struct {
	// login
	login   bool
	name    string
	token   string
	prev    route.Route
	hadPrev bool
	// chat whose route had to be looked up
	chat  bool
	c     *chat
	r     route.Route
	found bool
	id    []byte
	err   error
}

// live reports whether chats may be written to the session directly.
// busy reports whether the session's input waits (see offloading).
func (ss *session) busy() bool {
	return ss.offloading || ss.throttled || ss.streamWait || ss.followWait || ss.logoutWait
}

// wakeIfFree has the session's waiting input served once nothing keeps
// it busy any more (on its loop).
func (ss *session) wakeIfFree() {
	if !ss.busy() && !ss.Closed() {
		_ = ss.C.Wake(nil)
	}
}

func (ss *session) live() bool { return ss.phase.Load() == phaseLive }

// queue keeps a chat for a session that is not live yet; false means it is
// live after all (the caller writes it) or closed (the caller stores it).
// Past MaxOutbound bytes the session is cut off as a slow consumer.
func (ss *session) queue(c pendingChat) (queued, closed bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	switch ss.phase.Load() {
	case phaseLive:
		return false, false
	case phaseClosed:
		return false, true
	}
	q := ss.pending
	if q == nil {
		q = new(pendingQueue)
		ss.pending = q
	}
	q.chats = append(q.chats, c)
	q.bytes += len(c.line)
	if q.bytes > ss.s.opt.MaxOutbound && !ss.gone.Load() {
		ss.s.cutSlow(ss)
	}
	return true, false
}

// pendingQueue is what queue kept for a session that is not live yet.
type pendingQueue struct {
	chats []pendingChat
	bytes int
}

// takePending empties the session's pending queue and returns its chats;
// ss.mu held.
func (ss *session) takePending() []pendingChat {
	q := ss.pending
	ss.pending = nil
	if q == nil {
		return nil
	}
	return q.chats
}

// Written implements batch.Hooks. A chat counts as delivered once the
// client's TCP stack has acknowledged it: until then a copy is held, and a
// close puts back whatever was not acknowledged (the kernel's send queue is
// then discarded, so nothing arrives twice). The kernel holds little more
// than its send buffer (it may overshoot by a segment's worth: twice is a
// safe bound, measured: 143 KB queued with SO_SNDBUF at 128 KB), so only
// the chats of the last 2*sndbuf bytes handed to it, and those still in
// gnet's buffer, can be unacknowledged: older copies are dropped without
// asking; newer ones when the kernel says so.
func (ss *session) Written(buf []byte, marks []batch.Mark) {
	base := ss.sent
	ss.sent += int64(len(buf))
	for _, m := range marks {
		end := base + int64(m.End)
		switch m.Kind {
		case markLive:
			ss.s.stats.DeliveredLive.Add(1)
			o := ss.out
			if o == nil {
				o = new(heldOut)
				ss.out = o
			}
			o.held = append(o.held, heldChat{end: end, at: o.tailBase + int64(len(o.tail)), n: m.End - m.Start, recv: ss.name})
			o.tail = append(o.tail, buf[m.Start:m.End]...)
			ss.wrote = true
		case markStored:
			ss.s.stats.DeliveredStored.Add(1)
			a := ss.more()
			a.drainEnds = append(a.drainEnds, end)
		}
	}
	kernel := ss.sent - int64(ss.C.OutboundBuffered())
	ss.prune(kernel - 2*ss.sndbuf)
	if ss.heldBytes() > heldCheck || ss.draining() {
		ss.progress()
	}
	if ss.holding() {
		ss.s.retain(ss) // the sweep checks again, and sheds once all is acknowledged
	}
}

// devNull is a descriptor of /dev/null for cut, or -1.
var devNull = func() int {
	fd, err := unix.Open("/dev/null", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1
	}
	return fd
}()

// heldCheck is how many held bytes make a write ask the kernel what the
// client acknowledged (one ioctl), rather than wait for the next sweep.
const heldCheck = 32 << 10

// Lost implements batch.Hooks: output for a connection that closed before
// it could be written. Its live chats go back to the mailbox.
func (ss *session) Lost(buf []byte, marks []batch.Mark) {
	var back []pendingChat
	for _, m := range marks {
		if m.Kind == markLive {
			back = append(back, pendingChat{recv: ss.name, line: append([]byte(nil), buf[m.Start:m.End]...)})
		}
	}
	if len(back) > 0 {
		ss.s.putBack(back, "output for a connection that had closed")
		if r := ss.kickReplyOf(); r != nil {
			ss.s.afterPutBack(func(context.Context) { ss.s.sendKickDone(r) })
		}
	}
}

// acked returns the sent offset up to which the client's TCP stack has
// acknowledged the output: what gnet handed the kernel, minus what the
// kernel still holds (unsent or unacknowledged).
func (ss *session) acked() int64 {
	kernel := ss.sent - int64(ss.C.OutboundBuffered())
	outq, err := unix.IoctlGetInt(ss.C.Fd(), unix.SIOCOUTQ)
	if err != nil {
		return kernel - ss.sndbuf // cannot tell: assume the worst
	}
	return kernel - int64(outq)
}

// wroteAside counts n bytes written to the connection outside the
// Endpoint (a WebSocket handshake answer, pongs, a close frame), so that
// sent keeps matching what gnet and the kernel count: acked() subtracts
// their queues from it, and bytes missing from sent would make chats the
// client did receive look unacknowledged, and be put back twice.
func (ss *session) wroteAside(n int) { ss.sent += int64(n) }

// shed lets go of the buffers a session keeps for its chats in flight
// (copies of held lines, follow entries) once it has none: a busy session
// keeps them from one chat to the next, while thousands of sessions that
// chat now and then should not each hold them between chats. It reports
// whether the session is idle in that sense. On the session's loop, from
// the retain sweep, so at most twice a second.
func (ss *session) shed() bool {
	if ss.holding() {
		return false
	}
	ss.out = nil
	ss.tidy()
	return ss.follows.shed()
}

// holding reports whether the session holds a chat its client may not have
// acknowledged.
func (ss *session) holding() bool {
	return ss.out != nil && ss.out.heldHead < len(ss.out.held)
}

// prune drops the held chats acknowledged up to upTo.
func (ss *session) prune(upTo int64) {
	o := ss.out
	if o == nil {
		return
	}
	h := o.heldHead
	for h < len(o.held) && o.held[h].end <= upTo {
		h++
	}
	if h == o.heldHead {
		return
	}
	clear(o.held[o.heldHead:h])
	o.heldHead = h
	if h == len(o.held) {
		o.held, o.heldHead = o.held[:0], 0
		o.tailBase += int64(len(o.tail))
		o.tail = o.tail[:0]
		if cap(o.tail) > 64<<10 {
			o.tail = nil // let a burst's buffer go
		}
		return
	}
	drop := int(o.held[h].at - o.tailBase)
	if drop > 16<<10 && drop > len(o.tail)/2 {
		// In place: only this loop reads tail and held.
		o.tail = o.tail[:copy(o.tail, o.tail[drop:])]
		o.tailBase += int64(drop)
		n := copy(o.held, o.held[h:])
		clear(o.held[n:])
		o.held, o.heldHead = o.held[:n], 0
	}
}

func (ss *session) heldBytes() int {
	if !ss.holding() {
		return 0
	}
	o := ss.out
	return int(o.tailBase + int64(len(o.tail)) - o.held[o.heldHead].at)
}

// progress asks the kernel what the client acknowledged, drops those held
// chats, and moves a mailbox drain on once its page is acknowledged.
func (ss *session) progress() {
	acked := ss.acked()
	ss.prune(acked)
	if a := ss.aside; a != nil && len(a.drainEnds) > 0 && acked >= a.drainEnds[len(a.drainEnds)-1] && ss.phase.Load() == phaseDraining {
		ss.s.pageDone(ss) // (ends the page: drain and drainEnds)
	}
}

// watchOutput re-checks the client's progress (on the loop, from the
// output watcher).
func (ss *session) watchOutput() {
	if ss.Closed() {
		return
	}
	ss.progress()
}

// needsWatch reports whether the watcher must keep checking this session.
func (ss *session) needsWatch() bool {
	a := ss.aside
	return a != nil && (len(a.drainEnds) > 0 || a.kickAt != 0)
}

// settledOutput reports whether everything written has been acknowledged
// by the client.
func (ss *session) settledOutput() bool {
	return ss.C.OutboundBuffered() == 0 && ss.acked() >= ss.sent
}

// cut stops all output at the current point, on the loop, when the
// connection is closing, and returns in order the chats the client did not
// get: held ones it has not acknowledged, and those still pending. If the
// kernel still holds output, the connection is reset rather than closed,
// so that what is put back is not delivered as well. It also returns the
// sent offset the client acknowledged, by which nothing more arrives. Call
// once, from OnClose.
func (ss *session) cut() (unsent []pendingChat, acked int64) {
	_ = ss.C.Flush() // hand the kernel what it takes now
	acked = ss.acked()
	if acked < ss.sent {
		// Reset the connection now, so that the client gets nothing past
		// what it acknowledged: SO_LINGER 0 makes the close discard the
		// send queue (RST), and closing it right after the count (by
		// putting /dev/null in its place: gnet still owns the descriptor
		// number, and closes that later) leaves the client no time to
		// acknowledge more in between, which would arrive twice.
		_ = ss.C.SetLinger(0)
		if devNull >= 0 {
			_ = unix.Dup2(devNull, ss.C.Fd())
		}
	}
	var out []pendingChat
	if o := ss.out; o != nil {
		for _, h := range o.held[o.heldHead:] {
			if h.end > acked {
				off := h.at - o.tailBase
				out = append(out, pendingChat{recv: h.recv, line: append([]byte(nil), o.tail[off:off+int64(h.n)]...)})
			}
		}
	}
	ss.out = nil
	ss.mu.Lock()
	ss.phase.Store(phaseClosed)
	out = append(out, ss.takePending()...)
	ss.mu.Unlock()
	return out, acked
}

// deferredChat is a chat waiting for its paused sender to resume, and the
// server it goes to.
type deferredChat struct {
	c   *chat
	dst string
}
