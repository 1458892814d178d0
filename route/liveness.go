package route

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// Liveness: which servers are alive, and who owns a server id.
//
// A server's heartbeat key holds "<epoch> <beat> <peer address>". The
// epoch identifies one run of the process (it changes at every start); the
// beat counts renewals, so another process can tell a live owner (the beat
// moves) from a crashed one (it does not) without trusting clocks.

// ErrIDInUse is returned by AcquireID when a live process owns the id.
var ErrIDInUse = errors.New("route: server id in use by a running server")

// ErrIDLost is returned by Heartbeat when another process took the id over
// (this one was presumed dead, e.g. it was frozen for longer than the TTL).
var ErrIDLost = errors.New("route: server id taken over by another process")

// ServerInfo is a live server as its heartbeat announces it.
type ServerInfo struct {
	Epoch string // one run of the server process
	Addr  string // its peer address
}

// heartbeatScript renews KEYS[1] only while it belongs to epoch ARGV[1] or
// is gone: 1 renewed, 0 another epoch owns it.
var heartbeatScript = newScript(`local v = redis.call("GET", KEYS[1])
if v and string.sub(v, 1, #ARGV[1] + 1) ~= ARGV[1] .. " " then return 0 end
redis.call("SET", KEYS[1], ARGV[2], "PX", ARGV[3])
return 1`)

// takeoverScript replaces KEYS[1] only if it still holds ARGV[1].
var takeoverScript = newScript(`if redis.call("GET", KEYS[1]) ~= ARGV[1] then return 0 end
redis.call("SET", KEYS[1], ARGV[2], "PX", ARGV[3])
return 1`)

// releaseIDScript deletes KEYS[1] only while it belongs to epoch ARGV[1].
var releaseIDScript = newScript(`local v = redis.call("GET", KEYS[1])
if v and string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. " " then return redis.call("DEL", KEYS[1]) end
return 0`)

func aliveValue(epoch string, beat uint64, peerAddr string) string {
	return epoch + " " + strconv.FormatUint(beat, 10) + " " + peerAddr
}

// parseAlive splits a heartbeat value; ok is false for a foreign value.
func parseAlive(v string) (epoch string, beat uint64, addr string, ok bool) {
	f := strings.SplitN(v, " ", 3)
	if len(f) != 3 || f[0] == "" || f[2] == "" {
		return "", 0, "", false
	}
	b, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return "", 0, "", false
	}
	return f[0], b, f[2], true
}

// AcquireID makes this process (epoch) the owner of serverID's heartbeat.
// If the key is held by another epoch, AcquireID watches it for wait: a
// live owner renews it meanwhile and AcquireID fails with an error wrapping
// ErrIDInUse, changing nothing; an owner that crashed does not, and its key
// is taken over. wait should be at least one and a half heartbeat periods.
// ttl is the lifetime of the key, as for Heartbeat.
func (s *Store) AcquireID(ctx context.Context, serverID, epoch, peerAddr string, ttl, wait time.Duration) error {
	if !validField(serverID) || !validField(epoch) || !validField(peerAddr) {
		return fmt.Errorf("route: acquire id: invalid server id %q, epoch %q or address %q", serverID, epoch, peerAddr)
	}
	key := AliveKey(s.prefix, serverID)
	mine := aliveValue(epoch, 0, peerAddr)
	for attempt := 0; attempt < 5; attempt++ {
		cctx, cancel := s.withTimeout(ctx)
		err := s.client.Do(cctx, s.client.B().Set().Key(key).Value(mine).Nx().Px(ttl).Build()).Error()
		cancel()
		if err == nil {
			return nil
		}
		if !rueidis.IsRedisNil(err) {
			return fmt.Errorf("route: acquire id %q: %w", serverID, err)
		}
		first, found, err := s.getString(ctx, key)
		if err != nil {
			return fmt.Errorf("route: acquire id %q: %w", serverID, err)
		}
		if !found {
			continue // expired meanwhile: try again
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("route: acquire id %q: %w", serverID, ctx.Err())
		case <-time.After(wait):
		}
		later, found, err := s.getString(ctx, key)
		if err != nil {
			return fmt.Errorf("route: acquire id %q: %w", serverID, err)
		}
		if !found {
			continue
		}
		if later != first {
			_, _, addr, _ := parseAlive(later)
			return fmt.Errorf("%w: %q renews its heartbeat (peer address %s); give this server another -id", ErrIDInUse, serverID, addr)
		}
		cctx, cancel = s.withTimeout(ctx)
		n, err := takeoverScript.exec(cctx, s.client, []string{key}, []string{first, mine, strconv.FormatInt(ttl.Milliseconds(), 10)}).AsInt64()
		cancel()
		if err != nil {
			return fmt.Errorf("route: acquire id %q: %w", serverID, err)
		}
		if n == 1 {
			return nil
		}
	}
	return fmt.Errorf("%w: %q keeps changing hands; give this server another -id", ErrIDInUse, serverID)
}

