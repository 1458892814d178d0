package e2e

import (
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/relaychat/relaychat/internal/testenv"
)

const metricsReadyRE = `msg="metrics listener ready".*\baddr="?([^"\s]+)`

// metricsAddr returns the metrics address p logged (at any time so far).
func metricsAddr(t *testing.T, p *testenv.Proc) string {
	t.Helper()
	rx := regexp.MustCompile(metricsReadyRE)
	for _, l := range p.Lines() {
		if m := rx.FindStringSubmatch(l); m != nil {
			return m[1]
		}
	}
	return p.WaitLine(t, metricsReadyRE, wait)[1]
}

// scrape reads /metrics at addr and parses it with Prometheus' own text
// parser.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("scrape %s: %s", addr, resp.Status)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("scrape %s: parse: %v", addr, err)
	}
	for name, f := range fams {
		if f.GetHelp() == "" {
			t.Errorf("%s has no HELP text", name)
		}
	}
	return fams
}

// value returns the value of the series of family name whose labels
// include want (label=value pairs); -1 if there is none.
func value(fams map[string]*dto.MetricFamily, name string, want ...string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
next:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(want); i += 2 {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == want[i] && l.GetValue() == want[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Untyped != nil:
			return m.GetUntyped().GetValue()
		}
	}
	return -1
}

// get returns the status and body of GET http://addr/path.
func get(t *testing.T, addr, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		t.Fatalf("GET %s%s: %v", addr, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestMetrics: /metrics parses with the Prometheus text parser, every
// family has HELP, the contract's series are there and move exactly with
// the traffic; /healthz answers; /readyz turns 503 (with the reason) while
// Redis is down and 200 once it is back; a proxy's /readyz is 503 while a
// server it knows is down.
func TestMetrics(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, clusterConfig{serverArgs: []string{"-metrics", "127.0.0.1:0"}})
	m1, m2 := metricsAddr(t, cl.s[0].proc), metricsAddr(t, cl.s[1].proc)

	before1, before2 := scrape(t, m1), scrape(t, m2)
	for _, name := range []string{"relaychat_connections", "relaychat_sessions", "relaychat_chats_received_total",
		"relaychat_chats_delivered_total", "relaychat_chats_stored_total", "relaychat_ready", "go_goroutines", "process_open_fds"} {
		if value(before1, name) < 0 {
			t.Errorf("s1 does not export %s", name)
		}
	}
	if value(before1, "relaychat_chat_errors_total", "reason", "mailbox_full") < 0 {
		t.Error("no relaychat_chat_errors_total{reason=\"mailbox_full\"}")
	}

	an, bn, cn, dn := cl.name("alice"), cl.name("bob"), cl.name("carol"), cl.name("dave")
	a, b, c := cl.login(t, 0, an), cl.login(t, 1, bn), cl.login(t, 0, cn)
	const cross, local, stored = 7, 5, 3
	for i := 0; i < cross; i++ {
		a.Send(t, chatReq(t, an, bn, "x", i))
		expectAck(t, a, i)
		expectDelivery(t, b, an, bn, "x")
	}
	for i := 0; i < local; i++ {
		a.Send(t, chatReq(t, an, cn, "l", i))
		expectAck(t, a, i)
		expectDelivery(t, c, an, cn, "l")
	}
	for i := 0; i < stored; i++ {
		a.Send(t, chatReq(t, an, dn, "s", i))
		expectStoredAck(t, a, i)
	}
	a.Send(t, `{"cmd":"chat","recv":"`+bn+`","content":"spoof","send":"mallory","id":"sp"}`)
	expectError(t, a, "send does not match the logged-in name", "sp")

	after1, after2 := scrape(t, m1), scrape(t, m2)
	delta := func(a, b map[string]*dto.MetricFamily, name string, labels ...string) float64 {
		return value(b, name, labels...) - value(a, name, labels...)
	}
	checks := []struct {
		what string
		got  float64
		want float64
	}{
		{"s1 chats received", delta(before1, after1, "relaychat_chats_received_total"), cross + local + stored},
		{"s1 chats delivered (local)", delta(before1, after1, "relaychat_chats_delivered_total"), local},
		{"s2 chats delivered (cross)", delta(before2, after2, "relaychat_chats_delivered_total"), cross},
		{"s1 chats stored", delta(before1, after1, "relaychat_chats_stored_total"), stored},
		{"s1 spoofed-send errors", delta(before1, after1, "relaychat_chat_errors_total", "reason", "send_mismatch"), 1},
		{"s1 sessions", value(after1, "relaychat_sessions"), 2},
		{"s1 connections", value(after1, "relaychat_connections"), 2},
		{"s2 sessions", value(after2, "relaychat_sessions"), 1},
		{"s1 link to the proxy", value(after1, "relaychat_links", "peer", "proxy1", "kind", "proxy"), 1},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", c.what, c.got, c.want)
		}
	}
	if code, body := get(t, m1, "/healthz"); code != 200 {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, body := get(t, m1, "/readyz"); code != 200 {
		t.Errorf("/readyz with everything up: %d %q", code, body)
	}

	// Redis down: not ready, with the reason; back: ready again.
	cl.redis.Kill()
	eventually(t, wait, func() (bool, string) {
		code, body := get(t, m1, "/readyz")
		return code == 503 && strings.Contains(body, "routing store"), fmt.Sprintf("/readyz %d %q", code, body)
	})
	if v := value(scrape(t, m1), "relaychat_ready"); v != 0 {
		t.Errorf("relaychat_ready = %v with Redis down", v)
	}
	cl.redis.Restart(t)
	eventually(t, wait, func() (bool, string) {
		code, body := get(t, m1, "/readyz")
		return code == 200, fmt.Sprintf("/readyz %d %q", code, body)
	})

	// A proxy with -metrics: ready while linked to both; 503 naming the
	// server while one is down.
	p := testenv.Start(t, filepath.Join(cl.bin, "chat-proxy"), append(append([]string(nil), cl.proxyArgs...), "-id", "proxy2", "-metrics", "127.0.0.1:0")...)
	pm := metricsAddr(t, p)
	p.WaitLine(t, proxyReadyRE, wait)
	if code, body := get(t, pm, "/readyz"); code != 200 {
		t.Fatalf("proxy /readyz linked to both: %d %q", code, body)
	}
	pf := scrape(t, pm)
	if v := value(pf, "relaychat_proxy_links"); v != 2 {
		t.Errorf("relaychat_proxy_links = %v, want 2", v)
	}
	cl.s[1].proc.Signal(t, syscall.SIGTERM)
	eventually(t, wait, func() (bool, string) {
		code, body := get(t, pm, "/readyz")
		return code == 503 && strings.Contains(body, "s2"), fmt.Sprintf("/readyz %d %q", code, body)
	})
}
