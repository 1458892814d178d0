package server

import (
	"context"
	"strings"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/relaychat/relaychat/auth"
	"github.com/relaychat/relaychat/codec"
	"github.com/relaychat/relaychat/internal/batch"
	"github.com/relaychat/relaychat/route"
)

// closedMark is stored in session.result by OnClose; a worker that finds it
// knows the session is gone and cleans up after itself.
var closedMark = &outcome{}

// openSession sets up a client connection on its loop: TCP lines, or a
// WebSocket connection (ws) that still has to send its upgrade.
func (s *Server) openSession(c gnet.Conn, l *batch.Loop, ws bool) ([]byte, gnet.Action) {
	refuse := func(err codec.ProtoError) ([]byte, gnet.Action) {
		if ws {
			return wsRefusal(err), gnet.Close
		}
		return codec.AppendError(nil, string(err), nil), gnet.Close
	}
	if limit := s.maxConns.Load(); limit > 0 && s.stats.Connections.Load()+s.openLinks.Load() >= limit {
		s.stats.Refused.Add(1)
		if s.stats.Refused.Load()%1000 == 1 {
			s.log.Warn("refusing connections: at the connection cap", "max_conns", limit, "refused_total", s.stats.Refused.Load())
		}
		return refuse(codec.ErrServerFull)
	}
	if s.closing.Load() {
		return refuse(codec.ErrShuttingDown)
	}
	ss := &session{s: s}
	ss.C = c
	ss.Loop = l
	ss.Hooks = ss
	ss.MaxOut = s.opt.MaxOutbound // past it, Slow
	if ws {
		ss.ws = newWSState(s.opt.MaxLine)
		ss.Framer = &batch.Framer{Frame: wsFrame}
	}
	ss.sndbuf = s.sendBuffer(c)
	now := time.Now().UnixNano()
	ss.lastActive.Store(now)
	ss.tokens, ss.refilled = float64(s.opt.RateBurst), now
	c.SetContext(ss)
	s.stats.Connections.Add(1)
	s.all.add(ss)
	return nil, gnet.None
}

// sendBuffer sets the client socket's kernel send buffer (SendBuffer) and
// returns what the kernel made of it (what SO_SNDBUF reads back).
func (s *Server) sendBuffer(c gnet.Conn) int64 {
	if s.opt.SendBuffer > 0 {
		_ = c.SetWriteBuffer(s.opt.SendBuffer)
	}
	if v, err := unix.GetsockoptInt(c.Fd(), unix.SOL_SOCKET, unix.SO_SNDBUF); err == nil && v > 0 {
		return int64(v)
	}
	return 4 << 20
}

// Slow implements batch.SlowHooks: the client's backlog passed
// MaxOutbound.
func (ss *session) Slow() { ss.s.cutSlow(ss) }

// cutSlow disconnects a client that does not read fast enough. Any loop.
func (s *Server) cutSlow(ss *session) {
	if ss.gone.Swap(true) {
		return
	}
	s.stats.SlowConsumers.Add(1)
	ss.Loop.Post(func() {
		if ss.Closed() {
			return
		}
		s.log.Warn("disconnecting slow consumer", "user", ss.name, "remote", ss.C.RemoteAddr(), "pending_bytes", ss.C.OutboundBuffered())
		ss.WriteNow(codec.AppendError(nil, string(codec.ErrSlowConsumer), nil), nil)
		_ = ss.C.Close()
	})
}

