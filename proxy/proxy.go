// Package proxy is the forwarding tier: it keeps an authenticated link to
// the peer port of every message server and relays each stream frame to
// the server its destination field names, without decoding the chat. It
// holds nothing: a frame it cannot relay now (no link to its destination,
// or that link backed up) is dropped and counted, and the sending server's
// stream resends it, over this proxy or another path, until the
// destination acknowledges it.
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
	"github.com/relaychat/relaychat/internal/peer"
)

// Options configures a Proxy. The zero value of each field is documented.
type Options struct {
	// ID names the proxy in its hellos and logs; "" means "proxy1".
	ID string
	// Secret is the cluster's link secret; required (cmd reads it from the
	// routing store unless -peer-secret gives it).
	Secret string
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
	// frames for it are dropped past it (their senders resend). 0 means
	// 64 MiB.
	MaxLinkOutbound int
	// DrainTimeout bounds how long Shutdown waits for relayed frames to
	// reach the kernel; 0 means 2s.
	DrainTimeout time.Duration
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
	if o.Secret == "" {
		return errors.New("proxy: no link secret")
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
	def(&o.DrainTimeout, 2*time.Second)
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
	Relayed           atomic.Int64 // frames handed to their destination server
	DropUnreachable   atomic.Int64 // frames for a server this proxy has no link to (resent by their sender)
	DropCongested     atomic.Int64 // frames for a server whose link was over MaxLinkOutbound (resent)
	DropForeign       atomic.Int64 // frames a server sent in another server's name
	BadFrames         atomic.Int64 // lines that did not parse
	LostBytes         atomic.Int64 // relayed bytes whose destination link closed before they were written (resent)
	LinkUps           atomic.Int64
	LinkDowns         atomic.Int64
	LinkAuthFailures  atomic.Int64 // servers whose hello proof did not match the secret
	LinksUp           atomic.Int64 // gauge
	ServersKnown      atomic.Int64 // gauge
	ShutdownDrainLeft atomic.Int64 // bytes still unwritten when Shutdown stopped waiting
}

// Snapshot returns the counters by name.
func (s *Stats) Snapshot() map[string]int64 {
	return map[string]int64{
		"relayed": s.Relayed.Load(), "drop_unreachable": s.DropUnreachable.Load(), "drop_congested": s.DropCongested.Load(),
		"drop_foreign": s.DropForeign.Load(), "bad_frames": s.BadFrames.Load(), "lost_bytes": s.LostBytes.Load(),
		"link_ups": s.LinkUps.Load(), "link_downs": s.LinkDowns.Load(), "link_auth_failures": s.LinkAuthFailures.Load(),
		"links_up": s.LinksUp.Load(), "shutdown_drain_left": s.ShutdownDrainLeft.Load(),
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

	reachMu     sync.Mutex // serialises broadcastReach
	lastDropLog atomic.Int64

	ready     chan struct{}
	readyOnce sync.Once
	stopping  atomic.Bool
	stop      chan struct{}
	bg        sync.WaitGroup
	shutOnce  sync.Once
}

// link is the proxy's side of one server: a dial loop that keeps one
// connection to it up.
type link struct {
	id   string
	addr atomic.Pointer[string]
	// conn is the established connection (hello done), nil while down.
	conn atomic.Pointer[conn]
	// removed stops the dial loop (the server left discovery).
	removed chan struct{}
}

// conn is one connection of a link. Fields without a note are touched only
// on its event loop.
type conn struct {
	batch.Endpoint
	l        *link
	hs       *peer.Handshake
	epoch    uint64 // the server's run, from its hello
	up       atomic.Bool
	goodbye  atomic.Bool   // the server said it is stopping
	lastSeen atomic.Int64  // unix nanoseconds of the last bytes received
	ended    chan bool     // yields whether it came up, at OnClose
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

// IsReady reports whether the proxy links to every server it knows of,
// and why not. Cheap.
func (p *Proxy) IsReady() (bool, string) {
	if p.stopping.Load() {
		return false, "shutting down"
	}
	m := *p.byID.Load()
	if len(m) == 0 {
		return false, "no servers known yet"
	}
	var down []string
	for id, l := range m {
		if l.conn.Load() == nil {
			down = append(down, id)
		}
	}
	if len(down) > 0 {
		sort.Strings(down)
		return false, fmt.Sprintf("no link to %v", down)
	}
	return true, ""
}

// LinkStates returns, per known server, whether its link is up.
func (p *Proxy) LinkStates() map[string]bool {
	out := map[string]bool{}
	for id, l := range *p.byID.Load() {
		out[id] = l.conn.Load() != nil
	}
	return out
}

// Start starts the event loops and a dial loop per server. It does not wait
// for the links; see Ready.
func (p *Proxy) Start() error {
	p.h = &handler{p: p}
	opts := []gnet.Option{
		gnet.WithMulticore(p.opt.Multicore),
		gnet.WithTCPNoDelay(gnet.TCPNoDelay),
		gnet.WithLogger(gnetlog.Logger{L: p.log}),
		// Every connection here is a link (see batch.ReadBufferCap).
		gnet.WithReadBufferCap(batch.ReadBufferCap),
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
	p.stats.ServersKnown.Store(int64(len(p.links)))
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

// dialLoop keeps l connected until the proxy stops or l is removed.
func (p *Proxy) dialLoop(l *link) {
	defer p.bg.Done()
	stop := make(chan struct{})
	go func() {
		select {
		case <-p.stop:
		case <-l.removed:
		}
		close(stop)
	}()
	peer.Redial(stop, func() string { return *l.addr.Load() },
		peer.DialOptions{Timeout: p.opt.DialTimeout, BackoffMin: p.opt.BackoffMin, BackoffMax: p.opt.BackoffMax},
		func(nc net.Conn) (<-chan bool, error) {
			c := &conn{l: l, ended: make(chan bool, 1), closed: make(chan struct{})}
			c.lastSeen.Store(time.Now().UnixNano())
			if _, err := p.cli.EnrollContext(nc, c); err != nil {
				return nil, err
			}
			p.bg.Add(1)
			go p.watchHello(c, stop)
			return c.ended, nil
		},
		func(attempt int, addr string, err error) {
			if attempt == 1 || attempt%20 == 0 {
				p.log.Warn("link dial failed; retrying with backoff", "server", l.id, "addr", addr, "attempt", attempt, "err", err)
			}
		})
}

// watchHello closes c if its hello does not finish within LinkTimeout, and
// closes it when the proxy stops or the server is removed.
func (p *Proxy) watchHello(c *conn, stop <-chan struct{}) {
	defer p.bg.Done()
	hello := time.NewTimer(p.opt.LinkTimeout)
	defer hello.Stop()
	for {
		select {
		case <-c.closed:
			return
		case <-hello.C:
			if !c.up.Load() {
				p.log.Warn("link hello not finished in time; closing", "server", c.l.id, "timeout", p.opt.LinkTimeout)
				_ = c.C.Close()
			}
		case <-stop:
			_ = c.C.Close()
			<-c.closed
			return
		}
	}
}

// pinger pings every established link and closes the silent ones.
func (p *Proxy) pinger() {
	defer p.bg.Done()
	t := time.NewTicker(p.opt.PingInterval)
	defer t.Stop()
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
				batch.Send(&c.Endpoint, []byte{codec.KindPing, '\n'}, nil)
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
	p.stats.ServersKnown.Store(int64(len(p.links)))
	p.mu.Unlock()
	if changed {
		p.publish()
		p.broadcastReach(nil)
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

// Shutdown drains and stops the proxy, bounded by ctx: it tells every
// server it is stopping; each moves its streams to other paths and closes
// its link once it has acknowledged what came through it. The proxy waits
// up to DrainTimeout for that, then closes what is left and stops.
// Whatever it held that did not go out is resent by the servers' streams.
func (p *Proxy) Shutdown(ctx context.Context) error {
	var err error
	p.shutOnce.Do(func() {
		p.stopping.Store(true)
		var conns []*conn
		for _, l := range *p.byID.Load() {
			if c := l.conn.Load(); c != nil {
				conns = append(conns, c)
				batch.Send(&c.Endpoint, []byte{codec.KindGoodbye, '\n'}, nil)
			}
		}
		dctx, cancel := context.WithTimeout(ctx, p.opt.DrainTimeout)
		for dctx.Err() == nil && !allClosed(conns) {
			time.Sleep(5 * time.Millisecond) // poll: the servers close their links
		}
		cancel()
		if left := pendingBytes(conns); left > 0 {
			p.stats.ShutdownDrainLeft.Add(left)
			p.log.Warn("stopping with relayed bytes not yet written; their senders resend them", "bytes", left)
		}
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

func allClosed(conns []*conn) bool {
	for _, c := range conns {
		if !c.Closed() {
			return false
		}
	}
	return true
}

// pendingBytes sums the outbound backlog of conns, read on their loops.
func pendingBytes(conns []*conn) int64 {
	var n int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, c := range conns {
		if c.Closed() {
			continue
		}
		wg.Add(1)
		c.Loop.Post(func() {
			defer wg.Done()
			if !c.Closed() {
				c.CheckOutbound()
				mu.Lock()
				n += c.Pending()
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return n
}
