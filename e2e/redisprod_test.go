package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/relaychat/relaychat/internal/testenv"
	"github.com/relaychat/relaychat/route"
)

// TestRedisProductionOptions: a chat-server reaches a Redis that wants
// TLS with client certificates and a password (from the environment, or a
// file), and one behind Sentinel; a wrong password stops it at start with
// a clear message.
func TestRedisProductionOptions(t *testing.T) {
	bin := testenv.Build(t)
	certs := testenv.NewCerts(t)
	auth := testenv.RedisAuth{TLS: certs.ClientTLS(), Password: "pw"}
	rd := testenv.RedisWith(t, testenv.RedisConfig{TLS: certs, Args: []string{"--tls-auth-clients", "yes", "--requirepass", "pw"}, Auth: auth})
	prefix := prefixFor(t)
	tlsArgs := []string{"-redis", rd.Addr, "-redis-prefix", prefix,
		"-redis-tls-ca", certs.CAFile, "-redis-tls-cert", certs.ClientCert, "-redis-tls-key", certs.ClientKey,
		"-redis-tls-server-name", "redis.test", "-listen", "127.0.0.1:0", "-peer-listen", "127.0.0.1:0"}

	login := func(t *testing.T, p *testenv.Proc, id, name string) {
		t.Helper()
		m := p.WaitLine(t, `msg="client listener ready".*\baddr="?([^"\s]+)`, wait)
		c := testenv.Dial(t, m[1])
		c.Send(t, mustJSON(t, map[string]any{"cmd": "login", "name": name}))
		expectLogin(t, c, name, id)
	}
	routeOn := func(t *testing.T, addr string, a testenv.RedisAuth, name string) string {
		t.Helper()
		v, err := testenv.RedisDo(addr, a, "GET", route.RouteKey(prefix, name))
		if err != nil {
			t.Fatal(err)
		}
		s, _ := v.(string)
		return s
	}

	t.Run("TLS and password from the environment", func(t *testing.T) {
		t.Setenv("RELAYCHAT_REDIS_PASSWORD", "pw")
		p := testenv.Start(t, filepath.Join(bin, "chat-server"), append([]string{"-id", "e1"}, tlsArgs...)...)
		login(t, p, "e1", "alice")
		if r := routeOn(t, rd.Addr, auth, "alice"); !strings.HasPrefix(r, "e1 ") {
			t.Fatalf("alice's route %q", r)
		}
	})
	t.Run("password from a file", func(t *testing.T) {
		t.Setenv("RELAYCHAT_REDIS_PASSWORD", "")
		f := filepath.Join(t.TempDir(), "pw")
		if err := os.WriteFile(f, []byte("pw\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		p := testenv.Start(t, filepath.Join(bin, "chat-server"), append([]string{"-id", "f1", "-redis-password-file", f}, tlsArgs...)...)
		login(t, p, "f1", "bob")
	})
	t.Run("wrong password", func(t *testing.T) {
		t.Setenv("RELAYCHAT_REDIS_PASSWORD", "nope")
		p := testenv.Start(t, filepath.Join(bin, "chat-server"), append([]string{"-id", "w1"}, tlsArgs...)...)
		if err := p.Wait(t, wait); err == nil {
			t.Fatal("chat-server with a wrong Redis password exited 0")
		}
		out := strings.Join(p.Lines(), "\n")
		if !strings.Contains(out, "WRONGPASS") || strings.Contains(out, "nope") {
			t.Fatalf("exit message does not say why, or shows the password:\n%s", out)
		}
	})
	t.Run("Sentinel", func(t *testing.T) {
		t.Setenv("RELAYCHAT_REDIS_PASSWORD", "datapw")
		t.Setenv("RELAYCHAT_REDIS_SENTINEL_PASSWORD", "sentpw")
		dataAuth := testenv.RedisAuth{Password: "datapw"}
		m := testenv.RedisWith(t, testenv.RedisConfig{Args: []string{"--requirepass", "datapw"}, Auth: dataAuth})
		sn := testenv.RedisWith(t, testenv.RedisConfig{
			Sentinel: true,
			Args: []string{"requirepass sentpw",
				"sentinel monitor relay 127.0.0.1 " + strings.Split(m.Addr, ":")[1] + " 1",
				"sentinel auth-pass relay datapw"},
			Auth: testenv.RedisAuth{Password: "sentpw"},
		})
		p := testenv.Start(t, filepath.Join(bin, "chat-server"), "-id", "sn1", "-redis", sn.Addr, "-redis-sentinel-master", "relay",
			"-redis-prefix", prefix, "-listen", "127.0.0.1:0", "-peer-listen", "127.0.0.1:0")
		login(t, p, "sn1", "carol")
		if r := routeOn(t, m.Addr, dataAuth, "carol"); !strings.HasPrefix(r, "sn1 ") {
			t.Fatalf("carol's route on the master %q", r)
		}
	})
}
