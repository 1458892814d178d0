// Package server is a message server of the chat cluster: it holds client
// sessions (TCP lines or WebSocket) on one gnet engine, records in the
// routing store which server each user is on, decides each chat's fate in
// one place (deliver.go), and exchanges chats with other servers over
// reliable streams, through proxies or direct links (mesh).
package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/relaychat/relaychat/codec"
	"github.com/relaychat/relaychat/internal/batch"
	"github.com/relaychat/relaychat/internal/fifo"
	"github.com/relaychat/relaychat/internal/gnetlog"
	"github.com/relaychat/relaychat/internal/peer"
	"github.com/relaychat/relaychat/route"
)

// Server is one message server. Create it with New, then Start; stop it
// with Shutdown. Its exported methods are safe for concurrent use.
type Server struct {
	opt   Options
	log   *slog.Logger
	stats Stats

	// epoch identifies this run of the server (unix nanos at New): other
	// servers tell a restart by it.
	epoch    uint64
	epochHex string
	idB      []byte
	secret   []byte

	reg       *registry
	all       *sessionSet
	links     linkSet
	peerGate  *peer.Gate
	kicks     *kickMemo
	out       *outStreams
	in        *inStreams
	redis     *redisQueue
	loops     batch.Loops
	watching  sync.Map // *session -> struct{}: output to watch
	retaining sync.Map // *session -> struct{}: holding chats the client may not have acknowledged

	eng     gnet.Engine
	engDone chan error
	booted  chan struct{}
	running chan struct{} // closed by the first OnTick: the loops run
	runOnce sync.Once
	// dialStop stops the mesh dialers; closed at the start of Shutdown,
	// before the engine stops (a dial enrolled into a stopping engine
	// never returns).
	dialStop  chan struct{}
	listeners []*listener
	peerAddr  string // advertised

	// inflight bounds the off-loop Redis operations started by clients.
	inflight chan struct{}
	// releases feeds releaseWorker; its capacity bounds the route
	// deletions waiting.
	releases *fifo.Queue[releaseReq]
	// maxConns is the connection cap in force (Options.MaxConns, or derived
	// at start); 0 until then means no cap.
	maxConns atomic.Int64
	// openLinks counts peer connections, which share the descriptor
	// budget with clients.
	openLinks atomic.Int64
	// started is set once the id is ours and stale routes are cleared:
	// connections before that are refused (refuseStarting).
	started atomic.Bool
	// bound is set once the listeners' bound addresses are filled in.
	bound atomic.Bool
	// closing is set at the start of Shutdown.
	closing atomic.Bool
	// ready is false while the routing store does not answer (readiness).
	redisOK atomic.Bool

	stop     chan struct{}
	bg       sync.WaitGroup
	shutOnce sync.Once
	shutErr  error
	failed   chan error // Done: the server stopped on its own
	failOnce sync.Once

	hist hists // latency histograms (RegisterMetrics)
}

// listener is one address the engine listens on.
type listener struct {
	kind    string // "client", "peer" or "websocket"
	addr    string // configured
	gaddr   string // as given to gnet (unique among the engine's listeners)
	bound   string // after bind
	ip      net.IP
	port    int
	anyAddr bool
}

// releaseQueue bounds the route deletions waiting for the release worker,
// and releaseBatch how many it pipelines in one round trip.
const (
	releaseQueue = 1 << 17
	releaseBatch = 256
)

