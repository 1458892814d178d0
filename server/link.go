package server

import (
	"context"
	"crypto/subtle"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/relaychat/relaychat/codec"
	"github.com/relaychat/relaychat/internal/batch"
)

// link is a connection from a proxy to the peer port. Fields without a
// note are touched only on the peer engine's loop.
type link struct {
	batch.Endpoint
	proxy string // the proxy's id, from its hello; "" until then
	// lastSeen is the unix-nano time of the last bytes received, read by
	// watchLinks.
	lastSeen atomic.Int64
	// reach is the set of server ids the proxy last said it links to;
	// replaced, never modified. nil until its first reach line.
	reach atomic.Pointer[map[string]struct{}]
}

func (lk *link) reaches(server string) bool {
	m := lk.reach.Load()
	if m == nil {
		return false
	}
	_, ok := (*m)[server]
	return ok
}

// linkSet is the set of established links. Loops read it without locking
// (copy on write); add and remove run on the peer loop.
type linkSet struct {
	mu   sync.Mutex
	list atomic.Pointer[[]*link]
}

// pickFor returns a link that reaches server, for chats to name, or nil.
// It starts at name's own link (see pick) and goes round, so one
// recipient's chats keep to one path while the set does not change.
func (ls *linkSet) pickFor(name, server string) *link {
	p := ls.list.Load()
	if p == nil || len(*p) == 0 {
		return nil
	}
	l := *p
	start := 0
	if len(l) > 1 {
		start = int(hashName(name) % uint32(len(l)))
	}
	for i := range l {
		if lk := l[(start+i)%len(l)]; lk.reaches(server) {
			return lk
		}
	}
	return nil
}

// pick returns the link for chats to name, or nil when there is none. A
// given name always maps to the same link while the set is unchanged, so one
// sender's messages to one recipient stay on one path and in order.
func (ls *linkSet) pick(name string) *link {
	p := ls.list.Load()
	if p == nil || len(*p) == 0 {
		return nil
	}
	l := *p
	if len(l) == 1 {
		return l[0]
	}
	return l[hashName(name)%uint32(len(l))]
}

func (ls *linkSet) add(lk *link) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	var next []*link
	if p := ls.list.Load(); p != nil {
		next = append(next, *p...)
	}
	next = append(next, lk)
	ls.list.Store(&next)
}

func (ls *linkSet) remove(lk *link) bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	p := ls.list.Load()
	if p == nil {
		return false
	}
	next := make([]*link, 0, len(*p))
	for _, x := range *p {
		if x != lk {
			next = append(next, x)
		}
	}
	if len(next) == len(*p) {
		return false
	}
	ls.list.Store(&next)
	return true
}

func (ls *linkSet) all() []*link {
	if p := ls.list.Load(); p != nil {
		return *p
	}
	return nil
}

// linkHandler serves the peer port: the forwarding tier's links.
type linkHandler struct {
	gnet.BuiltinEventEngine
	s     *Server
	loops batch.Loops
}

func (h *linkHandler) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	lk := &link{}
	lk.C = c
	lk.Loop = h.loops.Get(c.EventLoop())
	batch.NewCoalescer(&lk.Endpoint) // every client loop writes to links
	lk.lastSeen.Store(time.Now().UnixNano())
	lk.OnLost = func(n int) {
		h.s.stats.LinkLost.Add(1)
		h.s.log.Warn("proxy link closed before forwarded frames were written", "proxy", lk.proxy, "bytes", n)
	}
	c.SetContext(lk)
	return nil, gnet.None
}

func (h *linkHandler) OnClose(c gnet.Conn, err error) gnet.Action {
	lk, ok := c.Context().(*link)
	if !ok {
		return gnet.None
	}
	lk.MarkClosed()
	if h.s.links.remove(lk) {
		h.s.stats.LinksUp.Add(-1)
		h.s.log.Warn("proxy link down", "proxy", lk.proxy, "remote", c.RemoteAddr(), "err", err)
	}
	return gnet.None
}

func (h *linkHandler) OnTraffic(c gnet.Conn) gnet.Action {
	lk := c.Context().(*link)
	lk.lastSeen.Store(time.Now().UnixNano())
	act := h.s.serveLink(lk)
	lk.Loop.Flush()
	return act
}

