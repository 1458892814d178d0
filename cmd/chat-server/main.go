// Command chat-server runs one message server of the chat cluster.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/relaychat/relaychat/auth"
	"github.com/relaychat/relaychat/codec"
	"github.com/relaychat/relaychat/internal/cli"
	"github.com/relaychat/relaychat/internal/gctune"
	"github.com/relaychat/relaychat/internal/metrics"
	"github.com/relaychat/relaychat/route"
	"github.com/relaychat/relaychat/server"
)

const prog = "chat-server"

func main() {
	fs := flag.NewFlagSet(prog, flag.ExitOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: %s [flags]\n\nRuns a message server: clients speak newline-delimited JSON on -listen (and\nWebSocket on -ws-listen); proxies and, in mesh mode, other servers link to\n-peer-listen.\n\nFlags:\n", prog)
		fs.PrintDefaults()
	}
	redisFlags := cli.AddRedisFlags(fs)
	var (
		id          = fs.String("id", "", "unique server id (letters, digits, '-', '_', '.'); default \"s\" + the -listen port")
		listen      = fs.String("listen", ":9501", "client address; port 0 picks a free port (logged at start)")
		peerListen  = fs.String("peer-listen", "127.0.0.1:9601", "address proxies and (in mesh mode) other servers connect to; keep it off the public network")
		peerAdv     = fs.String("peer-advertise", "", "peer address other processes should dial (default: the bound -peer-listen address); set it when deploying over several hosts")
		topology    = fs.String("topology", "proxy", "proxy: cross-server chats go through forwarding proxies; mesh: servers also link directly to each other")
		mailboxMax  = fs.Int("mailbox-max", 1000, "stored chats per offline user; 0 turns the mailbox off")
		mailboxTTL  = fs.Duration("mailbox-ttl", 168*time.Hour, "how long a stored chat is kept")
		multicore   = fs.Bool("multicore", false, "one event loop per CPU core (default one loop)")
		loops       = fs.Int("loops", 0, "number of event loops; 0 = decided by -multicore")
		maxLine     = fs.Int("max-line", codec.DefaultMaxLine, fmt.Sprintf("longest request line in bytes (64..%d); longer lines close the connection", codec.MaxClientLine))
		maxOut      = fs.Int("max-outbound", 4<<20, "bytes queued to one client before it is disconnected as a slow consumer")
		maxLinkOut  = fs.Int("max-link-outbound", 64<<20, "bytes queued to one link before streams stop writing into it until it drains")
		sendBuffer  = fs.Int("send-buffer", 64<<10, "kernel send buffer of client sockets (SO_SNDBUF); a close puts back what the client had not acknowledged, up to about twice this; -1 = the kernel's autotuning")
		kickWait    = fs.Duration("kick-wait", 3*time.Second, "how long a new login waits for the session it replaced to hand back its unsent chats")
		resendAfter = fs.Duration("resend-after", time.Second, "how long a stream waits for an acknowledgement before it resends (over another path if there is one); doubles while none comes")
		deadGrace   = fs.Duration("dead-server-grace", 0, "delete the routes of a server whose heartbeat stayed gone this long (0 = max(2m, 40 heartbeats))")
		drainTO     = fs.Duration("drain-timeout", 2*time.Second, "at shutdown, the longest each step waits for chats to be acknowledged or written")
		kickFlush   = fs.Duration("kick-flush", 2*time.Second, "how long a kicked session's queued output may take to be acknowledged by its client before it is closed")
		holdBytes   = fs.Int("hold-bytes", 8<<20, "bytes of chats sent to one server and not yet acknowledged (held while no path reaches it); past it new chats for it are refused; while a path is up, a client whose chat finds an eighth of it in flight is not read until half that is acknowledged; -1 = hold nothing: refuse at once while no path reaches it")
		holdAge     = fs.Duration("hold-age", 5*time.Second, "how long a chat may wait unacknowledged; then it is stored for its recipient (never sent) or its sender gets an error (sent, unconfirmed)")
		maxPending  = fs.Int("max-pending", 4<<20, "bytes a client may send while one of its requests waits on Redis")
		maxInflight = fs.Int("max-inflight", 4096, "concurrent Redis operations for logins and cache misses")
		redisTO     = fs.Duration("redis-timeout", 2*time.Second, "timeout of one Redis operation")
		cacheTTL    = fs.Duration("route-cache-ttl", route.DefaultCacheTTL, "how long a route stays in the client-side cache at most")
		noCache     = fs.Bool("no-route-cache", false, "disable client-side caching of routes (for comparison)")
		cacheBytes  = fs.Int("route-cache-bytes", route.DefaultCacheBytes, "rueidis' client-side cache per Redis connection, in bytes: it serves only lookups that miss the in-process route table (mostly names with no route)")
		maxConns    = fs.Int("max-conns", 0, "connections at most (clients and links); 0 = derived at start from the open-file limit, the descriptors in use and a headroom")
		idleTO      = fs.Duration("idle-timeout", 5*time.Minute, "close a client silent this long (a ping keeps it open); 0 = never")
		rateLimit   = fs.Float64("rate-limit", 0, "requests per second per connection; 0 = no limit")
		rateBurst   = fs.Int("rate-burst", 0, "burst of -rate-limit; 0 = one second's worth")
		authSecret  = fs.String("auth-secret", "", "require a login token signed with this secret (also $RELAYCHAT_AUTH_SECRET)")
		mintToken   = fs.String("mint-token", "", "print a login token for this name (signed with -auth-secret, valid for -token-ttl) and exit")
		tokenTTL    = fs.Duration("token-ttl", 24*time.Hour, "validity of a token printed by -mint-token")
		peerSecret  = fs.String("peer-secret", "", "secret every link must prove it knows (also $RELAYCHAT_PEER_SECRET); default: the cluster secret kept in Redis")
		linkTO      = fs.Duration("link-timeout", 5*time.Second, "close a link silent this long, or that has not finished its hello in this time")
		logLevel    = fs.String("log-level", "info", "debug, info, warn or error")
		logFormat   = fs.String("log-format", "text", cli.LogFormats)
		wsListen    = fs.String("ws-listen", "", "also accept WebSocket clients on this address (and serve the chat page on GET /); default off")
		metricsAddr = fs.String("metrics", "", "serve /metrics (Prometheus), /healthz and /readyz on this address; default off")
		gcBudget    = fs.Float64("gc-budget", gctune.DefaultBudget, "CPU the garbage collector may use, in cores (0.01 = 1% of one core): GOGC moves from 100 down to 25 while collecting that often costs less, so a quiet server holds less memory per client; 0 = leave GOGC alone (as does setting $GOGC)")
		pprofAddr   = fs.String("pprof", "", "serve net/http/pprof on this address (e.g. 127.0.0.1:6060); off by default")
	)
	_ = fs.Parse(os.Args[1:])
	if fs.NArg() > 0 {
		cli.Fatal(prog, fmt.Errorf("unexpected argument %q (see -h)", fs.Arg(0)), 2)
	}
	log, err := cli.NewLogger(*logLevel, *logFormat)
	if err != nil {
		cli.Fatal(prog, err, 2)
	}
	if *authSecret == "" {
		*authSecret = os.Getenv("RELAYCHAT_AUTH_SECRET")
	}
	if *peerSecret == "" {
		*peerSecret = os.Getenv("RELAYCHAT_PEER_SECRET")
	}
	mbox := *mailboxMax
	switch {
	case mbox == 0:
		mbox = -1 // off
	case mbox < 0:
		cli.Fatal(prog, fmt.Errorf("-mailbox-max %d: want 0 (off) or more", mbox), 2)
	}
	if *mintToken != "" {
		if *authSecret == "" {
			cli.Fatal(prog, fmt.Errorf("-mint-token needs -auth-secret (or $RELAYCHAT_AUTH_SECRET)"), 2)
		}
		if !codec.ValidName(*mintToken) {
			cli.Fatal(prog, fmt.Errorf("-mint-token %q: %v", *mintToken, codec.ErrBadName), 2)
		}
		fmt.Println(auth.Mint([]byte(*authSecret), *mintToken, time.Now().Add(*tokenTTL)))
		return
	}
	if *id == "" {
		_, port, err := net.SplitHostPort(*listen)
		if err != nil {
			cli.Fatal(prog, fmt.Errorf("-listen %q: %v", *listen, err), 2)
		}
		*id = "s" + port
	}
	cli.ServePprof(*pprofAddr, log)
	switch {
	case !(*gcBudget >= 0 && *gcBudget <= 1): // NaN too
		cli.Fatal(prog, fmt.Errorf("-gc-budget %v: want 0 (off) to 1 (a whole core)", *gcBudget), 2)
	case *gcBudget > 0:
		gctune.Start(context.Background(), gctune.Options{Budget: *gcBudget}, os.Getenv("GOGC"), log)
	}
	nofile, err := cli.RaiseNoFile() // the server derives its connection cap from it
	if err != nil {
		log.Warn("could not raise the open-file limit", "err", err)
	}
	log.Debug("open-file limit", "nofile", nofile)
	ro, err := redisFlags.Options(nil)
	if err != nil {
		cli.Fatal(prog, err, 2)
	}
	if *cacheBytes < 1 {
		cli.Fatal(prog, fmt.Errorf("-route-cache-bytes must be at least 1, not %d", *cacheBytes), 2)
	}
	ro.CacheTTL, ro.Timeout, ro.DisableCache, ro.CacheBytes = *cacheTTL, *redisTO, *noCache, *cacheBytes
	store, err := route.New(ro)
	if err != nil {
		cli.Fatal(prog, err, 1)
	}
	defer store.Close()
	srv, err := server.New(server.Options{
		ID:              *id,
		Listen:          *listen,
		PeerListen:      *peerListen,
		PeerAdvertise:   *peerAdv,
		WSListen:        *wsListen,
		Topology:        *topology,
		MailboxMax:      mbox,
		MailboxTTL:      *mailboxTTL,
		Router:          store,
		Multicore:       *multicore,
		Loops:           *loops,
		MaxLine:         *maxLine,
		MaxOutbound:     *maxOut,
		MaxLinkOutbound: *maxLinkOut,
		SendBuffer:      *sendBuffer,
		KickWait:        *kickWait,
		KickFlush:       *kickFlush,
		ResendAfter:     *resendAfter,
		DrainTimeout:    *drainTO,
		DeadServerGrace: *deadGrace,
		MaxPending:      *maxPending,
		MaxHoldBytes:    *holdBytes,
		MaxHoldAge:      *holdAge,
		MaxInflight:     *maxInflight,
		RedisTimeout:    *redisTO,
		PeerSecret:      *peerSecret,
		LinkTimeout:     *linkTO,
		AuthSecret:      secretBytes(*authSecret),
		MaxConns:        *maxConns,
		IdleTimeout:     *idleTO,
		RateLimit:       *rateLimit,
		RateBurst:       *rateBurst,
		Logger:          log,
	})
	if err != nil {
		cli.Fatal(prog, err, 2)
	}
	var ms *metrics.Server
	if *metricsAddr != "" {
		reg := metrics.NewRegistry()
		if err := srv.RegisterMetrics(reg); err != nil {
			cli.Fatal(prog, err, 1)
		}
		ms, err = metrics.New(metrics.Options{Addr: *metricsAddr, Registry: reg, Ready: srv.Ready, ReadyMetric: metrics.ReadyName, Logger: log})
		if err != nil {
			cli.Fatal(prog, err, 1)
		}
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	if err := srv.Start(); err != nil {
		cli.Fatal(prog, err, 1)
	}
	log.Info("server ready", "id", *id, "client", srv.ClientAddr(), "peer", srv.PeerAddr(), "redis", redisFlags.Describe(ro), "topology", *topology)
	failed := false
	select {
	case <-ctx.Done():
	case err := <-srv.Done():
		log.Error("server stopped on its own", "err", err)
		failed = true
	}
	stop()
	log.Info("shutting down")
	if ms != nil {
		ms.SetNotReady("shutting down")
	}
	sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Error("shutdown", "err", err)
		os.Exit(1)
	}
	if ms != nil {
		_ = ms.Shutdown(sctx)
	}
	log.Info("stopped", "stats", fmt.Sprint(srv.Stats().Snapshot()))
	if failed {
		os.Exit(1)
	}
}

// secretBytes returns nil for an empty secret (no authentication).
func secretBytes(s string) []byte {
	if s == "" {
		return nil
	}
	return []byte(s)
}
