package server

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"time"

	"github.com/relaychat/relaychat/codec"
	"github.com/relaychat/relaychat/internal/batch"
	"github.com/relaychat/relaychat/route"
)

// Logins, kicks and the mailbox drain.
//
// A login claims the user's route (SET ... GET), which returns the route
// of the session it replaces, if any. The new session answers the login at
// once but takes chats only in order:
//
//  1. If it replaced a session (here or on another server), it asks that
//     session's server to kick it, and waits (at most KickWait) for the
//     kick to finish: the kicked session writes what it holds within
//     KickFlush, and what did not reach the kernel goes back to the
//     mailbox before the "kick done" notice comes back.
//  2. It delivers the mailbox, oldest first, a page at a time; a page
//     leaves the mailbox only once the kernel has all of it.
//  3. It goes live: chats that arrived meanwhile (queued in pending)
//     follow, then chats are written as they come.
//
// A late "kick done" (the kicked session's login was still in flight, or
// its chats came back after the wait) makes a live session read its
// mailbox once more.

// drainPage is how many stored chats one mailbox read fetches.
const drainPage = 100

// kickReply names the login waiting for a kick to finish.
type kickReply struct {
	server, name, token string
}

func (s *Server) finishLogin(l *batch.Loop, ss *session, o *outcome) {
	claimedOver := ""
	if o.hadPrev && o.prev.Server == s.opt.ID {
		claimedOver = o.prev.Token
	}
	if reply, ok := s.kicks.take(o.name, o.token); ok {
		// A newer login already asked for this one to be kicked.
		s.setLogin(ss, o, claimedOver)
		s.kickSession(ss, reply)
		return
	}
	old, ok := s.setLogin(ss, o, claimedOver)
	if !ok {
		// A newer login of this name on this server finished first.
		s.kickSession(ss, nil)
		return
	}
	s.stats.Logins.Add(1)
	out := l.Out(&ss.Endpoint)
	*out = codec.AppendLoginOK(*out, o.name, s.opt.ID)
	reply := &kickReply{server: s.opt.ID, name: o.name, token: o.token}
	waiting := false
	if old != nil {
		if oid := old.id.Load(); oid == nil || !o.hadPrev || oid.token != o.prev.Token {
			s.kickSession(old, nil) // an older login of this server's, not the one we claimed over
		} else {
			s.kickSession(old, reply)
			waiting = true
		}
	}
	if o.hadPrev && !waiting {
		waiting = s.kickRemote(o.name, o.prev, reply)
	}
	if !waiting {
		s.startDrain(ss)
		return
	}
	ss.phase.Store(phaseWaitKick)
	token := o.token
	t := time.AfterFunc(s.opt.KickWait, func() {
		ss.Loop.Post(func() {
			if ss.phase.Load() != phaseWaitKick || ss.id.Load() == nil || ss.id.Load().token != token {
				return
			}
			s.stats.KickTimeouts.Add(1)
			s.log.Warn("replaced session did not confirm its kick in time; delivering the mailbox now", "user", o.name, "previous_server", o.prev.Server, "wait", s.opt.KickWait)
			s.startDrain(ss)
		})
	})
	ss.more().kickTimer = t.Stop
}

// setLogin publishes the login and registers the session (see
// registry.putIfNewer).
func (s *Server) setLogin(ss *session, o *outcome, claimedOver string) (*session, bool) {
	id := &identity{name: o.name, token: o.token, claimedOver: claimedOver}
	ss.name = o.name
	ss.phase.Store(phaseWaitKick)
	old, ok, queued := s.reg.putIfNewer(ss, id)
	ss.id.Store(id)
	s.stats.Sessions.Add(1)
	for _, c := range queued {
		s.settled(nil, c, false)
	}
	return old, ok
}

// loginDecided is called once per login claim sent (applied or
// abandoned): chats parked for the name that no login took go to store
// attempts, as they would have without the login (see registry.expect).
func (s *Server) loginDecided(name string) {
	busy := s.reg.unexpect(name, func(chats []*chat) (notQueued []*chat) {
		for i, c := range chats {
			if !s.storeAttempt(c) {
				return chats[i:]
			}
		}
		return nil
	})
	for _, c := range busy {
		s.stats.Busy.Add(1)
		s.fail(nil, c, codec.ErrBusy)
	}
}

