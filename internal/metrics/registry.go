package metrics

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Kind is the Prometheus type of a metric read at scrape time.
type Kind uint8

const (
	// Counter is a value that only goes up while the process lives (it
	// starts again from zero at a restart; rate() copes). Its name must end
	// in "_total".
	Counter Kind = iota + 1
	// Gauge is a value that goes up and down (connections open, bytes held).
	Gauge
)

func (k Kind) String() string {
	switch k {
	case Counter:
		return "counter"
	case Gauge:
		return "gauge"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Desc describes one metric family whose values a Collect callback emits at
// scrape time.
type Desc struct {
	// Name is the full metric name (e.g. "relaychat_chats_received_total"):
	// [a-zA-Z_:][a-zA-Z0-9_:]*, not starting with "__"; a Counter's ends in
	// "_total".
	Name string
	// Help is the one-line HELP text; it must not be empty.
	Help string
	// Kind is Counter or Gauge; the zero value is an error.
	Kind Kind
	// Labels are the names of the variable labels, in the order their
	// values are passed to Emitter.Emit; nil means an unlabelled metric.
	Labels []string
}

// Registry holds the collectors one process exports: the Go runtime and
// process collectors (always), the families given to Register, and the
// histograms made by NewHistogram and NewHistogramVec. Its methods are safe
// for concurrent use. Create it with NewRegistry.
type Registry struct {
	reg *prometheus.Registry

	mu    sync.Mutex
	names map[string]bool // family names taken through this Registry; guarded by mu
}

// NewRegistry returns a registry with the Go runtime collector (go_*,
// including go_sched_latencies_seconds, go_gc_heap_live_bytes and
// go_gc_gogc_percent, which the GC tuner moves: internal/gctune) and the process collector
// (process_*: CPU, RSS, open descriptors, start time) registered.
func NewRegistry() *Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(
			collectors.GoRuntimeMetricsRule{Matcher: regexp.MustCompile(`^/sched/latencies:seconds$|^/gc/heap/live:bytes$|^/gc/gogc:percent$`)},
		)),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return &Registry{reg: reg, names: make(map[string]bool)}
}

// Register adds families read at scrape time: on each scrape, collect is
// called once and reports the current value of each series through the
// Emitter. descs are validated here (names, help, kinds, labels, no name
// taken twice in this registry or by the runtime collectors); nothing is
// registered when one is bad.
//
// collect runs on the scrape's goroutine, never concurrently with itself
// (calls are serialised), and must be quick and non-blocking: load atomics
// or copy a few fields under a short lock, no network, no waiting on an
// event loop. A series it does not emit is simply absent from that scrape.
// The hot path keeps its plain sync/atomic counters; nothing here is called
// per message.
func (r *Registry) Register(descs []Desc, collect func(*Emitter)) error {
	if collect == nil {
		return errors.New("metrics: Register: nil collect function")
	}
	if len(descs) == 0 {
		return errors.New("metrics: Register: no descriptors")
	}
	c := &collector{collect: collect, byName: make(map[string]*family, len(descs))}
	for i := range descs {
		d := &descs[i]
		if err := d.validate(); err != nil {
			return err
		}
		if _, dup := c.byName[d.Name]; dup {
			return fmt.Errorf("metrics: %s: described twice", d.Name)
		}
		vt := prometheus.CounterValue
		if d.Kind == Gauge {
			vt = prometheus.GaugeValue
		}
		f := &family{
			desc:   prometheus.NewDesc(d.Name, d.Help, append([]string(nil), d.Labels...), nil),
			vt:     vt,
			labels: len(d.Labels),
		}
		c.byName[d.Name] = f
		c.order = append(c.order, f)
	}
	names := make([]string, 0, len(descs))
	for _, d := range descs {
		names = append(names, d.Name)
	}
	return r.register(names, c)
}

// register reserves names and registers c with the Prometheus registry,
// which also catches clashes with the runtime collectors.
func (r *Registry) register(names []string, c prometheus.Collector) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range names {
		if r.names[n] {
			return fmt.Errorf("metrics: %s: already registered", n)
		}
	}
	if err := r.reg.Register(c); err != nil {
		return fmt.Errorf("metrics: %s: %w", strings.Join(names, ", "), err)
	}
	for _, n := range names {
		r.names[n] = true
	}
	return nil
}