// New validates o and returns a server that is not started yet.
func New(o Options) (*Server, error) {
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	if err := codec.Pretouch(); err != nil {
		return nil, fmt.Errorf("server: sonic pretouch: %w", err)
	}
	epoch := uint64(time.Now().UnixNano())
	s := &Server{
		opt:      o,
		log:      o.Logger.With("server", o.ID),
		epoch:    epoch,
		epochHex: strconv.FormatUint(epoch, 16),
		idB:      []byte(o.ID),
		reg:      newRegistry(),
		all:      newSessionSet(),
		peerGate: peer.NewGate(o.MaxPeerPending),
		kicks:    newKickMemo(kickMemoSize, kickMemoTTL),
		inflight: make(chan struct{}, o.MaxInflight),
		releases: fifo.New[releaseReq](releaseQueue),
		stop:     make(chan struct{}),
		failed:   make(chan error, 1),
		booted:   make(chan struct{}),
		running:  make(chan struct{}),
		dialStop: make(chan struct{}),
		engDone:  make(chan error, 1),
	}
	s.out = newOutStreams(s)
	s.in = newInStreams(s)
	s.redis = newRedisQueue(s)
	s.maxConns.Store(int64(o.MaxConns))
	return s, nil
}

// Stats returns the server's counters.
func (s *Server) Stats() *Stats { return &s.stats }

// Epoch returns this run's epoch (as announced in hellos and heartbeats).
func (s *Server) Epoch() uint64 { return s.epoch }

// Done yields an error if the server stopped serving on its own (another
// process took its id over); the caller should then exit.
func (s *Server) Done() <-chan error { return s.failed }

func (s *Server) addrOf(kind string) string {
	for _, l := range s.listeners {
		if l.kind == kind {
			return l.bound
		}
	}
	return ""
}

// ClientAddr returns the bound client address; "" before Start.
func (s *Server) ClientAddr() string { return s.addrOf("client") }

// PeerAddr returns the bound peer address; "" before Start.
func (s *Server) PeerAddr() string { return s.addrOf("peer") }

// WSAddr returns the bound WebSocket address; "" when off or before Start.
func (s *Server) WSAddr() string { return s.addrOf("websocket") }

// Start reads the link secret, binds every listener on one engine, takes
// ownership of the server id in the routing store (failing, with nothing
// changed there, while another live process holds it), clears the routes
// an earlier run of this id left, and starts serving.
func (s *Server) Start() error {
	secret := s.opt.PeerSecret
	if secret == "" {
		var err error
		if secret, err = s.clusterSecret(); err != nil {
			return err
		}
	}
	s.secret = []byte(secret)

	s.listeners = []*listener{{kind: "client", addr: s.opt.Listen}, {kind: "peer", addr: s.opt.PeerListen}}
	if s.opt.WSListen != "" {
		s.listeners = append(s.listeners, &listener{kind: "websocket", addr: s.opt.WSListen})
	}
	if err := s.startEngine(); err != nil {
		return err
	}
	s.peerAddr = s.opt.PeerAdvertise
	if s.peerAddr == "" {
		s.peerAddr = s.PeerAddr()
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*s.opt.Heartbeat+4*s.opt.RedisTimeout)
	err := s.opt.Router.AcquireID(ctx, s.opt.ID, s.epochHex, s.peerAddr, 3*s.opt.Heartbeat, s.opt.Heartbeat*3/2)
	cancel()
	if err != nil {
		s.stopEngine(context.Background())
		if errors.Is(err, route.ErrIDInUse) {
			return fmt.Errorf("server: %w", err)
		}
		return fmt.Errorf("server: cannot take server id %q in the routing store: %w", s.opt.ID, err)
	}
	s.redisOK.Store(true)
	ctx, cancel = context.WithTimeout(context.Background(), 10*s.opt.RedisTimeout)
	n, err := s.opt.Router.ClearServer(ctx, s.opt.ID)
	cancel()
	switch {
	case err != nil:
		s.log.Warn("could not clear stale routes at start", "err", err)
	case n > 0:
		s.log.Info("cleared stale routes left by an earlier run", "routes", n)
	}
	if s.maxConns.Load() == 0 {
		s.maxConns.Store(int64(deriveMaxConns()))
	}
	s.started.Store(true)
	s.log.Info("connection cap", "max_conns", s.maxConns.Load())
	for _, l := range s.listeners {
		s.log.Info(l.kind+" listener ready", "addr", l.bound)
	}

	s.bg.Add(8)
	go s.sweepDeadRoutes()
	go s.redis.run(s.stop)
	go s.releaseWorker()
	go s.heartbeat()
	go s.watchLinks()
	go s.tickStreams()
	go s.watchOutput()
	go s.sweepMailboxes()
	if s.opt.IdleTimeout > 0 {
		s.bg.Add(1)
		go s.sweepIdle()
	}
	if s.opt.Topology == TopologyMesh {
		s.bg.Add(1)
		go s.meshLoop()
	}
	return nil
}

