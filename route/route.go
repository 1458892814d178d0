// Package route is the Redis side of message routing: which server holds a
// logged-in user (this file), how far the in-process copy of those routes
// can be trusted (cache.go), which servers are alive and who owns a server
// id (liveness.go), offline users' mailboxes (mailbox.go) and the cluster's
// link secret (secret.go). It is shared by the message server and the
// proxy. The key schema is declared once, in keys.go.
package route

import (
	"context"
	"errors"
	"fmt"
	"strings"
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
	// Addrs are the Redis addresses; nil means ["127.0.0.1:6379"]. One address
	// is a standalone Redis. Several are handed to rueidis' topology detection
	// (Redis Cluster), which needs a reachable node when New is called.
	Addrs []string
	// Prefix is prepended to every key; "" means DefaultPrefix ("chat:").
	Prefix string
	// CacheTTL bounds how long a route or heartbeat stays in the client-side
	// cache; 0 means DefaultCacheTTL (1 minute). A key with a shorter Redis
	// TTL is cached only for what remains of it. Must not be negative.
	CacheTTL time.Duration
	// Timeout bounds each blocking method when its ctx has no deadline, and
	// each connection attempt; 0 means DefaultTimeout (2s). Must not be
	// negative. ReleaseAll and ClearServer apply it per round trip (per batch
	// or SCAN page), not to the whole call.
	Timeout time.Duration
	// DisableCache turns client-side caching off: CachedLookup always misses
	// and Lookup and Alive always go to Redis. For tests and benchmarks only.
	DisableCache bool
	// KnownSize bounds the in-process route table CachedLookup reads, in
	// entries; 0 means DefaultKnownSize. Only online users are kept.
	KnownSize int
	// CacheBytes is rueidis' client-side cache per connection; 0 means
	// DefaultCacheBytes (8 MiB).
	CacheBytes int
}

// Store reads and writes routes and heartbeats in Redis. Its methods are safe
// for concurrent use. Only CachedLookup may be called on an event loop; every
// other method blocks on the network for up to the timeout.
type Store struct {
	client   rueidis.Client
	prefix   string
	cacheTTL time.Duration
	timeout  time.Duration
	noCache  bool
	// state is a generation counter shifted left by one, with bit 0 set while
	// a connection serving the cache is suspected down. See cacheDown.
	state atomic.Uint64
	// known is the in-process route table (cache.go); probing gates the
	// one probe that looks for Redis coming back during an outage.
	known   *known
	probing atomic.Bool
}

// New validates o and dials Redis with rueidis, with client-side caching in
// the default OPTIN tracking mode.
//
// With one address, New does not need Redis to be up: it returns a Store
// whose calls fail until Redis answers, and reconnects on use (call Ping to
// check). With several addresses (cluster), an unreachable Redis is an error
// "route: connect redis: ...". Other errors report bad options.
func New(o Options) (*Store, error) {
	if o.CacheTTL < 0 {
		return nil, fmt.Errorf("route: negative CacheTTL %v", o.CacheTTL)
	}
	if o.Timeout < 0 {
		return nil, fmt.Errorf("route: negative Timeout %v", o.Timeout)
	}
	if o.KnownSize < 0 || o.CacheBytes < 0 {
		return nil, fmt.Errorf("route: negative KnownSize or CacheBytes")
	}
	if o.KnownSize == 0 {
		o.KnownSize = DefaultKnownSize
	}
	if o.CacheBytes == 0 {
		o.CacheBytes = DefaultCacheBytes
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
		InitAddress:  append([]string(nil), addrs...),
		DisableCache: o.DisableCache,
		// ForceSingleClient skips cluster detection for one address and, unlike
		// the default, returns a usable client even when the first dial fails.
		ForceSingleClient: len(addrs) == 1,
		OnInvalidations:   s.onInvalidations,
		CacheSizeEachConn: o.CacheBytes,
	}
	opt.Dialer.Timeout = s.timeout
	client, err := rueidis.NewClient(opt)
	if err != nil {
		if client == nil {
			return nil, fmt.Errorf("route: connect redis: %w", err)
		}
		// ForceSingleClient: Redis is down now; calls reconnect on demand.
		s.markDown()
	}
	s.client = client
	return s, nil
}

