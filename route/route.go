// Package route is the Redis side of message routing: which server holds a
// logged-in user (this file), how far the in-process copy of those routes
// can be trusted (cache.go), which servers are alive and who owns a server
// id (liveness.go), offline users' mailboxes (mailbox.go) and the cluster's
// link secret (secret.go). It is shared by the message server and the
// proxy. The key schema is declared once, in keys.go.
package route

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/bits"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

// Defaults for zero Options fields.
const (
	DefaultAddr     = "127.0.0.1:6379"
	DefaultCacheTTL = time.Minute
	DefaultTimeout  = 2 * time.Second
)

const (
	// scanCount is the COUNT hint of each SCAN page.
	scanCount = 512
	// batchSize bounds the commands pipelined in one round trip by ReleaseAll
	// and ClearServer, so a shutdown with many sessions neither builds one
	// huge request nor holds Redis for long.
	batchSize = 256
	// lookupAttempts bounds Lookup's retries of a spurious context.Canceled
	// (see Lookup).
	lookupAttempts = 3
)

// ErrMalformed is wrapped by every error about a stored route value that is
// not "<serverID> <token>".
var ErrMalformed = errors.New("malformed route value")

// Route says which server holds a user's session, and that session's random
// token, which tells a newer login apart from an older one on the same server.
// The zero Route means "no route".
type Route struct {
	Server, Token string
}

// Encode returns the stored form "<Server> <Token>". It does not validate:
// Claim and Release reject a Route whose fields are empty or contain
// whitespace, since ParseRoute could not read it back.
func (r Route) Encode() string { return r.Server + " " + r.Token }

// ParseRoute parses the stored form written by Encode. Anything other than
// two non-empty, whitespace-free fields separated by one space is an error
// wrapping ErrMalformed.
func ParseRoute(v string) (Route, error) {
	r, err := parse(v)
	if err != nil {
		return Route{}, fmt.Errorf("route: %w", err)
	}
	return r, nil
}

// parse is ParseRoute without the package prefix, for errors that callers
// wrap with their own context.
func parse(v string) (Route, error) {
	server, token, found := strings.Cut(v, " ")
	r := Route{Server: server, Token: token}
	if !found || r.validate() != nil {
		return Route{}, fmt.Errorf("%w %q", ErrMalformed, v)
	}
	return r, nil
}

func (r Route) validate() error {
	if !validField(r.Server) || !validField(r.Token) {
		return fmt.Errorf("route: invalid route %q/%q: server and token must be non-empty without whitespace", r.Server, r.Token)
	}
	return nil
}

func validField(s string) bool {
	return s != "" && !strings.ContainsAny(s, " \t\r\n\v\f")
}