// kickRemote asks the server named by prev to kick that session and
// report back; false when there is nothing to wait for.
func (s *Server) kickRemote(name string, prev route.Route, reply *kickReply) bool {
	if prev.Server == s.opt.ID {
		// Our own older session, gone from the registry already (closed,
		// or its login still in flight): remember the kick for it, and
		// answer once its chats are back in the mailbox.
		s.kickLocal(name, prev.Token, reply)
		return true
	}
	payload := prev.Token + " " + reply.server + " " + reply.token
	h := frameHead{kind: codec.KindKick, recv: name}
	if err := s.out.get(prev.Server).push(h, func(b []byte) []byte { return append(b, payload...) }, outMeta{}); err != nil {
		s.stats.KickUndelivered.Add(1)
		s.log.Warn("cannot kick the older session: its server's stream is full", "user", name, "server", prev.Server)
		return false
	}
	if lk, _ := s.pathTo(prev.Server, nil); lk == nil {
		// No path now: the kick waits in the stream (and is delivered when
		// one comes back), but the new login need not wait for it.
		s.log.Info("older session's server unreachable; kick queued", "user", name, "server", prev.Server)
		return false
	}
	return true
}

// kickFromStream handles a kick frame: payload "<token> <reply server>
// <reply token>".
func (s *Server) kickFromStream(f *codec.Frame) {
	parts := strings.Fields(string(f.Payload))
	if len(parts) != 3 || !codec.ValidServerID(parts[1]) {
		s.stats.DroppedBadFrame.Add(1)
		s.log.Warn("malformed kick frame dropped", "user", string(f.Recv))
		return
	}
	s.kickLocal(string(f.Recv), parts[0], &kickReply{server: parts[1], name: string(f.Recv), token: parts[2]})
}

// kickLocal kicks this server's session of name holding token, if there
// is one; otherwise it remembers the kick (the session's login may still
// be in flight) and answers once any chats that session left are back in
// the mailbox.
func (s *Server) kickLocal(name, token string, reply *kickReply) {
	if ss := s.reg.get(name); ss != nil {
		if id := ss.id.Load(); id != nil && id.token == token {
			s.kickSession(ss, reply)
			return
		}
	}
	if !s.kicks.remember(name, token, reply) {
		s.stats.KickUndelivered.Add(1)
		s.log.Warn("kick memo full: kick for an unknown session dropped", "user", name)
	}
	s.afterPutBack(func(context.Context) { s.sendKickDone(reply) })
}

// kickSession tells a session (on any loop) that a newer login replaced
// it, gives its queued output up to KickFlush to reach the kernel, and
// closes it; reply, if not nil, is told when its unsent chats are back in
// the mailbox.
func (s *Server) kickSession(old *session, reply *kickReply) {
	first := !old.gone.Swap(true)
	if first {
		s.stats.Kicks.Add(1)
	}
	old.Loop.Post(func() {
		if old.Closed() {
			if reply != nil {
				s.afterPutBack(func(context.Context) { s.sendKickDone(reply) })
			}
			return
		}
		if reply != nil {
			a := old.more()
			if prev := a.kickedBy; prev != nil && *prev != *reply {
				s.afterPutBack(func(context.Context) { s.sendKickDone(prev) })
			}
			a.kickedBy = reply
		}
		if !first {
			return
		}
		if id := old.id.Load(); id != nil {
			s.reg.remove(id.name, old)
		}
		s.closeAfter(old, codec.AppendKicked(nil, codec.ReasonKicked))
	})
}

// sendKickDone tells the waiting login that the kick finished.
func (s *Server) sendKickDone(r *kickReply) {
	if r.server == s.opt.ID {
		s.kickDone(r.name, r.token)
		return
	}
	token := r.token
	h := frameHead{kind: codec.KindKicked, recv: r.name}
	if err := s.out.get(r.server).push(h, func(b []byte) []byte { return append(b, token...) }, outMeta{}); err != nil {
		s.log.Warn("cannot report a finished kick: stream full", "user", r.name, "server", r.server)
	}
}

