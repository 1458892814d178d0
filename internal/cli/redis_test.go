package cli

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/relaychat/relaychat/internal/testenv"
)

func parseRedis(t *testing.T, args ...string) *RedisFlags {
	t.Helper()
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	f := AddRedisFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return f
}

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestRedisFlagsCredentials(t *testing.T) {
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwFile, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := parseRedis(t, "-redis", "a:1, b:2").Options(env(map[string]string{EnvRedisUsername: "app", EnvRedisPassword: "from-env"}))
	if err != nil || o.Username != "app" || o.Password != "from-env" || len(o.Addrs) != 2 || o.TLS != nil {
		t.Fatalf("env: %+v, %v", o, err)
	}
	o, err = parseRedis(t, "-redis-password-file", pwFile, "-redis-username", "u").Options(env(nil))
	if err != nil || o.Password != "from-file" || o.Username != "u" {
		t.Fatalf("file: %+v, %v", o, err)
	}
	o, err = parseRedis(t, "-redis-sentinel-master", "m").Options(env(map[string]string{EnvRedisSentinelPassword: "sp"}))
	if err != nil || o.SentinelMaster != "m" || o.SentinelPassword != "sp" || o.Password != "" {
		t.Fatalf("sentinel: %+v, %v", o, err)
	}
	for _, c := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"-redis-password-file", pwFile}, map[string]string{EnvRedisPassword: "x"}, "both"},
		{[]string{"-redis-password-file", filepath.Join(dir, "missing")}, nil, "no such file"},
		{[]string{"-redis-username", "u"}, nil, "without a password"},
		{[]string{"-redis", " , "}, nil, "no address"},
		{[]string{"-redis-tls-cert", pwFile}, nil, "go together"},
		{[]string{"-redis-tls-ca", pwFile}, nil, "no PEM"},
		{[]string{"-redis-conn-timeout", "0s"}, nil, "positive"},
	} {
		if _, err := parseRedis(t, c.args...).Options(env(c.env)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err %v, want %q", c.args, err, c.want)
		}
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := parseRedis(t, "-redis-password-file", empty).Options(env(nil)); err == nil {
		t.Error("an empty password file was accepted")
	}
}

func TestRedisFlagsTLS(t *testing.T) {
	c := testenv.NewCerts(t)
	f := parseRedis(t, "-redis-tls-ca", c.CAFile, "-redis-tls-cert", c.ClientCert, "-redis-tls-key", c.ClientKey, "-redis-tls-server-name", "redis.test")
	o, err := f.Options(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if o.TLS == nil || o.TLS.RootCAs == nil || len(o.TLS.Certificates) != 1 || o.TLS.ServerName != "redis.test" {
		t.Fatalf("TLS config %+v", o.TLS)
	}
	if d := f.Describe(o); !strings.Contains(d, "tls") {
		t.Fatalf("Describe = %q", d)
	}
	o, err = parseRedis(t, "-redis-tls").Options(env(map[string]string{EnvRedisPassword: "secret"}))
	if err != nil || o.TLS == nil || o.TLS.RootCAs != nil {
		t.Fatalf("-redis-tls alone: %+v, %v", o.TLS, err)
	}
	if d := parseRedis(t).Describe(o); strings.Contains(d, "secret") {
		t.Fatalf("Describe leaks the password: %q", d)
	}
}