// closeSession is the client connection's OnClose: whatever the session
// had not handed to the kernel goes back to its mailbox, then its route is
// released (or the login that kicked it is told it may go on).
func (s *Server) closeSession(ss *session) {
	ss.MarkClosed()
	s.stats.Connections.Add(-1)
	s.all.remove(ss)
	unsent, acked := ss.cut()
	id := ss.id.Load()
	// What the client has of a mailbox page in flight leaves the mailbox
	// now (the output watcher would have seen it within 10 ms, or never,
	// for a page acknowledged only in part); without this the next login
	// would get it again.
	s.closePage(ss, id, acked)
	ours := id != nil && s.reg.remove(id.name, ss)
	if id != nil {
		s.stats.Sessions.Add(-1)
	}
	ss.stopKickWait()
	// A worker still out on this session's behalf finds closedMark and
	// undoes its login itself; one that already finished left its outcome.
	if o := ss.result.Swap(closedMark); o != nil && o != closedMark {
		s.abandon(o)
	}
	if a := ss.aside; a != nil {
		for _, d := range a.deferred {
			d.c.from = nil // its fate stands; there is no one to tell
			s.forward(nil, d.c, d.dst)
		}
		a.deferred = nil
	}
	if len(unsent) > 0 {
		s.putBack(unsent, "session closed before they were written")
	}
	reply := ss.kickReplyOf()
	switch {
	case reply != nil:
		s.afterPutBack(func(context.Context) { s.sendKickDone(reply) })
	case ours && !s.closing.Load():
		r := id.route(s.opt.ID)
		if len(unsent) > 0 || ss.pageUnsettled() {
			// Release after the chats went back, so a new login drains
			// them; and after a delivered page's removal from the mailbox,
			// so a new login elsewhere does not read it again.
			s.afterPutBack(func(ctx context.Context) { s.releaseNow(ctx, id.name, r) })
		} else {
			s.release(id.name, r)
		}
	}
}

// serveClient applies a finished off-loop result, then serves the
// session's input: complete lines in gnet's inbound buffer (TCP), or the
// requests of its WebSocket frames.
func (s *Server) serveClient(l *batch.Loop, ss *session) gnet.Action {
	if s.opt.IdleTimeout > 0 {
		ss.lastActive.Store(time.Now().UnixNano())
	}
	c := ss.C
	if ss.offloading {
		if o := ss.result.Swap(nil); o != nil {
			ss.offloading = false
			s.apply(l, ss, o)
		}
	}
	if ss.ws != nil {
		return s.serveWS(l, ss)
	}
	if ss.gone.Load() {
		// Kicked or shutting down: the close is on its way; ignore input.
		batch.Consume(c, c.InboundBuffered())
		return gnet.None
	}
	if ss.busy() {
		return s.checkPending(l, ss, c.InboundBuffered())
	}
	buf, _ := c.Peek(-1)
	consumed, act := s.serveLines(l, ss, buf)
	batch.Consume(c, consumed)
	if act == gnet.None && ss.busy() {
		return s.checkPending(l, ss, c.InboundBuffered())
	}
	return act
}

// serveLines serves the complete request lines at the start of buf until
// one has to wait on Redis (ss.busy), and returns how many bytes it used.
func (s *Server) serveLines(l *batch.Loop, ss *session, buf []byte) (int, gnet.Action) {
	consumed := 0
	for consumed < len(buf) && !ss.busy() && !ss.gone.Load() {
		line, n, err := codec.NextLine(buf[consumed:], s.opt.MaxLine)
		if err != nil {
			s.stats.LineTooLong.Add(1)
			s.replyErr(l, ss, codec.ErrLineTooLong, nil)
			s.log.Info("closing client: line too long", "user", ss.name, "remote", ss.C.RemoteAddr(), "max_line", s.opt.MaxLine)
			l.Flush()
			return len(buf), gnet.Close
		}
		if n == 0 {
			break
		}
		consumed += n
		s.request(l, ss, line)
	}
	return consumed, gnet.None
}

// request serves one request line (blank lines are ignored).
func (s *Server) request(l *batch.Loop, ss *session, line []byte) {
	if codec.IsBlank(line) {
		return
	}
	if s.opt.RateLimit > 0 && !s.allow(ss) {
		s.stats.RateLimited.Add(1)
		var req codec.Request
		_ = codec.Decode(line, &req) // only for its id
		s.stats.countChatError(codec.ErrRateLimited)
		s.replyErr(l, ss, codec.ErrRateLimited, req.ID)
		return
	}
	s.handle(l, ss, line)
}

// allow takes a token from the session's bucket, refilled at RateLimit
// per second up to RateBurst.
func (s *Server) allow(ss *session) bool {
	if ss.tokens < 1 {
		now := time.Now().UnixNano()
		ss.tokens = min(float64(s.opt.RateBurst), ss.tokens+float64(now-ss.refilled)/1e9*s.opt.RateLimit)
		ss.refilled = now
		if ss.tokens < 1 {
			return false
		}
	}
	ss.tokens--
	return true
}

