package route

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"

	"github.com/redis/rueidis"
)

// ClusterSecret returns the secret every link of this deployment proves it
// knows, creating it on first use: a random 256-bit value written once with
// SET NX, so every process sharing the routing store reads the same one.
// Anyone who can read the routing store can read it: Redis is the root of
// trust. If ctx has no deadline, Options.Timeout applies.
func (s *Store) ClusterSecret(ctx context.Context) (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("route: cluster secret: %w", err)
	}
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	key := SecretKey(s.prefix)
	// SET NX GET (Redis 7): nil when this call created it, else the value.
	v, err := s.client.Do(ctx, s.client.B().Set().Key(key).Value(hex.EncodeToString(b[:])).Nx().Get().Build()).ToString()
	switch {
	case rueidis.IsRedisNil(err):
		return hex.EncodeToString(b[:]), nil
	case err != nil:
		return "", fmt.Errorf("route: cluster secret: %w", err)
	case v == "":
		return "", fmt.Errorf("route: cluster secret: %s is empty", key)
	}
	return v, nil
}

// AssertClusterSecret writes v as the cluster secret where Redis has none
// (it restarted empty), so that processes starting now read the secret the
// running ones use. It returns the secret Redis holds afterwards.
func (s *Store) AssertClusterSecret(ctx context.Context, v string) (string, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	old, err := s.client.Do(ctx, s.client.B().Set().Key(SecretKey(s.prefix)).Value(v).Nx().Get().Build()).ToString()
	switch {
	case rueidis.IsRedisNil(err):
		return v, nil
	case err != nil:
		return "", fmt.Errorf("route: assert cluster secret: %w", err)
	}
	return old, nil
}
