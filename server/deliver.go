package server

import (
	"context"
	"time"

	"github.com/relaychat/relaychat/codec"
	"github.com/relaychat/relaychat/internal/batch"
	"github.com/relaychat/relaychat/route"
)

// chat is one chat on its way. deliver decides its fate, in one place,
// whoever calls: a client's loop, a link's loop (a frame from another
// server), the Redis worker (a store attempt came back), a stream giving up
// on a chat it could not get through.
//
// Exactly one of from and in is set: from is the sender's session on this
// server (its loop is the caller, or the sender waits busy for this
// result); in is the stream the chat arrived on from another server, which
// must learn when the chat is settled so it can acknowledge it.
type chat struct {
	send, recv string
	ts         int64
	id         []byte // the request id as JSON text, nil when none
	hops       int    // times it was passed on after reaching a server its recipient had left
	// content (from a client) or payload (the delivery line, from a frame:
	// it aliases the link's input until copied by detach).
	content string
	payload []byte

	from *session
	in   *inStream
	seq  uint64
	// qbytes is what the chat counts against its sender's store attempts
	// in flight (storingBytes).
	qbytes int
}

// maxHops bounds how many times a chat follows a recipient who moved.
const maxHops = 2

// appendLine appends the recipient's delivery line, without "\n".
func (c *chat) appendLine(dst []byte) []byte {
	if c.payload != nil {
		return append(dst, c.payload...)
	}
	b := codec.AppendDelivery(dst, c.send, c.recv, c.content, c.ts)
	return b[:len(b)-1]
}

// keep returns a heap copy of c for the paths that keep it past the call
// (callbacks, queues), so the hot paths can keep c on the stack, with its
// own copies of what aliases a loop's buffers. (content does not: sonic's
// Unmarshal decodes from its own copy of the line.)
func (c *chat) keep() *chat {
	h := new(chat)
	*h = *c
	if h.payload != nil {
		h.payload = append([]byte(nil), h.payload...)
	}
	if h.id != nil {
		h.id = append([]byte(nil), h.id...)
	}
	return h
}

// deliver decides the chat's fate: write it to a local session, queue it
// for a local session that is still receiving its mailbox, put it on the
// stream to the recipient's server, or ask the routing store off the loop
// (where the recipient is, and if they are offline, store it in the
// mailbox). l is the calling loop's batch state; nil off the loops.
func (s *Server) deliver(l *batch.Loop, c *chat) {
	if c.from != nil && c.from.storingTo(c.recv) > 0 {
		// Chats from this sender to this recipient are already on their
		// way to the mailbox: this one follows them, in order.
		s.resolve(l, c)
		return
	}
	if c.from != nil {
		if dst, ok := c.from.follows.to(c.recv); ok {
			// Earlier chats to this recipient are unsettled on a stream.
			// This one follows them (follow.go); or, if the recipient has
			// logged in here since, waits for them to settle: written here
			// now, it would overtake them.
			if s.reg.get(c.recv) == nil || c.from.followWait {
				s.forward(l, c, dst)
				return
			}
			if s.waitBehind(c) {
				return
			}
			// Settled meanwhile: on to the session here.
		}
	}
	if dst := s.reg.get(c.recv); dst != nil && s.toSession(l, dst, c) {
		s.settled(l, c, false)
		return
	}
	if c.in != nil && s.opt.mailboxOn() && s.reg.expecting(c.recv) {
		// The recipient is logging in here: the chat waits for that login
		// (resolve parks it), whatever the route table still says.
		s.resolve(l, c)
		return
	}
	if r, _, hit := s.opt.Router.CachedLookup(c.recv); hit && r.Server != s.opt.ID {
		s.forward(l, c, r.Server)
		return
	}
	if c.from != nil && !s.opt.mailboxOn() {
		s.lookupFor(l, c)
		return
	}
	// Not in the route table (or a frame for a user who is not here any
	// more): a store attempt keeps the chat if the recipient is offline,
	// or says where they are (and loads their route into the table).
	s.resolve(l, c)
}

