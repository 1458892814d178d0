package proxy

import (
	"sort"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/relaychat/relaychat/codec"
	"github.com/relaychat/relaychat/internal/batch"
	"github.com/relaychat/relaychat/internal/peer"
)

// handler is the gnet event handler of every link.
type handler struct {
	gnet.BuiltinEventEngine
	p     *Proxy
	loops batch.Loops
}

func (h *handler) OnOpen(gc gnet.Conn) ([]byte, gnet.Action) {
	c, ok := gc.Context().(*conn)
	if !ok {
		return nil, gnet.Close
	}
	c.C = gc
	c.Loop = h.loops.Get(gc.EventLoop())
	c.Hooks = lostCounter{c: c, p: h.p}
	hs, first, err := peer.NewDialer([]byte(h.p.opt.Secret), peer.Identity{Role: peer.RoleProxy, ID: h.p.opt.ID})
	if err != nil {
		h.p.log.Error("cannot start a link hello", "err", err)
		return nil, gnet.Close
	}
	c.hs = hs
	return first, gnet.None
}

// lostCounter counts relayed bytes whose link closed before they were
// written: the senders' streams resend them.
type lostCounter struct {
	c *conn
	p *Proxy
}

func (lostCounter) Written([]byte, []batch.Mark) {}

func (lc lostCounter) Lost(buf []byte, _ []batch.Mark) {
	lc.p.stats.LostBytes.Add(int64(len(buf)))
	lc.p.log.Debug("link closed with relayed frames not yet written; their senders resend them", "server", lc.c.l.id, "bytes", len(buf))
}

func (h *handler) OnClose(gc gnet.Conn, err error) gnet.Action {
	c, ok := gc.Context().(*conn)
	if !ok {
		return gnet.None
	}
	c.MarkClosed()
	up := c.up.Load()
	if c.l.conn.CompareAndSwap(c, nil) {
		h.p.stats.LinkDowns.Add(1)
		h.p.stats.LinksUp.Add(-1)
		h.p.log.Warn("link down", "server", c.l.id, "addr", *c.l.addr.Load(), "err", err)
		h.p.broadcastReach(c.Loop)
	}
	c.ended <- up
	close(c.closed)
	c.Loop.Flush() // the reach lines broadcastReach gathered
	return gnet.None
}

func (h *handler) OnTraffic(gc gnet.Conn) gnet.Action {
	c := gc.Context().(*conn)
	c.lastSeen.Store(time.Now().UnixNano())
	act := h.p.relay(c)
	c.Loop.Flush()
	return act
}

var pongLine = []byte{codec.KindPong, '\n'}

// relay handles every complete line from one link.
func (p *Proxy) relay(c *conn) gnet.Action {
	buf, _ := c.C.Peek(-1)
	consumed := 0
	links := *p.byID.Load()
	act := gnet.None
	for consumed < len(buf) {
		max := codec.MaxFrameLine
		if !c.up.Load() {
			max = 1024
		}
		line, n, err := codec.NextLine(buf[consumed:], max)
		if err != nil {
			p.stats.BadFrames.Add(1)
			p.log.Error("closing link: line too long", "server", c.l.id)
			act = gnet.Close
			break
		}
		if n == 0 {
			break
		}
		frame := buf[consumed : consumed+n] // with its "\n"
		consumed += n
		if len(line) == 0 {
			continue
		}
		if !c.up.Load() {
			if !p.hello(c, line) {
				act = gnet.Close
				break
			}
			continue
		}
		switch line[0] {
		case codec.KindPing:
			c.Loop.Append(&c.Endpoint, pongLine)
			continue
		case codec.KindPong:
			continue
		case codec.KindGoodbye:
			c.goodbye.Store(true)
			p.log.Info("server is stopping", "server", c.l.id)
			p.broadcastReach(c.Loop)
			continue
		}
		kind, dst, src, err := codec.FrameRoute(line)
		if err != nil {
			p.stats.BadFrames.Add(1)
			p.log.Warn("dropping malformed line", "server", c.l.id, "kind", string(line[0]))
			continue
		}
		if string(src) != c.l.id {
			// A server speaks only for itself.
			p.stats.DropForeign.Add(1)
			p.log.Warn("dropping frame sent in another server's name", "server", c.l.id, "src", string(src))
			continue
		}
		var target *conn
		if l := links[string(dst)]; l != nil {
			target = l.conn.Load()
		}
		switch {
		case target == nil || target.Closed():
			p.stats.DropUnreachable.Add(1)
			p.dropLog(kind, dst, "no link")
			p.nak(c, kind, line)
		case target.Pending() > int64(p.opt.MaxLinkOutbound):
			p.stats.DropCongested.Add(1)
			p.dropLog(kind, dst, "link backed up")
		default:
			c.Loop.Append(&target.Endpoint, frame)
			p.stats.Relayed.Add(1)
		}
	}
	batch.Consume(c.C, consumed)
	return act
}

