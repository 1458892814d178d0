package server

import "sync"

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

// putIfNewer makes s the session of s.name unless the session registered
// there claimed the route over s's token (it is the newer login, and s lost
// the race). It returns the session it replaced and whether it did.
func (r *registry) putIfNewer(name string, s *session) (old *session, ok bool) {
	sh := &r.shards[hashName(name)%registryShards]
	sh.Lock()
	defer sh.Unlock()
	old = sh.m[name]
	if old != nil && old != s && old.claimedOver == s.token {
		return old, false
	}
	sh.m[name] = s
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

func (r *registry) len() int {
	n := 0
	for i := range r.shards {
		sh := &r.shards[i]
		sh.RLock()
		n += len(sh.m)
		sh.RUnlock()
	}
	return n
}

// sessions returns every registered session.
func (r *registry) sessions() []*session {
	var out []*session
	for i := range r.shards {
		sh := &r.shards[i]
		sh.RLock()
		for _, s := range sh.m {
			out = append(out, s)
		}
		sh.RUnlock()
	}
	return out
}