// kickDone: the kick a login of name (token) waited for has finished.
func (s *Server) kickDone(name, token string) {
	ss := s.reg.get(name)
	if ss == nil {
		return
	}
	if id := ss.id.Load(); id == nil || id.token != token {
		return
	}
	ss.Loop.Post(func() {
		if ss.Closed() || ss.id.Load() == nil || ss.id.Load().token != token {
			return
		}
		switch ss.phase.Load() {
		case phaseWaitKick:
			ss.stopKickWait()
			s.startDrain(ss)
		case phaseDraining:
			ss.more().drainAgain = true
		case phaseLive:
			s.startDrain(ss) // chats came back late: read the mailbox once more
		}
	})
}

// startDrain delivers the mailbox, then makes the session live. On the
// session's loop.
func (s *Server) startDrain(ss *session) {
	if !s.opt.mailboxOn() {
		s.goLive(ss)
		return
	}
	ss.mu.Lock()
	ss.phase.Store(phaseDraining)
	ss.mu.Unlock()
	a := ss.more()
	a.drainAgain = false
	a.drainStart = time.Now().UnixNano()
	s.readPage(ss, ss.id.Load(), 0)
}

// readPage reads the next page of ss's mailbox off the loop, for login id
// (nothing if the session has left that login's drain: a retry can come
// after a logout and a new login, which must not be made live from here).
func (s *Server) readPage(ss *session, id *identity, attempt int) {
	if id == nil || ss.Closed() || ss.id.Load() != id || ss.phase.Load() != phaseDraining {
		return
	}
	ok := s.redis.call(func(ctx context.Context) {
		entries, expired, err := s.opt.Router.ReadMailbox(ctx, id.name, drainPage, s.opt.MailboxTTL)
		ss.Loop.Post(func() { s.gotPage(ss, id, entries, expired, err, attempt) })
	})
	if !ok {
		s.stats.Busy.Add(1)
		s.log.Warn("Redis queue full: mailbox left for the next login", "user", id.name)
		s.goLive(ss)
	}
}

func (s *Server) gotPage(ss *session, id *identity, entries []route.MailEntry, expired int, err error, attempt int) {
	if ss.Closed() || ss.id.Load() != id || ss.phase.Load() != phaseDraining {
		return
	}
	if expired > 0 {
		s.countExpired(id.name, expired)
	}
	if err != nil {
		s.stats.RedisErrors.Add(1)
		if attempt < 3 {
			time.AfterFunc(200*time.Millisecond, func() { ss.Loop.Post(func() { s.readPage(ss, id, attempt+1) }) })
			return
		}
		s.log.Warn("cannot read the mailbox; it stays for the next login", "user", id.name, "err", err)
		s.goLive(ss)
		return
	}
	if len(entries) == 0 {
		if a := ss.aside; a != nil && a.drainAgain {
			a.drainAgain = false
			s.readPage(ss, id, 0)
			return
		}
		s.goLive(ss)
		return
	}
	a := ss.more()
	a.drain, a.drainEnds = entries, nil // (nil already: every end of a page resets both)
	var buf []byte
	var marks []batch.Mark
	for _, e := range entries {
		if e.Line == "" {
			s.stats.MailboxBad.Add(1)
			continue
		}
		start := len(buf)
		buf = codec.AppendStoredDelivery(buf, []byte(e.Line))
		marks = append(marks, batch.Mark{Start: int32(start), End: int32(len(buf)), Kind: markStored})
	}
	if len(marks) == 0 {
		s.pageDone(ss)
		return
	}
	ss.WriteNow(buf, marks) // Written notes where the page ends, progress moves on
	if ss.draining() {
		s.watch(ss)
	}
}

