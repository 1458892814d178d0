package route

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/rueidis"
)

// Trust in the cache.
//
// The hot path asks CachedLookup, which reads an in-process table (known)
// under a shard's read lock: no call into rueidis, no allocation. The table
// holds only users who were online when a tracked lookup (rueidis DoCache,
// which registers the key for Redis' client-side-caching invalidations)
// last read them; a name with no route is never kept, so chats to names
// that never log in cost nothing here (they miss and go off the loop).
//
// It stays true to Redis because:
//   - an invalidation of a route key deletes the name and bumps its shard's
//     generation, and a lookup only stores its answer if the generation did
//     not move while it was in flight (an invalidation processed on the
//     rueidis reader goroutine before the lookup's goroutine stored a stale
//     answer would otherwise leave it there for good);
//   - when a connection to Redis drops, its invalidations are lost: the
//     table is then kept (last-known routes keep chats flowing through an
//     outage, see CachedLookup) and cleared when Redis answers again.

// knownShards splits the table to keep event loops off one lock.
const knownShards = 64

// DefaultKnownSize bounds the in-process route table (entries).
const DefaultKnownSize = 1 << 19

// DefaultCacheBytes is the rueidis client-side cache per connection. The
// in-process table is the real cache; rueidis' only serves Lookup's
// tracked reads, so it can be small, and it bounds the memory spent on
// negative answers (rueidis caches nil replies). It was 256 KiB: in the
// trickle benchmark (9,000 remote names per server) that was about 600 KB
// of each server's live heap, a second copy of routes the table holds
// (Redis' invalidations reach the table whether or not rueidis still
// caches the key).
const DefaultCacheBytes = 64 << 10

type known struct {
	shards   [knownShards]knownShard
	perShard int
}

type knownShard struct {
	sync.RWMutex
	m   map[string]Route
	gen uint64
}

func newKnown(size int) *known {
	k := &known{perShard: max(1, size/knownShards)}
	for i := range k.shards {
		k.shards[i].m = make(map[string]Route)
	}
	return k
}

func (k *known) shard(name string) *knownShard {
	h := uint32(2166136261)
	for i := 0; i < len(name); i++ {
		h ^= uint32(name[i])
		h *= 16777619
	}
	return &k.shards[h%knownShards]
}

func (k *known) get(name string) (Route, bool) {
	sh := k.shard(name)
	sh.RLock()
	r, ok := sh.m[name]
	sh.RUnlock()
	return r, ok
}

// begin returns the generation a later put must still find.
func (k *known) begin(name string) uint64 {
	sh := k.shard(name)
	sh.RLock()
	g := sh.gen
	sh.RUnlock()
	return g
}

// put stores r for name unless the shard was invalidated since begin
// returned gen. A full shard loses one arbitrary entry. The key is a copy:
// a name decoded from a request shares its whole line's memory (sonic
// keeps strings as slices of its input), which would otherwise live as
// long as the entry.
func (k *known) put(name string, r Route, gen uint64) {
	sh := k.shard(name)
	sh.Lock()
	if sh.gen == gen {
		if _, exists := sh.m[name]; !exists && len(sh.m) >= k.perShard {
			for victim := range sh.m {
				delete(sh.m, victim)
				break
			}
		}
		sh.m[strings.Clone(name)] = r
	}
	sh.Unlock()
}

func (k *known) forget(name string) {
	sh := k.shard(name)
	sh.Lock()
	delete(sh.m, name)
	sh.gen++
	sh.Unlock()
}

func (k *known) clear() {
	for i := range k.shards {
		sh := &k.shards[i]
		sh.Lock()
		clear(sh.m)
		sh.gen++
		sh.Unlock()
	}
}

func (k *known) len() int {
	n := 0
	for i := range k.shards {
		sh := &k.shards[i]
		sh.RLock()
		n += len(sh.m)
		sh.RUnlock()
	}
	return n
}

// onInvalidations is rueidis' OnInvalidations hook, on a connection's
// reader goroutine: cheap work only. nil means that connection's cache
// was flushed (it dropped, or FLUSHALL).
func (s *Store) onInvalidations(keys []rueidis.RedisMessage) {
	if keys == nil {
		s.markDown()
		return
	}
	for _, m := range keys {
		key, err := m.ToString()
		if err != nil {
			continue
		}
		if name, ok := nameOfUserKey(s.prefix, routeSegment, key); ok {
			s.known.forget(name)
		}
	}
}

// markDown records that a connection dropped (its invalidations are lost)
// by bumping the generation and setting the down bit.
func (s *Store) markDown() {
	for {
		old := s.state.Load()
		if s.state.CompareAndSwap(old, (old+2)|1) {
			return
		}
	}
}

// markUp clears the down bit if no drop happened since before was read: a
// reply received after before proves the connection is back.
func (s *Store) markUp(before uint64) {
	if before&1 != 0 && s.state.CompareAndSwap(before, before&^1) {
		// Invalidations sent while the connection was down are lost: the
		// table can no longer be trusted to mirror Redis.
		s.known.clear()
	}
}

// answered records that a connection answered a request sent after
// before was read. A standalone or sentinel-managed Redis is then back,
// and the table is cleared (markUp). A cluster is not: the answer may come
// from a healthy master while the one that dropped is still down, and
// clearing the table then would send every chat to a user on the dead
// master's slots to Redis, where it fails, instead of along the last-known
// route. So on a cluster the probe decides.
func (s *Store) answered(before uint64) {
	if !s.cluster {
		s.markUp(before)
		return
	}
	if s.cacheDown() {
		s.startProbe()
	}
}

// probeEvery spaces the probes for Redis coming back.
const probeEvery = 100 * time.Millisecond

