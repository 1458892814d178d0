// Package proxy is the forwarding tier: it keeps a long-lived link to the
// peer port of every message server and relays each chat frame to the
// server its destination field names, without decoding the chat itself.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/relaychat/relaychat/codec"
	"github.com/relaychat/relaychat/internal/batch"
	"github.com/relaychat/relaychat/internal/gnetlog"
)

// Options configures a Proxy. The zero value of each field is documented.
type Options struct {
	// ID names the proxy in its hellos and logs; "" means "proxy1".
	ID string
	// Servers is the static list of message servers, id -> peer address.
	// It may be empty when Discover is set.
	Servers map[string]string
	// Discover, when set, is called every DiscoverEvery to learn the live
	// servers (id -> peer address); new ones are linked, and ones that
	// disappeared are dropped once their link is down. It runs off the event
	// loops and may block (e.g. on Redis).
	Discover func(ctx context.Context) (map[string]string, error)
	// DiscoverEvery is the discovery period; 0 means 1s.
	DiscoverEvery time.Duration
	// Multicore runs one event loop per core; false means one loop.
	Multicore bool
	// Loops, when > 0, sets the number of event loops.
	Loops int
	// Secret is presented in every hello (servers started with
	// -peer-secret require it); "" means none.
	Secret string
	// PingInterval is how often each link is pinged; 0 means 1s.
	PingInterval time.Duration
	// LinkTimeout closes a link that answered nothing for this long, or did
	// not finish its hello in this time; 0 means 5s.
	LinkTimeout time.Duration
	// DialTimeout bounds one connection attempt; 0 means 2s.
	DialTimeout time.Duration
	// BackoffMin and BackoffMax bound the exponential wait between
	// reconnection attempts; 0 means 50ms and 5s.
	BackoffMin, BackoffMax time.Duration
	// MaxLinkOutbound caps the bytes waiting to be written to one server;
	// past it, frames for that server are bounced to their sender instead
	// of growing memory. 0 means 64 MiB.
	MaxLinkOutbound int
	// Logger receives the proxy's logs; nil means slog.Default().
	Logger *slog.Logger
}

