package server

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/relaychat/relaychat/codec"
	"github.com/relaychat/relaychat/internal/batch"
	"github.com/relaychat/relaychat/internal/peer"
)

// link is a connection on the peer side: accepted on the peer port (from a
// proxy, or from another server in mesh mode) or dialed by this server to
// another (mesh). Either way it behaves the same once its hello is done.
// Fields without a note are touched only on the link's loop.
type link struct {
	batch.Endpoint
	s      *Server
	dialed bool
	// want is, for a dialed link, the server id it is meant to reach.
	want string
	// ended yields, when a dialed link closes, whether it came up.
	ended chan bool

	hs     *peer.Handshake
	gated  bool // holds a slot of the pre-hello gate
	remote peer.Identity
	opened int64 // unix nanos
	// up is set once the remote end proved it knows the secret.
	up atomic.Bool
	// lastSeen is the unix-nano time of the last bytes received.
	lastSeen atomic.Int64
	// reach is, server id -> run (epoch), where frames sent on this link
	// go: the remote server itself for a direct link, the servers a proxy
	// announced for a proxy link. Replaced, never modified.
	reach atomic.Pointer[map[string]uint64]
	// goodbye is set when the remote end said it is stopping.
	goodbye atomic.Bool
	// touched collects, during one callback, the streams to acknowledge;
	// lastIn is the stream the last frame belonged to.
	touched []*inStream
	lastIn  *inStream
	// sent counts the bytes handed to the connection; inFlight are the
	// stream frames among them not known to be in the kernel yet (their
	// senders' acks wait for it). Loop only.
	sent     int64
	inFlight []linkFrame
	name     string // for logs: "proxy p1" or "server s2"
}

func (lk *link) reaches(server string) (uint64, bool) {
	if lk.goodbye.Load() {
		return 0, false
	}
	m := lk.reach.Load()
	if m == nil {
		return 0, false
	}
	e, ok := (*m)[server]
	return e, ok
}

// linkSet tracks links: every open one (for the watchdog) and, copy on
// write, the authenticated ones (for path choice on any goroutine).
type linkSet struct {
	mu   sync.Mutex
	open map[*link]struct{}
	list atomic.Pointer[[]*link]
}

func (ls *linkSet) addOpen(lk *link) {
	ls.mu.Lock()
	if ls.open == nil {
		ls.open = make(map[*link]struct{})
	}
	ls.open[lk] = struct{}{}
	ls.mu.Unlock()
}

func (ls *linkSet) removeOpen(lk *link) {
	ls.mu.Lock()
	delete(ls.open, lk)
	ls.mu.Unlock()
}

func (ls *linkSet) each(fn func(*link)) {
	ls.mu.Lock()
	list := make([]*link, 0, len(ls.open))
	for lk := range ls.open {
		list = append(list, lk)
	}
	ls.mu.Unlock()
	for _, lk := range list {
		fn(lk)
	}
}

func (ls *linkSet) publish(lk *link, add bool) bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	var next []*link
	found := false
	if p := ls.list.Load(); p != nil {
		for _, x := range *p {
			if x == lk {
				found = true
				continue
			}
			next = append(next, x)
		}
	}
	if add {
		next = append(next, lk)
	}
	ls.list.Store(&next)
	return found
}

func (ls *linkSet) up() []*link {
	if p := ls.list.Load(); p != nil {
		return *p
	}
	return nil
}

// pathTo picks the link to send server dst's stream on, and the run of dst
// it reaches: only links reaching dst's newest known run count; a direct
// link beats a proxy; among proxies the current path is kept while it
// stays usable (moving costs a resend), else one is chosen by a hash of
// the destination, so streams spread over proxies. avoid, if not nil, is
// passed over when another candidate exists.
func (s *Server) pathTo(dst string, avoid *link) (*link, uint64) {
	var best uint64
	var cands []*link
	for _, lk := range s.links.up() {
		e, ok := lk.reaches(dst)
		if !ok || lk.Closed() {
			continue
		}
		switch {
		case e > best:
			best, cands = e, append(cands[:0], lk)
		case e == best:
			cands = append(cands, lk)
		}
	}
	if len(cands) == 0 {
		return nil, 0
	}
	if avoid != nil && len(cands) > 1 {
		for i, lk := range cands {
			if lk == avoid {
				cands = append(cands[:i], cands[i+1:]...)
				break
			}
		}
	}
	for _, lk := range cands {
		if lk.remote.Role == peer.RoleServer && lk.remote.ID == dst {
			return lk, best
		}
	}
	if o := s.out.find(dst); o != nil {
		if cur := o.currentPath(); cur != nil && cur != avoid {
			for _, lk := range cands {
				if lk == cur {
					return cur, best
				}
			}
		}
	}
	return cands[int(hashName(s.opt.ID+" "+dst)%uint32(len(cands)))], best
}