// clusterSecret reads (or creates) the routing store's link secret,
// retrying for a while if Redis is not up yet.
func (s *Server) clusterSecret() (string, error) {
	deadline := time.Now().Add(5 * s.opt.RedisTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), s.opt.RedisTimeout)
		v, err := s.opt.Router.ClusterSecret(ctx)
		cancel()
		if err == nil {
			return v, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("server: cannot read the cluster's link secret from the routing store (give -peer-secret, or make Redis reachable): %w", err)
		}
		time.Sleep(200 * time.Millisecond) // retry interval while Redis comes up
	}
}

// startEngine runs one gnet engine over every listener and waits for it
// to boot.
func (s *Server) startEngine() error {
	seen := map[string]int{}
	addrs := make([]string, len(s.listeners))
	for i, l := range s.listeners {
		host, port, _ := net.SplitHostPort(l.addr)
		// gnet finds a listener by its address text: make equal ones
		// (several "127.0.0.1:0") distinct with leading zeros in the port.
		n := seen[l.addr]
		seen[l.addr]++
		l.gaddr = net.JoinHostPort(host, strings.Repeat("0", n)+port)
		addrs[i] = "tcp://" + l.gaddr
	}
	opts := []gnet.Option{
		gnet.WithTCPNoDelay(gnet.TCPNoDelay),
		gnet.WithLogger(gnetlog.Logger{L: s.log}),
		gnet.WithReusePort(false),
		gnet.WithReuseAddr(true), // a restarted server binds again while old connections sit in TIME_WAIT
		gnet.WithMulticore(s.opt.Multicore),
		// Links dialed later join the loops through Engine.Register, which
		// is only safe with a balancer other than round-robin.
		gnet.WithLoadBalancing(gnet.LeastConnections),
		// OnBoot runs before the loops exist; the ticker's first call comes
		// once they run (see OnTick).
		gnet.WithTicker(true),
		gnet.WithReadBufferCap(batch.ReadBufferCap),
	}
	if s.opt.Loops > 0 {
		opts = append(opts, gnet.WithNumEventLoop(s.opt.Loops))
	}
	go func() { s.engDone <- gnet.Rotate(&handler{s: s}, addrs, opts...) }()
	for _, ready := range []chan struct{}{s.booted, s.running} {
		select {
		case <-ready:
		case err := <-s.engDone:
			if err == nil {
				err = errors.New("engine stopped before it started")
			}
			return fmt.Errorf("server: listen on %s: %w", strings.Join(addrs, ", "), err)
		}
	}
	for _, l := range s.listeners {
		fd, err := s.eng.DupListener("tcp", l.gaddr)
		if err != nil {
			s.stopEngine(context.Background())
			return fmt.Errorf("server: %s listener %s: %w", l.kind, l.addr, err)
		}
		sa, err := unix.Getsockname(fd)
		unix.Close(fd)
		if err != nil {
			s.stopEngine(context.Background())
			return fmt.Errorf("server: %s listener %s: %w", l.kind, l.addr, err)
		}
		l.ip, l.port = sockIP(sa)
		l.anyAddr = l.ip.IsUnspecified()
		l.bound = net.JoinHostPort(l.ip.String(), strconv.Itoa(l.port))
	}
	s.bound.Store(true) // listenerOf may read the listeners from the loops
	return nil
}

