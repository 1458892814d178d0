package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// RedisConfig configures RedisWith. The zero value is a plain redis-server
// like Redis starts.
type RedisConfig struct {
	// Args are extra redis-server arguments ("--requirepass", "x", ...), or
	// with Sentinel, extra lines of the sentinel's configuration file.
	Args []string
	// Auth is how the readiness check (and Do) reach the server: TLS and
	// credentials matching Args.
	Auth RedisAuth
	// TLS serves TLS only, on the chosen port, with Certs' server
	// certificate; Args may add e.g. "--tls-auth-clients", "no".
	TLS *Certs
	// Sentinel runs `redis-server <file> --sentinel`.
	Sentinel bool
}

// RedisNode is a redis-server (or sentinel) started by RedisWith. Its
// methods are for the test goroutine.
type RedisNode struct {
	Addr string
	Port int

	cfg RedisConfig
	bin string
	dir string
	out *tailBuffer
	redisServer
}

// RedisWith starts a private redis-server as configured on a free loopback
// port, without persistence, waits until it answers PING (through
// cfg.Auth), and stops it in t.Cleanup, dumping its log if the test
// failed.
func RedisWith(t testing.TB, cfg RedisConfig) *RedisNode {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("testenv: redis-server not found on PATH (%v); `make test` installs it", err)
	}
	n := &RedisNode{cfg: cfg, bin: bin, dir: t.TempDir(), out: newTailBuffer(64 << 10)}
	t.Cleanup(func() {
		n.Stop()
		if t.Failed() {
			t.Logf("redis-server %s log (tail):\n%s", n.Addr, n.out.String())
		}
	})
	for attempt := 1; ; attempt++ {
		n.Port = FreePort(t)
		n.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(n.Port))
		err := n.start()
		if err == nil {
			return n
		}
		if attempt < 3 && strings.Contains(n.out.String(), "Address already in use") {
			continue
		}
		t.Fatalf("testenv: redis-server on %s: %v\n%s", n.Addr, err, n.out.String())
	}
}

func (n *RedisNode) start() error {
	var args []string
	port := strconv.Itoa(n.Port)
	if n.cfg.Sentinel {
		conf := filepath.Join(n.dir, "sentinel.conf")
		lines := append([]string{"port " + port, "bind 127.0.0.1", "dir " + n.dir}, n.cfg.Args...)
		if err := os.WriteFile(conf, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
			return err
		}
		args = []string{conf, "--sentinel"}
	} else {
		args = []string{"--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
			"--daemonize", "no", "--dir", n.dir, "--logfile", ""}
		if c := n.cfg.TLS; c != nil {
			args = append(args, "--port", "0", "--tls-port", port,
				"--tls-cert-file", c.ServerCert, "--tls-key-file", c.ServerKey, "--tls-ca-cert-file", c.CAFile)
		}
		args = append(args, n.cfg.Args...)
	}
	ready := func() error {
		v, err := RedisDo(n.Addr, n.cfg.Auth, "PING")
		if err == nil && v != "PONG" {
			err = fmt.Errorf("PING answered %v", v)
		}
		return err
	}
	return n.launch(n.bin, args, n.out, ready, 20*time.Millisecond)
}

// Kill sends SIGKILL and waits for the process to exit.
func (n *RedisNode) Kill() { n.kill() }

// Stop sends SIGTERM, then SIGKILL after 5s.
func (n *RedisNode) Stop() { n.term(5 * time.Second) }

// Do runs one command through cfg.Auth.
func (n *RedisNode) Do(t testing.TB, args ...string) any {
	t.Helper()
	v, err := RedisDo(n.Addr, n.cfg.Auth, args...)
	if err != nil {
		t.Fatalf("testenv: %s on %s: %v", strings.Join(args, " "), n.Addr, err)
	}
	return v
}

// Log returns the tail of the server's output.
func (n *RedisNode) Log() string { return n.out.String() }

// Certs are PEM files of a private CA, a server certificate it signed for
// 127.0.0.1 and "redis.test", and a client certificate.
type Certs struct {
	CAFile                string
	ServerCert, ServerKey string
	ClientCert, ClientKey string
	CAPool                *x509.CertPool
	ClientPair            tls.Certificate
}

// ClientTLS returns a TLS configuration that trusts the CA and presents
// the client certificate.
func (c *Certs) ClientTLS() *tls.Config {
	return &tls.Config{RootCAs: c.CAPool, Certificates: []tls.Certificate{c.ClientPair}, MinVersion: tls.VersionTLS12}
}

// NewCerts writes a fresh CA, server and client certificate (ECDSA P-256,
// valid for an hour) into a temporary directory.
func NewCerts(t testing.TB) *Certs {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "relaychat test CA"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	c := &Certs{CAFile: filepath.Join(dir, "ca.pem"), CAPool: x509.NewCertPool()}
	c.CAPool.AddCert(caCert)
	writePEM(t, c.CAFile, "CERTIFICATE", caDER)
	leaf := func(serial int64, name string, usage x509.ExtKeyUsage) (certFile, keyFile string) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: name},
			NotBefore:    now.Add(-time.Minute),
			NotAfter:     now.Add(time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
			DNSNames:     []string{name},
			IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kb, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
		writePEM(t, certFile, "CERTIFICATE", der)
		writePEM(t, keyFile, "EC PRIVATE KEY", kb)
		return certFile, keyFile
	}
	c.ServerCert, c.ServerKey = leaf(2, "redis.test", x509.ExtKeyUsageServerAuth)
	c.ClientCert, c.ClientKey = leaf(3, "client.test", x509.ExtKeyUsageClientAuth)
	c.ClientPair, err = tls.LoadX509KeyPair(c.ClientCert, c.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
