package server

import (
	"sync"
	"unsafe"

	"github.com/relaychat/relaychat/route"
)

const registryShards = 64

// registry maps a logged-in name to its local session, for every event loop.
// It is sharded to keep loops from contending on one lock.
type registry struct {
	shards [registryShards]struct {
		sync.RWMutex
		m map[string]*session
	}
}

func newRegistry() *registry {
	r := &registry{}
	for i := range r.shards {
		r.shards[i].m = make(map[string]*session)
	}
	return r
}

func hashName(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}

func (r *registry) get(name string) *session {
	sh := &r.shards[hashName(name)%registryShards]
	sh.RLock()
	s := sh.m[name]
	sh.RUnlock()
	return s
}

// ifAbsent runs fn while holding name's shard, if no session is
// registered under name, and reports whether it ran. A login registering
// name waits for fn to finish, so whatever fn queues is queued before
// anything the login does next.
func (r *registry) ifAbsent(name string, fn func()) bool {
	sh := &r.shards[hashName(name)%registryShards]
	sh.RLock()
	defer sh.RUnlock()
	if sh.m[name] != nil {
		return false
	}
	fn()
	return true
}

// putIfNewer publishes id as s's login and makes s the session of id.name,
// unless the session registered there claimed the route over id's token (it
// is the newer login, and s lost the race). It returns the session it
// replaced and whether it did.
func (r *registry) putIfNewer(s *session, id *identity) (old *session, ok bool) {
	sh := &r.shards[hashName(id.name)%registryShards]
	sh.Lock()
	defer sh.Unlock()
	old = sh.m[id.name]
	if old != nil && old != s {
		if oid := old.id.Load(); oid != nil && oid.claimedOver == id.token {
			return old, false
		}
	}
	s.id.Store(id)
	sh.m[id.name] = s
	if old == s {
		old = nil
	}
	return old, true
}

// remove deletes name only while it still maps to s.
func (r *registry) remove(name string, s *session) bool {
	sh := &r.shards[hashName(name)%registryShards]
	sh.Lock()
	defer sh.Unlock()
	if sh.m[name] == s {
		delete(sh.m, name)
		return true
	}
	return false
}

// routes returns the route of every registered session.
func (r *registry) routes(server string) map[string]route.Route {
	out := make(map[string]route.Route)
	for i := range r.shards {
		sh := &r.shards[i]
		sh.RLock()
		for name, s := range sh.m {
			if id := s.id.Load(); id != nil && id.name == name {
				out[name] = id.route(server)
			}
		}
		sh.RUnlock()
	}
	return out
}

// sessionSet holds every open client session, logged in or not, for the
// idle sweeper. Sharded by pointer like the registry by name.
type sessionSet struct {
	shards [registryShards]struct {
		sync.Mutex
		m map[*session]struct{}
	}
}

func newSessionSet() *sessionSet {
	s := &sessionSet{}
	for i := range s.shards {
		s.shards[i].m = make(map[*session]struct{})
	}
	return s
}

func (s *sessionSet) shard(ss *session) int {
	return int(uintptr(unsafe.Pointer(ss))>>6) % registryShards
}

func (s *sessionSet) add(ss *session) {
	sh := &s.shards[s.shard(ss)]
	sh.Lock()
	sh.m[ss] = struct{}{}
	sh.Unlock()
}

func (s *sessionSet) remove(ss *session) {
	sh := &s.shards[s.shard(ss)]
	sh.Lock()
	delete(sh.m, ss)
	sh.Unlock()
}

// each calls fn for every session, one shard locked at a time; fn must not
// block.
func (s *sessionSet) each(fn func(*session)) {
	for i := range s.shards {
		sh := &s.shards[i]
		sh.Lock()
		for ss := range sh.m {
			fn(ss)
		}
		sh.Unlock()
	}
}