// waitBehind holds c, a chat read from its sender, whose recipient has
// logged in here while the sender's earlier chats to them are unsettled
// on a stream: it is delivered once they are (they come back here, go to
// the mailbox, or fail), and the sender is not read meanwhile (at most
// -hold-age). False: they are settled already, nothing to wait for.
func (s *Server) waitBehind(c *chat) bool {
	ss := c.from
	if !ss.follows.waitOn(c.recv, func() { ss.Loop.Post(func() { s.resumeBehind(ss) }) }) {
		return false
	}
	// (The notice is posted to this loop: it runs after this callback.)
	ss.more().behind, ss.followWait = c.keep(), true
	return true
}

// resumeBehind delivers the chat that waited behind its pair's earlier
// ones, and reads its sender again (on the sender's loop).
func (s *Server) resumeBehind(ss *session) {
	var d *chat
	if a := ss.aside; a != nil {
		d, a.behind = a.behind, nil
	}
	ss.followWait = false
	ss.tidy()
	if d == nil {
		return
	}
	if ss.Closed() {
		d.from = nil
	}
	s.deliver(nil, d)
	ss.wakeIfFree()
}

// toSession hands c to dst; false means dst has closed meanwhile.
func (s *Server) toSession(l *batch.Loop, dst *session, c *chat) bool {
	if !dst.live() {
		line := append(c.appendLine(make([]byte, 0, 256)), '\n')
		queued, closed := dst.queue(pendingChat{recv: c.recv, ts: c.ts, line: line})
		if queued {
			return true
		}
		if closed {
			return false
		}
	}
	if dst.Closed() {
		return false
	}
	if l == nil {
		b := append(c.appendLine(make([]byte, 0, 256)), '\n')
		batch.Send(&dst.Endpoint, b, []batch.Mark{{Start: 0, End: int32(len(b)), Kind: markLive}})
		return true
	}
	l.OutMarked(&dst.Endpoint, markLive, func(b []byte) []byte { return append(c.appendLine(b), '\n') })
	return true
}

// resolve stores the chat for an offline recipient, off the loop: a store
// attempt that stores it if the recipient is offline (a route naming this
// server counts as offline: they are not here), or answers where they are.
// The attempt is queued while the registry shard is held, so a login here
// that registers the name afterwards drains the mailbox only after this
// store. With the mailbox off it is a lookup.
func (s *Server) resolve(l *batch.Loop, cs *chat) {
	c := cs.keep() // cs stays on the caller's stack
	if !s.opt.mailboxOn() {
		if !s.redis.call(func(ctx context.Context) {
			r, found, err := s.opt.Router.FreshLookup(ctx, c.recv)
			s.lookedUp(nil, c, r, found, err)
		}) {
			s.stats.Busy.Add(1)
			s.fail(l, c, codec.ErrBusy)
		}
		return
	}
	s.stats.CacheMisses.Add(1)
	var queued bool
	var park *chat
	if c.in != nil {
		// From another server: if the recipient is logging in here, the
		// chat waits for that login (registry.expect).
		park = c
	}
	ran, parked := s.reg.ifAbsent(c.recv, park, func() { queued = s.storeAttempt(c) })
	if parked {
		return
	}
	present := !ran
	switch {
	case present && (c.from == nil || c.from.storingTo(c.recv) == 0):
		// Logged in here meanwhile: deliver again (the registry has it).
		s.deliver(l, c)
		return
	case present:
		// Behind earlier chats still on their way to the mailbox: the
		// recipient reads those first, so this one waits for them too.
		queued = s.storeAttempt(c)
	}
	if !queued {
		s.stats.Busy.Add(1)
		s.fail(l, c, codec.ErrBusy)
		return
	}
	if ss := c.from; ss != nil {
		// The sender goes on with its next requests (a pair's order is
		// kept: its later chats to this recipient follow this one through
		// the queue), up to maxStoring store attempts in flight.
		a := ss.more()
		if a.storing == nil {
			a.storing = make(map[string]int)
		}
		a.storing[c.recv]++
		a.storingN++
		a.storingBytes += c.qbytes
		if a.storingN >= maxStoring || a.storingBytes >= s.opt.MaxPending {
			ss.throttled = true
		}
	}
}

// storeAttempt queues c's store attempt (see resolve); false: the Redis
// queue is full. c must be detached.
func (s *Server) storeAttempt(c *chat) bool {
	line := c.appendLine(nil)
	c.qbytes = len(line)
	req := route.StoreReq{Name: c.recv, Line: line, TS: c.ts, Here: s.opt.ID}
	return s.redis.store(req, func(res route.StoreResult) { s.stored(c, res) })
}