func sockIP(sa unix.Sockaddr) (net.IP, int) {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return net.IP(append([]byte(nil), a.Addr[:]...)), a.Port
	case *unix.SockaddrInet6:
		return net.IP(append([]byte(nil), a.Addr[:]...)), a.Port
	}
	return nil, 0
}

// listenerOf tells which listener accepted c, from its local address.
func (s *Server) listenerOf(c gnet.Conn) *listener {
	sa, err := unix.Getsockname(c.Fd())
	if err != nil {
		return nil
	}
	ip, port := sockIP(sa)
	var wild *listener
	for _, l := range s.listeners {
		if l.port != port {
			continue
		}
		if l.ip.Equal(ip) {
			return l
		}
		if l.anyAddr {
			wild = l
		}
	}
	return wild
}

func (s *Server) stopEngine(ctx context.Context) error {
	if err := s.eng.Stop(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("server: stop engine: %w", err)
	}
	select {
	case <-s.engDone:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("server: engine: %w", ctx.Err())
	}
}

// handler is the engine's event handler: it dispatches each connection to
// its kind (client session, WebSocket session, link).
type handler struct {
	gnet.BuiltinEventEngine
	s *Server
}

func (h *handler) OnBoot(eng gnet.Engine) gnet.Action {
	h.s.eng = eng
	close(h.s.booted)
	return gnet.None
}

// OnTick runs on the ticker's goroutine, which gnet starts after the
// loops: its first call says they run. Then it sleeps.
func (h *handler) OnTick() (time.Duration, gnet.Action) {
	h.s.runOnce.Do(func() { close(h.s.running) })
	return time.Hour, gnet.None
}

func (h *handler) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	s := h.s
	l := s.loops.Get(c.EventLoop())
	if lk, ok := c.Context().(*link); ok { // dialed by this server
		return s.openLink(lk, c, l)
	}
	if !s.started.Load() {
		return s.refuseStarting(c)
	}
	lst := s.listenerOf(c)
	if lst == nil {
		s.log.Error("connection on an unknown listener", "remote", c.RemoteAddr())
		return nil, gnet.Close
	}
	switch lst.kind {
	case "peer":
		if s.closing.Load() {
			return nil, gnet.Close
		}
		return s.openLink(&link{}, c, l)
	case "websocket":
		return s.openSession(c, l, true)
	default:
		return s.openSession(c, l, false)
	}
}

// refuseStarting answers a connection that came while Start runs: the
// listeners are bound and the peer address announced before the routing
// store has cleared this id's stale routes. A telnet-style client is told
// to come back, a WebSocket client too, in an HTTP 503. A peer that found
// the announcement gets a plain close, which its dialer retries quietly: a
// line would read as a failed hello, a warning and link_auth_failures for
// what is no attack.
func (s *Server) refuseStarting(c gnet.Conn) ([]byte, gnet.Action) {
	if !s.bound.Load() {
		return nil, gnet.Close // which listener is not known yet
	}
	switch lst := s.listenerOf(c); {
	case lst == nil || lst.kind == "peer":
		return nil, gnet.Close
	case lst.kind == "websocket":
		return wsRefusal(codec.ErrStarting), gnet.Close
	}
	return codec.AppendError(nil, string(codec.ErrStarting), nil), gnet.Close
}

func (h *handler) OnTraffic(c gnet.Conn) gnet.Action {
	s := h.s
	var act gnet.Action
	switch x := c.Context().(type) {
	case *session:
		act = s.serveClient(x.Loop, x)
		x.Loop.Flush()
	case *link:
		act = s.serveLink(x.Loop, x)
		x.Loop.Flush()
	default:
		batch.Consume(c, c.InboundBuffered())
	}
	return act
}

func (h *handler) OnClose(c gnet.Conn, err error) gnet.Action {
	switch x := c.Context().(type) {
	case *session:
		h.s.closeSession(x)
	case *link:
		h.s.closeLink(x, err)
	}
	return gnet.None
}