// Options configures a Store. Every zero field means the default stated on it.
type Options struct {
	// Addrs are the Redis addresses; nil means ["127.0.0.1:6379"].
	//   - One address: a standalone Redis, or one node of a Redis Cluster
	//     (detected; if the node cannot be reached when New is called, it is
	//     taken for a standalone Redis and dialled on use).
	//   - Several: nodes of a Redis Cluster (rueidis discovers the rest),
	//     which needs one of them reachable when New is called.
	//   - With SentinelMaster set: the sentinels' addresses.
	Addrs []string
	// Prefix is prepended to every key; "" means DefaultPrefix ("chat:").
	Prefix string
	// CacheTTL bounds how long a route or heartbeat stays in the client-side
	// cache; 0 means DefaultCacheTTL (1 minute). A key with a shorter Redis
	// TTL is cached only for what remains of it. Must not be negative.
	CacheTTL time.Duration
	// Timeout bounds each blocking method when its ctx has no deadline; 0
	// means DefaultTimeout (2s). Must not be negative. ReleaseAll,
	// Reassert, ClearServer and the scans apply it to each round trip (per
	// batch or SCAN page), whatever ctx's deadline, not to the whole call.
	Timeout time.Duration
	// ConnTimeout bounds each connection attempt (dial, TLS and handshake)
	// and how long a connection may leave a request unanswered: a
	// connection that gets no reply, not even to the PING sent after
	// ConnTimeout/2 of silence, is dropped after about 1.5×ConnTimeout,
	// and on a cluster the slot map is refreshed. So a frozen node (a hung
	// host) is abandoned soon after the cluster fails it over; keep it at
	// or below cluster-node-timeout. 0 means DefaultConnTimeout (1s). Must
	// not be negative.
	ConnTimeout time.Duration
	// DisableCache turns client-side caching off: CachedLookup always misses
	// and Lookup and Alive always go to Redis. For tests and benchmarks only.
	DisableCache bool
	// KnownSize bounds the in-process route table CachedLookup reads, in
	// entries; 0 means DefaultKnownSize. Only online users are kept.
	KnownSize int
	// CacheBytes is rueidis' client-side cache per connection; 0 means
	// DefaultCacheBytes (64 KiB).
	CacheBytes int
	// RetryQueue bounds the route keys waiting to be written again after a
	// failed attempt (see RetryStats); 0 means DefaultRetryQueue (65536).
	// Must not be negative.
	RetryQueue int

	// Username and Password authenticate every connection to Redis (AUTH;
	// an ACL user when Username is set, else the default user). Empty
	// means no AUTH.
	Username, Password string
	// TLS, when not nil, encrypts every connection to Redis (and to the
	// sentinels); nil means plain TCP. For a cluster, the nodes must
	// announce their TLS ports (tls-cluster yes).
	TLS *tls.Config
	// SentinelMaster, when set, is the name of the master set the
	// sentinels at Addrs monitor: the Store talks to that set's master and
	// follows it through failovers. "" means Addrs are Redis nodes.
	SentinelMaster string
	// SentinelUsername and SentinelPassword authenticate to the sentinels;
	// empty means no AUTH (sentinels often have no password even when the
	// data nodes do).
	SentinelUsername, SentinelPassword string
}

// DefaultConnTimeout is Options.ConnTimeout's zero value.
const DefaultConnTimeout = time.Second

// sentinelRefresh is how often a sentinel client re-reads the master's
// address besides following +switch-master events.
const sentinelRefresh = 2 * time.Second

// Store reads and writes routes and heartbeats in Redis. Its methods are safe
// for concurrent use. Only CachedLookup may be called on an event loop; every
// other method blocks on the network for up to the timeout.
type Store struct {
	client   rueidis.Client
	prefix   string
	cacheTTL time.Duration
	timeout  time.Duration
	noCache  bool
	cluster  bool
	// state is a generation counter shifted left by one, with bit 0 set while
	// a connection serving the cache is suspected down. See cacheDown.
	state atomic.Uint64
	// known is the in-process route table (cache.go); probing gates the
	// one probe that looks for Redis coming back during an outage.
	known     *known
	probing   atomic.Bool
	lastProbe atomic.Int64 // unix ns when the last probe ended
	// retry holds route writes waiting for a node to come back (retry.go).
	retry *retryQueue
	// dead tracks, for SweepDeadServers, since when each server named by
	// a route has been seen without a heartbeat.
	deadMu sync.Mutex
	dead   map[string]time.Time

	closeOnce sync.Once
}

