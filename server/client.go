package server

import (
	"context"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/relaychat/relaychat/auth"
	"github.com/relaychat/relaychat/codec"
	"github.com/relaychat/relaychat/internal/batch"
	"github.com/relaychat/relaychat/route"
)

// Client-visible errors the server adds to codec's.
const (
	errNotLoggedIn     codec.ProtoError = "not logged in"
	errSendMismatch    codec.ProtoError = "send does not match the logged-in name"
	errOffline         codec.ProtoError = "recipient not online"
	errNoForwarding    codec.ProtoError = "forwarding tier unavailable"
	errCongested       codec.ProtoError = "forwarding tier congested, try again"
	errRoutingDown     codec.ProtoError = "routing store unavailable"
	errBusy            codec.ProtoError = "server busy, try again"
	errAlreadyLoggedIn codec.ProtoError = "already logged in; logout first"
	errPendingOverflow codec.ProtoError = "too much input while a request waits; slow down"
	errSlowConsumer    codec.ProtoError = "not reading fast enough (slow consumer)"
	errServerFull      codec.ProtoError = "server full, try another server or later"
	errIdle            codec.ProtoError = "idle timeout"
	errRateLimited     codec.ProtoError = "rate limit exceeded, slow down"
	reasonKicked                        = "logged in elsewhere"
)

// closedMark is stored in session.result by OnClose; a worker that finds it
// knows the session is gone and cleans up after itself.
var closedMark = &outcome{}

// clientHandler serves the client port.
type clientHandler struct {
	gnet.BuiltinEventEngine
	s     *Server
	loops batch.Loops
}

func (h *clientHandler) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	s := h.s
	if limit := s.maxConns.Load(); limit > 0 && s.stats.Connections.Load() >= limit {
		s.stats.Refused.Add(1)
		if s.stats.Refused.Load()%1000 == 1 {
			s.log.Warn("refusing connections: at the connection cap", "max_conns", limit, "refused_total", s.stats.Refused.Load())
		}
		return codec.AppendError(nil, string(errServerFull), nil), gnet.Close
	}
	ss := &session{}
	ss.C = c
	ss.Loop = h.loops.Get(c.EventLoop())
	ss.MaxOut = s.opt.MaxOutbound
	ss.OnSlow = func() {
		s.stats.SlowConsumers.Add(1)
		s.log.Warn("disconnecting slow consumer", "user", ss.name, "remote", c.RemoteAddr(), "pending_bytes", c.OutboundBuffered())
		_, _ = c.Write(codec.AppendError(nil, string(errSlowConsumer), nil))
		_ = c.Close()
	}
	ss.OnLost = func(n int) {
		// Deliveries gathered for a client that closed before they went out.
		s.stats.LostToClosed.Add(1)
		s.log.Debug("output for a closed client discarded", "bytes", n)
	}
	now := time.Now().UnixNano()
	ss.lastActive.Store(now)
	ss.tokens, ss.refilled = float64(s.opt.RateBurst), now
	c.SetContext(ss)
	s.stats.Connections.Add(1)
	s.all.add(ss)
	return nil, gnet.None
}

func (h *clientHandler) OnClose(c gnet.Conn, _ error) gnet.Action {
	ss, ok := c.Context().(*session)
	if !ok {
		return gnet.None
	}
	s := h.s
	ss.MarkClosed()
	s.stats.Connections.Add(-1)
	s.all.remove(ss)
	if ss.name != "" {
		s.unregister(ss)
	}
	// A worker still out on this session's behalf finds closedMark and
	// undoes its login itself; one that already finished left its outcome.
	if o := ss.result.Swap(closedMark); o != nil && o != closedMark {
		s.abandon(o)
	}
	return gnet.None
}

func (h *clientHandler) OnTraffic(c gnet.Conn) gnet.Action {
	ss := c.Context().(*session)
	if h.s.opt.IdleTimeout > 0 {
		ss.lastActive.Store(time.Now().UnixNano())
	}
	act := h.s.serve(ss)
	ss.Loop.Flush()
	return act
}