// startProbe starts one background probe, unless one runs or ran less
// than probeEvery ago. The probe re-arms the table once Redis answers: on
// a cluster, once every slot has a master and every master answers, so
// that slots failed over to a replica (which never tracked this client's
// reads, and will not invalidate them) are read afresh.
func (s *Store) startProbe() {
	if time.Since(time.Unix(0, s.lastProbe.Load())) < probeEvery || !s.probing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer func() {
			s.lastProbe.Store(time.Now().UnixNano())
			s.probing.Store(false)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		defer cancel()
		before := s.state.Load()
		if s.allMastersAnswer(ctx) {
			s.markUp(before)
		}
	}()
}

// allMastersAnswer reports whether every master (the one node, unless a
// cluster) answers, with every cluster slot served. On a cluster the
// question goes through rueidis' own slot map, a keyed EXISTS per master,
// so a map that still names a dead master fails it even after the
// cluster itself failed over.
func (s *Store) allMastersAnswer(ctx context.Context) bool {
	ms, err := s.masters(ctx)
	if err != nil {
		return false
	}
	var covered slotSet
	for _, m := range ms {
		pctx, cancel := s.roundTrip(ctx)
		if s.cluster {
			err = s.client.Do(pctx, s.client.B().Exists().Key("{"+slotTag(m.slots[0].lo)+"}").Build()).Error()
		} else {
			err = m.client.Do(pctx, m.client.B().Ping().Build()).Error()
		}
		cancel()
		if err != nil {
			return false
		}
		covered.add(m.slots)
	}
	return covered.full()
}

// Drops counts the Redis connections seen dropping since New (with
// client-side caching on; 0 forever with DisableCache). A Redis restart
// drops every connection, so a change tells a caller that Redis may have
// lost its data since it last looked.
func (s *Store) Drops() uint64 { return s.state.Load() >> 1 }

// cacheDown reports whether a cache connection is suspected down.
func (s *Store) cacheDown() bool { return s.state.Load()&1 != 0 }

// KnownRoutes returns the number of routes in the in-process table.
func (s *Store) KnownRoutes() int { return s.known.len() }

// CachedLookup answers from memory only: it never blocks and never touches
// the network, so it is the one lookup safe on an event loop. hit=false
// means "resolve with Lookup off the loop" (always so with DisableCache);
// a hit is always an online user (ok=true): names with no route are never
// cached.
//
// While a Redis connection is down it keeps answering from the last-known
// routes, so chats to known users keep flowing through an outage; such
// answers also start a background probe (at most one per 100ms) that ends
// this mode when Redis answers again (the table is then cleared): on a
// cluster, only once every master answers, i.e. after a failover.
//
// No read-your-writes: after this Store's own Claim or Release the table
// may show the old route for a moment, because Redis 7 sends the
// invalidation after the reply to the write. Use FreshLookup after a write.
func (s *Store) CachedLookup(name string) (r Route, ok bool, hit bool) {
	if s.noCache {
		return Route{}, false, false
	}
	r, found := s.known.get(name)
	if !found {
		return Route{}, false, false
	}
	if s.cacheDown() {
		s.startProbe()
	}
	return r, true, true
}

// Lookup resolves name's route with a tracked read (one round trip on a
// miss of rueidis' own cache), and keeps an online answer in the table for
// CachedLookup. ok=false with a nil error means the user has no route. A
// stored value that does not parse is an error wrapping ErrMalformed. If
// ctx has no deadline, Options.Timeout applies.
//
// When Redis cannot be reached it answers from the last-known route of
// name, and fails only for names it has none for.
func (s *Store) Lookup(ctx context.Context, name string) (r Route, ok bool, err error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	key := RouteKey(s.prefix, name)
	for attempt := 1; ; attempt++ {
		before := s.state.Load()
		gen := s.known.begin(name)
		res := s.client.DoCache(ctx, s.client.B().Get().Key(key).Cache(), s.cacheTTL)
		if res.NonRedisError() == nil && !res.IsCacheHit() {
			s.answered(before)
		}
		r, ok, err = decodeGet(res)
		// A lookup that joins a pending cache entry another caller then
		// abandons receives context.Canceled although its own ctx is fine.
		if err != nil && errors.Is(err, context.Canceled) && ctx.Err() == nil && attempt < lookupAttempts {
			continue
		}
		if err != nil {
			if _, isReply := rueidis.IsRedisErr(err); !isReply && !s.noCache {
				if kr, found := s.known.get(name); found {
					return kr, true, nil
				}
			}
			return Route{}, false, fmt.Errorf("route: lookup %q: %w", name, err)
		}
		if ok && !s.noCache {
			s.known.put(name, r, gen)
		}
		return r, ok, nil
	}
}

// Warm reads the routes of names with tracked reads in one round trip
// (rueidis DoMultiCache) and keeps the online ones in the table, like
// Lookup does for one name. Errors are not reported: a name that could not
// be read is simply not in the table.
func (s *Store) Warm(ctx context.Context, names []string) {
	if s.noCache || len(names) == 0 {
		return
	}
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	cmds := make([]rueidis.CacheableTTL, len(names))
	gens := make([]uint64, len(names))
	before := s.state.Load()
	for i, n := range names {
		gens[i] = s.known.begin(n)
		cmds[i] = rueidis.CT(s.client.B().Get().Key(RouteKey(s.prefix, n)).Cache(), s.cacheTTL)
	}
	up := false
	for i, res := range s.client.DoMultiCache(ctx, cmds...) {
		if res.NonRedisError() == nil && !res.IsCacheHit() {
			up = true
		}
		if r, ok, err := decodeGet(res); err == nil && ok {
			s.known.put(names[i], r, gens[i])
		}
	}
	if up {
		s.answered(before)
	}
}