// pageDone: the page in flight is in the kernel; take it out of the
// mailbox and read the next one.
func (s *Server) pageDone(ss *session) {
	var page []route.MailEntry
	if a := ss.aside; a != nil {
		page, a.drain, a.drainEnds = a.drain, nil, nil
	}
	id := ss.id.Load()
	if id == nil || len(page) == 0 {
		if ss.logoutWait {
			ss.Loop.Post(func() { s.finishLogout(ss) })
		}
		return
	}
	ss.more().removing = true // a logout waits for the answer (pageUnsettled)
	if !s.redis.call(func(ctx context.Context) {
		err := s.removeDelivered(ctx, id.name, page)
		ss.Loop.Post(func() {
			if a := ss.aside; a != nil {
				a.removing = false
			}
			if ss.logoutWait {
				// The page's removal has answered (it is out of the
				// mailbox, or the warning above says why not): the logout
				// that waited for it goes on, and the rest of the mailbox
				// stays for the next login.
				s.finishLogout(ss)
				return
			}
			if !ss.Closed() && ss.id.Load() == id && ss.phase.Load() == phaseDraining {
				if err != nil {
					s.goLive(ss) // don't deliver the same page twice
					return
				}
				s.readPage(ss, id, 0)
			}
			ss.tidy()
		})
	}) {
		ss.aside.removing = false
		s.stats.Busy.Add(1)
		if ss.logoutWait {
			ss.Loop.Post(func() { s.finishLogout(ss) })
			return
		}
		s.goLive(ss)
	}
}

// removeDelivered takes the delivered entries of a page out of name's
// mailbox (on the Redis worker). A failure is counted and logged: those
// chats come again at the next login.
func (s *Server) removeDelivered(ctx context.Context, name string, page []route.MailEntry) error {
	ok, err := s.opt.Router.RemoveMailbox(ctx, name, page)
	if err != nil || !ok {
		if err != nil {
			s.stats.RedisErrors.Add(1)
		}
		s.log.Warn("delivered stored chats not removed from the mailbox", "user", name, "chats", len(page), "err", err, "head_changed", !ok && err == nil)
	}
	return err
}

// closePage settles, at a close, the mailbox page in flight: its entries
// the client's TCP stack acknowledged (acked, as cut counted it just before
// resetting the connection) leave the mailbox; the rest stay for the next
// login. The route's release then waits for the removal (pageUnsettled).
// On the session's loop, from OnClose.
func (s *Server) closePage(ss *session, id *identity, acked int64) {
	a := ss.aside
	if a == nil || len(a.drainEnds) == 0 || id == nil {
		return
	}
	page, ends := a.drain, a.drainEnds
	a.drain, a.drainEnds = nil, nil
	k, j := 0, 0
	for ; k < len(page); k++ {
		if page[k].Line == "" {
			continue // unreadable, never written: it goes with its neighbours
		}
		if j == len(ends) || ends[j] > acked {
			break
		}
		j++
	}
	if k == 0 {
		return
	}
	a.removing = true // for pageUnsettled just after; the session is closed, nothing clears it
	if !s.redis.call(func(ctx context.Context) { _ = s.removeDelivered(ctx, id.name, page[:k]) }) {
		a.removing = false
		s.stats.Busy.Add(1)
		s.log.Warn("Redis queue full: delivered stored chats left in the mailbox", "user", id.name, "chats", k)
	}
}

// goLive writes the chats that waited for the drain and makes the session
// take chats directly. On the session's loop.
func (s *Server) goLive(ss *session) {
	if a := ss.aside; a != nil {
		if a.drainStart != 0 {
			s.hist.drain.Since(time.Unix(0, a.drainStart))
			a.drainStart = 0
		}
		ss.stopKickWait()    // live: the kick wait is over
		a.drainAgain = false // (left set when the drain ended on an error: the mailbox waits for the next login)
		ss.tidy()
	}
	ss.mu.Lock()
	pend := ss.takePending()
	if ss.phase.Load() != phaseClosed {
		ss.phase.Store(phaseLive)
	}
	ss.mu.Unlock()
	if len(pend) == 0 || ss.Closed() {
		if len(pend) > 0 {
			s.putBack(pend, "session closed while its mailbox was delivered")
		}
		return
	}
	var buf []byte
	marks := make([]batch.Mark, 0, len(pend))
	for _, p := range pend {
		start := len(buf)
		buf = append(buf, p.line...)
		marks = append(marks, batch.Mark{Start: int32(start), End: int32(len(buf)), Kind: markLive})
	}
	ss.WriteNow(buf, marks)
}

