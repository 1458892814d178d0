package route_test

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/relaychat/relaychat/internal/testenv"
	"github.com/relaychat/relaychat/route"
)

// The production options against real redis-servers: AUTH, TLS, Sentinel.

// useStore claims, looks up (through the client-side cache) and releases
// a route, to show the Store works end to end.
func useStore(t *testing.T, s *route.Store) {
	t.Helper()
	ctx := context.Background()
	r := route.Route{Server: "s1", Token: "t1"}
	if _, _, err := s.Claim(ctx, "alice", r); err != nil {
		t.Fatalf("claim: %v", err)
	}
	if got, ok, err := s.Lookup(ctx, "alice"); err != nil || !ok || got != r {
		t.Fatalf("lookup = %v %v %v", got, ok, err)
	}
	if ok, err := s.Release(ctx, "alice", r); err != nil || !ok {
		t.Fatalf("release = %v %v", ok, err)
	}
}

func TestRedisAuth(t *testing.T) {
	rd := testenv.RedisWith(t, testenv.RedisConfig{
		Args: []string{"--requirepass", "s3cret", "--user", "app", "on", ">apppw", "~*", "&*", "+@all"},
		Auth: testenv.RedisAuth{Password: "s3cret"},
	})
	for _, c := range []struct {
		name           string
		user, password string
		wantErr        string
	}{
		{"default user", "", "s3cret", ""},
		{"ACL user", "app", "apppw", ""},
		{"wrong password", "", "nope", "WRONGPASS"},
		{"no password", "", "", "NOAUTH"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, err := route.New(route.Options{Addrs: []string{rd.Addr}, Prefix: "auth:", Username: c.user, Password: c.password})
			if c.wantErr != "" {
				if err == nil {
					s.Close()
					t.Fatalf("New succeeded, want an error containing %q", c.wantErr)
				}
				if !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("New: %v, want %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			useStore(t, s)
		})
	}
}

func TestRedisTLS(t *testing.T) {
	certs := testenv.NewCerts(t)
	rd := testenv.RedisWith(t, testenv.RedisConfig{
		TLS:  certs,
		Args: []string{"--tls-auth-clients", "yes", "--requirepass", "pw"},
		Auth: testenv.RedisAuth{TLS: certs.ClientTLS(), Password: "pw"},
	})
	t.Run("ok", func(t *testing.T) {
		s, err := route.New(route.Options{Addrs: []string{rd.Addr}, Prefix: "tls:", Password: "pw", TLS: certs.ClientTLS()})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		useStore(t, s)
	})
	t.Run("server name", func(t *testing.T) {
		cfg := certs.ClientTLS()
		cfg.ServerName = "redis.test"
		s, err := route.New(route.Options{Addrs: []string{rd.Addr}, Prefix: "tls:", Password: "pw", TLS: cfg})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		useStore(t, s)
	})
	t.Run("untrusted server", func(t *testing.T) {
		other := testenv.NewCerts(t)
		s, err := route.New(route.Options{Addrs: []string{rd.Addr}, Prefix: "tls:", Password: "pw", TLS: other.ClientTLS(), Timeout: 500 * time.Millisecond})
		if err == nil {
			// One address: New may hand back a store that dials on use.
			defer s.Close()
			if err = s.Ping(context.Background()); err == nil {
				t.Fatal("a server signed by another CA was trusted")
			}
		}
		if !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("error %v does not say why", err)
		}
	})
	t.Run("no client certificate", func(t *testing.T) {
		s, err := route.New(route.Options{Addrs: []string{rd.Addr}, Prefix: "tls:", Password: "pw",
			TLS: &tls.Config{RootCAs: certs.CAPool}, Timeout: 500 * time.Millisecond})
		if err == nil {
			defer s.Close()
			err = s.Ping(context.Background())
		}
		if err == nil {
			t.Fatal("connected without the client certificate Redis requires")
		}
	})
}

func TestRedisSentinel(t *testing.T) {
	const master = "relay"
	dataAuth := testenv.RedisAuth{Password: "datapw"}
	m := testenv.RedisWith(t, testenv.RedisConfig{Args: []string{"--requirepass", "datapw", "--masterauth", "datapw"}, Auth: dataAuth})
	r := testenv.RedisWith(t, testenv.RedisConfig{
		Args: []string{"--requirepass", "datapw", "--masterauth", "datapw", "--replicaof", "127.0.0.1", strings.Split(m.Addr, ":")[1]},
		Auth: dataAuth,
	})
	var sentinels []string
	for i := 0; i < 2; i++ {
		sn := testenv.RedisWith(t, testenv.RedisConfig{
			Sentinel: true,
			Args: []string{
				"requirepass sentpw",
				"sentinel monitor " + master + " 127.0.0.1 " + strings.Split(m.Addr, ":")[1] + " 1",
				"sentinel auth-pass " + master + " datapw",
				"sentinel down-after-milliseconds " + master + " 1000",
				"sentinel failover-timeout " + master + " 5000",
			},
			Auth: testenv.RedisAuth{Password: "sentpw"},
		})
		sentinels = append(sentinels, sn.Addr)
	}
	s, err := route.New(route.Options{
		Addrs: sentinels, SentinelMaster: master, Prefix: "sent:",
		Password: "datapw", SentinelPassword: "sentpw",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Mode() != "sentinel" {
		t.Fatalf("Mode = %q, want sentinel", s.Mode())
	}
	useStore(t, s)
	ctx := context.Background()
	keep := route.Route{Server: "s1", Token: "k"}
	if _, _, err := s.Claim(ctx, "bob", keep); err != nil {
		t.Fatal(err)
	}
	// Wait until the replica has bob, then kill the master: the sentinels
	// promote the replica and the Store follows.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if v, _ := testenv.RedisDo(r.Addr, dataAuth, "GET", route.RouteKey("sent:", "bob")); v == keep.Encode() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the replica never got bob's route")
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
	t0 := time.Now()
	m.Kill()
	var outage time.Duration
	for {
		cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		_, _, err := s.Claim(cctx, "carol", route.Route{Server: "s1", Token: "c"})
		cancel()
		if err == nil {
			outage = time.Since(t0)
			break
		}
		if time.Since(t0) > 30*time.Second {
			t.Fatalf("no write succeeded 30s after the master died: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // sampling interval
	}
	t.Logf("sentinel failover: writes back %v after the master was killed", outage.Round(time.Millisecond))
	if got, ok, err := s.FreshLookup(ctx, "bob"); err != nil || !ok || got != keep {
		t.Fatalf("bob after the failover = %v %v %v", got, ok, err)
	}
	if role, _ := r.Do(t, "ROLE").([]any); len(role) == 0 || role[0] != "master" {
		t.Fatalf("replica's role after the failover: %v", role)
	}
}
