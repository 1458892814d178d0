package server_test

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/relaychat/relaychat/route"
	"github.com/relaychat/relaychat/server"
)

// memRouter is an in-memory Router for tests that do not need Redis. Its
// mailbox follows route.Store's rules (see route/mailbox.go).
type memRouter struct {
	mu    sync.Mutex
	m     map[string]route.Route
	mbox  map[string][]route.MailEntry
	alive map[string]route.ServerInfo
}

var _ server.Router = (*memRouter)(nil)

func newMemRouter() *memRouter {
	return &memRouter{m: make(map[string]route.Route), mbox: make(map[string][]route.MailEntry), alive: make(map[string]route.ServerInfo)}
}

func (r *memRouter) CachedLookup(name string) (route.Route, bool, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	v, ok := r.m[name]
	return v, ok, ok
}
func (r *memRouter) Lookup(_ context.Context, name string) (route.Route, bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	v, ok := r.m[name]
	return v, ok, nil
}
func (r *memRouter) Warm(context.Context, []string) {}
func (r *memRouter) FreshLookup(ctx context.Context, name string) (route.Route, bool, error) {
	return r.Lookup(ctx, name)
}
func (r *memRouter) Claim(_ context.Context, name string, rt route.Route) (route.Route, bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	prev, had := r.m[name]
	r.m[name] = rt
	return prev, had, nil
}
func (r *memRouter) Release(_ context.Context, name string, rt route.Route) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m[name] == rt {
		delete(r.m, name)
		return true, nil
	}
	return false, nil
}
func (r *memRouter) ReleaseAll(ctx context.Context, routes map[string]route.Route) (int, error) {
	n := 0
	for name, rt := range routes {
		if ok, _ := r.Release(ctx, name, rt); ok {
			n++
		}
	}
	return n, nil
}
func (r *memRouter) ClearServer(context.Context, string) (int, error)              { return 0, nil }
func (r *memRouter) Reassert(context.Context, map[string]route.Route) (int, error) { return 0, nil }
func (r *memRouter) Drops() uint64                                                 { return 0 }
func (r *memRouter) AcquireID(_ context.Context, id, epoch, addr string, _, _ time.Duration) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.alive[id] = route.ServerInfo{Epoch: epoch, Addr: addr}
	return nil
}
func (r *memRouter) Heartbeat(_ context.Context, id, epoch string, _ uint64, addr string, _ time.Duration) error {
	return r.AcquireID(context.Background(), id, epoch, addr, 0, 0)
}
func (r *memRouter) ReleaseID(_ context.Context, id, _ string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.alive, id)
	return nil
}
func (r *memRouter) Servers(context.Context) (map[string]route.ServerInfo, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]route.ServerInfo, len(r.alive))
	for k, v := range r.alive {
		out[k] = v
	}
	return out, nil
}
func (r *memRouter) ClusterSecret(context.Context) (string, error)               { return "mem", nil }
func (r *memRouter) AssertClusterSecret(context.Context, string) (string, error) { return "mem", nil }
func (r *memRouter) Ping(context.Context) error                                  { return nil }
func (r *memRouter) StoreChats(_ context.Context, reqs []route.StoreReq, max int, _ time.Duration) ([]route.StoreResult, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]route.StoreResult, len(reqs))
	for i, q := range reqs {
		rt, online := r.m[q.Name]
		if online && (q.Here == "" || !strings.HasPrefix(rt.Encode(), q.Here+" ")) {
			out[i] = route.StoreResult{Outcome: route.Online, Route: rt}
			continue
		}
		if !q.Requeue {
			if len(r.mbox[q.Name]) >= max {
				out[i] = route.StoreResult{Outcome: route.Full}
				continue
			}
		}
		r.mbox[q.Name] = append(r.mbox[q.Name], route.MailEntry{TS: q.TS, Line: string(q.Line)})
		out[i] = route.StoreResult{Outcome: route.Stored}
		if online {
			out[i].Route = rt
		}
	}
	return out, nil
}
func (r *memRouter) ReadMailbox(_ context.Context, name string, n int, _ time.Duration) ([]route.MailEntry, int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	box := r.mbox[name]
	return append([]route.MailEntry(nil), box[:min(n, len(box))]...), 0, nil
}
func (r *memRouter) RemoveMailbox(_ context.Context, name string, read []route.MailEntry) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	box := r.mbox[name]
	if len(read) == 0 || len(box) < len(read) || box[0] != read[0] {
		return false, nil
	}
	r.mbox[name] = box[len(read):]
	return true, nil
}
func (r *memRouter) SweepMailboxes(context.Context, time.Duration) (int, error) { return 0, nil }
func (r *memRouter) SweepDeadServers(context.Context, time.Duration) (int, error) {
	return 0, nil
}
func (r *memRouter) RetryStats() route.RetryStats { return route.RetryStats{} }
