// Package server is a message server of the chat cluster: it holds client
// sessions on a gnet engine, records in the routing store which server each
// user is on, delivers chats to local users directly and hands chats for
// users elsewhere to the forwarding tier over the links that proxies open to
// its peer port.
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
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/relaychat/relaychat/codec"
	"github.com/relaychat/relaychat/internal/gnetlog"
)

// Server is one message server. Create it with New, then Start; stop it
// with Shutdown. Its exported methods are safe for concurrent use.
type Server struct {
	opt   Options
	log   *slog.Logger
	stats Stats

	reg   *registry
	all   *sessionSet
	links linkSet
	hold  *holder
	kicks *kickMemo

	clients *engine // the client port
	peers   *engine // the peer port

	// reroutes feeds rerouteWorker; its capacity bounds the chats waiting
	// for a fresh lookup.
	reroutes chan rerouteJob
	// releases feeds releaseWorker; its capacity bounds the route
	// deletions waiting.
	releases chan releaseReq
	// inflight bounds the off-loop Redis operations of the whole server.
	inflight chan struct{}
	// maxConns is the connection cap in force (Options.MaxConns, or derived
	// at start); 0 until then means no cap.
	maxConns atomic.Int64
	// closing is set at the start of Shutdown: closing sessions then leave
	// their routes to the bulk release.
	closing atomic.Bool

	stop     chan struct{}
	bg       sync.WaitGroup
	shutOnce sync.Once
	shutErr  error
}

// rerouteQueue bounds the chats waiting for a fresh route lookup after
// reaching a server their recipient had left.
const rerouteQueue = 4096

// releaseQueue bounds the route deletions waiting for the release worker,
// and releaseBatch how many it pipelines in one round trip.
const (
	releaseQueue = 1 << 17
	releaseBatch = 256
)

// engine is one gnet engine and what its OnBoot learnt.
type engine struct {
	name  string
	eng   gnet.Engine
	addr  string        // bound address, from OnBoot
	ready chan struct{} // closed by OnBoot
	done  chan error    // gnet.Run's result
}

// New validates o and returns a server that is not started yet.
func New(o Options) (*Server, error) {
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	if err := codec.Pretouch(); err != nil {
		return nil, fmt.Errorf("server: sonic pretouch: %w", err)
	}
	s := &Server{
		opt:      o,
		log:      o.Logger.With("server", o.ID),
		reg:      newRegistry(),
		all:      newSessionSet(),
		kicks:    newKickMemo(kickMemoSize, kickMemoTTL),
		inflight: make(chan struct{}, o.MaxInflight),
		reroutes: make(chan rerouteJob, rerouteQueue),
		releases: make(chan releaseReq, releaseQueue),
		hold:     newHolder(o.MaxHoldBytes, o.MaxHoldAge),
		stop:     make(chan struct{}),
	}
	s.maxConns.Store(int64(o.MaxConns))
	return s, nil
}

// Stats returns the server's counters.
func (s *Server) Stats() *Stats { return &s.stats }

// ClientAddr returns the bound client address (with the real port when the
// configured one was 0); "" before Start.
func (s *Server) ClientAddr() string {
	if s.clients == nil {
		return ""
	}
	return s.clients.addr
}

// PeerAddr returns the bound peer address; "" before Start.
func (s *Server) PeerAddr() string {
	if s.peers == nil {
		return ""
	}
	return s.peers.addr
}

// Start clears the routes a previous run of this server id may have left
// behind (after a crash), starts both listeners and the heartbeat, and
// returns once both listeners accept connections. A failure to reach Redis
// here is logged, not fatal: sessions get "routing store unavailable" until
// it answers.
func (s *Server) Start() error {
	ctx, cancel := context.WithTimeout(context.Background(), s.opt.RedisTimeout)
	n, err := s.opt.Router.ClearServer(ctx, s.opt.ID)
	cancel()
	switch {
	case err != nil:
		s.log.Warn("could not clear stale routes at start", "err", err)
	case n > 0:
		s.log.Info("cleared stale routes left by an earlier run", "routes", n)
	}

	logger := gnetlog.Logger{L: s.log}
	common := []gnet.Option{
		gnet.WithTCPNoDelay(gnet.TCPNoDelay),
		gnet.WithLogger(logger),
		gnet.WithReusePort(false),
		// A restarted server must bind its ports again at once, although
		// the connections it closed are still in TIME_WAIT.
		gnet.WithReuseAddr(true),
	}
	clientOpts := append([]gnet.Option{gnet.WithMulticore(s.opt.Multicore)}, common...)
	if s.opt.Loops > 0 {
		clientOpts = append(clientOpts, gnet.WithNumEventLoop(s.opt.Loops))
	}
	s.clients = &engine{name: "client"}
	if err := s.run(s.clients, &clientHandler{s: s}, s.opt.Listen, clientOpts); err != nil {
		return err
	}
	// Links are few and each carries a batch per event; one loop serves them.
	peerOpts := append([]gnet.Option{gnet.WithNumEventLoop(1)}, common...)
	s.peers = &engine{name: "peer"}
	if err := s.run(s.peers, &linkHandler{s: s}, s.opt.PeerListen, peerOpts); err != nil {
		_ = s.clients.eng.Stop(context.Background())
		<-s.clients.done
		return err
	}
	if s.maxConns.Load() == 0 {
		s.maxConns.Store(int64(deriveMaxConns()))
	}
	s.log.Info("connection cap", "max_conns", s.maxConns.Load())
	s.log.Info("client listener ready", "addr", s.clients.addr)
	s.log.Info("peer listener ready", "addr", s.peers.addr)

	s.bg.Add(5)
	go s.releaseWorker()
	go s.heartbeat()
	go s.watchLinks()
	go s.rerouteWorker()
	go s.expireHeld()
	if s.opt.IdleTimeout > 0 {
		s.bg.Add(1)
		go s.sweepIdle()
	}
	return nil
}