// serveLink handles every complete frame in the link's inbound buffer.
func (s *Server) serveLink(lk *link) gnet.Action {
	c := lk.C
	buf, _ := c.Peek(-1)
	consumed := 0
	for consumed < len(buf) {
		line, n, err := codec.NextLine(buf[consumed:], codec.MaxFrameLine)
		if err != nil {
			s.stats.DroppedBadFrame.Add(1)
			s.log.Error("closing link: frame too long", "proxy", lk.proxy, "remote", c.RemoteAddr())
			return gnet.Close
		}
		if n == 0 {
			break
		}
		consumed += n
		if len(line) == 0 {
			continue
		}
		if lk.proxy == "" {
			if !s.hello(lk, line) {
				return gnet.Close
			}
			continue
		}
		switch line[0] {
		case codec.KindPing:
			lk.Loop.Append(&lk.Endpoint, pongLine)
		case codec.KindPong:
		case codec.KindReach:
			ids, err := codec.ParseReach(line)
			if err != nil {
				s.stats.DroppedBadFrame.Add(1)
				s.log.Warn("dropping malformed reach line", "proxy", lk.proxy, "line", truncate(line, 120))
				continue
			}
			s.setReach(lk, ids)
		default:
			s.frame(lk, line)
		}
	}
	batch.Consume(c, consumed)
	return gnet.None
}

var pongLine = []byte{codec.KindPong, '\n'}

// hello checks a proxy's first line and, if it is acceptable, registers the
// link before answering, so that a proxy that has read the answer knows
// this server routes through it.
func (s *Server) hello(lk *link, line []byte) bool {
	role, id, secret, err := codec.ParseHello(line)
	if err != nil || role != "proxy" {
		s.stats.DroppedBadFrame.Add(1)
		s.log.Warn("closing link: bad hello", "remote", lk.C.RemoteAddr(), "line", truncate(line, 80))
		return false
	}
	if subtle.ConstantTimeCompare([]byte(secret), []byte(s.opt.PeerSecret)) != 1 {
		s.stats.LinkAuthFailures.Add(1)
		s.log.Warn("closing link: wrong peer secret", "proxy", id, "remote", lk.C.RemoteAddr())
		return false
	}
	lk.proxy = id
	s.links.add(lk)
	s.stats.LinksUp.Add(1)
	s.log.Info("proxy link up", "proxy", id, "remote", lk.C.RemoteAddr())
	out := lk.Loop.Out(&lk.Endpoint)
	*out = codec.AppendHello(*out, "server", s.opt.ID, "")
	return true
}

// frame handles one data frame from a link.
func (s *Server) frame(lk *link, line []byte) {
	var f codec.Frame
	if err := codec.ParseFrame(line, &f); err != nil || string(f.Dst) != s.opt.ID {
		s.stats.DroppedBadFrame.Add(1)
		s.log.Warn("dropping link frame: malformed or not for this server", "proxy", lk.proxy, "line", truncate(line, 120))
		return
	}
	l := lk.Loop
	switch f.Kind {
	case codec.KindMsg:
		if ss := s.reg.get(string(f.Recv)); ss != nil {
			out := l.Out(&ss.Endpoint)
			*out = append(append(*out, f.Payload...), '\n')
			s.stats.DeliveredFromLink.Add(1)
			return
		}
		// The recipient left or moved after the sender looked the route up:
		// look again, uncached, off the loop, and re-route once; or tell the
		// sender. Never drop it.
		if f.Hops < maxHops && s.reroute(&f) {
			return
		}
		s.bounce(l, lk, &f, errOffline)
	case codec.KindError:
		if ss := s.reg.get(string(f.Recv)); ss != nil {
			out := l.Out(&ss.Endpoint)
			*out = append(append(*out, f.Payload...), '\n')
			s.stats.Errors.Add(1)
			return
		}
		s.stats.DroppedNoSender.Add(1)
		s.log.Info("bounced error not delivered: its sender has left", "user", string(f.Recv))
	case codec.KindKick:
		name, token := string(f.Recv), string(f.Payload)
		if ss := s.reg.get(name); ss != nil {
			if id := ss.id.Load(); id != nil && id.token == token {
				s.kick(ss)
				return
			}
		}
		// The session may still be finishing its login here: remember the
		// kick so finishLogin honours it.
		if !s.kicks.remember(name, token) {
			s.stats.KickUndelivered.Add(1)
			s.log.Warn("kick memo full: kick for an unknown session dropped", "user", name)
		}
	default:
		s.stats.DroppedBadFrame.Add(1)
		s.log.Warn("dropping link frame of unknown kind", "proxy", lk.proxy, "kind", string(f.Kind))
	}
}

// maxHops is how many times a chat may be re-routed after reaching a
// server its recipient has left.
const maxHops = 1

// bounce sends a chat frame's sender an error through lk.
func (s *Server) bounce(l *batch.Loop, lk *link, f *codec.Frame, reason codec.ProtoError) {
	s.stats.Bounced.Add(1)
	payload := codec.AppendError(l.Scratch[:0], string(reason), f.ID)
	payload = payload[:len(payload)-1]
	out := l.Out(&lk.Endpoint)
	*out = codec.AppendFrame(*out, codec.KindError, string(f.Src), s.opt.ID, f.Hops, "", string(f.Send), f.ID, payload)
	l.Scratch = payload[:0]
}