// maxStoring bounds a session's store attempts in flight (as MaxPending
// bounds their bytes); past it the session stops reading requests until
// half have come back.
const maxStoring = 1024

// stored is the answer to a store attempt, on the Redis worker. A client's
// chat is finished on its loop; a stream's here.
func (s *Server) stored(c *chat, res route.StoreResult) {
	if res.Expired > 0 {
		s.countExpired(c.recv, res.Expired)
	}
	ss := c.from
	if ss == nil {
		s.storedResult(nil, c, res)
		return
	}
	ss.Loop.Post(func() {
		a := ss.more() // set by deliver when the attempt was queued
		if a.storing[c.recv]--; a.storing[c.recv] <= 0 {
			delete(a.storing, c.recv)
		}
		if a.storingN--; a.storingN == 0 {
			a.storing = nil // a map keeps its buckets after deletes
		}
		a.storingBytes -= c.qbytes
		n, bytes := a.storingN, a.storingBytes
		ss.tidy()
		if ss.Closed() {
			c.from = nil
		}
		s.storedResult(nil, c, res)
		if ss.throttled && n < maxStoring/2 && bytes < s.opt.MaxPending/2 && !ss.Closed() {
			ss.throttled = false
			ss.wakeIfFree()
		}
	})
}

// storedResult applies a store attempt's answer. l is nil off the loops.
func (s *Server) storedResult(l *batch.Loop, c *chat, res route.StoreResult) {
	switch {
	case res.Err != nil:
		s.stats.RedisErrors.Add(1)
		s.log.Warn("routing store error while storing a chat", "recipient", c.recv, "err", res.Err)
		s.fail(l, c, codec.ErrRoutingDown)
	case res.Outcome == route.Stored:
		s.stats.Stored.Add(1)
		s.settled(l, c, true)
	case res.Outcome == route.Full:
		s.fail(l, c, codec.ErrMailboxFull)
	case res.Outcome == route.Online && res.Route.Server == s.opt.ID:
		// Cannot happen: a route naming this server counts as offline.
		s.fail(l, c, codec.ErrOffline)
	default: // Online elsewhere
		s.forward(l, c, res.Route.Server)
	}
}

// lookupFor looks the recipient of a client's chat up off the loop (the
// sender waits busy, so its later chats keep their order).
func (s *Server) lookupFor(l *batch.Loop, cs *chat) {
	s.stats.CacheMisses.Add(1)
	c := cs.keep() // cs stays on the caller's stack
	s.offload(c.from, c.id, func(ctx context.Context) *outcome {
		r, found, err := s.opt.Router.Lookup(ctx, c.recv)
		return &outcome{chat: true, c: c, r: r, found: found, err: err}
	})
}

// lookedUp applies a lookup's answer.
func (s *Server) lookedUp(l *batch.Loop, c *chat, r route.Route, found bool, err error) {
	switch {
	case err != nil:
		s.stats.RedisErrors.Add(1)
		s.fail(l, c, codec.ErrRoutingDown)
	case found && r.Server != s.opt.ID:
		s.forward(l, c, r.Server)
	case found:
		if dst := s.reg.get(c.recv); dst != nil && s.toSession(l, dst, c) {
			s.settled(l, c, false)
			return
		}
		fallthrough
	default:
		if s.opt.mailboxOn() && c.from != nil {
			s.resolve(l, c)
			return
		}
		s.fail(l, c, codec.ErrOffline)
	}
}