// heartbeat renews this server's heartbeat every period (TTL three
// periods), so proxies and mesh peers find it and a second process with
// the same id is refused; after a Redis outage it re-asserts the routes of
// its sessions. If another process took the id over, it stops serving.
func (s *Server) heartbeat() {
	defer s.bg.Done()
	t := time.NewTicker(s.opt.Heartbeat)
	defer t.Stop()
	failing := false
	drops := s.opt.Router.Drops()
	for beat := uint64(1); ; beat++ {
		ctx, cancel := context.WithTimeout(context.Background(), s.opt.RedisTimeout)
		err := s.opt.Router.Heartbeat(ctx, s.opt.ID, s.epochHex, beat, s.peerAddr, 3*s.opt.Heartbeat)
		cancel()
		switch {
		case errors.Is(err, route.ErrIDLost):
			s.log.Error("another process took this server's id over; stopping", "err", err)
			s.stopOnItsOwn(err)
			return
		case err != nil && !failing:
			s.stats.RedisErrors.Add(1)
			s.log.Warn("heartbeat failed; retrying every period", "err", err)
		case err == nil && failing:
			s.log.Info("heartbeat restored")
			drops = s.opt.Router.Drops()
			s.reassert()
		case err == nil && s.opt.Router.Drops() != drops:
			// A connection dropped and came back between two heartbeats:
			// Redis may have restarted empty.
			drops = s.opt.Router.Drops()
			s.log.Info("Redis connection was lost and re-established")
			s.reassert()
		}
		failing = err != nil
		s.redisOK.Store(err == nil)
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
	}
}

// stopOnItsOwn reports that the server stopped serving on its own.
func (s *Server) stopOnItsOwn(err error) {
	s.failOnce.Do(func() { s.failed <- err })
}

// Ready reports whether the server can do its job: started, not shutting
// down, and the routing store answering its heartbeats. Cheap.
func (s *Server) Ready() (bool, string) {
	switch {
	case !s.started.Load():
		return false, "starting"
	case s.closing.Load():
		return false, "shutting down"
	case !s.redisOK.Load():
		return false, "routing store not answering"
	}
	return true, ""
}

// sweepIdle closes client connections silent for IdleTimeout.
func (s *Server) sweepIdle() {
	defer s.bg.Done()
	t := time.NewTicker(max(s.opt.IdleTimeout/4, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			limit := now.Add(-s.opt.IdleTimeout).UnixNano()
			s.all.each(func(ss *session) {
				if ss.lastActive.Load() < limit && !ss.Closed() && !ss.gone.Load() {
					ss.lastActive.Store(now.UnixNano()) // once per timeout, not per tick
					s.stats.IdleClosed.Add(1)
					ss.Loop.Post(func() {
						if !ss.Closed() {
							ss.WriteNow(codec.AppendError(nil, string(codec.ErrIdle), nil), nil)
							_ = ss.C.Close()
						}
					})
				}
			})
		}
	}
}

// retain asks the output watcher to check, now and then, what the client
// of ss acknowledged (on its loop), until it holds no chat and has no chat
// unsettled on a stream; then the session's buffers for them are let go
// (shed). On ss's loop.
func (s *Server) retain(ss *session) {
	if !ss.retained {
		ss.retained = true
		s.retaining.Store(ss, struct{}{})
	}
}

// retainSweep is how often held chats are checked when no write does it.
const retainSweep = 500 * time.Millisecond

// watch asks the output watcher to follow ss (a mailbox page or a kicked
// session's backlog on its way to the kernel).
func (s *Server) watch(ss *session) { s.watching.Store(ss, struct{}{}) }

// outputWatch is how often watched sessions are checked.
const outputWatch = 10 * time.Millisecond