// run starts e's gnet engine on addr and waits for OnBoot or a failure.
func (s *Server) run(e *engine, h gnet.EventHandler, addr string, opts []gnet.Option) error {
	e.ready = make(chan struct{})
	e.done = make(chan error, 1)
	boot := &bootHook{e: e}
	go func() {
		e.done <- gnet.Run(withBoot(h, boot), "tcp://"+addr, opts...)
	}()
	select {
	case <-e.ready:
		return nil
	case err := <-e.done:
		if err == nil {
			err = errors.New("engine stopped before it started")
		}
		return fmt.Errorf("server: %s listener %s: %w", e.name, addr, err)
	}
}

// bootHook records the engine and its bound address when it boots.
type bootHook struct{ e *engine }

func (b *bootHook) boot(eng gnet.Engine) {
	b.e.eng = eng
	b.e.addr = boundAddr(eng)
	close(b.e.ready)
}

// boundAddr reads the listener's address from a dup of its socket, so a
// port of 0 is reported as the port the kernel picked.
func boundAddr(eng gnet.Engine) string {
	fd, err := eng.Dup()
	if err != nil {
		return ""
	}
	defer unix.Close(fd)
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return ""
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port))
	case *unix.SockaddrInet6:
		return net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port))
	}
	return ""
}

// heartbeat announces this server in Redis every Heartbeat period, with a
// TTL of three periods, so proxies can discover it and others can tell it
// is alive.
func (s *Server) heartbeat() {
	defer s.bg.Done()
	t := time.NewTicker(s.opt.Heartbeat)
	defer t.Stop()
	failing := false
	drops := s.opt.Router.Drops()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), s.opt.RedisTimeout)
		err := s.opt.Router.Heartbeat(ctx, s.opt.ID, s.peers.addr, 3*s.opt.Heartbeat)
		cancel()
		switch {
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
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
	}
}

// sweepIdle closes client connections silent for IdleTimeout.
func (s *Server) sweepIdle() {
	defer s.bg.Done()
	t := time.NewTicker(max(s.opt.IdleTimeout/4, 10*time.Millisecond))
	defer t.Stop()
	msg := codec.AppendError(nil, string(errIdle), nil)
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
					_ = ss.C.AsyncWrite(msg, func(c gnet.Conn, _ error) error { return c.Close() })
				}
			})
		}
	}
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
}

// Shutdown stops the server: it tells every session why, releases their
// routes in bulk, stops both engines (closing every connection) and waits
// for the background work, all bounded by ctx. Calling it again returns the
// first call's result.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutOnce.Do(func() { s.shutErr = s.shutdown(ctx) })
	return s.shutErr
}

func (s *Server) shutdown(ctx context.Context) error {
	s.closing.Store(true)
	close(s.stop)
	var errs []error
	routes := s.reg.routes(s.opt.ID)
	bye := codec.AppendError(nil, "server shutting down", nil)
	s.all.each(func(ss *session) {
		ss.gone.Store(true)
		_ = ss.C.AsyncWrite(bye, nil)
	})
	if len(routes) > 0 {
		n, err := s.opt.Router.ReleaseAll(ctx, routes)
		if err != nil {
			errs = append(errs, fmt.Errorf("server: release routes: %w", err))
		}
		s.log.Info("released routes", "routes", n, "sessions", len(routes))
	}
	// gnet's Stop polls every 500ms: stop both engines at once.
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, e := range []*engine{s.clients, s.peers} {
		if e == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if e2 := e.eng.Stop(ctx); e2 != nil && !errors.Is(e2, context.Canceled) {
				err = fmt.Errorf("server: stop %s engine: %w", e.name, e2)
			} else {
				select {
				case <-e.done:
				case <-ctx.Done():
					err = fmt.Errorf("server: %s engine: %w", e.name, ctx.Err())
				}
			}
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	done := make(chan struct{})
	go func() { s.bg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("server: background work: %w", ctx.Err()))
	}
	return errors.Join(errs...)
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

// booted wraps an event handler so that OnBoot also records the engine.
type booted struct {
	gnet.EventHandler
	hook *bootHook
}

func withBoot(h gnet.EventHandler, hook *bootHook) gnet.EventHandler { return booted{h, hook} }

func (b booted) OnBoot(eng gnet.Engine) gnet.Action {
	b.hook.boot(eng)
	return b.EventHandler.OnBoot(eng)
}
