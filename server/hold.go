package server

import (
	"sync"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/relaychat/relaychat/codec"
)

// holder keeps chats for servers that no link reaches right now (the proxy
// is down or restarting, or has lost that server), per destination server,
// bounded in bytes and age. They go out in order when a link announces it
// reaches their server again; past the bounds their senders get an error.
//
// Ordering: a client loop decides "no link reaches X, hold it" and a link
// drains X's queue before publishing that it reaches X, both under mu, so a
// chat can never overtake a held one to the same server.
type holder struct {
	mu       sync.Mutex
	q        map[string]*heldQueue // by destination server id
	maxBytes int                   // per destination; 0 disables holding
	maxAge   time.Duration
}

type heldQueue struct {
	items []heldChat
	bytes int
}

// heldChat is one complete M frame waiting for a link, and who to tell if it
// expires.
type heldChat struct {
	frame []byte
	at    time.Time
	from  *session
	id    []byte
}

func newHolder(maxBytes int, maxAge time.Duration) *holder {
	return &holder{q: make(map[string]*heldQueue), maxBytes: maxBytes, maxAge: maxAge}
}

// forward hands a chat for server dst to a link that reaches dst, or holds
// it. It runs on the sender's loop. frame is built only when needed.
func (s *Server) forward(ss *session, dst, recv string, id []byte, build func([]byte) []byte) {
	if lk := s.links.pickFor(recv, dst); lk != nil {
		s.sendFrame(ss, lk, id, build)
		return
	}
	h := s.hold
	if h.maxBytes == 0 {
		// Holding is off: hand the chat to any link and let the proxy
		// relay or bounce it (its reach line may simply not be here yet);
		// refuse only when there is no link at all.
		if lk := s.links.pick(recv); lk != nil {
			s.sendFrame(ss, lk, id, build)
			return
		}
		s.stats.HoldOverflow.Add(1)
		s.replyErr(ss, errNoForwarding, id)
		return
	}
	h.mu.Lock()
	if lk := s.links.pickFor(recv, dst); lk != nil {
		// A link announced dst meanwhile, after draining its queue.
		h.mu.Unlock()
		s.sendFrame(ss, lk, id, build)
		return
	}
	q := h.q[dst]
	if q == nil {
		q = &heldQueue{}
		h.q[dst] = q
	}
	frame := build(nil)
	if q.bytes+len(frame) > h.maxBytes {
		h.mu.Unlock()
		s.stats.HoldOverflow.Add(1)
		s.replyErr(ss, errNoForwarding, id)
		return
	}
	q.items = append(q.items, heldChat{frame: frame, at: time.Now(), from: ss, id: id})
	q.bytes += len(frame)
	h.mu.Unlock()
	s.stats.Held.Add(1)
	s.ack(ss, id)
}

func (s *Server) sendFrame(ss *session, lk *link, id []byte, build func([]byte) []byte) {
	if lk.Pending() > int64(s.opt.MaxLinkOutbound) {
		s.stats.LinkCongested.Add(1)
		s.replyErr(ss, errCongested, id)
		return
	}
	out := ss.Loop.Out(&lk.Endpoint)
	*out = build(*out)
	s.stats.Forwarded.Add(1)
	s.ack(ss, id)
}

// setReach records which servers lk reaches, first draining, on lk's loop,
// the held chats of every server it now reaches.
func (s *Server) setReach(lk *link, ids []string) {
	reach := make(map[string]struct{}, len(ids))
	h := s.hold
	h.mu.Lock()
	for _, id := range ids {
		reach[id] = struct{}{}
		q := h.q[id]
		if q == nil || len(q.items) == 0 {
			continue
		}
		out := lk.Loop.Out(&lk.Endpoint)
		for _, c := range q.items {
			*out = append(*out, c.frame...)
		}
		s.stats.HeldSent.Add(int64(len(q.items)))
		s.log.Info("sending held chats", "server", id, "chats", len(q.items), "bytes", q.bytes, "proxy", lk.proxy)
		delete(h.q, id)
	}
	lk.reach.Store(&reach)
	h.mu.Unlock()
}

// expireHeld tells the senders of chats held longer than the age limit that
// they could not be forwarded.
func (s *Server) expireHeld() {
	defer s.bg.Done()
	h := s.hold
	t := time.NewTicker(max(h.maxAge/10, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			var expired []heldChat
			h.mu.Lock()
			for dst, q := range h.q {
				i := 0
				for i < len(q.items) && now.Sub(q.items[i].at) > h.maxAge {
					q.bytes -= len(q.items[i].frame)
					i++
				}
				if i > 0 {
					expired = append(expired, q.items[:i]...)
					q.items = append(q.items[:0:0], q.items[i:]...)
				}
				if len(q.items) == 0 {
					delete(h.q, dst)
				}
			}
			h.mu.Unlock()
			for _, c := range expired {
				s.stats.HoldExpired.Add(1)
				if c.from.Closed() {
					s.stats.DroppedNoSender.Add(1)
					continue
				}
				msg := codec.AppendError(nil, string(errNoForwarding), c.id)
				_ = c.from.C.AsyncWrite(msg, func(gnet.Conn, error) error { return nil })
			}
			if len(expired) > 0 {
				s.log.Warn("held chats expired: no link reached their server in time", "chats", len(expired), "max_age", h.maxAge)
			}
		}
	}
}