// checkPending closes a session that keeps sending while one of its
// requests waits on Redis (or it is paused by a stream's window), past
// MaxPending bytes waiting.
func (s *Server) checkPending(l *batch.Loop, ss *session, waiting int) gnet.Action {
	if waiting <= s.opt.MaxPending {
		return gnet.None
	}
	s.stats.PendingOverflow.Add(1)
	waitingOn := "the routing store"
	switch {
	case ss.streamWait:
		waitingOn = "a stream over its flow-control window"
	case ss.logoutWait:
		waitingOn = "a logout waiting for its mailbox page to reach the client"
	case ss.followWait:
		waitingOn = "earlier chats to the same recipient, held on a stream"
	}
	// (The event name is older than the other reasons; msg stays stable.)
	s.log.Warn("closing client: too much input while waiting on Redis", "waiting_on", waitingOn, "user", ss.name, "remote", ss.C.RemoteAddr(), "bytes", waiting)
	s.replyErr(l, ss, codec.ErrPendingOverflow, nil)
	l.Flush()
	return gnet.Close
}

// handle serves one request.
func (s *Server) handle(l *batch.Loop, ss *session, line []byte) {
	var req codec.Request
	if err := codec.Decode(line, &req); err != nil {
		s.replyErr(l, ss, err, req.ID)
		return
	}
	switch req.Cmd {
	case codec.CmdPing:
		out := l.Out(&ss.Endpoint)
		*out = codec.AppendPong(*out, req.ID)
	case codec.CmdLogin:
		switch {
		case ss.name == req.Name:
			out := l.Out(&ss.Endpoint)
			*out = codec.AppendLoginOK(*out, ss.name, s.opt.ID)
		case ss.name != "":
			s.replyErr(l, ss, codec.ErrAlreadyLoggedIn, req.ID)
		default:
			if s.opt.AuthSecret != nil {
				if err := auth.Verify(s.opt.AuthSecret, req.Name, req.Token, time.Now()); err != nil {
					s.stats.AuthFailures.Add(1)
					s.replyErr(l, ss, err, req.ID)
					return
				}
			}
			// The name is kept for the whole session (session, identity,
			// registry key): its own copy, not a slice that keeps the
			// whole decoded login line alive.
			s.startLogin(ss, strings.Clone(req.Name), req.ID)
		}
	case codec.CmdLogout:
		if ss.name == "" {
			s.replyErr(l, ss, codec.ErrNotLoggedIn, req.ID)
			return
		}
		if ss.pageUnsettled() {
			// A mailbox page is on its way to the client, or its removal
			// from the mailbox has not answered: it leaves the mailbox
			// once the client's TCP stack has it (progress, pageDone).
			// Logged out now, the page could come again at the next login
			// (here or elsewhere); so the logout waits for the removal's
			// answer, and the session reads nothing more meanwhile.
			ss.more().logoutID = append([]byte(nil), req.ID...)
			ss.logoutWait = true
			return
		}
		s.logout(ss)
		out := l.Out(&ss.Endpoint)
		*out = codec.AppendLogoutOK(*out, req.ID)
	case codec.CmdChat:
		switch {
		case ss.name == "":
			s.stats.countChatError(codec.ErrNotLoggedIn)
			s.replyErr(l, ss, codec.ErrNotLoggedIn, req.ID)
		case req.HasSend && req.Send != ss.name:
			s.stats.countChatError(codec.ErrSendMismatch)
			s.replyErr(l, ss, codec.ErrSendMismatch, req.ID)
		case s.closing.Load():
			s.stats.countChatError(codec.ErrShuttingDown)
			s.replyErr(l, ss, codec.ErrShuttingDown, req.ID)
		default:
			s.deliver(l, &chat{send: ss.name, recv: req.Recv, content: req.Content, id: req.ID, ts: now(), from: ss})
		}
	}
}

// replyErr queues an error line for the session.
func (s *Server) replyErr(l *batch.Loop, ss *session, err error, id []byte) {
	s.stats.Errors.Add(1)
	out := l.Out(&ss.Endpoint)
	*out = codec.AppendError(*out, err.Error(), id)
}