// Heartbeat renews serverID's heartbeat for ttl as beat number beat of
// epoch. It fails with an error wrapping ErrIDLost if another epoch owns
// the key (re-creating it if it expired). ttl must be at least 1ms. If ctx
// has no deadline, Options.Timeout applies.
func (s *Store) Heartbeat(ctx context.Context, serverID, epoch string, beat uint64, peerAddr string, ttl time.Duration) error {
	if !validField(serverID) || !validField(epoch) {
		return fmt.Errorf("route: heartbeat: invalid server ID %q or epoch %q", serverID, epoch)
	}
	if ttl < time.Millisecond {
		return fmt.Errorf("route: heartbeat: ttl %v below 1ms", ttl)
	}
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	n, err := heartbeatScript.exec(ctx, s.client, []string{AliveKey(s.prefix, serverID)},
		[]string{epoch, aliveValue(epoch, beat, peerAddr), strconv.FormatInt(ttl.Milliseconds(), 10)}).AsInt64()
	if err != nil {
		return fmt.Errorf("route: heartbeat %q: %w", serverID, err)
	}
	if n == 0 {
		return fmt.Errorf("%w: %q", ErrIDLost, serverID)
	}
	return nil
}

// ReleaseID deletes serverID's heartbeat if epoch still owns it, so that a
// restart under the same id need not wait for it to expire.
func (s *Store) ReleaseID(ctx context.Context, serverID, epoch string) error {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	if err := releaseIDScript.exec(ctx, s.client, []string{AliveKey(s.prefix, serverID)}, []string{epoch}).Error(); err != nil {
		return fmt.Errorf("route: release id %q: %w", serverID, err)
	}
	return nil
}

func (s *Store) getString(ctx context.Context, key string) (string, bool, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	v, err := s.client.Do(ctx, s.client.B().Get().Key(key).Build()).ToString()
	if rueidis.IsRedisNil(err) {
		return "", false, nil
	}
	return v, err == nil, err
}

// Servers lists the live servers by SCANning prefix+"alive:*" and reading
// each key (not through the cache). A key that expires between the two
// steps is left out, and so is a value this package did not write.
// Options.Timeout applies per round trip when ctx has no deadline.
func (s *Store) Servers(ctx context.Context) (map[string]ServerInfo, error) {
	out := make(map[string]ServerInfo)
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
				if epoch, _, addr, ok := parseAlive(v); ok {
					out[chunk[i][strip:]] = ServerInfo{Epoch: epoch, Addr: addr}
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Alive reports whether serverID's heartbeat key exists, reading Redis
// directly. If ctx has no deadline, Options.Timeout applies.
func (s *Store) Alive(ctx context.Context, serverID string) (bool, error) {
	_, found, err := s.getString(ctx, AliveKey(s.prefix, serverID))
	if err != nil {
		return false, fmt.Errorf("route: alive %q: %w", serverID, err)
	}
	return found, nil
}

// Ping checks that Redis answers (on a cluster, the node rueidis picks).
// If ctx has no deadline, Options.Timeout applies. An answer after an
// outage also re-arms the route table (see CachedLookup).
func (s *Store) Ping(ctx context.Context) error {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	before := s.state.Load()
	if err := s.client.Do(ctx, s.client.B().Ping().Build()).Error(); err != nil {
		return fmt.Errorf("route: ping: %w", err)
	}
	s.answered(before)
	return nil
}
