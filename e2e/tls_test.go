package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/relaychat/relaychat/internal/testenv"
)

// tlsFront is scripts/tls-front.sh running in front of some ports.
type tlsFront struct {
	proc   *testenv.Proc
	listen []string // the TLS addresses, in the order of the backends
	config *tls.Config
}

// startTLSFront runs scripts/tls-front.sh with a TLS listener on a free
// loopback port for each backend, and returns once every listener
// completes a TLS handshake. It skips the test, with the reason, only when
// the terminator cannot be installed (scripts/ensure-tls-front.sh).
func startTLSFront(t *testing.T, backends ...string) *tlsFront {
	t.Helper()
	scripts, err := filepath.Abs(filepath.Join("..", "scripts"))
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("bash", filepath.Join(scripts, "ensure-tls-front.sh")).CombinedOutput(); err != nil {
		t.Skipf("no TLS terminator: scripts/ensure-tls-front.sh failed (%v): %s", err, strings.TrimSpace(string(out)))
	}
	dir := t.TempDir()
	// Free ports are picked, then bound by haproxy: another process may
	// take one in between, so try again on "cannot bind".
	for attempt := 1; ; attempt++ {
		f := &tlsFront{}
		args := []string{dir}
		used := map[int]bool{}
		for _, b := range backends {
			port := testenv.FreePort(t)
			for used[port] {
				port = testenv.FreePort(t)
			}
			used[port] = true
			l := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
			f.listen = append(f.listen, l)
			args = append(args, l+"="+b)
		}
		f.proc = testenv.Start(t, filepath.Join(scripts, "tls-front.sh"), args...)
		err := f.waitReady(dir)
		if err == nil {
			return f
		}
		out := strings.Join(f.proc.Lines(), "\n")
		if attempt < 3 && strings.Contains(out, "cannot bind") {
			continue
		}
		t.Fatalf("tls-front.sh: %v; output:\n%s", err, out)
	}
}

// waitReady waits until the certificate exists and every listener
// completes a handshake with it, or the script exits.
func (f *tlsFront) waitReady(dir string) error {
	deadline := time.Now().Add(wait)
	for {
		select {
		case <-f.proc.Done():
			return fmt.Errorf("exited before it was ready")
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready within %v", wait)
		}
		if f.config == nil {
			if pem, err := os.ReadFile(filepath.Join(dir, "cert.pem")); err == nil {
				pool := x509.NewCertPool()
				if pool.AppendCertsFromPEM(pem) {
					f.config = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
				}
			}
		}
		ready := f.config != nil
		for _, l := range f.listen {
			if !ready {
				break
			}
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", l, f.config)
			if err != nil {
				ready = false
				break
			}
			c.Close()
		}
		if ready {
			return nil
		}
		time.Sleep(pollEvery) // poll interval: the loop re-checks readiness
	}
}

// TestTLSFront puts scripts/tls-front.sh (haproxy) in front of s1's client
// port and WebSocket port, and chats over TLS: a line client over TLS, a
// wss:// client, a plain TCP user on s2, and the page over https. Stopping
// the terminator closes the TLS sessions, and their routes go away.
func TestTLSFront(t *testing.T) {
	t.Parallel()
	cl, wsAddr := startWSCluster(t, clusterConfig{})
	front := startTLSFront(t, cl.s[0].addr, wsAddr[0])
	tlsTCP, tlsWS := front.listen[0], front.listen[1]

	an, bn, cn := cl.name("tls"), cl.name("wss"), cl.name("plain")
	a := testenv.DialTLS(t, tlsTCP, front.config)
	a.Send(t, mustJSON(t, map[string]any{"cmd": "login", "name": an}))
	expectLogin(t, a, an, "s1")
	w := testenv.DialWSURL(t, "wss://"+tlsWS+"/ws", front.config)
	w.Send(t, mustJSON(t, map[string]any{"cmd": "login", "name": bn}))
	expectLogin(t, w.Client, bn, "s1")
	c := cl.login(t, 1, cn)
	cl.waitRoute(t, an, "s1")
	cl.waitRoute(t, bn, "s1")

	a.Send(t, chatReq(t, "", bn, "TLS line to wss", "1"))
	expectAck(t, a, "1")
	expectDelivery(t, w.Client, an, bn, "TLS line to wss")
	w.Send(t, chatReq(t, "", an, "wss to TLS line", "2"))
	expectAck(t, w.Client, "2")
	expectDelivery(t, a, bn, an, "wss to TLS line")
	w.Send(t, chatReq(t, "", cn, "wss to plain TCP on s2", "3"))
	expectAck(t, w.Client, "3")
	expectDelivery(t, c, bn, cn, "wss to plain TCP on s2")
	c.Send(t, chatReq(t, "", an, "plain TCP on s2 to TLS line", "4"))
	expectAck(t, c, "4")
	expectDelivery(t, a, cn, an, "plain TCP on s2 to TLS line")
	// Frames and lines of every size pass through unchanged.
	big := strings.Repeat("é", 20000)
	w.Send(t, chatReq(t, "", an, big, "5"))
	expectAck(t, w.Client, "5")
	expectDelivery(t, a, bn, an, big)
	w.Ping(t, []byte("through haproxy"))
	if p := w.ExpectPong(t, wait); string(p) != "through haproxy" {
		t.Fatalf("pong %q", p)
	}

	// The page over https.
	hc := &http.Client{Timeout: wait, Transport: &http.Transport{TLSClientConfig: front.config}}
	resp, err := hc.Get("https://" + tlsWS + "/")
	if err != nil {
		t.Fatalf("GET / over TLS: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "WebSocket") {
		t.Fatalf("GET / over TLS: %d %.200q", resp.StatusCode, body)
	}

	// Stopping the terminator closes both TLS sessions; the server sees
	// them go, as if the clients had left.
	front.proc.Signal(t, syscall.SIGTERM)
	if err := front.proc.Wait(t, wait); err != nil {
		t.Logf("tls-front.sh exited: %v", err)
	}
	a.ExpectClosed(t, wait)
	w.ExpectClosed(t, wait)
	cl.waitRoute(t, an, "")
	cl.waitRoute(t, bn, "")
	expectPong(t, c)
}