// rerouteJob is a chat frame waiting for a fresh route lookup. Its fields
// are copies: the frame's slices alias gnet's buffer.
type rerouteJob struct {
	src, send, recv string
	hops            int
	id, payload     []byte
}

// reroute queues f for the re-route worker; false means the queue is full
// (the caller bounces the chat).
func (s *Server) reroute(f *codec.Frame) bool {
	j := rerouteJob{
		src: string(f.Src), send: string(f.Send), recv: string(f.Recv), hops: f.Hops,
		id: append([]byte(nil), f.ID...), payload: append([]byte(nil), f.Payload...),
	}
	select {
	case s.reroutes <- j:
		return true
	default:
		s.stats.RerouteOverflow.Add(1)
		s.log.Warn("re-route queue full; bouncing the chat", "user", j.recv, "queue", cap(s.reroutes))
		return false
	}
}

// rerouteWorker resolves queued chats one at a time, in arrival order, so
// re-routed chats from one sender keep their order. It writes only with
// AsyncWrite, which is safe off the loops.
func (s *Server) rerouteWorker() {
	defer s.bg.Done()
	for {
		select {
		case <-s.stop:
			return
		case j := <-s.reroutes:
			s.rerouteOne(j)
		}
	}
}

func (s *Server) rerouteOne(j rerouteJob) {
	ctx, cancel := context.WithTimeout(context.Background(), s.opt.RedisTimeout)
	r, found, err := s.opt.Router.FreshLookup(ctx, j.recv)
	cancel()
	reason := errOffline
	switch {
	case err != nil:
		s.stats.RedisErrors.Add(1)
		reason = errRoutingDown
	case found && r.Server == s.opt.ID:
		if ss := s.reg.get(j.recv); ss != nil {
			// Logged in here meanwhile.
			_ = ss.C.AsyncWrite(append(j.payload, '\n'), nil)
			s.stats.Rerouted.Add(1)
			return
		}
	case found:
		if lk := s.links.pickFor(j.recv, r.Server); lk != nil {
			frame := codec.AppendFrame(nil, codec.KindMsg, r.Server, s.opt.ID, j.hops+1, j.send, j.recv, j.id, j.payload)
			_ = lk.C.AsyncWrite(frame, nil)
			s.stats.Rerouted.Add(1)
			return
		}
		reason = errNoForwarding
	}
	lk := s.links.pickFor(j.send, j.src)
	if lk == nil {
		s.stats.DroppedNoSender.Add(1)
		s.log.Warn("cannot bounce a chat: no forwarding link", "sender", j.send, "recipient", j.recv, "reason", string(reason))
		return
	}
	s.stats.Bounced.Add(1)
	payload := codec.AppendError(nil, string(reason), j.id)
	frame := codec.AppendFrame(nil, codec.KindError, j.src, s.opt.ID, j.hops, "", j.send, j.id, payload[:len(payload)-1])
	_ = lk.C.AsyncWrite(frame, nil)
}

// watchLinks closes links that have been silent for LinkTimeout; proxies
// ping every second, so silence means the proxy or the path is gone.
func (s *Server) watchLinks() {
	defer s.bg.Done()
	t := time.NewTicker(s.opt.LinkTimeout / 4)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			for _, lk := range s.links.all() {
				if idle := now.Sub(time.Unix(0, lk.lastSeen.Load())); idle > s.opt.LinkTimeout {
					s.log.Warn("closing silent proxy link", "proxy", lk.proxy, "idle", idle.Round(time.Millisecond))
					_ = lk.C.Close()
				}
			}
		}
	}
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}

// kickMemo remembers kicks that arrived for a session whose login had not
// finished yet, for a short time and up to a bound.
type kickMemo struct {
	mu  sync.Mutex
	m   map[string]time.Time
	max int
	ttl time.Duration
}

const (
	kickMemoSize = 10000
	kickMemoTTL  = 10 * time.Second
)

func newKickMemo(max int, ttl time.Duration) *kickMemo {
	return &kickMemo{m: make(map[string]time.Time), max: max, ttl: ttl}
}

// remember records a kick; false means the memo is full of fresh entries
// and the kick was not recorded.
func (k *kickMemo) remember(name, token string) bool {
	now := time.Now()
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.m) >= k.max {
		for key, t := range k.m {
			if now.Sub(t) > k.ttl {
				delete(k.m, key)
			}
		}
		if len(k.m) >= k.max {
			return false
		}
	}
	k.m[name+" "+token] = now
	return true
}

// take reports whether a kick for (name, token) was remembered, and forgets it.
func (k *kickMemo) take(name, token string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.m) == 0 {
		return false
	}
	key := name + " " + token
	t, ok := k.m[key]
	if ok {
		delete(k.m, key)
	}
	return ok && time.Since(t) <= k.ttl
}
