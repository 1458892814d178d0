// Command chat-proxy runs the forwarding proxy of the chat cluster.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/relaychat/relaychat/internal/cli"
	"github.com/relaychat/relaychat/internal/metrics"
	"github.com/relaychat/relaychat/proxy"
	"github.com/relaychat/relaychat/route"
)

const prog = "chat-proxy"

func main() {
	fs := flag.NewFlagSet(prog, flag.ExitOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: %s [flags]\n\nRuns the forwarding proxy: links to every message server's peer port and\nrelays chats between them.\n\nFlags:\n", prog)
		fs.PrintDefaults()
	}
	redisFlags := cli.AddRedisFlags(fs) // for discovery when -servers is empty, and the secret
	var (
		id         = fs.String("id", "proxy1", "proxy id, sent in link hellos")
		servers    = fs.String("servers", "", "static list id=host:port,... of server peer addresses; empty = discover servers through Redis heartbeats")
		multicore  = fs.Bool("multicore", false, "one event loop per CPU core (default one loop)")
		loops      = fs.Int("loops", 0, "number of event loops; 0 = decided by -multicore")
		secret     = fs.String("peer-secret", "", "secret every link must prove it knows (also $RELAYCHAT_PEER_SECRET); default: the cluster secret kept in Redis")
		maxLinkOut = fs.Int("max-link-outbound", 64<<20, "bytes queued to one server before frames for it are dropped (their senders' streams resend them)")
		linkTO     = fs.Duration("link-timeout", 5*time.Second, "close a link silent for this long")
		logLevel   = fs.String("log-level", "info", "debug, info, warn or error")
		logFormat  = fs.String("log-format", "text", cli.LogFormats)
		metricsAdr = fs.String("metrics", "", "serve /metrics (Prometheus), /healthz and /readyz on this address; default off")
		pprofAddr  = fs.String("pprof", "", "serve net/http/pprof on this address (e.g. 127.0.0.1:6060); off by default")
	)
	_ = fs.Parse(os.Args[1:])
	if fs.NArg() > 0 {
		cli.Fatal(prog, fmt.Errorf("unexpected argument %q (see -h)", fs.Arg(0)), 2)
	}
	log, err := cli.NewLogger(*logLevel, *logFormat)
	if err != nil {
		cli.Fatal(prog, err, 2)
	}
	static, err := parseServers(*servers)
	if err != nil {
		cli.Fatal(prog, err, 2)
	}
	cli.ServePprof(*pprofAddr, log)
	if _, err := cli.RaiseNoFile(); err != nil {
		log.Warn("could not raise the open-file limit", "err", err)
	}
	if *secret == "" {
		*secret = os.Getenv("RELAYCHAT_PEER_SECRET")
	}
	var store *route.Store
	if len(static) == 0 || *secret == "" {
		ro, err := redisFlags.Options(nil)
		if err != nil {
			cli.Fatal(prog, err, 2)
		}
		ro.DisableCache = true
		store, err = route.New(ro)
		if err != nil {
			cli.Fatal(prog, err, 1)
		}
		defer store.Close()
	}
	if *secret == "" {
		v, err := readSecret(store)
		if err != nil {
			cli.Fatal(prog, fmt.Errorf("cannot read the cluster's link secret from Redis %s (give -peer-secret, or make Redis reachable): %w", redisFlags.Addr, err), 1)
		}
		*secret = v
	}
	o := proxy.Options{
		ID:              *id,
		Servers:         static,
		Multicore:       *multicore,
		Loops:           *loops,
		Secret:          *secret,
		MaxLinkOutbound: *maxLinkOut,
		LinkTimeout:     *linkTO,
		Logger:          log,
	}
	if len(static) == 0 {
		o.Discover = func(ctx context.Context) (map[string]string, error) {
			m, err := store.Servers(ctx)
			if err != nil {
				return nil, err
			}
			out := make(map[string]string, len(m))
			for id, info := range m {
				out[id] = info.Addr
			}
			return out, nil
		}
		log.Info("discovering servers through Redis heartbeats", "redis", redisFlags.Addr, "prefix", redisFlags.Prefix)
	}
	p, err := proxy.New(o)
	if err != nil {
		cli.Fatal(prog, err, 2)
	}
	var ms *metrics.Server
	if *metricsAdr != "" {
		reg := metrics.NewRegistry()
		if err := p.RegisterMetrics(reg); err != nil {
			cli.Fatal(prog, err, 1)
		}
		ms, err = metrics.New(metrics.Options{Addr: *metricsAdr, Registry: reg, Ready: p.IsReady, ReadyMetric: metrics.ReadyName, Logger: log})
		if err != nil {
			cli.Fatal(prog, err, 1)
		}
		defer func() { _ = ms.Shutdown(context.Background()) }()
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	if err := p.Start(); err != nil {
		cli.Fatal(prog, err, 1)
	}
	<-ctx.Done()
	stop()
	log.Info("shutting down")
	if ms != nil {
		ms.SetNotReady("shutting down")
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Shutdown(sctx); err != nil {
		log.Error("shutdown", "err", err)
		os.Exit(1)
	}
	log.Info("stopped", "stats", fmt.Sprint(p.Stats().Snapshot()))
}

// readSecret reads the cluster secret, retrying for a few seconds while
// Redis comes up.
func readSecret(store *route.Store) (string, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		v, err := store.ClusterSecret(ctx)
		cancel()
		if err == nil || time.Now().After(deadline) {
			return v, err
		}
		time.Sleep(200 * time.Millisecond) // retry interval
	}
}

// parseServers reads "id=host:port,...".
func parseServers(s string) (map[string]string, error) {
	out := make(map[string]string)
	for _, f := range cli.SplitList(s) {
		id, addr, ok := strings.Cut(f, "=")
		if !ok || id == "" || addr == "" {
			return nil, fmt.Errorf("-servers entry %q: want id=host:port", f)
		}
		if _, dup := out[id]; dup {
			return nil, fmt.Errorf("-servers: server id %q listed twice", id)
		}
		out[id] = addr
	}
	return out, nil
}