// linkTo returns any authenticated link reaching server id (for acks).
func (s *Server) linkTo(id string) *link {
	lk, _ := s.pathTo(id, nil)
	return lk
}

// repathAll re-evaluates the path of every stream (a link came or went, or
// a reach set changed).
func (s *Server) repathAll() {
	for _, o := range s.out.all() {
		o.repath()
	}
}

// openLink sets up a new peer connection on its loop; out is the dialer's
// hello.
func (s *Server) openLink(lk *link, c gnet.Conn, l *batch.Loop) (out []byte, act gnet.Action) {
	lk.s = s
	lk.C = c
	lk.Loop = l
	lk.MaxOut = 0
	now := time.Now().UnixNano()
	lk.opened = now
	lk.lastSeen.Store(now)
	lk.Hooks = linkBytes{lk}
	if limit := s.maxConns.Load(); limit > 0 && s.stats.Connections.Load()+s.openLinks.Load() >= limit {
		s.stats.Refused.Add(1)
		lk.MarkClosed()
		return nil, gnet.Close
	}
	if !s.peerGate.Enter() {
		s.stats.PeerRefused.Add(1)
		if s.stats.PeerRefused.Load()%100 == 1 {
			s.log.Warn("refusing peer connections: too many have not finished their hello", "max", s.opt.MaxPeerPending, "remote", c.RemoteAddr())
		}
		lk.MarkClosed()
		return nil, gnet.Close
	}
	lk.gated = true
	self := peer.Identity{Role: peer.RoleServer, ID: s.opt.ID, Epoch: s.epoch}
	var err error
	if lk.dialed {
		lk.hs, out, err = peer.NewDialer(s.secret, self)
	} else {
		lk.hs, err = peer.NewAcceptor(s.secret, self)
	}
	if err != nil {
		s.log.Error("cannot start a link hello", "err", err)
		return nil, gnet.Close
	}
	c.SetContext(lk)
	s.links.addOpen(lk)
	s.openLinks.Add(1)
	return out, gnet.None
}

// linkBytes counts what batch writes to a link (control lines, acks), so
// that lk.sent matches what gnet was handed.
type linkBytes struct{ lk *link }

func (b linkBytes) Written(buf []byte, _ []batch.Mark) { b.lk.sent += int64(len(buf)) }
func (linkBytes) Lost([]byte, []batch.Mark)            {}

// closeLink is the link's OnClose.
func (s *Server) closeLink(lk *link, err error) {
	lk.MarkClosed()
	s.links.removeOpen(lk)
	s.openLinks.Add(-1)
	if lk.gated {
		lk.gated = false
		s.peerGate.Leave()
	}
	if lk.up.Load() {
		if s.links.publish(lk, false) {
			s.stats.LinksUp.Add(-1)
		}
		msg := "proxy link down"
		if lk.remote.Role == peer.RoleServer {
			msg = "mesh link down"
		}
		s.log.Warn(msg, "peer", lk.remote.ID, "remote", lk.C.RemoteAddr(), "err", err)
		s.repathAll()
	}
	if lk.ended != nil {
		lk.ended <- lk.up.Load()
	}
}

// serveLink handles every complete line in the link's inbound buffer.
func (s *Server) serveLink(l *batch.Loop, lk *link) gnet.Action {
	c := lk.C
	lk.lastSeen.Store(time.Now().UnixNano())
	lk.kernelProgress()
	buf, _ := c.Peek(-1)
	consumed := 0
	act := gnet.None
	for consumed < len(buf) {
		line, n, err := codec.NextLine(buf[consumed:], lineCap(lk))
		if err != nil {
			s.stats.DroppedBadFrame.Add(1)
			s.log.Warn("closing link: line too long", "peer", lk.remote.ID, "remote", c.RemoteAddr(), "up", lk.up.Load())
			act = gnet.Close
			break
		}
		if n == 0 {
			break
		}
		consumed += n
		if len(line) == 0 {
			continue
		}
		if !lk.up.Load() {
			if !s.hello(l, lk, line) {
				act = gnet.Close
				break
			}
			continue
		}
		s.linkLine(l, lk, line)
	}
	batch.Consume(c, consumed)
	s.ackTouched(l, lk)
	return act
}

// lineCap is the longest line a link may send: a hello is short, so an
// unauthenticated connection cannot make the server buffer much.
func lineCap(lk *link) int {
	if lk.up.Load() {
		return codec.MaxFrameLine
	}
	return 1024
}