// forward puts c on the stream to server dst. A chat that came on a
// stream and goes on to another server makes one more hop.
func (s *Server) forward(l *batch.Loop, c *chat, dst string) {
	if c.in != nil {
		c.hops++
	}
	if c.hops > maxHops {
		s.fail(l, c, codec.ErrMoving)
		return
	}
	if ss := c.from; ss != nil && ss.streamWait {
		// Read before its sender was paused, answered by the routing store
		// since: it goes on its stream when the sender resumes, in order
		// (resumeSender). A paused session reads nothing, so these are
		// bounded by its store attempts (maxStoring, MaxPending).
		a := ss.more()
		a.deferred = append(a.deferred, deferredChat{c: c.keep(), dst: dst})
		return
	}
	h := frameHead{kind: codec.KindMsg, hops: c.hops, send: c.send, recv: c.recv, id: c.id}
	m := outMeta{ts: c.ts}
	if ss := c.from; ss != nil {
		m.pace = true
		// The sender's ack is owed until the frame has reached the kernel
		// on a link: only then has it left this process. Until then, the
		// sender's next chats to this recipient follow it.
		m.from, m.id = c.from, noID
		if c.id != nil {
			m.id = append([]byte(nil), c.id...)
		}
		m.fw = ss.follows.add(c.recv, dst)
		s.retain(ss) // to shed the entry once settled
	}
	pause, err := s.out.get(dst).pushPaced(h, c.appendLine, m)
	if pause {
		// The stream is over its window: read no more of this client
		// until the receiving side catches up (resumeSender).
		c.from.streamWait = true
		s.stats.StreamPaused.Add(1)
	}
	if err != nil {
		m.fw.done()
		s.stats.StreamFull.Add(1)
		s.fail(l, c, err.(codec.ProtoError))
		return
	}
	s.stats.Forwarded.Add(1)
	if c.from != nil {
		s.stats.ChatsReceived.Add(1) // acked later, by the stream
		return
	}
	s.settled(l, c, false)
}

// settled tells the chat's origin that the chat has been taken care of
// (written to a session, stored, or, for a stream's frame, put on another
// stream): a client's chat is acknowledged ("stored":true when it went to
// the mailbox), a stream's frame may be acknowledged. (A client's chat put
// on a stream is acknowledged by the stream, once the frame has reached
// the kernel.)
func (s *Server) settled(l *batch.Loop, c *chat, stored bool) {
	if c.in != nil {
		s.settleIn(l, c.in, c.seq)
		return
	}
	if c.from == nil {
		return
	}
	s.stats.ChatsReceived.Add(1)
	if c.id == nil {
		return
	}
	var line []byte
	if l != nil {
		out := l.Out(&c.from.Endpoint)
		line = *out
		defer func() { *out = line }()
	}
	if stored {
		line = codec.AppendAckStored(line, c.id)
	} else {
		line = codec.AppendAck(line, c.id)
	}
	if l == nil {
		batch.Send(&c.from.Endpoint, line, nil)
	}
}

// fail ends c with an error for its sender: a line to a local sender, an
// error frame back to a remote one.
func (s *Server) fail(l *batch.Loop, c *chat, reason codec.ProtoError) {
	s.stats.countChatError(reason)
	switch {
	case c.from != nil:
		s.stats.Errors.Add(1)
		if l == nil {
			batch.Send(&c.from.Endpoint, codec.AppendError(nil, string(reason), c.id), nil)
			return
		}
		out := l.Out(&c.from.Endpoint)
		*out = codec.AppendError(*out, string(reason), c.id)
	case c.in != nil:
		s.errorTo(c.in.key.src, c.send, c.id, reason)
		s.settleIn(l, c.in, c.seq)
	}
}

// settleIn seals a stream frame's fate. On a link's loop the ack goes out
// at the end of the callback (once per stream); off the loops, now.
func (s *Server) settleIn(l *batch.Loop, st *inStream, seq uint64) {
	st.settle(seq)
	if l == nil {
		st.sendAck()
	}
}

// errorTo sends a remote sender an error frame on the stream to its server.
func (s *Server) errorTo(server, send string, id []byte, reason codec.ProtoError) {
	payload := codec.AppendError(nil, string(reason), id)
	payload = payload[:len(payload)-1]
	h := frameHead{kind: codec.KindError, recv: send, id: id}
	if err := s.out.get(server).push(h, func(b []byte) []byte { return append(b, payload...) }, outMeta{}); err != nil {
		s.stats.DroppedNoSender.Add(1)
		s.log.Warn("cannot return an error to a sender on another server: its stream is full", "server", server, "sender", send, "reason", string(reason))
	}
}

// countExpired counts and logs stored chats dropped by retention.
func (s *Server) countExpired(name string, n int) {
	s.stats.MailboxExpired.Add(int64(n))
	s.log.Info("stored chats dropped by retention", "user", name, "chats", n, "mailbox_ttl", s.opt.MailboxTTL)
}

// now returns the server receive time of a chat (unix ms).
func now() int64 { return time.Now().UnixMilli() }
