package server

import (
	"strings"
	"sync"
	"sync/atomic"
)

// Pair order across paths.
//
// A chat put on a stream to another server may wait there (held while no
// path is up) and end up somewhere else: stored when it waited past
// -hold-age, or forwarded where the routing store says its recipient went.
// A later chat of the same sender to the same recipient must not overtake
// it by another path (straight to the mailbox, say, once the recipient's
// route is gone). So while a session has chats to a recipient that a
// stream has not settled yet, the next ones to that recipient follow them
// onto the same stream, and settle after them, in order, whatever
// happens to the stream. "Settled" means the receiving server
// acknowledged the frame (reaching the kernel is not enough: a frame in
// flight to a server that no longer has the recipient is stored or passed
// on by that server, later than a direct store here), or the stream gave
// up on it and it was stored, delivered or refused instead.
//
// The price: while a pair's chats wait in a hold (no path to their
// server), the next ones wait there too, up to -hold-age each, instead of
// going straight to a mailbox once the recipient's route is gone.

// follows is the set of recipients a session has unsettled chats on
// streams for. Its lock is taken by the session's loop (deliver, forward)
// and by whichever goroutine settles a frame (a link's loop, the stream
// ticker, the Redis worker); active skips it when nothing is unsettled.
// Entries whose chats are all settled stay (a busy pair would otherwise
// allocate one per chat) until there are more than maxIdleFollows.
type follows struct {
	active atomic.Int32
	mu     sync.Mutex
	m      map[string]*follow
	idle   int
}

// maxIdleFollows bounds the settled entries a session keeps.
const maxIdleFollows = 32

// follow is one recipient's unsettled chats from one session.
type follow struct {
	recv   string // the map key, owned
	dst    string // the server whose stream they are on
	chats  int
	parent *follows
	// notify, when set, is called once chats drops to 0 (see waitOn).
	notify func()
}

// to returns the server the session's unsettled chats to recv are on.
func (f *follows) to(recv string) (string, bool) {
	if f.active.Load() == 0 {
		return "", false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if fw := f.m[recv]; fw != nil && fw.chats > 0 {
		return fw.dst, true
	}
	return "", false
}

// waitOn arranges for notify to be called once the session's unsettled
// chats to recv are all settled, and reports whether there are any (false:
// nothing to wait for, notify is not kept).
func (f *follows) waitOn(recv string, notify func()) bool {
	if f.active.Load() == 0 {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if fw := f.m[recv]; fw != nil && fw.chats > 0 && fw.notify == nil {
		fw.notify = notify
		return true
	}
	return false
}

// add counts one more chat to recv put on the stream to dst and returns
// the entry its settlement must release.
func (f *follows) add(recv, dst string) *follow {
	f.mu.Lock()
	defer f.mu.Unlock()
	fw := f.m[recv]
	switch {
	case fw == nil:
		if f.m == nil {
			f.m = make(map[string]*follow)
		}
		fw = &follow{recv: strings.Clone(recv), dst: dst, parent: f}
		f.m[fw.recv] = fw
		f.active.Add(1)
	case fw.chats == 0:
		fw.dst = dst
		f.idle--
		f.active.Add(1)
	}
	// (An active entry keeps its stream: the caller forwarded there, or
	// the chat is one of its earlier ones going on elsewhere.)
	fw.chats++
	return fw
}

// shed drops the entries when none has unsettled chats, and reports
// whether that was so (see session.shed).
func (f *follows) shed() bool {
	if f.active.Load() != 0 {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.active.Load() != 0 {
		return false
	}
	f.m, f.idle = nil, 0
	return true
}

// done releases one chat of fw: it is settled. Safe on a nil fw.
func (fw *follow) done() {
	if fw == nil {
		return
	}
	f := fw.parent
	f.mu.Lock()
	defer f.mu.Unlock()
	if fw.chats--; fw.chats > 0 {
		return
	}
	if n := fw.notify; n != nil {
		fw.notify = nil
		defer n() // after the unlock (deferred calls run last first)
	}
	f.active.Add(-1)
	if f.idle++; f.idle > maxIdleFollows {
		for k, e := range f.m {
			if e.chats == 0 {
				delete(f.m, k)
			}
		}
		f.idle = 0
	}
}
