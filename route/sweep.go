package route

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// Routes left by servers that never came back.
//
// A server that crashes leaves its users' routes behind; its next start
// clears them (ClearServer). A server that is never started again, or
// whose releases were given up, would leave them for good: chats to those
// users go to a server that does not exist until they log in again, and
// the keys never expire. SweepDeadServers removes them, from any process
// sharing the store, without racing a server that is restarting:
//
//   - "Dead" is observed, not assumed: a server counts as dead only once
//     this Store has seen routes naming it and no heartbeat for it at two
//     sweeps at least grace apart (and at every sweep in between that
//     looked). grace should be many heartbeat TTLs, so that a heartbeat
//     lost in a failover (async replication) or a server paused for a
//     while is never taken for a dead one.
//   - A route is deleted by compare-and-delete on its exact value, as read
//     during the sweep, and only after the heartbeat was checked again,
//     after that read. A restarting server takes its id (AcquireID writes
//     the heartbeat) before it clears its routes and takes logins, so any
//     route it writes was written after its heartbeat exists: if the
//     sweep read such a route, its later check sees the heartbeat and
//     leaves the server alone. A route of the old run, deleted by both the
//     sweep and the restart's ClearServer, is simply deleted once.

// SweepDeadServers deletes the routes naming servers whose heartbeat has
// been absent, as seen by this Store's sweeps, for at least grace, and
// returns how many it deleted. Call it periodically (every few heartbeat
// TTLs) from long-lived processes; several processes may sweep at once.
// Options.Timeout applies per round trip when ctx has no deadline; the
// scan covers masters only. grace must be positive.
func (s *Store) SweepDeadServers(ctx context.Context, grace time.Duration) (int, error) {
	if grace <= 0 {
		return 0, fmt.Errorf("route: sweep dead servers: grace %v must be positive", grace)
	}
	live, err := s.Servers(ctx)
	if err != nil {
		return 0, fmt.Errorf("route: sweep dead servers: %w", err)
	}
	now := time.Now()
	seen := make(map[string]bool)
	deleted := 0
	err = s.scan(ctx, RoutePattern(s.prefix), func(keys []string) error {
		cmds := make(rueidis.Commands, len(keys))
		for i, k := range keys {
			cmds[i] = s.client.B().Get().Key(k).Build()
		}
		bctx, cancel := s.withTimeout(ctx)
		res := s.client.DoMulti(bctx, cmds...)
		cancel()
		// Routes naming a server that has been dead long enough.
		type cand struct{ key, value string }
		byServer := make(map[string][]cand)
		for i, r := range res {
			v, err := r.ToString()
			if err != nil {
				continue // gone meanwhile, not a string, or unreachable: next sweep
			}
			server, _, ok := strings.Cut(v, " ")
			if !ok || server == "" {
				continue
			}
			if _, alive := live[server]; alive {
				continue
			}
			seen[server] = true
			if s.deadSince(server, now) < grace {
				continue
			}
			byServer[server] = append(byServer[server], cand{keys[i], v})
		}
		if len(byServer) == 0 {
			return nil
		}
		// Check the heartbeats again, after the routes were read.
		servers := make([]string, 0, len(byServer))
		cmds = cmds[:0]
		for srv := range byServer {
			servers = append(servers, srv)
			cmds = append(cmds, s.client.B().Exists().Key(AliveKey(s.prefix, srv)).Build())
		}
		bctx, cancel = s.withTimeout(ctx)
		res = s.client.DoMulti(bctx, cmds...)
		cancel()
		var execs []rueidis.LuaExec
		for i, r := range res {
			n, err := r.AsInt64()
			if err != nil {
				continue // unknown: leave it to the next sweep
			}
			if n != 0 {
				s.setAlive(servers[i])
				continue
			}
			for _, c := range byServer[servers[i]] {
				execs = append(execs, rueidis.LuaExec{Keys: []string{c.key}, Args: []string{c.value}})
			}
		}
		for len(execs) > 0 {
			chunk := execs[:min(len(execs), batchSize)]
			execs = execs[len(chunk):]
			bctx, cancel = s.withTimeout(ctx)
			for _, r := range releaseScript.execMulti(bctx, s.client, chunk, true) {
				if n, err := r.AsInt64(); err == nil {
					deleted += int(n)
				}
			}
			cancel()
		}
		return nil
	})
	if err != nil {
		return deleted, fmt.Errorf("route: sweep dead servers: %w", err)
	}
	// Forget servers that no longer have routes or have a heartbeat again,
	// so the table stays as small as the set of dead servers with routes.
	s.deadMu.Lock()
	for srv := range s.dead {
		if !seen[srv] {
			delete(s.dead, srv)
		}
	}
	s.deadMu.Unlock()
	return deleted, nil
}

// deadSince records that server was seen without a heartbeat at now and
// returns for how long it has been seen so.
func (s *Store) deadSince(server string, now time.Time) time.Duration {
	s.deadMu.Lock()
	defer s.deadMu.Unlock()
	t, ok := s.dead[server]
	if !ok {
		s.dead[server] = now
		return 0
	}
	return now.Sub(t)
}

func (s *Store) setAlive(server string) {
	s.deadMu.Lock()
	delete(s.dead, server)
	s.deadMu.Unlock()
}
