package metrics

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// testStats stands in for server.Stats: plain atomics on the hot path.
type testStats struct {
	conns, received, busy, badJSON atomic.Int64
	linkUp                         atomic.Bool
}

func (st *testStats) register(t testing.TB, reg *Registry) {
	t.Helper()
	err := reg.Register([]Desc{
		{Name: ConnectionsName, Help: "Open client connections.", Kind: Gauge},
		{Name: ChatsReceivedName, Help: "Chats accepted.", Kind: Counter},
		{Name: ChatErrorsName, Help: "Chats refused, by reason.", Kind: Counter, Labels: []string{"reason"}},
		linksDesc,
	}, func(e *Emitter) {
		e.Emit(ConnectionsName, float64(st.conns.Load()))
		e.Emit(ChatsReceivedName, float64(st.received.Load()))
		e.Emit(ChatErrorsName, float64(st.busy.Load()), "busy")
		e.Emit(ChatErrorsName, float64(st.badJSON.Load()), "invalid_json")
		up := 0.0
		if st.linkUp.Load() {
			up = 1
		}
		e.Emit(LinksName, up, "proxy1", "proxy")
	})
	if err != nil {
		t.Fatal(err)
	}
}

// logBuf is a goroutine-safe log sink.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func start(t *testing.T, o Options) *Server {
	t.Helper()
	if o.Addr == "" {
		o.Addr = "127.0.0.1:0"
	}
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return s
}