// New validates o and dials Redis with rueidis, with client-side caching in
// the default OPTIN tracking mode.
//
// With one address, New does not need Redis to be up: it returns a Store
// whose calls fail until Redis answers, and reconnects on use (call Ping to
// check). With several addresses (cluster) or sentinels, an unreachable
// Redis is an error "route: connect redis: ...". Other errors report bad
// options.
func New(o Options) (*Store, error) {
	if o.CacheTTL < 0 || o.Timeout < 0 || o.ConnTimeout < 0 {
		return nil, fmt.Errorf("route: negative CacheTTL, Timeout or ConnTimeout")
	}
	if o.KnownSize < 0 || o.CacheBytes < 0 || o.RetryQueue < 0 {
		return nil, fmt.Errorf("route: negative KnownSize, CacheBytes or RetryQueue")
	}
	if o.KnownSize == 0 {
		o.KnownSize = DefaultKnownSize
	}
	if o.CacheBytes == 0 {
		o.CacheBytes = DefaultCacheBytes
	}
	if o.ConnTimeout == 0 {
		o.ConnTimeout = DefaultConnTimeout
	}
	if o.RetryQueue == 0 {
		o.RetryQueue = DefaultRetryQueue
	}
	addrs := o.Addrs
	if len(addrs) == 0 {
		addrs = []string{DefaultAddr}
	}
	for _, a := range addrs {
		if a == "" {
			return nil, errors.New("route: empty Redis address")
		}
	}
	s := &Store{
		prefix:   o.Prefix,
		cacheTTL: o.CacheTTL,
		timeout:  o.Timeout,
		noCache:  o.DisableCache,
		known:    newKnown(o.KnownSize),
		dead:     make(map[string]time.Time),
	}
	if s.prefix == "" {
		s.prefix = DefaultPrefix
	}
	if s.cacheTTL == 0 {
		s.cacheTTL = DefaultCacheTTL
	}
	if s.timeout == 0 {
		s.timeout = DefaultTimeout
	}
	opt := rueidis.ClientOption{
		InitAddress:       append([]string(nil), addrs...),
		DisableCache:      o.DisableCache,
		OnInvalidations:   s.onInvalidations,
		CacheSizeEachConn: o.CacheBytes,
		Username:          o.Username,
		Password:          o.Password,
		TLSConfig:         o.TLS,
		// A connection that leaves a request unanswered for ConnTimeout
		// (checked by a PING after ConnTimeout/2 of silence) is dropped;
		// rueidis' default, 10s, kept a frozen master in use for twice the
		// time the cluster took to fail it over.
		ConnWriteTimeout:    o.ConnTimeout,
		ReadBufferEachConn:  redisBuffer,
		WriteBufferEachConn: redisBuffer,
		RingScaleEachConn:   redisRingScale,
	}
	opt.Dialer.Timeout = o.ConnTimeout
	opt.Dialer.KeepAlive = max(o.ConnTimeout/2, 50*time.Millisecond)
	if o.SentinelMaster != "" {
		opt.Sentinel = rueidis.SentinelOption{
			MasterSet:               o.SentinelMaster,
			Username:                o.SentinelUsername,
			Password:                o.SentinelPassword,
			TLSConfig:               o.TLS,
			Dialer:                  opt.Dialer,
			TopologyRefreshInterval: sentinelRefresh,
		}
	}
	client, err := rueidis.NewClient(opt)
	if _, isReply := rueidis.IsRedisErr(err); err != nil && !isReply && len(addrs) == 1 && o.SentinelMaster == "" {
		// One address that does not answer now: take it for a standalone
		// Redis. ForceSingleClient, unlike the default, returns a usable
		// client even when the first dial fails; calls reconnect on demand.
		opt.ForceSingleClient = true
		client, err = rueidis.NewClient(opt)
		if _, isReply := rueidis.IsRedisErr(err); err != nil && !isReply && client != nil {
			s.markDown()
			err = nil
		}
	}
	if err != nil {
		if client != nil {
			client.Close()
		}
		return nil, fmt.Errorf("route: connect redis: %w", err)
	}
	s.client = client
	s.cluster = client.Mode() == rueidis.ClientModeCluster
	s.retry = newRetryQueue(s, o.RetryQueue)
	go s.retry.run()
	return s, nil
}

// Close gives route writes still waiting to be retried up to
// Options.Timeout to go through (see RetryStats), then closes the Redis
// connections. Calls after Close fail; Close may be called again.
func (s *Store) Close() {
	s.closeOnce.Do(func() {
		s.retry.close()
		s.client.Close()
	})
}

// RetryStats returns the retry queue's counters (see retry.go).
func (s *Store) RetryStats() RetryStats { return s.retry.stats() }

// Mode returns rueidis' topology in use: "cluster", "sentinel" or
// "standalone".
func (s *Store) Mode() string { return string(s.client.Mode()) }

// Prefix returns the key prefix in use.
func (s *Store) Prefix() string { return s.prefix }

// withTimeout applies s.timeout when ctx has no deadline.
func (s *Store) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, s.timeout)
}

// roundTrip bounds one round trip of a long call by Options.Timeout (and
// ctx), so that a node that does not answer costs one timeout, not all of
// ctx.
func (s *Store) roundTrip(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.timeout)
}