// watchOutput checks watched sessions on their loops: gnet says nothing
// when its buffer drains, so progress is polled, and only for them.
func (s *Server) watchOutput() {
	defer s.bg.Done()
	t := time.NewTicker(outputWatch)
	defer t.Stop()
	lastSweep := time.Now()
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			s.watching.Range(func(k, _ any) bool {
				ss := k.(*session)
				ss.Loop.Post(func() { s.checkWatched(ss) })
				return true
			})
			if now.Sub(lastSweep) < retainSweep {
				continue
			}
			lastSweep = now
			s.retaining.Range(func(k, _ any) bool {
				ss := k.(*session)
				ss.Loop.Post(func() {
					if !ss.Closed() && ss.holding() {
						ss.progress()
					}
					if !ss.Closed() && ss.wrote {
						ss.wrote = false // busy: keep its buffers, look again next sweep
						return
					}
					if ss.Closed() || ss.shed() {
						ss.retained = false
						s.retaining.Delete(ss)
					}
				})
				return true
			})
		}
	}
}

// closeAfter writes last to a session that is going (kicked, or the server
// is stopping) and closes it once its client has acknowledged everything,
// at once if it has, or else by KickFlush (checkWatched). On its loop.
func (s *Server) closeAfter(ss *session, last []byte) {
	ss.WriteNow(last, nil)
	ss.progress() // a mailbox page the client has by now leaves the mailbox before the close
	if ss.settledOutput() {
		_ = ss.C.Close()
		return
	}
	ss.more().kickAt = time.Now().UnixNano()
	s.watch(ss)
}

func (s *Server) checkWatched(ss *session) {
	if ss.Closed() {
		s.watching.Delete(ss)
		return
	}
	ss.watchOutput()
	if a := ss.aside; a != nil && a.kickAt != 0 {
		// Kicked or shutting down: close once the client has acknowledged
		// everything, or at KickFlush (what it has not is put back then).
		if ss.settledOutput() || time.Now().UnixNano()-a.kickAt > int64(s.opt.KickFlush) {
			_ = ss.C.Close()
			return
		}
	}
	if !ss.needsWatch() {
		s.watching.Delete(ss)
	}
}

// sweepMailboxes trims expired chats from offline users' mailboxes, more
// often than the TTL so that every drop is counted before a mailbox key
// expires.
func (s *Server) sweepMailboxes() {
	defer s.bg.Done()
	if !s.opt.mailboxOn() {
		return
	}
	every := min(max(s.opt.MailboxTTL/4, time.Second), time.Hour)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			n, err := s.opt.Router.SweepMailboxes(ctx, s.opt.MailboxTTL)
			cancel()
			if n > 0 {
				s.stats.MailboxExpired.Add(int64(n))
				s.log.Info("stored chats dropped by retention", "chats", n, "mailbox_ttl", s.opt.MailboxTTL)
			}
			if err != nil {
				s.log.Warn("mailbox sweep failed", "err", err)
			}
		}
	}
}

// sweepDeadRoutes deletes, now and then, the routes of servers whose
// heartbeat stayed gone for DeadServerGrace: a server killed and
// never restarted must not leave its users looking online for ever. The
// live server with the smallest id sweeps (a scan of every route is not
// work to do N times over); the grace is long enough that a server
// restarting, or cut from Redis for a while, clears or re-asserts its own
// routes first.
func (s *Server) sweepDeadRoutes() {
	defer s.bg.Done()
	grace := s.opt.DeadServerGrace
	t := time.NewTicker(max(min(30*time.Second, grace/4), 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			if !s.firstLiveServer(ctx) {
				cancel()
				continue
			}
			n, err := s.opt.Router.SweepDeadServers(ctx, grace)
			cancel()
			if n > 0 {
				s.stats.RoutesSwept.Add(int64(n))
				s.log.Warn("deleted routes of servers whose heartbeat stayed gone", "routes", n, "grace", grace)
			}
			if err != nil {
				s.log.Warn("dead-server route sweep failed", "err", err)
			}
		}
	}
}