// unregister undoes register (used when a Server fails to start).
func (r *Registry) unregister(names []string, c prometheus.Collector) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reg.Unregister(c)
	for _, n := range names {
		delete(r.names, n)
	}
}

// Gatherer returns the underlying Prometheus gatherer, for tests and for
// serving /metrics on a mux of one's own.
func (r *Registry) Gatherer() prometheus.Gatherer { return r.reg }

// collector is the prometheus.Collector behind one Register call.
type collector struct {
	mu      sync.Mutex // serialises collect
	collect func(*Emitter)
	byName  map[string]*family // read-only after Register
	order   []*family
}

type family struct {
	desc   *prometheus.Desc
	vt     prometheus.ValueType
	labels int
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, f := range c.order {
		ch <- f.desc
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.collect(&Emitter{c: c, ch: ch})
}

// Emitter reports values during one Collect callback. It is valid only
// for the duration of that call.
type Emitter struct {
	c  *collector
	ch chan<- prometheus.Metric
}

// Emit reports the value of one series of the family called name, with
// one label value per label name of its Desc, in the same order. Emitting
// the same series twice in one scrape, naming a family not described, or
// passing the wrong number of label values is a programming error: the
// scrape still serves every other series, and the error is logged by the
// Server and counted in promhttp_metric_handler_errors_total.
func (e *Emitter) Emit(name string, value float64, labelValues ...string) {
	f, ok := e.c.byName[name]
	if !ok {
		err := fmt.Errorf("metrics: emitted %q, which was not described", name)
		e.ch <- prometheus.NewInvalidMetric(prometheus.NewInvalidDesc(err), err)
		return
	}
	m, err := prometheus.NewConstMetric(f.desc, f.vt, value, labelValues...)
	if err != nil {
		m = prometheus.NewInvalidMetric(f.desc, fmt.Errorf("metrics: %s: %w", name, err))
	}
	e.ch <- m
}

var (
	metricNameRE = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)
	labelNameRE  = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)
)

func validName(name string) error {
	if !metricNameRE.MatchString(name) {
		return fmt.Errorf("metrics: bad metric name %q: want [a-zA-Z_:][a-zA-Z0-9_:]*", name)
	}
	if strings.HasPrefix(name, "__") {
		return fmt.Errorf("metrics: bad metric name %q: names starting with __ are reserved", name)
	}
	return nil
}

func validLabels(name string, labels []string, reserved ...string) error {
	seen := make(map[string]bool, len(labels))
	for _, l := range labels {
		if !labelNameRE.MatchString(l) || strings.HasPrefix(l, "__") {
			return fmt.Errorf("metrics: %s: bad label name %q: want [a-zA-Z_][a-zA-Z0-9_]*, not starting with __", name, l)
		}
		for _, r := range reserved {
			if l == r {
				return fmt.Errorf("metrics: %s: label name %q is reserved", name, l)
			}
		}
		if seen[l] {
			return fmt.Errorf("metrics: %s: label %q given twice", name, l)
		}
		seen[l] = true
	}
	return nil
}

func (d *Desc) validate() error {
	if err := validName(d.Name); err != nil {
		return err
	}
	if strings.TrimSpace(d.Help) == "" {
		return fmt.Errorf("metrics: %s: missing help text", d.Name)
	}
	switch d.Kind {
	case Counter:
		if !strings.HasSuffix(d.Name, "_total") {
			return fmt.Errorf("metrics: %s: a counter's name must end in _total", d.Name)
		}
	case Gauge:
		if strings.HasSuffix(d.Name, "_total") {
			return fmt.Errorf("metrics: %s: a gauge's name must not end in _total (that marks a counter)", d.Name)
		}
	default:
		return fmt.Errorf("metrics: %s: kind must be Counter or Gauge, not %v", d.Name, d.Kind)
	}
	return validLabels(d.Name, d.Labels)
}