// decodeGet turns a GET reply into a route. A Nil reply is (zero, false, nil).
func decodeGet(res rueidis.RedisResult) (Route, bool, error) {
	v, err := res.ToString()
	if err != nil {
		if rueidis.IsRedisNil(err) {
			return Route{}, false, nil
		}
		return Route{}, false, err
	}
	r, err := parse(v)
	if err != nil {
		return Route{}, false, err
	}
	return r, true, nil
}

// FreshLookup reads name's route with a plain GET, bypassing the cache; use
// it to re-route after a user moved, or to read your own writes. ok=false
// with a nil error means no route. If ctx has no deadline, Options.Timeout
// applies.
func (s *Store) FreshLookup(ctx context.Context, name string) (r Route, ok bool, err error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	r, ok, err = decodeGet(s.client.Do(ctx, s.client.B().Get().Key(RouteKey(s.prefix, name)).Build()))
	if err != nil {
		return Route{}, false, fmt.Errorf("route: fresh lookup %q: %w", name, err)
	}
	return r, ok, nil
}

// Claim atomically sets name's route to r and returns the route it replaced
// (SET key value GET). hadPrev=false means there was none. r must have a
// non-empty, whitespace-free Server and Token.
//
// If the replaced value was malformed, the claim still took effect: prev is
// zero, hadPrev is true and err wraps ErrMalformed. On a network error or
// timeout the claim may or may not have been applied. If ctx has no
// deadline, Options.Timeout applies.
func (s *Store) Claim(ctx context.Context, name string, r Route) (prev Route, hadPrev bool, err error) {
	if err := r.validate(); err != nil {
		return Route{}, false, err
	}
	key := RouteKey(s.prefix, name)
	// A re-assertion of an older session of name, waiting in the retry
	// queue, must not come back after this login ends.
	s.retry.supersede(key, "")
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	v, err := s.client.Do(ctx, s.client.B().Set().Key(key).Value(r.Encode()).Get().Build()).ToString()
	if err != nil {
		if rueidis.IsRedisNil(err) {
			return Route{}, false, nil
		}
		return Route{}, false, fmt.Errorf("route: claim %q: %w", name, err)
	}
	prev, err = parse(v)
	if err != nil {
		return Route{}, true, fmt.Errorf("route: claim %q replaced a %w", name, err)
	}
	return prev, true, nil
}