// firstLiveServer reports whether this server has the smallest id of the
// servers with a heartbeat (false when Redis does not answer).
func (s *Server) firstLiveServer(ctx context.Context) bool {
	live, err := s.opt.Router.Servers(ctx)
	if err != nil {
		return false
	}
	for id := range live {
		if id < s.opt.ID {
			return false
		}
	}
	return true
}

// reassert writes back the routes of this server's sessions where Redis
// has none, after an outage (Redis may have restarted empty).
func (s *Server) reassert() {
	routes := s.reg.routes(s.opt.ID)
	ctx, cancel := context.WithTimeout(context.Background(), 10*s.opt.RedisTimeout)
	defer cancel()
	n, err := s.opt.Router.Reassert(ctx, routes)
	if err != nil {
		s.stats.RedisErrors.Add(1)
		s.log.Warn("could not re-assert routes after the Redis outage", "written", n, "err", err)
		return
	}
	s.log.Info("re-asserted routes after the Redis outage", "sessions", len(routes), "written", n)
	if s.opt.PeerSecret == "" {
		// Redis may have restarted empty: put back the secret running
		// processes use, before a new process makes up another.
		held, err := s.opt.Router.AssertClusterSecret(ctx, string(s.secret))
		switch {
		case err != nil:
			s.log.Warn("could not re-assert the cluster secret", "err", err)
		case held != string(s.secret):
			s.log.Error("the cluster secret in Redis changed while Redis was away: processes started since cannot link with this one; restart them all, or give every process -peer-secret")
		}
	}
}

// Shutdown stops the server without losing an acknowledged chat, each step
// bounded by DrainTimeout and everything by ctx:
//
//  1. it refuses new connections and new chats ("server shutting down");
//  2. it waits for the other servers to acknowledge what its streams
//     carry, then gives up on the rest: never-sent chats are stored in
//     their recipients' mailboxes, unconfirmed ones are errors to their
//     senders (still connected);
//  3. it tells every session why and closes it once its output is in the
//     kernel; what is not goes back to the mailbox;
//  4. it releases its routes and its id, says goodbye on its links, and
//     stops the engine.
//
// Calling it again returns the first call's result.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutOnce.Do(func() { s.shutErr = s.shutdown(ctx) })
	return s.shutErr
}

func (s *Server) shutdown(ctx context.Context) error {
	if !s.started.Load() {
		return nil
	}
	s.closing.Store(true)
	close(s.dialStop)
	var errs []error
	step := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, s.opt.DrainTimeout) }

	// 2. Streams.
	sctx, cancel := step()
	for !s.streamsEmpty() && sctx.Err() == nil {
		time.Sleep(5 * time.Millisecond) // poll: acks arrive on the loops
	}
	cancel()
	for _, o := range s.out.all() {
		if f, b := o.unacked(); f > 0 {
			s.log.Warn("giving up on unacknowledged chats at shutdown", "server", o.dst, "frames", f, "bytes", b)
		}
		o.giveUp()
	}
	sctx, cancel = step()
	s.redis.waitIdle(sctx)
	cancel()

	// 3. Sessions.
	routes := s.reg.routes(s.opt.ID)
	bye := codec.AppendError(nil, string(codec.ErrShuttingDown), nil)
	s.all.each(func(ss *session) {
		ss.gone.Store(true)
		ss.Loop.Post(func() {
			if ss.Closed() {
				return
			}
			s.closeAfter(ss, bye)
		})
	})
	sctx, cancel = step()
	for s.stats.Connections.Load() > 0 && sctx.Err() == nil {
		time.Sleep(5 * time.Millisecond) // poll: sessions close on their loops
	}
	cancel()
	// Sessions still open past the wait are closed by the engine's stop;
	// their output then goes back to the mailbox there.
	sctx, cancel = step()
	s.redis.waitIdle(sctx)
	cancel()

	// 4. Routes, id, links, engine.
	if len(routes) > 0 {
		n, err := s.opt.Router.ReleaseAll(ctx, routes)
		if err != nil {
			errs = append(errs, fmt.Errorf("server: release routes: %w", err))
		}
		s.log.Info("released routes", "routes", n, "sessions", len(routes))
	}
	s.goodbye()
	// Frames that arrive until the engine stops are still decided (stored:
	// the routes are gone) and acknowledged.
	sctx, cancel = step()
	s.redis.waitIdle(sctx)
	cancel()
	rctx, rcancel := context.WithTimeout(ctx, s.opt.RedisTimeout)
	if err := s.opt.Router.ReleaseID(rctx, s.opt.ID, s.epochHex); err != nil {
		s.log.Warn("could not release the server id; a restart waits for it to expire", "err", err)
	}
	rcancel()
	if err := s.stopEngine(ctx); err != nil {
		errs = append(errs, err)
	}
	close(s.stop)
	done := make(chan struct{})
	go func() { s.bg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("server: background work: %w", ctx.Err()))
	}
	return errors.Join(errs...)
}