// putBack returns chats a session did not receive to their recipient, in
// order: to the mailbox (beyond its bound: they were accepted long ago),
// or, if the recipient is online on another server by now, on the stream
// to it. A login that replaced the session waits for them (kick-done is
// queued after). With the mailbox off they are counted and logged.
func (s *Server) putBack(chats []pendingChat, why string) {
	if !s.opt.mailboxOn() {
		s.stats.LostAtClose.Add(int64(len(chats)))
		s.log.Warn("chats not written to their recipient, and no mailbox to return them to", "chats", len(chats), "recipient", chats[0].recv, "why", why)
		return
	}
	lost := 0
	for _, p := range chats {
		line := p.line
		if n := len(line); n > 0 && line[n-1] == '\n' {
			line = line[:n-1]
		}
		ts := p.ts
		if ts == 0 {
			ts = tsOf(line)
		}
		recv := p.recv
		if !s.redis.store(route.StoreReq{Name: recv, Line: line, TS: ts, Requeue: true, Here: s.opt.ID}, func(res route.StoreResult) {
			switch {
			case res.Err != nil:
				s.stats.LostAtClose.Add(1)
				s.log.Warn("chat not written to its recipient could not be put back in the mailbox", "recipient", recv, "err", res.Err)
			case res.Outcome == route.Online:
				c := &chat{send: senderOf(line), recv: recv, ts: ts, payload: line}
				s.forward(nil, c, res.Route.Server)
			default:
				s.stats.Requeued.Add(1)
			}
		}) {
			lost++
		}
	}
	if lost > 0 {
		s.stats.LostAtClose.Add(int64(lost))
		s.log.Warn("Redis queue full: chats not written to their recipient are lost", "chats", lost, "recipient", chats[0].recv, "why", why)
	} else {
		s.log.Info("chats not written to their recipient put back", "chats", len(chats), "recipient", chats[0].recv, "why", why)
	}
}

// senderOf reads the "send" of a delivery line (for a chat put back that
// goes on to another server).
func senderOf(line []byte) string {
	var d struct {
		Send string `json:"send"`
	}
	_ = json.Unmarshal(line, &d)
	return d.Send
}

// afterPutBack runs fn on the Redis worker after everything queued so far.
func (s *Server) afterPutBack(fn func(ctx context.Context)) {
	if !s.redis.call(fn) {
		s.stats.Busy.Add(1)
		s.log.Warn("Redis queue full: running a step without waiting for it")
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), s.opt.RedisTimeout)
			defer cancel()
			fn(ctx)
		}()
	}
}

// kickMemo remembers kicks that arrived for a session whose login had not
// finished yet, for a short time and up to a bound.
type kickMemo struct {
	mu  sync.Mutex
	m   map[string]memoEntry
	max int
	ttl time.Duration
}

type memoEntry struct {
	at    time.Time
	reply *kickReply
}

const (
	kickMemoSize = 10000
	kickMemoTTL  = 10 * time.Second
)

func newKickMemo(max int, ttl time.Duration) *kickMemo {
	return &kickMemo{m: make(map[string]memoEntry), max: max, ttl: ttl}
}

// remember records a kick; false means the memo is full of fresh entries.
func (k *kickMemo) remember(name, token string, reply *kickReply) bool {
	now := time.Now()
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.m) >= k.max {
		for key, e := range k.m {
			if now.Sub(e.at) > k.ttl {
				delete(k.m, key)
			}
		}
		if len(k.m) >= k.max {
			return false
		}
	}
	k.m[name+" "+token] = memoEntry{at: now, reply: reply}
	return true
}

// take returns a kick remembered for (name, token), and forgets it.
func (k *kickMemo) take(name, token string) (*kickReply, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.m) == 0 {
		return nil, false
	}
	key := name + " " + token
	e, ok := k.m[key]
	if ok {
		delete(k.m, key)
	}
	return e.reply, ok && time.Since(e.at) <= k.ttl
}