// hello feeds one line to the handshake; false closes the link.
func (s *Server) hello(l *batch.Loop, lk *link, line []byte) bool {
	out, done, err := lk.hs.Feed(line)
	if err != nil {
		s.stats.LinkAuthFailures.Add(1)
		s.log.Warn("closing link: hello failed", "remote", lk.C.RemoteAddr(), "err", err)
		return false
	}
	if len(out) > 0 {
		l.Append(&lk.Endpoint, out)
	}
	if !done {
		return true
	}
	r := lk.hs.Remote()
	if lk.dialed && (r.Role != peer.RoleServer || r.ID != lk.want) {
		s.log.Error("closing link: the server at this address is not the one discovered", "want", lk.want, "got", r.ID)
		return false
	}
	if r.Role == peer.RoleServer && r.ID == s.opt.ID {
		s.log.Error("closing link: it comes from a server with this server's id", "remote", lk.C.RemoteAddr())
		return false
	}
	lk.remote = r
	lk.gated = false
	s.peerGate.Leave()
	reach := map[string]uint64{}
	if r.Role == peer.RoleServer {
		reach[r.ID] = r.Epoch
	}
	lk.reach.Store(&reach)
	lk.up.Store(true)
	lk.MaxOut = s.opt.MaxLinkOutbound
	s.links.publish(lk, true)
	s.stats.LinksUp.Add(1)
	if r.Role == peer.RoleServer {
		s.log.Info("mesh link up", "peer", r.ID, "remote", lk.C.RemoteAddr(), "dialed", lk.dialed)
	} else {
		s.log.Info("proxy link up", "proxy", r.ID, "remote", lk.C.RemoteAddr())
	}
	s.repathAll()
	return true
}

// linkLine handles one line from an authenticated link.
func (s *Server) linkLine(l *batch.Loop, lk *link, line []byte) {
	switch line[0] {
	case codec.KindPing:
		l.Append(&lk.Endpoint, pongLine)
		return
	case codec.KindPong:
		return
	case codec.KindReach:
		if lk.remote.Role != peer.RoleProxy {
			s.badFrame(lk, "reach line from a server")
			return
		}
		rs, err := codec.ParseReach(line)
		if err != nil {
			s.badFrame(lk, "malformed reach line")
			return
		}
		reach := make(map[string]uint64, len(rs))
		for _, r := range rs {
			if r.ID != s.opt.ID {
				reach[r.ID] = r.Epoch
			}
		}
		lk.reach.Store(&reach)
		s.repathAll()
		return
	case codec.KindGoodbye:
		// The peer is stopping: move the streams off this link, then close
		// it from this side, once this callback's acks are written, so the
		// peer does not close on frames still coming in (a reset that would
		// lose the acks).
		lk.goodbye.Store(true)
		s.log.Info("peer is stopping; moving its streams", "peer", lk.remote.ID)
		s.repathAll()
		l.Post(func() { _ = lk.C.Close() })
		return
	}
	var f codec.Frame
	if err := codec.ParseFrame(line, &f); err != nil {
		s.badFrame(lk, "malformed frame")
		return
	}
	if string(f.Dst) != s.opt.ID {
		s.badFrame(lk, "frame for another server")
		return
	}
	if f.Kind == codec.KindNak {
		// A proxy's own notice about a frame of ours it could not relay.
		if o := s.out.find(string(f.Src)); o != nil && lk.remote.Role == peer.RoleProxy {
			o.nak(lk, f.Stream, f.Seq)
		}
		return
	}
	// A link speaks only for the servers behind it.
	if _, ok := lk.reaches(string(f.Src)); !ok && !(lk.remote.Role == peer.RoleServer && string(f.Src) == lk.remote.ID) {
		s.stats.StreamForeign.Add(1)
		s.log.Warn("dropping frame from a server this link does not reach", "peer", lk.remote.ID, "src", string(f.Src))
		return
	}
	if f.Kind == codec.KindAck {
		if o := s.out.find(string(f.Src)); o != nil {
			o.ack(f.Stream, f.Seq)
		}
		return
	}
	if f.DstEpoch != s.epoch {
		s.stats.StreamStale.Add(1)
		return
	}
	s.receiveFrame(l, lk, &f, &lk.touched)
}

var pongLine = []byte{codec.KindPong, '\n'}

// badFrame counts and logs a line the link should not have sent (never its
// content: it may hold a chat).
func (s *Server) badFrame(lk *link, why string) {
	s.stats.DroppedBadFrame.Add(1)
	s.log.Warn("dropping link line", "peer", lk.remote.ID, "why", why)
}