func (o *Options) setDefaults() error {
	if o.ID == "" {
		o.ID = "proxy1"
	}
	if !codec.ValidServerID(o.ID) {
		return fmt.Errorf("proxy: invalid id %q", o.ID)
	}
	if len(o.Servers) == 0 && o.Discover == nil {
		return errors.New("proxy: no servers: give a static list or a discovery source")
	}
	for id, addr := range o.Servers {
		if !codec.ValidServerID(id) {
			return fmt.Errorf("proxy: invalid server id %q", id)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("proxy: server %s address %q: %v", id, addr, err)
		}
	}
	if o.Loops < 0 || o.Loops > 256 {
		return fmt.Errorf("proxy: loops %d out of range 0..256", o.Loops)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&o.DiscoverEvery, time.Second)
	def(&o.PingInterval, time.Second)
	def(&o.LinkTimeout, 5*time.Second)
	def(&o.DialTimeout, 2*time.Second)
	def(&o.BackoffMin, 50*time.Millisecond)
	def(&o.BackoffMax, 5*time.Second)
	if o.BackoffMax < o.BackoffMin {
		return fmt.Errorf("proxy: backoff max %v below min %v", o.BackoffMax, o.BackoffMin)
	}
	if o.MaxLinkOutbound == 0 {
		o.MaxLinkOutbound = 64 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return nil
}

// Stats are the proxy's counters. Every frame not relayed is counted.
type Stats struct {
	Relayed      atomic.Int64 // frames handed to their destination server
	Bounced      atomic.Int64 // chats returned to their sender as errors
	DroppedKicks atomic.Int64 // kick frames for an unreachable server
	DroppedOther atomic.Int64 // error frames for an unreachable server
	BadFrames    atomic.Int64 // lines that did not parse
	LostBytes    atomic.Int64 // relayed bytes whose destination link closed before they were written
	LinkUps      atomic.Int64
	LinkDowns    atomic.Int64
}

// Snapshot returns the counters by name.
func (s *Stats) Snapshot() map[string]int64 {
	return map[string]int64{
		"relayed": s.Relayed.Load(), "bounced": s.Bounced.Load(),
		"dropped_kicks": s.DroppedKicks.Load(), "dropped_other": s.DroppedOther.Load(),
		"bad_frames": s.BadFrames.Load(), "lost_bytes": s.LostBytes.Load(), "link_ups": s.LinkUps.Load(), "link_downs": s.LinkDowns.Load(),
	}
}

// Proxy is the forwarding proxy. Create it with New, then Start; stop it
// with Shutdown.
type Proxy struct {
	opt   Options
	log   *slog.Logger
	stats Stats
	cli   *gnet.Client
	h     *handler

	mu    sync.Mutex
	links map[string]*link // guarded by mu; byID is its read-only copy
	byID  atomic.Pointer[map[string]*link]

	reachMu sync.Mutex // serialises broadcastReach

	ready     chan struct{}
	readyOnce sync.Once
	stop      chan struct{}
	bg        sync.WaitGroup
	shutOnce  sync.Once
}

// link is the proxy's side of one server: a dial loop that keeps one
// connection to it up.
type link struct {
	id   string
	addr atomic.Pointer[string]
	// conn is the established connection (hello answered), nil while down.
	conn atomic.Pointer[conn]
	// removed stops the dial loop (the server left discovery).
	removed chan struct{}
}

// conn is one connection of a link. Fields without a note are touched only
// on its event loop.
type conn struct {
	batch.Endpoint
	l        *link
	up       atomic.Bool
	lastSeen atomic.Int64  // unix nanoseconds of the last bytes received
	closed   chan struct{} // closed by OnClose
}

// New validates o and returns a proxy that is not started yet.
func New(o Options) (*Proxy, error) {
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	p := &Proxy{
		opt:   o,
		log:   o.Logger.With("proxy", o.ID),
		links: make(map[string]*link),
		ready: make(chan struct{}),
		stop:  make(chan struct{}),
	}
	p.publish()
	return p, nil
}

// Stats returns the proxy's counters.
func (p *Proxy) Stats() *Stats { return &p.stats }

// Ready is closed once every server known at the time has been linked.
func (p *Proxy) Ready() <-chan struct{} { return p.ready }

// Start starts the event loops and a dial loop per server. It does not wait
// for the links; see Ready.
func (p *Proxy) Start() error {
	p.h = &handler{p: p}
	opts := []gnet.Option{
		gnet.WithMulticore(p.opt.Multicore),
		gnet.WithTCPNoDelay(gnet.TCPNoDelay),
		gnet.WithLogger(gnetlog.Logger{L: p.log}),
	}
	if p.opt.Loops > 0 {
		opts = append(opts, gnet.WithNumEventLoop(p.opt.Loops))
	}
	cli, err := gnet.NewClient(p.h, opts...)
	if err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	if err := cli.Start(); err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	p.cli = cli
	p.mu.Lock()
	for id, addr := range p.opt.Servers {
		p.addLocked(id, addr)
	}
	p.mu.Unlock()
	p.publish()
	p.bg.Add(1)
	go p.pinger()
	if p.opt.Discover != nil {
		p.bg.Add(1)
		go p.discoverLoop()
	}
	return nil
}

// addLocked creates a link and starts its dial loop; p.mu is held.
func (p *Proxy) addLocked(id, addr string) {
	l := &link{id: id, removed: make(chan struct{})}
	l.addr.Store(&addr)
	p.links[id] = l
	p.bg.Add(1)
	go p.dialLoop(l)
}

// publish copies the link map for lock-free reads from the loops.
func (p *Proxy) publish() {
	p.mu.Lock()
	m := make(map[string]*link, len(p.links))
	for id, l := range p.links {
		m[id] = l
	}
	p.mu.Unlock()
	p.byID.Store(&m)
}

// dialLoop keeps l connected until the proxy stops or l is removed. It
// dials with a timeout off the loops, hands the socket to gnet, waits for
// that connection to end, and redials with capped exponential backoff.
func (p *Proxy) dialLoop(l *link) {
	defer p.bg.Done()
	backoff := p.opt.BackoffMin
	failures := 0
	for {
		addr := *l.addr.Load()
		nc, err := net.DialTimeout("tcp", addr, p.opt.DialTimeout)
		if err == nil {
			c := &conn{l: l, closed: make(chan struct{})}
			c.lastSeen.Store(time.Now().UnixNano())
			if _, err = p.cli.EnrollContext(nc, c); err == nil {
				if failures > 0 {
					p.log.Info("link reconnected, waiting for hello", "server", l.id, "addr", addr, "failed_attempts", failures)
				}
				failures = 0
				wasUp := p.watch(l, c)
				if wasUp {
					backoff = p.opt.BackoffMin
				}
				select {
				case <-p.stop:
					return
				case <-l.removed:
					return
				default:
				}
				continue
			}
		}
		failures++
		if failures == 1 || failures%20 == 0 {
			p.log.Warn("link dial failed; retrying with backoff", "server", l.id, "addr", addr, "attempt", failures, "backoff", backoff, "err", err)
		}
		select {
		case <-p.stop:
			return
		case <-l.removed:
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, p.opt.BackoffMax)
	}
}

// watch waits until c closes, closing it itself if its hello is not
// answered within LinkTimeout or the proxy stops. It reports whether the
// link came up.
func (p *Proxy) watch(l *link, c *conn) bool {
	hello := time.NewTimer(p.opt.LinkTimeout)
	defer hello.Stop()
	for {
		select {
		case <-c.closed:
			return c.up.Load()
		case <-hello.C:
			if !c.up.Load() {
				p.log.Warn("link hello not answered in time; closing", "server", l.id, "timeout", p.opt.LinkTimeout)
				_ = c.C.Close()
			}
		case <-p.stop:
			_ = c.C.Close()
			<-c.closed
			return c.up.Load()
		case <-l.removed:
			_ = c.C.Close()
			<-c.closed
			return c.up.Load()
		}
	}
}

// pinger pings every established link and closes the silent ones.
func (p *Proxy) pinger() {
	defer p.bg.Done()
	t := time.NewTicker(p.opt.PingInterval)
	defer t.Stop()
	ping := []byte{codec.KindPing, '\n'}
	for {
		select {
		case <-p.stop:
			return
		case now := <-t.C:
			for _, l := range *p.byID.Load() {
				c := l.conn.Load()
				if c == nil {
					continue
				}
				if idle := now.Sub(time.Unix(0, c.lastSeen.Load())); idle > p.opt.LinkTimeout {
					p.log.Warn("closing silent link", "server", l.id, "idle", idle.Round(time.Millisecond))
					_ = c.C.Close()
					continue
				}
				_ = c.C.AsyncWrite(ping, nil)
			}
		}
	}
}

// discoverLoop refreshes the server list from Opt.Discover.
func (p *Proxy) discoverLoop() {
	defer p.bg.Done()
	t := time.NewTicker(p.opt.DiscoverEvery)
	defer t.Stop()
	failing := false
	for {
		ctx, cancel := context.WithTimeout(context.Background(), p.opt.DiscoverEvery*2)
		m, err := p.opt.Discover(ctx)
		cancel()
		if err != nil {
			if !failing {
				p.log.Warn("discovery failed; keeping the known servers", "err", err)
			}
			failing = true
		} else {
			if failing {
				p.log.Info("discovery restored")
			}
			failing = false
			p.applyDiscovery(m)
		}
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
	}
}

func (p *Proxy) applyDiscovery(m map[string]string) {
	p.mu.Lock()
	changed := false
	for id, addr := range m {
		if !codec.ValidServerID(id) {
			continue
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			continue
		}
		l, ok := p.links[id]
		if !ok {
			p.log.Info("discovered server", "server", id, "addr", addr)
			p.addLocked(id, addr)
			changed = true
			continue
		}
		if *l.addr.Load() != addr {
			p.log.Info("server moved; relinking", "server", id, "addr", addr)
			l.addr.Store(&addr)
			if c := l.conn.Load(); c != nil {
				_ = c.C.Close()
			}
		}
	}
	for id, l := range p.links {
		if _, static := p.opt.Servers[id]; static {
			continue
		}
		if _, live := m[id]; !live && l.conn.Load() == nil {
			p.log.Info("server left; unlinking", "server", id)
			close(l.removed)
			delete(p.links, id)
			changed = true
		}
	}
	p.mu.Unlock()
	if changed {
		p.publish()
		p.broadcastReach()
	}
	p.checkReady()
}

// checkReady closes Ready (and logs it) once every known link is up.
func (p *Proxy) checkReady() {
	m := *p.byID.Load()
	if len(m) == 0 {
		return
	}
	ids := make([]string, 0, len(m))
	for id, l := range m {
		if l.conn.Load() == nil {
			return
		}
		ids = append(ids, id)
	}
	sort.Strings(ids)
	p.readyOnce.Do(func() {
		p.log.Info("proxy ready", "links", len(ids), "servers", fmt.Sprint(ids))
		close(p.ready)
	})
}

// Shutdown stops dialing, closes every link and stops the event loops,
// bounded by ctx.
func (p *Proxy) Shutdown(ctx context.Context) error {
	var err error
	p.shutOnce.Do(func() {
		close(p.stop)
		done := make(chan struct{})
		go func() { p.bg.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			err = fmt.Errorf("proxy: shutdown: %w", ctx.Err())
		}
		if p.cli != nil {
			if e := p.cli.Stop(); e != nil && err == nil {
				err = fmt.Errorf("proxy: stop: %w", e)
			}
		}
	})
	return err
}
