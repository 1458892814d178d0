package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// HTTP limits of the monitoring server: a scrape of a few hundred series
// takes well under a millisecond, so these only bound misbehaving clients.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 15 * time.Second
	idleTimeout       = 60 * time.Second
	maxHeaderBytes    = 8 << 10
	// gatherTimeout answers 503 when collecting takes longer (Prometheus'
	// own default scrape timeout is 10s); below writeTimeout so the 503 can
	// still be written.
	gatherTimeout = 10 * time.Second
	// maxScrapes bounds concurrent /metrics requests; more get 503.
	maxScrapes = 4
)

// Options configure a monitoring Server.
type Options struct {
	// Addr is the listen address, "host:port"; port 0 picks a free port
	// (see Server.Addr). Required. Keep it off the public network.
	Addr string
	// Registry is what /metrics serves; nil means NewRegistry() (runtime
	// and process metrics only).
	Registry *Registry
	// Ready answers /readyz: (true, "") means ready (200 "ready"); (false,
	// reason) means 503 with reason as the body. nil means always ready.
	//
	// Ready is called on an HTTP goroutine for every /readyz request and
	// every scrape (when ReadyMetric is set), possibly concurrently with
	// itself, so it must be safe for concurrent use, cheap and
	// non-blocking: compute the answer from state the process already
	// tracks (the client listener is open, the last Redis round trip
	// succeeded, links are up), never by doing I/O or waiting on an event
	// loop. A probe must not be able to stall the process or pile up
	// behind a slow dependency.
	Ready func() (ready bool, reason string)
	// ReadyMetric, when not empty, is the name of a gauge (e.g. ReadyName,
	// "relaychat_ready") exported at 1 when Ready says ready and 0 when not,
	// computed by the same call at scrape time, so alerts and /readyz cannot
	// disagree. It is registered in Registry by New.
	ReadyMetric string
	// Logger receives the "metrics listener ready" line and serving errors;
	// nil means discard.
	Logger *slog.Logger
}

// Server serves /metrics, /healthz and /readyz over HTTP, and nothing
// else. Create it with New; stop it with Shutdown.
type Server struct {
	log      *slog.Logger
	ready    func() (bool, string)
	notReady atomic.Pointer[string] // set by SetNotReady; overrides ready
	srv      *http.Server
	ln       net.Listener
	done     chan struct{} // closed when Serve has returned

	shutOnce sync.Once
	shutErr  error
}

// New binds o.Addr and starts serving in the background. It logs
// msg="metrics listener ready" with the bound address.
func New(o Options) (*Server, error) {
	if o.Addr == "" {
		return nil, errors.New("metrics: no listen address")
	}
	if o.Registry == nil {
		o.Registry = NewRegistry()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Server{log: o.Logger, ready: o.Ready, done: make(chan struct{})}
	if s.ready == nil {
		s.ready = func() (bool, string) { return true, "" }
	}

	var undo func()
	if o.ReadyMetric != "" {
		d := Desc{Name: o.ReadyMetric, Help: "1 when the process is ready to do its job (what /readyz answers 200 to), else 0.", Kind: Gauge}
		rc := &readyCollector{s: s}
		if err := d.validate(); err != nil {
			return nil, err
		}
		rc.desc = prometheus.NewDesc(d.Name, d.Help, nil, nil)
		if err := o.Registry.register([]string{d.Name}, rc); err != nil {
			return nil, err
		}
		undo = func() { o.Registry.unregister([]string{d.Name}, rc) }
	}

	ln, err := net.Listen("tcp", o.Addr)
	if err != nil {
		if undo != nil {
			undo()
		}
		return nil, fmt.Errorf("metrics: %w", err)
	}
	s.ln = ln

	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(o.Registry.reg, promhttp.HandlerOpts{
		ErrorLog:            promLogger{o.Logger},
		ErrorHandling:       promhttp.ContinueOnError,
		Registry:            o.Registry.reg, // promhttp_metric_handler_errors_total
		MaxRequestsInFlight: maxScrapes,
		Timeout:             gatherTimeout,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		plain(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ok, reason := s.isReady(); ok {
			plain(w, http.StatusOK, "ready")
		} else {
			plain(w, http.StatusServiceUnavailable, reason)
		}
	})
	s.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(o.Logger.Handler(), slog.LevelWarn),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("metrics server failed", "addr", s.Addr(), "err", err)
		}
	}()
	s.log.Info("metrics listener ready", "addr", s.Addr())
	return s, nil
}

// Addr returns the bound address, e.g. "127.0.0.1:40123".
func (s *Server) Addr() string { return s.ln.Addr().String() }

// SetNotReady makes /readyz answer 503 with reason (and the ReadyMetric
// gauge read 0) from now on, whatever Ready says: call it when shutdown
// starts, so load balancers stop sending new clients while the process
// drains. An empty reason means "shutting down".
func (s *Server) SetNotReady(reason string) {
	if reason == "" {
		reason = "shutting down"
	}
	s.notReady.Store(&reason)
}

func (s *Server) isReady() (bool, string) {
	if r := s.notReady.Load(); r != nil {
		return false, *r
	}
	ok, reason := s.ready()
	if !ok && reason == "" {
		reason = "not ready"
	}
	return ok, reason
}

// Shutdown stops accepting, closes idle connections and waits for active
// requests to finish or ctx to end, as http.Server.Shutdown does. It is
// safe to call more than once; later calls return the first result.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutOnce.Do(func() {
		s.shutErr = s.srv.Shutdown(ctx)
		if s.shutErr != nil {
			s.srv.Close()
		}
		<-s.done
	})
	return s.shutErr
}

func plain(w http.ResponseWriter, code int, body string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	io.WriteString(w, strings.TrimRight(body, "\n")+"\n")
}

// readyCollector exports Options.ReadyMetric from the Ready callback.
type readyCollector struct {
	s    *Server
	desc *prometheus.Desc
}

func (c *readyCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *readyCollector) Collect(ch chan<- prometheus.Metric) {
	v := 0.0
	if ok, _ := c.s.isReady(); ok {
		v = 1
	}
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, v)
}

// promLogger adapts slog to promhttp's Println logger, one line per error.
type promLogger struct{ l *slog.Logger }

func (p promLogger) Println(v ...any) {
	msg := strings.TrimSpace(fmt.Sprintln(v...))
	p.l.Warn("metrics scrape error", "err", strings.ReplaceAll(msg, "\n", "; "))
}