// nak tells the sender of a data frame that it was not relayed, so that
// the sender knows the frame did not arrive this way.
func (p *Proxy) nak(from *conn, kind byte, line []byte) {
	if kind == codec.KindAck || kind == codec.KindSkip || kind == codec.KindNak {
		return
	}
	var f codec.Frame
	if codec.ParseFrame(line, &f) != nil {
		return
	}
	from.Loop.Append(&from.Endpoint, codec.AppendNakFrame(nil, string(f.Src), string(f.Dst), f.Stream, f.Seq))
}

// dropLog logs a dropped frame, at most about once a second per proxy.
func (p *Proxy) dropLog(kind byte, dst []byte, why string) {
	now := time.Now().Unix()
	if last := p.lastDropLog.Load(); last == now || !p.lastDropLog.CompareAndSwap(last, now) {
		return
	}
	p.log.Warn("dropping frames its sender will resend", "kind", string(kind), "server", string(dst), "why", why,
		"unreachable_total", p.stats.DropUnreachable.Load(), "congested_total", p.stats.DropCongested.Load())
}

// hello feeds one line to the handshake and publishes the link once the
// server has proved it knows the secret.
func (p *Proxy) hello(c *conn, line []byte) bool {
	out, done, err := c.hs.Feed(line)
	if err != nil {
		p.stats.LinkAuthFailures.Add(1)
		p.log.Error("closing link: hello failed", "server", c.l.id, "err", err)
		return false
	}
	if !done {
		return true
	}
	r := c.hs.Remote()
	if r.Role != peer.RoleServer || r.ID != c.l.id {
		p.log.Error("closing link: the server at this address has another id", "want", c.l.id, "got", r.ID, "addr", *c.l.addr.Load())
		return false
	}
	c.Loop.Append(&c.Endpoint, out) // our proof, before anything else
	c.epoch = r.Epoch
	c.MaxOut = p.opt.MaxLinkOutbound
	c.up.Store(true)
	if old := c.l.conn.Swap(c); old == nil {
		p.stats.LinksUp.Add(1)
	}
	p.stats.LinkUps.Add(1)
	// The reach set goes out with the proof, so the server knows where
	// this link leads as soon as it trusts it.
	c.Loop.Append(&c.Endpoint, p.reachLine())
	p.log.Info("link up", "server", r.ID, "addr", *c.l.addr.Load())
	p.broadcastReach(c.Loop)
	p.checkReady()
	return true
}

// broadcastReach tells every linked server which servers this proxy links
// to now, and which run of each, so that each server sends a stream
// through this proxy only if it reaches the stream's destination (and
// accepts frames from the servers it names). Called on a link's loop, it
// goes out through that loop's batch, like the frames it relays later, so
// a server learns of a new server before any frame from it; off the loops
// (l nil) through each link's loop. Broadcasts are serialised, so every
// server's last reach line is the current set.
func (p *Proxy) broadcastReach(l *batch.Loop) {
	p.reachMu.Lock()
	defer p.reachMu.Unlock()
	line := p.reachLine()
	for _, lk := range *p.byID.Load() {
		if c := lk.conn.Load(); c != nil {
			if l != nil {
				l.Append(&c.Endpoint, line)
			} else {
				batch.Send(&c.Endpoint, append([]byte(nil), line...), nil)
			}
		}
	}
}

// reachLine is the reach line for the links up now.
func (p *Proxy) reachLine() []byte {
	var rs []codec.Reach
	for id, l := range *p.byID.Load() {
		if c := l.conn.Load(); c != nil && !c.goodbye.Load() && !p.stopping.Load() {
			rs = append(rs, codec.Reach{ID: id, Epoch: c.epoch})
		}
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].ID < rs[j].ID })
	return codec.AppendReach(nil, rs)
}
