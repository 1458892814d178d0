package server

import (
	"sync"
	"sync/atomic"
	"time"

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

	// busy is set while a request waits on Redis off the loop; the lines
	// after it stay in gnet's inbound buffer until the result is applied,
	// so requests are handled in the order they came.
	busy bool
	// result is where the off-loop worker leaves its outcome before waking
	// the connection.
	result atomic.Pointer[outcome]
	// storing counts, per recipient, this session's chats on their way to
	// a mailbox (store attempts in the Redis queue); storingN sums it, and
	// throttled is set while busy because it reached maxStoring.
	storing   map[string]int
	storingN  int
	throttled bool
	// gone is set when the session is kicked or the server shuts down: it
	// takes no more requests, and its close releases no route (it belongs
	// to the newer login, or is released in bulk).
	gone atomic.Bool

	// lastActive is the unix-nano time of the last bytes received, read by
	// the idle sweeper.
	lastActive atomic.Int64
	// tokens and refilled are the rate limiter's bucket.
	tokens   float64
	refilled int64

	// mu guards pending, which other loops fill while the session is not
	// live yet.
	mu           sync.Mutex
	pending      []pendingChat
	pendingBytes int

	// Output tracking (see Written): sent counts every byte handed to the
	// connection; retained holds copies of the live chats among the last
	// bytes, until the kernel has taken them.
	sent     int64
	retained []pendingChat

	// Login and drain state.
	kickTimer  func() bool // stops the KickWait timer
	drain      []route.MailEntry
	drainEnd   int64 // sent offset the current mailbox page ends at; 0 = none in flight
	drainAgain bool  // a late kick-done arrived while draining: read once more
	drainStart time.Time
	// kickedBy is the login that replaced this session and waits for its
	// unsent chats (set when kicked; read at close).
	kickedBy *kickReply
	kickAt   int64 // unix nanos the kick began, for KickFlush
}

// pendingChat is a chat for a session that it has not received yet: its
// delivery line ("\n" included) and its recipient (the session's name when
// it was delivered).
type pendingChat struct {
	end  int64 // retained only: sent offset its line ends at
	recv string
	ts   int64
	line []byte
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
	ss.pending = append(ss.pending, c)
	ss.pendingBytes += len(c.line)
	if ss.pendingBytes > ss.s.opt.MaxOutbound && !ss.gone.Load() {
		ss.s.cutSlow(ss)
	}
	return true, false
}

// Written implements batch.Hooks: it keeps copies of the live chats that
// are not entirely in the kernel yet, drops those that now are, and moves
// a mailbox drain on once its page has reached the kernel.
func (ss *session) Written(buf []byte, marks []batch.Mark) {
	base := ss.sent
	ss.sent += int64(len(buf))
	kernel := ss.sent - int64(ss.C.OutboundBuffered())
	for _, m := range marks {
		end := base + int64(m.End)
		switch m.Kind {
		case markLive:
			ss.s.stats.DeliveredLive.Add(1)
			if end > kernel {
				ss.retained = append(ss.retained, pendingChat{end: end, recv: ss.name, line: append([]byte(nil), buf[m.Start:m.End]...)})
			}
		case markStored:
			ss.s.stats.DeliveredStored.Add(1)
			ss.drainEnd = max(ss.drainEnd, end)
		}
	}
	ss.progress(kernel)
}

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
	}
}

// progress drops retained chats the kernel has taken and, when the mailbox
// page in flight is all in the kernel, moves the drain on.
func (ss *session) progress(kernel int64) {
	i := 0
	for i < len(ss.retained) && ss.retained[i].end <= kernel {
		i++
	}
	if i > 0 {
		n := copy(ss.retained, ss.retained[i:])
		clear(ss.retained[n:])
		ss.retained = ss.retained[:n]
	}
	if ss.drainEnd > 0 && kernel >= ss.drainEnd && ss.phase.Load() == phaseDraining {
		ss.drainEnd = 0
		ss.s.pageDone(ss)
	}
}

// watchOutput re-checks the kernel's progress on a backlog (called on the
// loop by the output watcher).
func (ss *session) watchOutput() {
	if ss.Closed() {
		return
	}
	ss.progress(ss.sent - int64(ss.C.OutboundBuffered()))
}

// needsWatch reports whether the watcher must keep checking this session.
func (ss *session) needsWatch() bool {
	return ss.drainEnd > 0 || ss.kickAt != 0
}

// cut stops all output at the current point, on the loop, when the
// connection is closing: whatever gnet still holds is never written (the
// write side is shut), and the chats in it, with those still pending, are
// returned in order. Call once, from OnClose.
func (ss *session) cut() []pendingChat {
	_ = ss.C.Flush() // hand the kernel what it takes now
	kernel := ss.sent - int64(ss.C.OutboundBuffered())
	_ = unix.Shutdown(ss.C.Fd(), unix.SHUT_WR)
	var out []pendingChat
	for _, r := range ss.retained {
		if r.end > kernel {
			r.end = 0
			out = append(out, r)
		}
	}
	ss.retained = nil
	ss.mu.Lock()
	ss.phase.Store(phaseClosed)
	out = append(out, ss.pending...)
	ss.pending, ss.pendingBytes = nil, 0
	ss.mu.Unlock()
	return out
}
