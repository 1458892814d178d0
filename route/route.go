// Package route is the Redis side of message routing: which server holds a
// logged-in user, and which servers are alive. It is shared by the message
// server and the proxy. The key schema is declared in keys.go.
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
	// cancelled is an already-cancelled context: DoCache with it answers
	// from the local cache or fails at once without sending anything.
	cancelled context.Context
	// state is a generation counter shifted left by one, with bit 0 set while
	// the connection serving the cache is suspected down. See cacheDown.
	state atomic.Uint64
	// last holds the last-known routes, served by CachedLookup while the
	// connection is down; probing gates the one probe that looks for the
	// connection coming back meanwhile.
	last    *fallback
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
		last:     newFallback(fallbackSize),
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
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s.cancelled = ctx

	opt := rueidis.ClientOption{
		InitAddress:  append([]string(nil), addrs...),
		DisableCache: o.DisableCache,
		// ForceSingleClient skips cluster detection for one address and, unlike
		// the default, returns a usable client even when the first dial fails.
		ForceSingleClient: len(addrs) == 1,
		// Called on the connection's reader goroutine: keep it cheap.
		// A nil slice means the whole cache of one connection was flushed,
		// which happens when that connection drops (or on FLUSHALL).
		OnInvalidations: func(keys []rueidis.RedisMessage) {
			if keys == nil {
				s.markDown()
				return
			}
			routePrefix := s.prefix + routeSegment
			for _, k := range keys {
				if key, err := k.ToString(); err == nil {
					s.last.invalidate(routePrefix, []string{key})
				}
			}
		},
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

// markDown records that a connection dropped (its cache is gone) by bumping
// the generation and setting the down bit.
func (s *Store) markDown() {
	for {
		old := s.state.Load()
		if s.state.CompareAndSwap(old, (old+2)|1) {
			return
		}
	}
}

// markUp clears the down bit if no drop happened since before was read, i.e.
// a reply received after before proves the connection is back.
func (s *Store) markUp(before uint64) {
	if before&1 != 0 && s.state.CompareAndSwap(before, before&^1) {
		// Invalidations sent while the connection was down are lost: the
		// last-known table can no longer be trusted to mirror Redis.
		s.last.clear()
	}
}

// Drops counts the Redis connections seen dropping since New (with
// client-side caching on; 0 forever with DisableCache). A Redis restart
// drops every connection, so a change tells a caller that Redis may have
// lost its data since it last looked.
func (s *Store) Drops() uint64 { return s.state.Load() >> 1 }

// cacheDown reports whether the cache connection is suspected down. While it
// is, CachedLookup does not call rueidis at all: the cache was flushed anyway,
// and rueidis would make the caller wait for a reconnect another goroutine has
// in progress (DoCache, even with a cancelled ctx, waits on that dial).
func (s *Store) cacheDown() bool { return s.state.Load()&1 != 0 }

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

// CachedLookup answers from the client-side cache only: it never blocks and
// never touches the network, so it is the one method safe on an event loop.
// (It is DoCache with an already-cancelled context: a hit is returned, a miss
// fails at once without sending anything.)
//
// hit=false means "not in the cache, resolve with Lookup off the event loop";
// r and ok are then zero. It is also false with DisableCache and for a
// cached malformed value (so that Lookup reports the error). When hit is
// true, ok reports whether the user has a route: a cached nil means offline.
//
// While the Redis connection is down (rueidis has then dropped its cache),
// it answers from the last route each name resolved to through Lookup,
// kept in a bounded table that Redis invalidations keep current, so chats
// to known users keep flowing through an outage; names not in that table
// miss. The first such answer also starts one background probe that ends
// this mode when Redis answers again.
//
// No read-your-writes: after this Store's own Claim or Release the cache may
// still show the old value for a moment, because Redis 7 sends the
// invalidation after the reply to the write. Use FreshLookup after a write.
// Another client's write is seen once its invalidation arrives (~2 ms on
// loopback).
func (s *Store) CachedLookup(name string) (r Route, ok bool, hit bool) {
	if s.noCache {
		return Route{}, false, false
	}
	if s.cacheDown() {
		e, found := s.last.get(name)
		if !found {
			return Route{}, false, false
		}
		// Served from the last-known table: also check, once at a time and
		// off the caller's goroutine, whether Redis is back.
		if s.probing.CompareAndSwap(false, true) {
			go func() {
				defer s.probing.Store(false)
				_, _, _ = s.Lookup(context.Background(), name)
			}()
		}
		return e.r, e.ok, true
	}
	res := s.client.DoCache(s.cancelled, s.client.B().Get().Key(RouteKey(s.prefix, name)).Cache(), s.cacheTTL)
	if res.NonRedisError() != nil { // a miss: context.Canceled
		return Route{}, false, false
	}
	r, ok, err := decodeGet(res)
	if err != nil {
		return Route{}, false, false
	}
	return r, ok, true
}

// Lookup resolves name's route through the client-side cache, blocking on a
// miss for one round trip (concurrent misses for the same name share it).
// ok=false with a nil error means the user has no route; a nil reply is
// cached like a value. The same no-read-your-writes caveat as CachedLookup
// applies. A stored value that does not parse is an error wrapping
// ErrMalformed. If ctx has no deadline, Options.Timeout applies.
//
// When Redis cannot be reached it answers from the last route name
// resolved to (see CachedLookup), and fails only for names it has none for.
func (s *Store) Lookup(ctx context.Context, name string) (r Route, ok bool, err error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	key := RouteKey(s.prefix, name)
	for attempt := 1; ; attempt++ {
		before := s.state.Load()
		res := s.client.DoCache(ctx, s.client.B().Get().Key(key).Cache(), s.cacheTTL)
		if res.NonRedisError() == nil && !res.IsCacheHit() {
			s.markUp(before)
		}
		r, ok, err = decodeGet(res)
		// A CachedLookup that misses registers a pending cache entry and then
		// cancels it with context.Canceled; a Lookup that joined that entry in
		// between receives that error although its own ctx is fine. Retry.
		if err != nil && errors.Is(err, context.Canceled) && ctx.Err() == nil && attempt < lookupAttempts {
			continue
		}
		if err != nil {
			// Redis unreachable (not an error reply): answer from the
			// last-known route, as CachedLookup does while the connection
			// is marked down. This also covers the moment between rueidis
			// dropping its cache and OnInvalidations marking us down.
			if _, isReply := rueidis.IsRedisErr(err); !isReply && !s.noCache {
				if e, found := s.last.get(name); found {
					return e.r, e.ok, nil
				}
			}
			return Route{}, false, fmt.Errorf("route: lookup %q: %w", name, err)
		}
		s.last.put(name, fallbackEntry{r: r, ok: ok})
		return r, ok, nil
	}
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

// Heartbeat marks serverID alive for ttl by writing its peer address
// (SET alive:<id> peerAddr PX ttl). Servers call it every second with a TTL
// of a few seconds. ttl must be at least 1ms. If ctx has no deadline,
// Options.Timeout applies.
func (s *Store) Heartbeat(ctx context.Context, serverID, peerAddr string, ttl time.Duration) error {
	if !validField(serverID) {
		return fmt.Errorf("route: heartbeat: invalid server ID %q", serverID)
	}
	if ttl < time.Millisecond {
		return fmt.Errorf("route: heartbeat: ttl %v below 1ms", ttl)
	}
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	err := s.client.Do(ctx, s.client.B().Set().Key(AliveKey(s.prefix, serverID)).Value(peerAddr).Px(ttl).Build()).Error()
	if err != nil {
		return fmt.Errorf("route: heartbeat %q: %w", serverID, err)
	}
	return nil
}

// Alive reports whether serverID's heartbeat key exists. It reads through
// the client-side cache (blocking on a miss); a cached entry never outlives
// the key's TTL, and another server's heartbeat is seen once its
// invalidation arrives. Like Lookup, it does not read this Store's own
// writes reliably. If ctx has no deadline, Options.Timeout applies.
func (s *Store) Alive(ctx context.Context, serverID string) (bool, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	key := AliveKey(s.prefix, serverID)
	for attempt := 1; ; attempt++ {
		err := s.client.DoCache(ctx, s.client.B().Get().Key(key).Cache(), s.cacheTTL).Error()
		switch {
		case err == nil:
			return true, nil
		case rueidis.IsRedisNil(err):
			return false, nil
		case errors.Is(err, context.Canceled) && ctx.Err() == nil && attempt < lookupAttempts:
			continue // same spurious cancellation as in Lookup
		default:
			return false, fmt.Errorf("route: alive %q: %w", serverID, err)
		}
	}
}

// Servers lists the live servers, server ID -> peer address, by SCANning
// prefix+"alive:*" and reading each key (not through the cache). A key that
// expires between the two steps is left out. Options.Timeout applies per
// round trip when ctx has no deadline.
func (s *Store) Servers(ctx context.Context) (map[string]string, error) {
	out := make(map[string]string)
	strip := len(AliveKey(s.prefix, ""))
	err := s.scan(ctx, AlivePattern(s.prefix), func(keys []string) error {
		for len(keys) > 0 {
			chunk := keys[:min(len(keys), batchSize)]
			keys = keys[len(chunk):]
			cmds := make(rueidis.Commands, len(chunk))
			for i, k := range chunk {
				cmds[i] = s.client.B().Get().Key(k).Build()
			}
			bctx, cancel := s.withTimeout(ctx)
			results := s.client.DoMulti(bctx, cmds...)
			cancel()
			for i, res := range results {
				v, err := res.ToString()
				if err != nil {
					if rueidis.IsRedisNil(err) {
						continue
					}
					if _, ok := rueidis.IsRedisErr(err); ok {
						continue // not a string: not ours
					}
					return fmt.Errorf("route: servers: %w", err)
				}
				out[chunk[i][strip:]] = v
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Ping checks that Redis answers. If ctx has no deadline, Options.Timeout
// applies.
func (s *Store) Ping(ctx context.Context) error {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	if err := s.client.Do(ctx, s.client.B().Ping().Build()).Error(); err != nil {
		return fmt.Errorf("route: ping: %w", err)
	}
	return nil
}
