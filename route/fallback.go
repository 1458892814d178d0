package route

import (
	"strings"
	"sync"
)

// fallbackSize bounds the last-known routes kept for Redis outages.
const fallbackSize = 1 << 18

const fallbackShards = 64

// fallback keeps the last route each recently looked-up name resolved to,
// so that chats keep flowing while Redis is unreachable (rueidis drops its
// client-side cache when the connection drops). Entries are removed when
// Redis invalidates the key, so while the connection is up the table
// mirrors the client-side cache; it is cleared when the connection comes
// back, since invalidations sent while it was down were lost.
//
// A stale entry can only send a chat to a server the user has left; that
// server then re-routes or bounces it, so it is never dropped silently.
type fallback struct {
	shards [fallbackShards]struct {
		sync.RWMutex
		m map[string]fallbackEntry
	}
	perShard int
}

type fallbackEntry struct {
	r  Route
	ok bool // false: the user had no route
}

func newFallback(size int) *fallback {
	f := &fallback{perShard: max(1, size/fallbackShards)}
	for i := range f.shards {
		f.shards[i].m = make(map[string]fallbackEntry)
	}
	return f
}

func fallbackShard(name string) int {
	h := uint32(2166136261)
	for i := 0; i < len(name); i++ {
		h ^= uint32(name[i])
		h *= 16777619
	}
	return int(h % fallbackShards)
}

func (f *fallback) get(name string) (fallbackEntry, bool) {
	sh := &f.shards[fallbackShard(name)]
	sh.RLock()
	e, found := sh.m[name]
	sh.RUnlock()
	return e, found
}

func (f *fallback) put(name string, e fallbackEntry) {
	sh := &f.shards[fallbackShard(name)]
	sh.Lock()
	if _, exists := sh.m[name]; !exists && len(sh.m) >= f.perShard {
		for k := range sh.m { // evict one arbitrary entry
			delete(sh.m, k)
			break
		}
	}
	sh.m[name] = e
	sh.Unlock()
}

func (f *fallback) remove(name string) {
	sh := &f.shards[fallbackShard(name)]
	sh.Lock()
	delete(sh.m, name)
	sh.Unlock()
}

func (f *fallback) clear() {
	for i := range f.shards {
		sh := &f.shards[i]
		sh.Lock()
		clear(sh.m)
		sh.Unlock()
	}
}

// invalidate removes the names behind route keys Redis invalidated.
func (f *fallback) invalidate(routePrefix string, keys []string) {
	for _, k := range keys {
		if name, ok := strings.CutPrefix(k, routePrefix); ok {
			f.remove(name)
		}
	}
}