func (s *Server) streamsEmpty() bool {
	for _, o := range s.out.all() {
		if f, _ := o.unacked(); f > 0 {
			return false
		}
	}
	return true
}

// release queues the deletion of name's route, if it still equals r, for
// the release worker. It never blocks: when the queue is full the route is
// left (counted and logged); it names this server, so chats to it are
// stored, and the next start of this server clears it.
func (s *Server) release(name string, r route.Route) {
	if !s.releases.Put(releaseReq{name: name, r: r}) {
		s.stats.ReleaseOverflow.Add(1)
		if s.stats.ReleaseOverflow.Load()%1000 == 1 {
			s.log.Warn("release queue full: leaving routes for the next start to clear", "queue", s.releases.Limit(), "total", s.stats.ReleaseOverflow.Load())
		}
	}
}

// releaseNow deletes name's route if it still equals r (on the Redis
// worker, after chats were put back).
func (s *Server) releaseNow(ctx context.Context, name string, r route.Route) {
	if _, err := s.opt.Router.Release(ctx, name, r); err != nil {
		s.stats.RedisErrors.Add(1)
		s.log.Warn("could not release a route; the next start clears it", "user", name, "err", err)
	}
}

// releaseReq is one queued route release.
type releaseReq struct {
	name string
	r    route.Route
}

// releaseWorker deletes queued routes in pipelined batches of up to
// releaseBatch, so that thousands of sessions closing at once cost a few
// round trips, not thousands of concurrent ones.
func (s *Server) releaseWorker() {
	defer s.bg.Done()
	batch := make(map[string]route.Route, releaseBatch)
	// gather moves up to releaseBatch queued releases into batch; a later
	// release of a name supersedes.
	gather := func() {
		for len(batch) < releaseBatch {
			req, ok := s.releases.Get()
			if !ok {
				return
			}
			batch[req.name] = req.r
		}
	}
	// drain releases what is queued, batch by batch. Once the server is
	// stopping it gives up at the first batch Redis did not answer, so a
	// backlog built up during an outage cannot hold Shutdown for a timeout
	// per batch; false then.
	drain := func() bool {
		for gather(); len(batch) > 0; gather() {
			if s.releaseBatch(batch) {
				continue
			}
			select {
			case <-s.stop:
				s.log.Warn("leaving queued routes for the next start to clear", "routes", s.releases.Len())
				return false
			default:
			}
		}
		return true
	}
	for {
		select {
		case <-s.stop:
			drain()
			return
		case <-s.releases.Ready():
			if !drain() {
				return
			}
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

// deriveMaxConns returns the open-file limit minus the descriptors in use
// minus a headroom of 64 (a quarter of what is free when that is less), at
// least 1; 1,000,000 when the limit cannot be read.
func deriveMaxConns() int {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Cur == unix.RLIM_INFINITY {
		return 1_000_000
	}
	used := 0
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		used = len(fds)
	}
	free := int(lim.Cur) - used
	return max(1, free-min(64, free/4))
}

// newToken returns a random session token (16 hex digits).
func newToken() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
