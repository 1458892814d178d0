package cli

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/relaychat/relaychat/route"
)

// Environment variables holding Redis credentials. Secrets are never taken
// from the command line, where every local user can read them (ps,
// /proc/<pid>/cmdline).
const (
	EnvRedisUsername         = "RELAYCHAT_REDIS_USERNAME"
	EnvRedisPassword         = "RELAYCHAT_REDIS_PASSWORD"
	EnvRedisSentinelUsername = "RELAYCHAT_REDIS_SENTINEL_USERNAME"
	EnvRedisSentinelPassword = "RELAYCHAT_REDIS_SENTINEL_PASSWORD"
)

// RedisFlags are the flags every binary that reaches the routing store
// shares. Register them with AddRedisFlags, then turn them into
// route.Options with Options after parsing.
type RedisFlags struct {
	Addr           string // -redis
	Prefix         string // -redis-prefix
	Username       string // -redis-username
	PasswordFile   string // -redis-password-file
	TLS            bool   // -redis-tls
	TLSCA          string // -redis-tls-ca
	TLSServerName  string // -redis-tls-server-name
	TLSCert        string // -redis-tls-cert
	TLSKey         string // -redis-tls-key
	SentinelMaster string // -redis-sentinel-master
	ConnTimeout    time.Duration
}

// AddRedisFlags defines the Redis flags on fs and returns where they land.
func AddRedisFlags(fs *flag.FlagSet) *RedisFlags {
	f := &RedisFlags{}
	fs.StringVar(&f.Addr, "redis", route.DefaultAddr, "Redis address; a comma list of nodes for Redis Cluster; the sentinels' addresses with -redis-sentinel-master")
	fs.StringVar(&f.Prefix, "redis-prefix", route.DefaultPrefix, "prefix of every Redis key")
	fs.StringVar(&f.Username, "redis-username", "", "Redis ACL user (also $"+EnvRedisUsername+"); default: the default user")
	fs.StringVar(&f.PasswordFile, "redis-password-file", "", "file holding the Redis password (one line); or set $"+EnvRedisPassword+"; never on the command line")
	fs.BoolVar(&f.TLS, "redis-tls", false, "connect to Redis (and the sentinels) over TLS; implied by the other -redis-tls-* flags")
	fs.StringVar(&f.TLSCA, "redis-tls-ca", "", "PEM file of the CA certificates that sign Redis' certificate (default: the system's)")
	fs.StringVar(&f.TLSServerName, "redis-tls-server-name", "", "name Redis' certificate must carry (default: the host of each address)")
	fs.StringVar(&f.TLSCert, "redis-tls-cert", "", "PEM client certificate, for Redis with tls-auth-clients (with -redis-tls-key)")
	fs.StringVar(&f.TLSKey, "redis-tls-key", "", "PEM key of -redis-tls-cert")
	fs.StringVar(&f.SentinelMaster, "redis-sentinel-master", "", "name of the master set the sentinels at -redis monitor (Redis Sentinel); sentinel credentials from $"+EnvRedisSentinelUsername+" and $"+EnvRedisSentinelPassword)
	fs.DurationVar(&f.ConnTimeout, "redis-conn-timeout", route.DefaultConnTimeout, "connection attempt timeout, and how long a silent Redis connection is kept before it is dropped (a frozen node is left after about 1.5x this); keep it at or below cluster-node-timeout")
	return f
}

// Options returns the route.Options these flags describe: addresses,
// prefix, connection timeout, credentials and TLS. Credentials come from
// getenv (os.Getenv when nil) and -redis-password-file; giving the password
// both ways is an error, as is an unreadable file or certificate. The
// caller fills in the remaining fields (Timeout, CacheTTL, ...).
func (f *RedisFlags) Options(getenv func(string) string) (route.Options, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	o := route.Options{
		Addrs:            SplitList(f.Addr),
		Prefix:           f.Prefix,
		ConnTimeout:      f.ConnTimeout,
		SentinelMaster:   f.SentinelMaster,
		Username:         f.Username,
		SentinelUsername: getenv(EnvRedisSentinelUsername),
		SentinelPassword: getenv(EnvRedisSentinelPassword),
	}
	if len(o.Addrs) == 0 {
		return route.Options{}, errors.New("-redis: no address")
	}
	if f.ConnTimeout <= 0 {
		return route.Options{}, fmt.Errorf("-redis-conn-timeout %v: want a positive duration", f.ConnTimeout)
	}
	if o.Username == "" {
		o.Username = getenv(EnvRedisUsername)
	}
	o.Password = getenv(EnvRedisPassword)
	if f.PasswordFile != "" {
		if o.Password != "" {
			return route.Options{}, fmt.Errorf("the Redis password is given both in $%s and in -redis-password-file; give one", EnvRedisPassword)
		}
		b, err := os.ReadFile(f.PasswordFile)
		if err != nil {
			return route.Options{}, fmt.Errorf("-redis-password-file: %w", err)
		}
		o.Password = strings.TrimRight(string(b), "\r\n")
		if o.Password == "" || strings.ContainsAny(o.Password, "\r\n") {
			return route.Options{}, fmt.Errorf("-redis-password-file %s: want one non-empty line", f.PasswordFile)
		}
	}
	if o.Username != "" && o.Password == "" {
		return route.Options{}, fmt.Errorf("a Redis username (%q) without a password: set $%s or -redis-password-file", o.Username, EnvRedisPassword)
	}
	tlsCfg, err := f.tlsConfig()
	if err != nil {
		return route.Options{}, err
	}
	o.TLS = tlsCfg
	return o, nil
}

// tlsConfig builds the TLS configuration, or nil when TLS is off.
func (f *RedisFlags) tlsConfig() (*tls.Config, error) {
	if !f.TLS && f.TLSCA == "" && f.TLSServerName == "" && f.TLSCert == "" && f.TLSKey == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: f.TLSServerName}
	if f.TLSCA != "" {
		pem, err := os.ReadFile(f.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("-redis-tls-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("-redis-tls-ca %s: no PEM certificate in it", f.TLSCA)
		}
		cfg.RootCAs = pool
	}
	if (f.TLSCert == "") != (f.TLSKey == "") {
		return nil, errors.New("-redis-tls-cert and -redis-tls-key go together")
	}
	if f.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(f.TLSCert, f.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("-redis-tls-cert/-redis-tls-key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// Describe returns how the store is reached, for the start-up log line:
// the topology asked for, TLS and AUTH, never a secret.
func (f *RedisFlags) Describe(o route.Options) string {
	var b strings.Builder
	switch {
	case o.SentinelMaster != "":
		fmt.Fprintf(&b, "sentinel master %q via %s", o.SentinelMaster, strings.Join(o.Addrs, ","))
	default:
		b.WriteString(strings.Join(o.Addrs, ","))
	}
	if o.TLS != nil {
		b.WriteString(" tls")
	}
	switch {
	case o.Username != "":
		fmt.Fprintf(&b, " auth=%s", o.Username)
	case o.Password != "":
		b.WriteString(" auth=default")
	}
	return b.String()
}