func get(t *testing.T, s *Server, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + s.Addr() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func scrape(t *testing.T, s *Server) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := get(t, s, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	return mfs
}

// value returns the value of the series of family name whose labels are
// exactly labels (name, value pairs).
func value(t *testing.T, mfs map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	mf, ok := mfs[name]
	if !ok {
		t.Fatalf("no family %s", name)
	}
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
next:
	for _, m := range mf.GetMetric() {
		if len(m.GetLabel()) != len(want) {
			continue
		}
		for _, lp := range m.GetLabel() {
			if want[lp.GetName()] != lp.GetValue() {
				continue next
			}
		}
		switch mf.GetType() {
		case dto.MetricType_COUNTER:
			return m.GetCounter().GetValue()
		case dto.MetricType_GAUGE:
			return m.GetGauge().GetValue()
		}
		t.Fatalf("%s: type %v", name, mf.GetType())
	}
	t.Fatalf("%s: no series with labels %v", name, want)
	return 0
}

func TestMetricsFollowAtomics(t *testing.T) {
	reg := NewRegistry()
	var st testStats
	st.register(t, reg)
	s := start(t, Options{Registry: reg})

	mfs := scrape(t, s)
	for name, mf := range mfs {
		if strings.TrimSpace(mf.GetHelp()) == "" {
			t.Errorf("%s: no HELP", name)
		}
	}
	for _, n := range []string{"go_goroutines", "go_gc_duration_seconds", "go_sched_latencies_seconds", "go_gc_gogc_percent", "process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"} {
		if mfs[n] == nil {
			t.Errorf("runtime series %s missing", n)
		}
	}
	if got := mfs[ChatsReceivedName].GetType(); got != dto.MetricType_COUNTER {
		t.Errorf("%s type %v, want counter", ChatsReceivedName, got)
	}
	if got := mfs[ConnectionsName].GetType(); got != dto.MetricType_GAUGE {
		t.Errorf("%s type %v, want gauge", ConnectionsName, got)
	}
	if v := value(t, mfs, ChatsReceivedName); v != 0 {
		t.Fatalf("received = %v before any increment", v)
	}

	for round := 1; round <= 3; round++ {
		before := scrape(t, s)
		st.received.Add(int64(1000 * round))
		st.busy.Add(int64(round))
		st.conns.Add(7)
		st.linkUp.Store(round%2 == 1)
		after := scrape(t, s)
		if d := value(t, after, ChatsReceivedName) - value(t, before, ChatsReceivedName); d != float64(1000*round) {
			t.Errorf("round %d: received moved by %v, want %d", round, d, 1000*round)
		}
		if d := value(t, after, ChatErrorsName, "reason", "busy") - value(t, before, ChatErrorsName, "reason", "busy"); d != float64(round) {
			t.Errorf("round %d: errors{busy} moved by %v, want %d", round, d, round)
		}
		if v := value(t, after, ChatErrorsName, "reason", "invalid_json"); v != 0 {
			t.Errorf("errors{invalid_json} = %v, want 0", v)
		}
		if v := value(t, after, ConnectionsName); v != float64(7*round) {
			t.Errorf("connections = %v, want %d", v, 7*round)
		}
		want := 0.0
		if round%2 == 1 {
			want = 1
		}
		if v := value(t, after, LinksName, "peer", "proxy1", "kind", "proxy"); v != want {
			t.Errorf("links{proxy1} = %v, want %v", v, want)
		}
	}
}

// TestScrapeWhileCounting scrapes while other goroutines count: counters
// never go backwards and end at the exact total (and -race is quiet).
func TestScrapeWhileCounting(t *testing.T) {
	reg := NewRegistry()
	var st testStats
	st.register(t, reg)
	s := start(t, Options{Registry: reg})

	const workers, each = 4, 20000
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				st.received.Add(1)
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	last := 0.0
	for finished := false; !finished; {
		select {
		case <-done:
			finished = true
		default:
		}
		v := value(t, scrape(t, s), ChatsReceivedName)
		if v < last {
			t.Fatalf("counter went back from %v to %v", last, v)
		}
		last = v
	}
	if v := value(t, scrape(t, s), ChatsReceivedName); v != workers*each {
		t.Fatalf("final = %v, want %d", v, workers*each)
	}
}

func TestHistogram(t *testing.T) {
	reg := NewRegistry()
	drain, err := reg.NewHistogram(MailboxDrainHistogram())
	if err != nil {
		t.Fatal(err)
	}
	ops, err := reg.NewHistogramVec(RedisOpHistogram())
	if err != nil {
		t.Fatal(err)
	}
	lookup, login := ops.With("lookup"), ops.With("login")
	s := start(t, Options{Registry: reg})

	lookup.Observe(0.0003)
	lookup.ObserveDuration(2 * time.Millisecond)
	lookup.Since(time.Now().Add(-time.Second))
	drain.Observe(0.02)

	mfs := scrape(t, s)
	mf := mfs[RedisOpSecondsName]
	if mf.GetType() != dto.MetricType_HISTOGRAM || mf.GetHelp() == "" {
		t.Fatalf("%s: type %v help %q", RedisOpSecondsName, mf.GetType(), mf.GetHelp())
	}
	counts := map[string]uint64{}
	for _, m := range mf.GetMetric() {
		counts[m.GetLabel()[0].GetValue()] = m.GetHistogram().GetSampleCount()
	}
	if counts["lookup"] != 3 || counts["login"] != 0 {
		t.Errorf("sample counts %v, want lookup 3, login 0 (present, empty)", counts)
	}
	for _, m := range mf.GetMetric() {
		if m.GetLabel()[0].GetValue() != "lookup" {
			continue
		}
		h := m.GetHistogram()
		if sum := h.GetSampleSum(); sum < 1.0023 || sum > 1.5 {
			t.Errorf("lookup sum %v, want about 1.0023", sum)
		}
		for _, b := range h.GetBucket() {
			if b.GetUpperBound() == 0.0005 && b.GetCumulativeCount() != 1 {
				t.Errorf("bucket le=0.0005: %d, want 1", b.GetCumulativeCount())
			}
		}
	}
	if got := mfs[MailboxDrainSecondsName].GetMetric()[0].GetHistogram().GetSampleCount(); got != 1 {
		t.Errorf("drain count %d, want 1", got)
	}
	_ = login

	if a := testing.AllocsPerRun(1000, func() { lookup.Observe(0.001) }); a != 0 {
		t.Errorf("Observe allocates %v times", a)
	}
	if a := testing.AllocsPerRun(1000, func() { drain.ObserveDuration(time.Millisecond) }); a != 0 {
		t.Errorf("ObserveDuration allocates %v times", a)
	}

	var nilH *Histogram
	nilH.Observe(1)
	nilH.Since(time.Now())
	var nilV *HistogramVec
	if nilV.With("x") != nil {
		t.Error("nil vec With: want nil histogram")
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("With with the wrong number of values did not panic")
			}
		}()
		ops.With("a", "b")
	}()
}

func TestReadiness(t *testing.T) {
	var ready atomic.Bool
	var reason atomic.Pointer[string]
	r0 := "routing store not answering"
	reason.Store(&r0)
	reg := NewRegistry()
	s := start(t, Options{
		Registry:    reg,
		ReadyMetric: ReadyName,
		Ready: func() (bool, string) {
			if ready.Load() {
				return true, ""
			}
			return false, *reason.Load()
		},
	})
	check := func(wantCode int, wantBody string, wantGauge float64) {
		t.Helper()
		code, body := get(t, s, "/readyz")
		if code != wantCode || body != wantBody+"\n" {
			t.Errorf("/readyz = %d %q, want %d %q", code, body, wantCode, wantBody+"\n")
		}
		if v := value(t, scrape(t, s), ReadyName); v != wantGauge {
			t.Errorf("%s = %v, want %v", ReadyName, v, wantGauge)
		}
		if code, body := get(t, s, "/healthz"); code != 200 || body != "ok\n" {
			t.Errorf("/healthz = %d %q, want 200 ok", code, body)
		}
	}
	check(503, "routing store not answering", 0)
	ready.Store(true)
	check(200, "ready", 1)
	r1 := "client port closed"
	reason.Store(&r1)
	ready.Store(false)
	check(503, "client port closed", 0)
	ready.Store(true)
	check(200, "ready", 1)
	s.SetNotReady("")
	check(503, "shutting down", 0)

	// A registry's name is taken once: a second relaychat_ready clashes.
	if _, err := New(Options{Addr: "127.0.0.1:0", Registry: reg, ReadyMetric: ReadyName}); err == nil || !strings.Contains(err.Error(), "already registered") {
		t.Errorf("second ReadyMetric on one registry: err %v", err)
	}
}