// serve applies a finished off-loop result, then handles every complete
// line in the inbound buffer until one has to wait on Redis.
func (s *Server) serve(ss *session) gnet.Action {
	c, l := ss.C, ss.Loop
	if ss.busy {
		o := ss.result.Swap(nil)
		if o == nil {
			return s.checkPending(ss)
		}
		ss.busy = false
		s.apply(ss, o)
	}
	if ss.gone.Load() {
		// Kicked or shutting down: the close is on its way; ignore input.
		_, _ = c.Discard(c.InboundBuffered()) // everything (n <= 0 also means all)
		return gnet.None
	}
	buf, _ := c.Peek(-1)
	consumed := 0
	for consumed < len(buf) && !ss.busy && !ss.gone.Load() {
		line, n, err := codec.NextLine(buf[consumed:], s.opt.MaxLine)
		if err != nil {
			s.stats.LineTooLong.Add(1)
			s.replyErr(ss, err, nil)
			_, _ = c.Discard(len(buf))
			s.log.Info("closing client: line too long", "user", ss.name, "remote", c.RemoteAddr(), "max_line", s.opt.MaxLine)
			l.Flush()
			return gnet.Close
		}
		if n == 0 {
			break
		}
		consumed += n
		if codec.IsBlank(line) {
			continue
		}
		if s.opt.RateLimit > 0 && !s.allow(ss) {
			s.stats.RateLimited.Add(1)
			var req codec.Request
			_ = codec.Decode(line, &req) // only for its id
			s.replyErr(ss, errRateLimited, req.ID)
			continue
		}
		s.handle(ss, line)
	}
	batch.Consume(c, consumed)
	if ss.busy {
		return s.checkPending(ss)
	}
	return gnet.None
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
// requests waits on Redis, past MaxPending bytes.
func (s *Server) checkPending(ss *session) gnet.Action {
	if ss.C.InboundBuffered() <= s.opt.MaxPending {
		return gnet.None
	}
	s.stats.PendingOverflow.Add(1)
	s.log.Warn("closing client: too much input while waiting on Redis", "user", ss.name, "remote", ss.C.RemoteAddr(), "bytes", ss.C.InboundBuffered())
	s.replyErr(ss, errPendingOverflow, nil)
	ss.Loop.Flush()
	return gnet.Close
}

// handle serves one request line.
func (s *Server) handle(ss *session, line []byte) {
	var req codec.Request
	if err := codec.Decode(line, &req); err != nil {
		s.replyErr(ss, err, req.ID)
		return
	}
	out := ss.Loop.Out(&ss.Endpoint)
	switch req.Cmd {
	case codec.CmdPing:
		*out = codec.AppendPong(*out, req.ID)
	case codec.CmdLogin:
		switch {
		case ss.name == req.Name:
			*out = codec.AppendLoginOK(*out, ss.name, s.opt.ID)
		case ss.name != "":
			s.replyErr(ss, errAlreadyLoggedIn, req.ID)
		default:
			if s.opt.AuthSecret != nil {
				if err := auth.Verify(s.opt.AuthSecret, req.Name, req.Token, time.Now()); err != nil {
					s.stats.AuthFailures.Add(1)
					s.replyErr(ss, err, req.ID)
					return
				}
			}
			s.startLogin(ss, req.Name, req.ID)
		}
	case codec.CmdLogout:
		if ss.name == "" {
			s.replyErr(ss, errNotLoggedIn, req.ID)
			return
		}
		s.unregister(ss)
		ss.name = ""
		ss.id.Store(nil)
		*out = codec.AppendLogoutOK(*out, req.ID)
	case codec.CmdChat:
		switch {
		case ss.name == "":
			s.replyErr(ss, errNotLoggedIn, req.ID)
		case req.HasSend && req.Send != ss.name:
			s.replyErr(ss, errSendMismatch, req.ID)
		default:
			s.routeChat(ss, req.Recv, req.Content, req.ID, time.Now().UnixMilli())
		}
	}
}

// replyErr queues an error line for the session.
func (s *Server) replyErr(ss *session, err error, id []byte) {
	s.stats.Errors.Add(1)
	out := ss.Loop.Out(&ss.Endpoint)
	*out = codec.AppendError(*out, err.Error(), id)
}

func (s *Server) ack(ss *session, id []byte) {
	if id != nil {
		out := ss.Loop.Out(&ss.Endpoint)
		*out = codec.AppendAck(*out, id)
	}
}

// routeChat sends a chat from ss to recv: straight to a local session, or
// by the route in the client-side cache, or, on a cache miss, after a
// lookup off the loop (the session's later lines wait for it, which keeps
// its messages in order).
func (s *Server) routeChat(ss *session, recv, content string, id []byte, ts int64) {
	if dst := s.reg.get(recv); dst != nil {
		s.deliverLocal(ss, dst, recv, content, id, ts)
		return
	}
	if r, found, hit := s.opt.Router.CachedLookup(recv); hit {
		s.chatTo(ss, recv, r, found, content, id, ts)
		return
	}
	s.stats.CacheMisses.Add(1)
	s.offload(ss, id, func(ctx context.Context) *outcome {
		r, found, err := s.opt.Router.Lookup(ctx, recv)
		return &outcome{chat: true, recv: recv, r: r, found: found, content: content, id: id, ts: ts, err: err}
	})
}

// chatTo sends a chat by a resolved route.
func (s *Server) chatTo(ss *session, recv string, r route.Route, found bool, content string, id []byte, ts int64) {
	if found && r.Server == s.opt.ID {
		// The route names this server: the session may have logged in
		// since the registry was read.
		if dst := s.reg.get(recv); dst != nil {
			s.deliverLocal(ss, dst, recv, content, id, ts)
			return
		}
		found = false
	}
	if !found {
		s.replyErr(ss, errOffline, id)
		return
	}
	name, dst := ss.name, r.Server
	l := ss.Loop
	s.forward(ss, dst, recv, id, func(out []byte) []byte {
		payload := codec.AppendDelivery(l.Scratch[:0], name, recv, content, ts)
		payload = payload[:len(payload)-1] // the frame adds its own "\n"
		out = codec.AppendFrame(out, codec.KindMsg, dst, s.opt.ID, 0, name, recv, id, payload)
		l.Scratch = payload[:0]
		return out
	})
}

func (s *Server) deliverLocal(ss, dst *session, recv, content string, id []byte, ts int64) {
	out := ss.Loop.Out(&dst.Endpoint)
	*out = codec.AppendDelivery(*out, ss.name, recv, content, ts)
	s.stats.DeliveredLocal.Add(1)
	s.ack(ss, id)
}

// startLogin claims name's route off the loop.
func (s *Server) startLogin(ss *session, name string, id []byte) {
	token := newToken()
	s.offload(ss, id, func(ctx context.Context) *outcome {
		prev, hadPrev, err := s.opt.Router.Claim(ctx, name, route.Route{Server: s.opt.ID, Token: token})
		return &outcome{login: true, name: name, token: token, prev: prev, hadPrev: hadPrev, id: id, err: err}
	})
}

// offload runs fn off the loop, bounded by MaxInflight, and marks the
// session busy until its result is applied on the loop (see serve).
func (s *Server) offload(ss *session, id []byte, fn func(ctx context.Context) *outcome) {
	select {
	case s.inflight <- struct{}{}:
	default:
		s.stats.Busy.Add(1)
		s.replyErr(ss, errBusy, id)
		return
	}
	ss.busy = true
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
// was applied: a claimed route must not outlive the session.
func (s *Server) abandon(o *outcome) {
	if !o.login || o.err != nil || s.closing.Load() {
		return
	}
	s.release(o.name, route.Route{Server: s.opt.ID, Token: o.token})
}

// apply handles a finished off-loop operation on the session's loop.
func (s *Server) apply(ss *session, o *outcome) {
	if o.err != nil {
		s.stats.RedisErrors.Add(1)
		s.log.Warn("routing store error", "user", ss.name, "err", o.err)
		s.replyErr(ss, errRoutingDown, o.id)
		if o.login && !s.closing.Load() {
			// The claim may have been applied before the error; take it back.
			s.release(o.name, route.Route{Server: s.opt.ID, Token: o.token})
		}
		return
	}
	if o.chat {
		s.chatTo(ss, o.recv, o.r, o.found, o.content, o.id, o.ts)
		return
	}
	s.finishLogin(ss, o)
}

func (s *Server) finishLogin(ss *session, o *outcome) {
	claimedOver := ""
	if o.hadPrev && o.prev.Server == s.opt.ID {
		claimedOver = o.prev.Token
	}
	if s.kicks.take(o.name, o.token) {
		// A newer login elsewhere already asked us to kick this one.
		s.kick(ss)
		return
	}
	id := &identity{name: o.name, token: o.token, claimedOver: claimedOver}
	old, ok := s.reg.putIfNewer(ss, id)
	if !ok {
		// A newer login of this name on this server finished first.
		s.kick(ss)
		return
	}
	ss.name = o.name
	if old != nil {
		s.kick(old)
	}
	if o.hadPrev && o.prev.Server != s.opt.ID {
		s.sendKick(ss.Loop, o.name, o.prev)
	}
	s.stats.Logins.Add(1)
	out := ss.Loop.Out(&ss.Endpoint)
	*out = codec.AppendLoginOK(*out, o.name, s.opt.ID)
}

// kick tells a session on any loop (its own included) that a newer login
// replaced it, then closes it once that line is written: the AsyncWrite
// runs after anything already flushed to it. Its route already belongs to
// the newer login, so its close releases nothing.
func (s *Server) kick(old *session) {
	if old.gone.Swap(true) {
		return
	}
	s.stats.Kicks.Add(1)
	_ = old.C.AsyncWrite(codec.AppendKicked(nil, reasonKicked), func(c gnet.Conn, _ error) error {
		return c.Close()
	})
}

// sendKick asks the server named by prev, through the forwarding tier, to
// kick the session holding prev's token.
func (s *Server) sendKick(l *batch.Loop, name string, prev route.Route) {
	lk := s.links.pickFor(name, prev.Server)
	if lk == nil {
		s.stats.KickUndelivered.Add(1)
		s.log.Warn("cannot kick older session: no forwarding link", "user", name, "server", prev.Server)
		return
	}
	out := l.Out(&lk.Endpoint)
	*out = codec.AppendFrame(*out, codec.KindKick, prev.Server, s.opt.ID, 0, "", name, nil, []byte(prev.Token))
}

// unregister removes a logged-in session from the registry and, when it
// was still the name's session, releases its route off the loop.
func (s *Server) unregister(ss *session) {
	id := ss.id.Load()
	if id == nil || !s.reg.remove(id.name, ss) || ss.gone.Load() || s.closing.Load() {
		return
	}
	s.release(id.name, id.route(s.opt.ID))
}

// release queues the deletion of name's route, if it still equals r, for
// the release worker. It never blocks: when the queue is full the route is
// left (counted and logged); it names this server, so chats to it get
// "recipient not online", and the next start of this server clears it.
func (s *Server) release(name string, r route.Route) {
	select {
	case s.releases <- releaseReq{name: name, r: r}:
	default:
		s.stats.ReleaseOverflow.Add(1)
		if s.stats.ReleaseOverflow.Load()%1000 == 1 {
			s.log.Warn("release queue full: leaving routes for the next start to clear", "queue", cap(s.releases), "total", s.stats.ReleaseOverflow.Load())
		}
	}
}

// releaseReq is one queued route release.
type releaseReq struct {
	name string
	r    route.Route
}

// releaseWorker deletes queued routes in pipelined batches of up to
// releaseBatch, so that thousands of sessions closing at once cost a few
// round trips, not thousands of concurrent ones. On stop it releases what
// is still queued.
func (s *Server) releaseWorker() {
	defer s.bg.Done()
	batch := make(map[string]route.Route, releaseBatch)
	for {
		select {
		case <-s.stop:
			// Release what is queued, unless Redis fails: then leave the
			// rest to the next start rather than hold up the shutdown.
			for {
				select {
				case req := <-s.releases:
					batch[req.name] = req.r
					if len(batch) < releaseBatch {
						continue
					}
					if !s.releaseBatch(batch) {
						s.log.Warn("leaving queued routes for the next start to clear", "routes", len(s.releases))
						return
					}
				default:
					s.releaseBatch(batch)
					return
				}
			}
		case req := <-s.releases:
			batch[req.name] = req.r // a later release of a name supersedes
		drain:
			for len(batch) < releaseBatch {
				select {
				case req := <-s.releases:
					batch[req.name] = req.r
				default:
					break drain
				}
			}
			s.releaseBatch(batch)
		}
	}
}

// releaseBatch deletes batch's routes (where unchanged) and empties it; it
// reports whether Redis answered.
func (s *Server) releaseBatch(batch map[string]route.Route) bool {
	if len(batch) == 0 {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.opt.RedisTimeout)
	defer cancel()
	_, err := s.opt.Router.ReleaseAll(ctx, batch)
	if err != nil {
		s.stats.RedisErrors.Add(1)
		s.log.Warn("could not release routes", "routes", len(batch), "err", err)
	}
	clear(batch)
	return err == nil
}
