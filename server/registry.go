package server

import (
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/relaychat/relaychat/route"
)

const registryShards = 64

// registry maps a logged-in name to its local session, for every event loop.
// It is sharded to keep loops from contending on one lock.
type registry struct {
	// expected counts logins in flight (see parking), so that the hot path
	// asks a shard only when there are some.
	expected atomic.Int64
	shards   [registryShards]struct {
		sync.RWMutex
		m map[string]*session
		// parkMu guards parked (taken after the shard's lock when both are).
		parkMu sync.Mutex
		parked map[string]*parking
	}
}

// parking is kept for a name while logins of it are in flight here (their
// route claims are on their way to Redis): chats for it that came from
// other servers wait here for the login instead of going to the mailbox,
// which would refuse them once full although the user is arriving.
type parking struct {
	logins int
	chats  []*chat
}

func newRegistry() *registry {
	r := &registry{}
	for i := range r.shards {
		r.shards[i].m = make(map[string]*session)
		r.shards[i].parked = make(map[string]*parking)
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
// anything the login does next. If park is not nil and a login of name is
// in flight here, park is kept for that login instead (parked is true):
// the login takes it (putIfNewer), or unexpect hands it back.
func (r *registry) ifAbsent(name string, park *chat, fn func()) (ran, parked bool) {
	sh := &r.shards[hashName(name)%registryShards]
	sh.RLock()
	defer sh.RUnlock()
	if sh.m[name] != nil {
		return false, false
	}
	if park != nil {
		sh.parkMu.Lock()
		if p := sh.parked[name]; p != nil {
			p.chats = append(p.chats, park)
			sh.parkMu.Unlock()
			return false, true
		}
		sh.parkMu.Unlock()
	}
	fn()
	return true, false
}

// expecting reports whether a login of name is in flight here.
func (r *registry) expecting(name string) bool {
	if r.expected.Load() == 0 {
		return false
	}
	sh := &r.shards[hashName(name)%registryShards]
	sh.parkMu.Lock()
	p := sh.parked[name]
	sh.parkMu.Unlock()
	return p != nil
}

// expect notes a login of name in flight here (before its claim is sent).
func (r *registry) expect(name string) {
	r.expected.Add(1)
	sh := &r.shards[hashName(name)%registryShards]
	sh.parkMu.Lock()
	p := sh.parked[name]
	if p == nil {
		p = &parking{}
		sh.parked[name] = p
	}
	p.logins++
	sh.parkMu.Unlock()
}

// unexpect notes that a login of name was decided (registered, failed or
// abandoned). When none is left in flight, the chats parked for name that
// no login took are handed to store, in order, while name's shard is held
// (so no later chat for name can overtake them); store returns those it
// could not queue.
func (r *registry) unexpect(name string, store func([]*chat) []*chat) []*chat {
	r.expected.Add(-1)
	sh := &r.shards[hashName(name)%registryShards]
	sh.Lock()
	defer sh.Unlock()
	sh.parkMu.Lock()
	p := sh.parked[name]
	if p == nil {
		sh.parkMu.Unlock()
		return nil
	}
	if p.logins--; p.logins > 0 {
		sh.parkMu.Unlock()
		return nil
	}
	delete(sh.parked, name)
	sh.parkMu.Unlock()
	if len(p.chats) == 0 {
		return nil
	}
	return store(p.chats)
}

// putIfNewer publishes id as s's login and makes s the session of id.name,
// unless the session registered there claimed the route over id's token (it
// is the newer login, and s lost the race). It returns the session it
// replaced and whether it did.
//
// The chats parked for the name go to s's queue first (s is not live yet),
// before any other chat can find s; queued are to be settled. Any s does
// not take (it closed meanwhile) stay parked for unexpect.
func (r *registry) putIfNewer(s *session, id *identity) (old *session, ok bool, queued []*chat) {
	sh := &r.shards[hashName(id.name)%registryShards]
	sh.Lock()
	defer sh.Unlock()
	old = sh.m[id.name]
	if old != nil && old != s {
		if oid := old.id.Load(); oid != nil && oid.claimedOver == id.token {
			return old, false, nil
		}
	}
	s.id.Store(id)
	sh.m[id.name] = s
	if old == s {
		old = nil
	}
	sh.parkMu.Lock()
	defer sh.parkMu.Unlock()
	p := sh.parked[id.name]
	if p == nil {
		return old, true, nil
	}
	n := 0
	for _, c := range p.chats {
		line := append(c.appendLine(make([]byte, 0, 256)), '\n')
		if q, _ := s.queue(pendingChat{recv: c.recv, ts: c.ts, line: line}); !q {
			break
		}
		n++
	}
	queued = p.chats[:n:n]
	p.chats = p.chats[n:]
	return old, true, queued
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
