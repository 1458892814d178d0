package proxy

import (
	"sort"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/relaychat/relaychat/codec"
	"github.com/relaychat/relaychat/internal/batch"
)

// Errors the proxy bounces to a chat's sender.
const (
	errUnreachable = "recipient's server unreachable"
	errCongested   = "recipient's server congested, try again"
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
	batch.NewCoalescer(&c.Endpoint) // links on other loops relay into this one
	c.MaxOut = h.p.opt.MaxLinkOutbound
	c.OnSlow = func() {
		// Relaying already bounces frames past the cap; this only reports it.
		h.p.log.Warn("link backlog over its cap; bouncing chats for it", "server", c.l.id, "cap", h.p.opt.MaxLinkOutbound)
	}
	id := c.l.id
	c.OnLost = func(n int) {
		h.p.stats.LostBytes.Add(int64(n))
		h.p.log.Warn("link closed with relayed frames not yet written", "server", id, "bytes", n)
	}
	return codec.AppendHello(nil, "proxy", h.p.opt.ID, h.p.opt.Secret), gnet.None
}

func (h *handler) OnClose(gc gnet.Conn, err error) gnet.Action {
	c, ok := gc.Context().(*conn)
	if !ok {
		return gnet.None
	}
	c.MarkClosed()
	if c.l.conn.CompareAndSwap(c, nil) {
		h.p.stats.LinkDowns.Add(1)
		h.p.log.Warn("link down", "server", c.l.id, "addr", *c.l.addr.Load(), "err", err)
		h.p.broadcastReach()
	}
	close(c.closed)
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
	for consumed < len(buf) {
		line, n, err := codec.NextLine(buf[consumed:], codec.MaxFrameLine)
		if err != nil {
			p.stats.BadFrames.Add(1)
			p.log.Error("closing link: frame too long", "server", c.l.id)
			return gnet.Close
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
				return gnet.Close
			}
			continue
		}
		switch line[0] {
		case codec.KindPing:
			c.Loop.Append(&c.Endpoint, pongLine)
			continue
		case codec.KindPong:
			continue
		}
		kind, dst, err := codec.FrameDst(line)
		if err != nil {
			p.stats.BadFrames.Add(1)
			p.log.Warn("dropping malformed frame", "server", c.l.id, "line", truncate(line, 120))
			continue
		}
		var target *conn
		if l := links[string(dst)]; l != nil {
			target = l.conn.Load()
		}
		switch {
		case target == nil || target.Closed():
			p.undeliverable(c, kind, dst, line, errUnreachable)
		case target.Pending() > int64(p.opt.MaxLinkOutbound):
			p.undeliverable(c, kind, dst, line, errCongested)
		default:
			c.Loop.Append(&target.Endpoint, frame)
			p.stats.Relayed.Add(1)
		}
	}
	batch.Consume(c.C, consumed)
	return gnet.None
}

// hello checks a server's answer to our hello and publishes the link.
func (p *Proxy) hello(c *conn, line []byte) bool {
	role, id, _, err := codec.ParseHello(line)
	if err != nil || role != "server" {
		p.stats.BadFrames.Add(1)
		p.log.Error("closing link: bad hello answer", "server", c.l.id, "line", truncate(line, 80))
		return false
	}
	if id != c.l.id {
		p.log.Error("closing link: the server at this address has another id", "want", c.l.id, "got", id, "addr", *c.l.addr.Load())
		return false
	}
	c.up.Store(true)
	c.l.conn.Store(c)
	p.stats.LinkUps.Add(1)
	p.log.Info("link up", "server", id, "addr", *c.l.addr.Load())
	p.broadcastReach()
	p.checkReady()
	return true
}

// broadcastReach tells every linked server which servers this proxy links
// to now, so that each forwards chats only for reachable servers and holds
// the rest. Broadcasts are serialised and each link's AsyncWrites run in
// order, so every server's last reach line is the current set.
func (p *Proxy) broadcastReach() {
	p.reachMu.Lock()
	defer p.reachMu.Unlock()
	var ids []string
	var up []*conn
	for id, l := range *p.byID.Load() {
		if c := l.conn.Load(); c != nil {
			ids = append(ids, id)
			up = append(up, c)
		}
	}
	sort.Strings(ids)
	line := codec.AppendReach(nil, ids)
	for _, c := range up {
		_ = c.C.AsyncWrite(line, nil)
	}
}

// undeliverable deals with a frame whose destination cannot take it now: a
// chat goes back to its sender as an error; a kick or an error frame has
// no one to tell, so it is counted and logged.
func (p *Proxy) undeliverable(from *conn, kind byte, dst, line []byte, reason string) {
	if kind != codec.KindMsg {
		if kind == codec.KindKick {
			p.stats.DroppedKicks.Add(1)
		} else {
			p.stats.DroppedOther.Add(1)
		}
		p.log.Warn("dropping frame for unreachable server", "kind", string(kind), "server", string(dst), "reason", reason)
		return
	}
	var f codec.Frame
	if err := codec.ParseFrame(line, &f); err != nil {
		p.stats.BadFrames.Add(1)
		p.log.Warn("dropping malformed frame", "server", from.l.id, "line", truncate(line, 120))
		return
	}
	p.stats.Bounced.Add(1)
	l := from.Loop
	payload := codec.AppendError(l.Scratch[:0], reason, f.ID)
	payload = payload[:len(payload)-1]
	out := l.Out(&from.Endpoint)
	*out = codec.AppendFrame(*out, codec.KindError, string(f.Src), p.opt.ID, f.Hops, "", string(f.Send), f.ID, payload)
	l.Scratch = payload[:0]
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}
