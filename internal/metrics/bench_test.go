package metrics

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// benchServer is a server registry of the catalog's size: every family,
// ten values of each label, two histograms.
func benchServer(b *testing.B) (*Server, *atomic.Int64) {
	b.Helper()
	reg := NewRegistry()
	descs := ServerDescs()
	var c atomic.Int64
	labelValues := make([]string, 10)
	for i := range labelValues {
		labelValues[i] = "v" + strconv.Itoa(i)
	}
	err := reg.Register(descs, func(e *Emitter) {
		v := float64(c.Load())
		for _, d := range descs {
			switch len(d.Labels) {
			case 0:
				e.Emit(d.Name, v)
			case 1:
				for _, l := range labelValues {
					e.Emit(d.Name, v, l)
				}
			case 2:
				for _, l := range labelValues {
					e.Emit(d.Name, v, l, "proxy")
				}
			}
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := reg.NewHistogram(MailboxDrainHistogram()); err != nil {
		b.Fatal(err)
	}
	ops, err := reg.NewHistogramVec(RedisOpHistogram())
	if err != nil {
		b.Fatal(err)
	}
	for _, op := range []string{"login", "lookup", "release", "mailbox_push", "mailbox_read"} {
		ops.With(op).Observe(0.001)
	}
	s, err := New(Options{Addr: "127.0.0.1:0", Registry: reg, ReadyMetric: ReadyName})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.srv.Close() })
	return s, &c
}

// BenchmarkScrape is the cost of one /metrics request (gather, encode),
// without the network: what a Prometheus scrape costs the process.
func BenchmarkScrape(b *testing.B) {
	s, _ := benchServer(b)
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		s.srv.Handler.ServeHTTP(w, req)
		if w.Code != 200 {
			b.Fatal(w.Code)
		}
	}
}

// BenchmarkHotPathAdd is the hot path: an atomic add, as the event loops
// do per message. Nothing of this package is on it.
func BenchmarkHotPathAdd(b *testing.B) {
	_, c := benchServer(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c.Add(1)
		}
	})
}

// BenchmarkHotPathAddWhileScraping is the same add while a scraper reads
// the counters in a loop (100 scrapes a second, far more than Prometheus
// does): the add costs the same, since scraping only loads.
func BenchmarkHotPathAddWhileScraping(b *testing.B) {
	s, c := benchServer(b)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				s.srv.Handler.ServeHTTP(httptest.NewRecorder(), req)
			}
		}
	}()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c.Add(1)
		}
	})
	b.StopTimer()
	close(stop)
	<-done
}

// BenchmarkHistogramObserve is one observation from background goroutines.
func BenchmarkHistogramObserve(b *testing.B) {
	reg := NewRegistry()
	v, err := reg.NewHistogramVec(RedisOpHistogram())
	if err != nil {
		b.Fatal(err)
	}
	h := v.With("lookup")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			h.Observe(0.0007)
		}
	})
}