// finishLogout carries out the logout that waited for a mailbox page, on
// the session's loop, once the page is in the client's TCP stack and its
// removal from the mailbox has answered (so a login that follows does not
// read it again, unless the removal failed, which is logged): the rest of
// the mailbox stays for the next login. A no-op unless a logout waits.
func (s *Server) finishLogout(ss *session) {
	if !ss.logoutWait {
		return
	}
	ss.logoutWait = false
	var id []byte
	if a := ss.aside; a != nil {
		id, a.logoutID = a.logoutID, nil
	}
	if ss.Closed() || ss.gone.Load() {
		ss.tidy()
		return
	}
	if ss.id.Load() != nil {
		s.logout(ss)
	}
	ss.tidy()
	ss.WriteNow(codec.AppendLogoutOK(nil, id), nil) // before any reply to what the client sent next
	ss.wakeIfFree()
}

// logout ends the session's login; the connection stays open. Chats still
// waiting for it (its mailbox drain had not finished) go back to the
// mailbox.
func (s *Server) logout(ss *session) {
	id := ss.id.Load()
	ours := s.reg.remove(id.name, ss)
	ss.mu.Lock()
	back := ss.takePending()
	ss.phase.Store(phaseAnon)
	ss.mu.Unlock()
	if a := ss.aside; a != nil {
		// The login's kick wait and drain end with it (their callbacks
		// check the login, and find it gone).
		ss.stopKickWait()
		a.drain, a.drainEnds, a.drainAgain, a.drainStart = nil, nil, false, 0
		ss.tidy()
	}
	ss.name = ""
	ss.id.Store(nil)
	s.stats.Sessions.Add(-1)
	if len(back) > 0 {
		s.putBack(back, "logged out before they were written")
	}
	if ours && !s.closing.Load() {
		r := id.route(s.opt.ID)
		if len(back) > 0 {
			s.afterPutBack(func(ctx context.Context) { s.releaseNow(ctx, id.name, r) })
		} else {
			s.release(id.name, r)
		}
	}
}

// startLogin claims name's route off the loop.
func (s *Server) startLogin(ss *session, name string, id []byte) {
	token := newToken()
	s.offload(ss, id, func(ctx context.Context) *outcome {
		defer s.hist.claim.Since(time.Now())
		s.reg.expect(name) // loginDecided, once the outcome is applied or abandoned
		prev, hadPrev, err := s.opt.Router.Claim(ctx, name, route.Route{Server: s.opt.ID, Token: token})
		return &outcome{login: true, name: name, token: token, prev: prev, hadPrev: hadPrev, id: id, err: err}
	})
}

// offload runs fn off the loop, bounded by MaxInflight, and marks the
// session busy until its result is applied on the loop (see serveClient).
func (s *Server) offload(ss *session, id []byte, fn func(ctx context.Context) *outcome) {
	select {
	case s.inflight <- struct{}{}:
	default:
		s.stats.Busy.Add(1)
		batch.Send(&ss.Endpoint, codec.AppendError(nil, string(codec.ErrBusy), id), nil)
		return
	}
	ss.offloading = true
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), s.opt.RedisTimeout)
		o := fn(ctx)
		cancel()
		<-s.inflight
		if !ss.result.CompareAndSwap(nil, o) {
			s.abandon(o) // the session closed meanwhile
			return
		}
		_ = ss.C.Wake(nil)
	}()
}

// abandon undoes the effect of an outcome whose session closed before it
// was applied: a claimed route must not outlive the session, and a chat
// whose sender left still gets its fate.
func (s *Server) abandon(o *outcome) {
	if o.login {
		defer s.loginDecided(o.name)
	}
	switch {
	case o.login && o.err == nil && !s.closing.Load():
		s.release(o.name, route.Route{Server: s.opt.ID, Token: o.token})
	case o.chat && o.err == nil && o.found && o.r.Server != s.opt.ID:
		c := o.c
		c.from = nil
		s.forward(nil, c, o.r.Server)
	}
}

// apply handles a finished off-loop operation on the session's loop.
func (s *Server) apply(l *batch.Loop, ss *session, o *outcome) {
	if o.login {
		defer s.loginDecided(o.name)
	}
	switch {
	case o.chat:
		s.lookedUp(l, o.c, o.r, o.found, o.err)
	case o.err != nil:
		s.stats.RedisErrors.Add(1)
		s.log.Warn("routing store error", "user", ss.name, "err", o.err)
		s.replyErr(l, ss, codec.ErrRoutingDown, o.id)
		if o.login && !s.closing.Load() {
			// The claim may have been applied before the error; take it back.
			s.release(o.name, route.Route{Server: s.opt.ID, Token: o.token})
		}
	default:
		s.finishLogin(l, ss, o)
	}
}