// ackTouched acknowledges, once per stream, the frames this callback
// settled.
func (s *Server) ackTouched(l *batch.Loop, lk *link) {
	for i, st := range lk.touched {
		lk.touched[i] = nil
		out := l.Out(&lk.Endpoint)
		line, via := st.ackLine(*out, false)
		if via == nil {
			continue
		}
		if via == lk {
			*out = line
			continue
		}
		// Acks go back on the link the frames came on; this one was a skip
		// on another link: send it there.
		batch.Send(&via.Endpoint, append([]byte(nil), line[len(*out):]...), nil)
	}
	lk.touched = lk.touched[:0]
}

// watchLinks closes links that did not finish their hello within
// LinkTimeout, or went silent that long, and pings the others.
func (s *Server) watchLinks() {
	defer s.bg.Done()
	t := time.NewTicker(s.opt.PingInterval)
	defer t.Stop()
	ping := []byte{codec.KindPing, '\n'}
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			limit := now.Add(-s.opt.LinkTimeout).UnixNano()
			s.links.each(func(lk *link) {
				switch {
				case !lk.up.Load() && lk.opened < limit:
					s.log.Warn("closing link: hello not finished in time", "remote", lk.C.RemoteAddr(), "timeout", s.opt.LinkTimeout)
					_ = lk.C.Close()
				case lk.up.Load() && lk.lastSeen.Load() < limit:
					s.log.Warn("closing silent link", "peer", lk.remote.ID, "timeout", s.opt.LinkTimeout)
					_ = lk.C.Close()
				case lk.up.Load():
					batch.Send(&lk.Endpoint, append([]byte(nil), ping...), nil)
				}
			})
		}
	}
}

// goodbye tells every link this server is stopping.
func (s *Server) goodbye() {
	for _, lk := range s.links.up() {
		batch.Send(&lk.Endpoint, []byte{codec.KindGoodbye, '\n'}, nil)
	}
}

// meshLoop (mesh topology) discovers the other servers from their
// heartbeats and keeps a link to each server whose id sorts after this
// one's: each pair links once, dialed by the lower id.
func (s *Server) meshLoop() {
	defer s.bg.Done()
	type dialer struct {
		addr atomic.Pointer[string]
		stop chan struct{}
	}
	dialers := map[string]*dialer{}
	t := time.NewTicker(s.opt.Heartbeat)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), s.opt.RedisTimeout)
		servers, err := s.opt.Router.Servers(ctx)
		cancel()
		if err == nil {
			for id, info := range servers {
				if id <= s.opt.ID {
					continue
				}
				d := dialers[id]
				if d == nil {
					d = &dialer{stop: make(chan struct{})}
					d.addr.Store(&info.Addr)
					dialers[id] = d
					s.log.Info("mesh: discovered server", "peer", id, "addr", info.Addr)
					s.bg.Add(1)
					go func(id string, d *dialer) {
						defer s.bg.Done()
						stop := make(chan struct{})
						go func() {
							select {
							case <-s.dialStop:
							case <-d.stop:
							}
							close(stop)
						}()
						peer.Redial(stop, func() string { return *d.addr.Load() }, peer.DialOptions{Timeout: s.opt.RedisTimeout},
							func(nc net.Conn) (<-chan bool, error) { return s.enrollDialed(id, nc) },
							func(attempt int, addr string, err error) {
								if attempt == 1 || attempt%20 == 0 {
									s.log.Warn("mesh: dial failed; retrying with backoff", "peer", id, "addr", addr, "attempt", attempt, "err", err)
								}
							})
					}(id, d)
				} else if *d.addr.Load() != info.Addr {
					d.addr.Store(&info.Addr)
				}
			}
			for id, d := range dialers {
				if _, live := servers[id]; !live && s.linkTo(id) == nil {
					s.log.Info("mesh: server left", "peer", id)
					close(d.stop)
					delete(dialers, id)
				}
			}
		}
		select {
		case <-s.dialStop:
			return
		case <-t.C:
		}
	}
}

// enrollDialed hands a dialed connection to the engine's loops.
func (s *Server) enrollDialed(id string, nc net.Conn) (<-chan bool, error) {
	select {
	case <-s.dialStop:
		return nil, errors.New("server: shutting down")
	default:
	}
	lk := &link{dialed: true, want: id, ended: make(chan bool, 1)}
	ctx := gnet.NewNetConnContext(gnet.NewContext(context.Background(), lk), nc)
	ch, err := s.eng.Register(ctx)
	if err != nil {
		return nil, err
	}
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
	case <-s.dialStop:
		// The engine may be stopping and never register it: give up on
		// it (gnet closes what it did register when it stops).
		return nil, errors.New("server: shutting down")
	}
	return lk.ended, nil
}