func TestDefaultsAndMux(t *testing.T) {
	var logs logBuf
	s := start(t, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if !strings.Contains(logs.String(), `msg="metrics listener ready" addr=`+s.Addr()) {
		t.Errorf("no ready log line with the bound address %s in %q", s.Addr(), logs.String())
	}
	if code, body := get(t, s, "/readyz"); code != 200 || body != "ready\n" {
		t.Errorf("/readyz without a callback = %d %q", code, body)
	}
	for _, p := range []string{"/", "/debug/pprof/", "/metrics/", "/healthz/x"} {
		if code, _ := get(t, s, p); code != http.StatusNotFound {
			t.Errorf("GET %s = %d, want 404", p, code)
		}
	}
	resp, err := http.Post("http://"+s.Addr()+"/metrics", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /metrics = %d, want 405", resp.StatusCode)
	}
	req, _ := http.NewRequest(http.MethodHead, "http://"+s.Addr()+"/healthz", nil)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("HEAD /healthz = %d", resp.StatusCode)
	}
}

func TestShutdown(t *testing.T) {
	s, err := New(Options{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	addr := s.Addr()
	if code, _ := get(t, s, "/healthz"); code != 200 {
		t.Fatalf("/healthz = %d", code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("%s still accepts after Shutdown", addr)
	}
	// The port is free again, and a busy one is a clear error.
	s2 := start(t, Options{Addr: addr})
	if _, err := New(Options{Addr: s2.Addr()}); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("New on a busy address: %v", err)
	}
	if _, err := New(Options{}); err == nil {
		t.Error("New without an address: want an error")
	}
}

func TestEmitMistakesKeepTheRest(t *testing.T) {
	reg := NewRegistry()
	err := reg.Register([]Desc{
		{Name: "t_ok", Help: "fine", Kind: Gauge},
		{Name: "t_labelled_total", Help: "one label", Kind: Counter, Labels: []string{"reason"}},
	}, func(e *Emitter) {
		e.Emit("t_ok", 42)
		e.Emit("t_not_described", 1)
		e.Emit("t_labelled_total", 1) // missing the label value
	})
	if err != nil {
		t.Fatal(err)
	}
	var logs logBuf
	s := start(t, Options{Registry: reg, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	mfs := scrape(t, s)
	if v := value(t, mfs, "t_ok"); v != 42 {
		t.Errorf("t_ok = %v", v)
	}
	if !strings.Contains(logs.String(), "t_not_described") || !strings.Contains(logs.String(), "metrics scrape error") {
		t.Errorf("mistakes not logged: %q", logs.String())
	}
	if strings.Count(strings.TrimSpace(logs.String()), "\n") > 1 {
		t.Errorf("a scrape error spans several lines: %q", logs.String())
	}
}

func TestValidation(t *testing.T) {
	ok := func(*Emitter) {}
	cases := []struct {
		name  string
		descs []Desc
		want  string
	}{
		{"duplicate", []Desc{{Name: "a_total", Help: "h", Kind: Counter}, {Name: "a_total", Help: "h", Kind: Counter}}, "described twice"},
		{"missing help", []Desc{{Name: "a", Help: " ", Kind: Gauge}}, "missing help"},
		{"bad name", []Desc{{Name: "relaychat-connections", Help: "h", Kind: Gauge}}, "bad metric name"},
		{"empty name", []Desc{{Name: "", Help: "h", Kind: Gauge}}, "bad metric name"},
		{"leading digit", []Desc{{Name: "1a", Help: "h", Kind: Gauge}}, "bad metric name"},
		{"reserved name", []Desc{{Name: "__a", Help: "h", Kind: Gauge}}, "reserved"},
		{"counter without _total", []Desc{{Name: "a", Help: "h", Kind: Counter}}, "must end in _total"},
		{"gauge with _total", []Desc{{Name: "a_total", Help: "h", Kind: Gauge}}, "must not end in _total"},
		{"no kind", []Desc{{Name: "a", Help: "h"}}, "kind must be"},
		{"bad label", []Desc{{Name: "a", Help: "h", Kind: Gauge, Labels: []string{"peer-id"}}}, "bad label name"},
		{"reserved label", []Desc{{Name: "a", Help: "h", Kind: Gauge, Labels: []string{"__x"}}}, "bad label name"},
		{"duplicate label", []Desc{{Name: "a", Help: "h", Kind: Gauge, Labels: []string{"x", "x"}}}, "given twice"},
		{"clash with runtime", []Desc{{Name: "go_goroutines", Help: "h", Kind: Gauge}}, "go_goroutines"},
		{"none", nil, "no descriptors"},
	}
	for _, c := range cases {
		reg := NewRegistry()
		err := reg.Register(c.descs, ok)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want one containing %q", c.name, err, c.want)
		}
	}
	reg := NewRegistry()
	if err := reg.Register([]Desc{{Name: "a", Help: "h", Kind: Gauge}}, nil); err == nil {
		t.Error("nil collect: want an error")
	}
	// A name is taken once per registry, across Register calls and histograms.
	if err := reg.Register(ServerDescs(), ok); err != nil {
		t.Fatalf("ServerDescs: %v", err)
	}
	if err := reg.Register(ProxyDescs(), ok); err == nil || !strings.Contains(err.Error(), LinksName) {
		t.Errorf("relaychat_links registered twice: err %v", err)
	}
	if _, err := reg.NewHistogram(HistogramDesc{Name: ConnectionsName, Help: "h"}); err == nil {
		t.Error("histogram over a registered name: want an error")
	}
	// A failed Register leaves nothing behind: the names stay free.
	if err := reg.Register([]Desc{{Name: "b", Help: "h", Kind: Gauge}, {Name: "c", Kind: Gauge}}, ok); err == nil {
		t.Fatal("want missing help error")
	}
	if err := reg.Register([]Desc{{Name: "b", Help: "h", Kind: Gauge}}, ok); err != nil {
		t.Errorf("b after a failed Register: %v", err)
	}

	hcases := []struct {
		name string
		d    HistogramDesc
		vec  bool
		want string
	}{
		{"no help", HistogramDesc{Name: "h_seconds"}, false, "missing help"},
		{"suffix", HistogramDesc{Name: "h_count", Help: "h"}, false, "must not end in _count"},
		{"unsorted", HistogramDesc{Name: "h_seconds", Help: "h", Buckets: []float64{1, 0.5}}, false, "strictly increasing"},
		{"le", HistogramDesc{Name: "h_seconds", Help: "h", Labels: []string{"le"}}, true, "reserved"},
		{"labels on plain", HistogramDesc{Name: "h_seconds", Help: "h", Labels: []string{"op"}}, false, "NewHistogramVec"},
		{"vec without labels", HistogramDesc{Name: "h_seconds", Help: "h"}, true, "at least one label"},
	}
	for _, c := range hcases {
		var err error
		if c.vec {
			_, err = NewRegistry().NewHistogramVec(c.d)
		} else {
			_, err = NewRegistry().NewHistogram(c.d)
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("histogram %s: err %v, want one containing %q", c.name, err, c.want)
		}
	}
}

// TestCatalog registers everything the catalog declares, as a server and
// as a proxy would, and checks each family's type and help in a scrape.
func TestCatalog(t *testing.T) {
	for _, role := range []struct {
		name  string
		descs []Desc
	}{{"server", ServerDescs()}, {"proxy", ProxyDescs()}} {
		reg := NewRegistry()
		err := reg.Register(role.descs, func(e *Emitter) {
			for _, d := range role.descs {
				lv := make([]string, len(d.Labels))
				for i := range lv {
					lv[i] = "x"
				}
				e.Emit(d.Name, 1, lv...)
			}
		})
		if err != nil {
			t.Fatalf("%s: %v", role.name, err)
		}
		if role.name == "server" {
			if _, err := reg.NewHistogram(MailboxDrainHistogram()); err != nil {
				t.Fatal(err)
			}
			v, err := reg.NewHistogramVec(RedisOpHistogram())
			if err != nil {
				t.Fatal(err)
			}
			v.With("lookup")
		}
		s := start(t, Options{Registry: reg, ReadyMetric: ReadyName})
		mfs := scrape(t, s)
		for _, d := range role.descs {
			mf := mfs[d.Name]
			if mf == nil {
				t.Errorf("%s: %s missing", role.name, d.Name)
				continue
			}
			want := dto.MetricType_GAUGE
			if d.Kind == Counter {
				want = dto.MetricType_COUNTER
			}
			if mf.GetType() != want || mf.GetHelp() != d.Help {
				t.Errorf("%s: %s: type %v help %q", role.name, d.Name, mf.GetType(), mf.GetHelp())
			}
		}
	}
	names, hists := CatalogNames()
	if len(names) != 21 || len(hists) != 2 {
		t.Errorf("CatalogNames: %d names, %d histograms: %v", len(names), len(hists), names)
	}
}