// releaseScript deletes KEYS[1] only if it still holds ARGV[1]; returns 0/1.
var releaseScript = newScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0`)

// clearServerScript deletes KEYS[1] only if its value names server ARGV[1]
// ("<ARGV[1]> <token>"); returns 0/1.
var clearServerScript = newScript(`local v = redis.call("GET", KEYS[1])
if v and string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. " " then return redis.call("DEL", KEYS[1]) end
return 0`)

// Release deletes name's route only if it still equals r, so an old session
// logging out never erases a newer login. It reports whether it deleted.
// If ctx has no deadline, Options.Timeout applies.
//
// If Redis cannot take the deletion now (a node is down or failing over),
// it is queued and retried until done (see RetryStats), and Release
// returns false with a nil error.
func (s *Store) Release(ctx context.Context, name string, r Route) (bool, error) {
	if err := r.validate(); err != nil {
		return false, err
	}
	key, v := RouteKey(s.prefix, name), r.Encode()
	s.retry.supersede(key, v)
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	n, err := releaseScript.exec(ctx, s.client, []string{key}, []string{v}).AsInt64()
	if err != nil {
		if transient(err) && s.retry.addRelease(key, name, v) {
			return false, nil
		}
		return false, fmt.Errorf("route: release %q: %w", name, err)
	}
	return n == 1, nil
}

// ReleaseAll is the batch form of Release, for shutdown and for closing
// sessions in bulk: for each name it deletes the route only if it equals
// the given route. Commands are pipelined in batches of at most 256, each
// sent to the master of its key's slot, with Options.Timeout (and ctx)
// bounding each batch. deleted counts the routes removed now.
//
// A route that Redis cannot take now (its node is down or failing over)
// is queued and retried until done, as for Release. err reports only what
// will not be done: invalid routes, Redis errors that retrying cannot
// cure, and routes given up because the retry queue is full; it is the
// first of them, and the rest still went through.
func (s *Store) ReleaseAll(ctx context.Context, routes map[string]Route) (deleted int, err error) {
	var firstErr error
	keep := func(err error) {
		if firstErr == nil {
			firstErr = err
		}
	}
	execs := make([]rueidis.LuaExec, 0, min(len(routes), batchSize))
	names := make([]string, 0, cap(execs))
	flush := func() {
		if len(execs) == 0 {
			return
		}
		bctx, cancel := s.roundTrip(ctx)
		res := releaseScript.execMulti(bctx, s.client, execs, true)
		cancel()
		for i, r := range res {
			n, err := r.AsInt64()
			key, v := execs[i].Keys[0], execs[i].Args[0]
			switch {
			case err == nil:
				deleted += int(n)
			case !transient(err):
				keep(fmt.Errorf("route: release all %q: %w", names[i], err))
			case !s.retry.addRelease(key, names[i], v):
				keep(fmt.Errorf("route: release all %q: retry queue full, given up: %w", names[i], err))
			}
		}
		execs, names = execs[:0], names[:0]
	}
	for name, r := range routes {
		if err := r.validate(); err != nil {
			keep(fmt.Errorf("route: release all %q: %w", name, err))
			continue
		}
		key, v := RouteKey(s.prefix, name), r.Encode()
		s.retry.supersede(key, v)
		execs = append(execs, rueidis.LuaExec{Keys: []string{key}, Args: []string{v}})
		names = append(names, name)
		if len(execs) == batchSize {
			flush()
		}
	}
	flush()
	return deleted, firstErr
}

// Reassert writes each given route only where its name has none
// (SET NX), to restore the routes of live sessions after Redis lost them
// (a restart without persistence, or a failover that lost recent writes);
// a name that has a route, e.g. a newer login elsewhere, is left alone.
// It returns how many it wrote now. Commands are pipelined in batches of
// 256, with Options.Timeout (and ctx) bounding each batch, so a node that
// is down delays the call by one timeout, not by all of ctx.
//
// A route Redis cannot take now is queued and retried until done, after
// any release of the same name queued before it (see RetryStats); a
// later Claim or Release of that name cancels it. err reports only what
// will not be done, as for ReleaseAll.
func (s *Store) Reassert(ctx context.Context, routes map[string]Route) (written int, err error) {
	var firstErr error
	keep := func(err error) {
		if firstErr == nil {
			firstErr = err
		}
	}
	cmds := make(rueidis.Commands, 0, min(len(routes), batchSize))
	names := make([]string, 0, cap(cmds))
	vals := make([]string, 0, cap(cmds))
	flush := func() {
		if len(cmds) == 0 {
			return
		}
		bctx, cancel := s.roundTrip(ctx)
		res := s.client.DoMulti(bctx, cmds...)
		cancel()
		for i, r := range res {
			err := r.Error()
			switch {
			case err == nil:
				written++
			case rueidis.IsRedisNil(err):
				// NX: the name already had a route
			case !transient(err):
				keep(fmt.Errorf("route: reassert %q: %w", names[i], err))
			case !s.retry.addReassert(RouteKey(s.prefix, names[i]), names[i], vals[i]):
				keep(fmt.Errorf("route: reassert %q: retry queue full, given up: %w", names[i], err))
			}
		}
		cmds, names, vals = cmds[:0], names[:0], vals[:0]
	}
	for name, r := range routes {
		if r.validate() != nil {
			continue
		}
		key, v := RouteKey(s.prefix, name), r.Encode()
		if s.retry.pending(key) {
			// A release of this name is waiting: the re-assertion must run
			// after it, so it joins it in the queue.
			if !s.retry.addReassert(key, name, v) {
				keep(fmt.Errorf("route: reassert %q: retry queue full, given up", name))
			}
			continue
		}
		cmds = append(cmds, s.client.B().Set().Key(key).Value(v).Nx().Build().ToRetryable())
		names, vals = append(names, name), append(vals, v)
		if len(cmds) == batchSize {
			flush()
		}
	}
	flush()
	return written, firstErr
}

// clearRetryDelay is the pause between ClearServer's rounds while part of
// the cluster is unreachable.
const clearRetryDelay = 200 * time.Millisecond

// ClearServer deletes every route whose value names serverID, for a server
// restarting after a crash, before it takes logins. It SCANs
// prefix+"route:*" on each master and deletes each key with a
// compare-and-delete script on the server field, so a user who has since
// logged in elsewhere keeps the newer route. Options.Timeout bounds each
// round trip.
//
// On a cluster, a master that cannot be reached (or a key it cannot take)
// is tried again every 200ms, following the slots to whichever node serves
// them after a failover, until every slot was cleared or ctx expires; give
// ctx a deadline longer than a failover. It returns the number deleted
// and, if it ran out of time, an error saying how many slots were left.
// Keys under the pattern that are not strings are skipped and reported
// in the error.
//
// It must not run while serverID takes logins: its retries are not
// compare-and-delete on a token, and would delete the routes of new
// sessions.
func (s *Store) ClearServer(ctx context.Context, serverID string) (int, error) {
	if !validField(serverID) {
		return 0, fmt.Errorf("route: clear server: invalid server ID %q", serverID)
	}
	deleted := 0
	var badType error
	var done slotSet
	var lastErr error
	for {
		nodes, err := s.masters(ctx)
		if err != nil {
			lastErr = err
		}
		for _, n := range nodes {
			if done.covers(n.slots) {
				continue
			}
			var failed []string
			err := s.scanNode(ctx, n.client, RoutePattern(s.prefix), func(keys []string) error {
				for len(keys) > 0 {
					chunk := keys[:min(len(keys), batchSize)]
					keys = keys[len(chunk):]
					execs := make([]rueidis.LuaExec, len(chunk))
					for i, k := range chunk {
						execs[i] = rueidis.LuaExec{Keys: []string{k}, Args: []string{serverID}}
					}
					bctx, cancel := s.roundTrip(ctx)
					res := clearServerScript.execMulti(bctx, s.client, execs, true)
					cancel()
					for i, r := range res {
						v, err := r.AsInt64()
						switch {
						case err == nil:
							deleted += int(v)
						case transient(err):
							failed = append(failed, chunk[i])
						case badType == nil:
							badType = fmt.Errorf("route: clear server %q: key %q: %w", serverID, chunk[i], err)
						}
					}
				}
				return nil
			})
			if err == nil && len(failed) > 0 {
				err = fmt.Errorf("%d keys not cleared", len(failed))
			}
			if err != nil {
				lastErr = fmt.Errorf("node %s: %w", n.addr, err)
				continue
			}
			done.add(n.slots)
		}
		if done.full() {
			return deleted, badType
		}
		select {
		case <-ctx.Done():
			return deleted, fmt.Errorf("route: clear server %q: %d of 16384 slots not cleared: %w", serverID, 16384-done.count(), lastErr)
		case <-time.After(clearRetryDelay):
		}
	}
}

// scan calls fn with each page of keys matching pattern on every master
// (the one node of a standalone or sentinel-managed Redis): replicas are
// never asked, so a dead replica does not fail a scan and each key is seen
// once (unless a slot migrates or fails over during the scan). SCAN errors
// come back prefixed, fn's errors unchanged. Options.Timeout bounds each
// page.
func (s *Store) scan(ctx context.Context, pattern string, fn func(keys []string) error) error {
	nodes, err := s.masters(ctx)
	if err != nil {
		return fmt.Errorf("route: scan %s: %w", pattern, err)
	}
	var covered slotSet
	for _, n := range nodes {
		if err := s.scanNode(ctx, n.client, pattern, fn); err != nil {
			return err
		}
		covered.add(n.slots)
	}
	if !covered.full() {
		return fmt.Errorf("route: scan %s: %d of 16384 slots have no master", pattern, 16384-covered.count())
	}
	return nil
}

// scanNode is scan on one node.
func (s *Store) scanNode(ctx context.Context, node rueidis.Client, pattern string, fn func(keys []string) error) error {
	var cursor uint64
	for {
		pctx, cancel := s.roundTrip(ctx)
		e, err := node.Do(pctx, node.B().Scan().Cursor(cursor).Match(pattern).Count(scanCount).Build()).AsScanEntry()
		cancel()
		if err != nil {
			return fmt.Errorf("route: scan %s: %w", pattern, err)
		}
		if len(e.Elements) > 0 {
			if err := fn(e.Elements); err != nil {
				return err
			}
		}
		if cursor = e.Cursor; cursor == 0 {
			return nil
		}
	}
}

// master is one node serving slots, with a client bound to it.
type master struct {
	addr   string
	client rueidis.Client
	slots  []slotRange
}

type slotRange struct{ lo, hi int }

// allSlots is the one range a standalone or sentinel-managed Redis serves.
var allSlots = []slotRange{{0, 16383}}

// masters returns the nodes serving slots. For a cluster it asks CLUSTER
// SLOTS of the nodes rueidis knows until one answers, and binds each
// master named there to rueidis' connection to it; a master rueidis does
// not know yet is left out (its slots stay uncovered) and an error says
// so, along with the nodes that are returned.
func (s *Store) masters(ctx context.Context) ([]master, error) {
	nodes := s.client.Nodes()
	if !s.cluster {
		for addr, c := range nodes {
			return []master{{addr: addr, client: c, slots: allSlots}}, nil
		}
		return nil, errors.New("no Redis node")
	}
	reply, err := s.clusterSlots(ctx, nodes)
	if err != nil {
		return nil, err
	}
	byAddr := make(map[string]*master)
	var order []string
	var missing []string
	for _, e := range reply {
		f, err := e.ToArray()
		if err != nil || len(f) < 3 {
			continue
		}
		lo, err1 := f[0].AsInt64()
		hi, err2 := f[1].AsInt64()
		node, err3 := f[2].ToArray()
		if err1 != nil || err2 != nil || err3 != nil || len(node) < 2 {
			continue
		}
		host, _ := node[0].ToString()
		port, _ := node[1].AsInt64()
		addr := net.JoinHostPort(host, strconv.FormatInt(port, 10))
		m := byAddr[addr]
		if m == nil {
			c, ok := nodes[addr]
			if !ok {
				missing = append(missing, addr)
				continue
			}
			m = &master{addr: addr, client: c}
			byAddr[addr] = m
			order = append(order, addr)
		}
		m.slots = append(m.slots, slotRange{int(lo), int(hi)})
	}
	out := make([]master, 0, len(order))
	for _, a := range order {
		out = append(out, *byAddr[a])
	}
	if len(missing) > 0 {
		return out, fmt.Errorf("masters %v not connected yet", missing)
	}
	return out, nil
}

// clusterSlots asks every node for CLUSTER SLOTS at once and returns the
// first answer, so that nodes that are down cost nothing while one is up.
func (s *Store) clusterSlots(ctx context.Context, nodes map[string]rueidis.Client) ([]rueidis.RedisMessage, error) {
	qctx, cancel := s.roundTrip(ctx)
	defer cancel()
	type answer struct {
		reply []rueidis.RedisMessage
		err   error
	}
	ch := make(chan answer, len(nodes))
	for _, c := range nodes {
		go func() {
			r, err := c.Do(qctx, c.B().ClusterSlots().Build()).ToArray()
			ch <- answer{r, err}
		}()
	}
	var lastErr error = errors.New("no node known")
	for range nodes {
		a := <-ch
		if a.err == nil {
			return a.reply, nil
		}
		lastErr = a.err
	}
	return nil, fmt.Errorf("cluster slots: %w", lastErr)
}

// slotSet is a set of cluster slots.
type slotSet [16384 / 64]uint64

func (ss *slotSet) add(rs []slotRange) {
	for _, r := range rs {
		for i := max(r.lo, 0); i <= min(r.hi, 16383); i++ {
			ss[i/64] |= 1 << (i % 64)
		}
	}
}

func (ss *slotSet) covers(rs []slotRange) bool {
	for _, r := range rs {
		for i := max(r.lo, 0); i <= min(r.hi, 16383); i++ {
			if ss[i/64]&(1<<(i%64)) == 0 {
				return false
			}
		}
	}
	return true
}

func (ss *slotSet) count() int {
	n := 0
	for _, w := range ss {
		n += bits.OnesCount64(w)
	}
	return n
}

func (ss *slotSet) full() bool { return ss.count() == 16384 }

// redisBuffer and redisRingScale size each Redis connection's buffers and
// request ring, rather than rueidis' defaults (0.5 MiB each way and 1,024
// slots).
const (
	redisBuffer    = 64 << 10
	redisRingScale = 8
)