// Close closes the Redis connections. Calls after Close fail.
func (s *Store) Close() { s.client.Close() }

// Prefix returns the key prefix in use.
func (s *Store) Prefix() string { return s.prefix }

// withTimeout applies s.timeout when ctx has no deadline.
func (s *Store) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
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
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	v, err := s.client.Do(ctx, s.client.B().Set().Key(RouteKey(s.prefix, name)).Value(r.Encode()).Get().Build()).ToString()
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
var releaseScript = rueidis.NewLuaScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0`)

// clearServerScript deletes KEYS[1] only if its value names server ARGV[1]
// ("<ARGV[1]> <token>"); returns 0/1.
var clearServerScript = rueidis.NewLuaScript(`local v = redis.call("GET", KEYS[1])
if v and string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. " " then return redis.call("DEL", KEYS[1]) end
return 0`)

// Release deletes name's route only if it still equals r, so an old session
// logging out never erases a newer login. It reports whether it deleted.
// If ctx has no deadline, Options.Timeout applies.
func (s *Store) Release(ctx context.Context, name string, r Route) (bool, error) {
	if err := r.validate(); err != nil {
		return false, err
	}
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	n, err := releaseScript.Exec(ctx, s.client, []string{RouteKey(s.prefix, name)}, []string{r.Encode()}).AsInt64()
	if err != nil {
		return false, fmt.Errorf("route: release %q: %w", name, err)
	}
	return n == 1, nil
}

// ReleaseAll is the batch form of Release, for shutdown: for each name it
// deletes the route only if it equals the given route. Commands are
// pipelined in batches of at most 256, with Options.Timeout applied per batch
// when ctx has no deadline.
//
// It goes on past per-entry failures (an invalid route, a Redis error on one
// key) and returns the first such error with the count; a network error or
// an expired ctx stops it. deleted counts the routes actually removed.
func (s *Store) ReleaseAll(ctx context.Context, routes map[string]Route) (deleted int, err error) {
	execs := make([]rueidis.LuaExec, 0, min(len(routes), batchSize))
	names := make([]string, 0, cap(execs))
	var firstErr error
	flush := func() error {
		if len(execs) == 0 {
			return nil
		}
		n, perr, fatal := s.execBatch(ctx, releaseScript, execs, names, "release all")
		deleted += n
		if firstErr == nil {
			firstErr = perr
		}
		execs, names = execs[:0], names[:0]
		return fatal
	}
	for name, r := range routes {
		if err := r.validate(); err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("route: release all %q: %w", name, err)
			}
			continue
		}
		execs = append(execs, rueidis.LuaExec{Keys: []string{RouteKey(s.prefix, name)}, Args: []string{r.Encode()}})
		names = append(names, name)
		if len(execs) == batchSize {
			if err := flush(); err != nil {
				return deleted, err
			}
		}
	}
	if err := flush(); err != nil {
		return deleted, err
	}
	return deleted, firstErr
}

// execBatch runs one pipelined batch of script executions, each returning
// 0/1, and counts the 1s. perr is the first per-entry Redis error; fatal is a
// network or context error that should stop the caller. Entries refused with
// NOSCRIPT (the script cache was flushed, e.g. Redis restarted, between
// ExecMulti's SCRIPT LOAD and EVALSHA) were not run and are retried once.
func (s *Store) execBatch(ctx context.Context, script *rueidis.Lua, execs []rueidis.LuaExec, names []string, op string) (n int, perr, fatal error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	for round := 0; round < 2 && len(execs) > 0; round++ {
		var retry []rueidis.LuaExec
		var retryNames []string
		for i, res := range script.ExecMulti(ctx, s.client, execs...) {
			if err := res.NonRedisError(); err != nil {
				return n, perr, fmt.Errorf("route: %s: %w", op, err)
			}
			v, err := res.AsInt64()
			if err != nil {
				if re, ok := rueidis.IsRedisErr(err); ok && re.IsNoScript() && round == 0 {
					retry = append(retry, execs[i])
					retryNames = append(retryNames, names[i])
					continue
				}
				if perr == nil {
					perr = fmt.Errorf("route: %s %q: %w", op, names[i], err)
				}
				continue
			}
			n += int(v)
		}
		execs, names = retry, retryNames
	}
	return n, perr, nil
}

// scan calls fn with each page of keys matching pattern on every node (one
// node for a standalone Redis). SCAN errors come back prefixed, fn's errors
// unchanged. Options.Timeout applies per page when ctx
// has no deadline. In a cluster, replicas are scanned too, so a key may be
// seen more than once.
func (s *Store) scan(ctx context.Context, pattern string, fn func(keys []string) error) error {
	for _, node := range s.client.Nodes() {
		var cursor uint64
		for {
			pctx, cancel := s.withTimeout(ctx)
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
				break
			}
		}
	}
	return nil
}

// ClearServer deletes every route whose value names serverID, for a server
// restarting after a crash. It SCANs prefix+"route:*" and deletes each key
// with a compare-and-delete script on the server field, so a user who has
// since logged in elsewhere keeps the newer route. It returns the number
// deleted; on error, the count so far. Options.Timeout applies per round
// trip when ctx has no deadline. Keys under the pattern that are not strings
// are skipped and reported in the error.
func (s *Store) ClearServer(ctx context.Context, serverID string) (int, error) {
	if !validField(serverID) {
		return 0, fmt.Errorf("route: clear server: invalid server ID %q", serverID)
	}
	deleted := 0
	var firstErr error
	err := s.scan(ctx, RoutePattern(s.prefix), func(keys []string) error {
		for len(keys) > 0 {
			chunk := keys[:min(len(keys), batchSize)]
			keys = keys[len(chunk):]
			execs := make([]rueidis.LuaExec, len(chunk))
			for i, k := range chunk {
				execs[i] = rueidis.LuaExec{Keys: []string{k}, Args: []string{serverID}}
			}
			n, perr, fatal := s.execBatch(ctx, clearServerScript, execs, chunk, "clear server")
			deleted += n
			if firstErr == nil {
				firstErr = perr
			}
			if fatal != nil {
				return fatal
			}
		}
		return nil
	})
	if err != nil {
		return deleted, err
	}
	return deleted, firstErr
}

// Reassert writes each given route only where its name has none
// (SET NX), to restore the routes of live sessions after Redis lost them
// (a restart without persistence); a name that has a route, e.g. a newer
// login elsewhere, is left alone. It returns how many it wrote. Commands
// are pipelined in batches of 256, with Options.Timeout per batch when ctx
// has no deadline.
func (s *Store) Reassert(ctx context.Context, routes map[string]Route) (written int, err error) {
	cmds := make(rueidis.Commands, 0, min(len(routes), batchSize))
	flush := func() error {
		if len(cmds) == 0 {
			return nil
		}
		bctx, cancel := s.withTimeout(ctx)
		defer cancel()
		for _, res := range s.client.DoMulti(bctx, cmds...) {
			if err := res.Error(); err != nil {
				if rueidis.IsRedisNil(err) {
					continue // NX: the name already had a route
				}
				return fmt.Errorf("route: reassert: %w", err)
			}
			written++
		}
		cmds = cmds[:0]
		return nil
	}
	for name, r := range routes {
		if r.validate() != nil {
			continue
		}
		cmds = append(cmds, s.client.B().Set().Key(RouteKey(s.prefix, name)).Value(r.Encode()).Nx().Build())
		if len(cmds) == batchSize {
			if err := flush(); err != nil {
				return written, err
			}
		}
	}
	return written, flush()
}
