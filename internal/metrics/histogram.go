package metrics

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// LatencyBuckets are the default upper bounds, in seconds, of a latency
// histogram: 100µs to 10s, fit for Redis round trips (the default timeout
// is 2s) and for anything slower than a network hop.
var LatencyBuckets = []float64{
	0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
	0.1, 0.25, 0.5, 1, 2.5, 5, 10,
}

// HistogramDesc describes a histogram of values observed off the hot path:
// Redis operations, mailbox drains, anything that already costs a
// round trip. Observing costs a few atomic adds and no allocation.
type HistogramDesc struct {
	// Name is the full metric name, e.g. "relaychat_redis_op_seconds"; by
	// convention it ends in the unit ("_seconds", "_bytes"). It must not end
	// in "_total", "_bucket", "_count" or "_sum".
	Name string
	// Help is the one-line HELP text; it must not be empty.
	Help string
	// Labels are the variable label names (NewHistogramVec only); "le" is
	// reserved.
	Labels []string
	// Buckets are the upper bounds in strictly increasing order; nil means
	// LatencyBuckets. +Inf is implied.
	Buckets []float64
}

func (d *HistogramDesc) validate(vec bool) error {
	if err := validName(d.Name); err != nil {
		return err
	}
	for _, s := range []string{"_total", "_bucket", "_count", "_sum"} {
		if strings.HasSuffix(d.Name, s) {
			return fmt.Errorf("metrics: %s: a histogram's name must not end in %s", d.Name, s)
		}
	}
	if strings.TrimSpace(d.Help) == "" {
		return fmt.Errorf("metrics: %s: missing help text", d.Name)
	}
	if vec && len(d.Labels) == 0 {
		return fmt.Errorf("metrics: %s: NewHistogramVec needs at least one label (use NewHistogram)", d.Name)
	}
	if !vec && len(d.Labels) > 0 {
		return fmt.Errorf("metrics: %s: NewHistogram takes no labels (use NewHistogramVec)", d.Name)
	}
	if err := validLabels(d.Name, d.Labels, "le"); err != nil {
		return err
	}
	for i, b := range d.Buckets {
		if math.IsNaN(b) || (i > 0 && b <= d.Buckets[i-1]) {
			return fmt.Errorf("metrics: %s: buckets must be strictly increasing numbers", d.Name)
		}
	}
	return nil
}

func (d *HistogramDesc) opts() prometheus.HistogramOpts {
	b := d.Buckets
	if b == nil {
		b = LatencyBuckets
	}
	return prometheus.HistogramOpts{Name: d.Name, Help: d.Help, Buckets: append([]float64(nil), b...)}
}

// Histogram counts observations into buckets. Its methods are safe for
// concurrent use, allocate nothing, and do nothing on a nil *Histogram, so
// code can hold a nil one when metrics are off.
type Histogram struct {
	o prometheus.Observer
}

// Observe records one value (in the histogram's unit; seconds for a
// latency).
func (h *Histogram) Observe(v float64) {
	if h != nil {
		h.o.Observe(v)
	}
}

// ObserveDuration records d in seconds.
func (h *Histogram) ObserveDuration(d time.Duration) {
	if h != nil {
		h.o.Observe(d.Seconds())
	}
}

// Since records the seconds elapsed since start: defer h.Since(time.Now()).
func (h *Histogram) Since(start time.Time) {
	if h != nil {
		h.o.Observe(time.Since(start).Seconds())
	}
}

// NewHistogram registers an unlabelled histogram.
func (r *Registry) NewHistogram(d HistogramDesc) (*Histogram, error) {
	if err := d.validate(false); err != nil {
		return nil, err
	}
	h := prometheus.NewHistogram(d.opts())
	if err := r.register([]string{d.Name}, h); err != nil {
		return nil, err
	}
	return &Histogram{o: h}, nil
}

// HistogramVec is a histogram partitioned by labels. Resolve each label
// combination once with With, at start-up, and keep the *Histogram:
// With hashes its arguments and may allocate, Observe on the result does
// neither.
type HistogramVec struct {
	v      *prometheus.HistogramVec
	labels int
}

// NewHistogramVec registers a histogram with the labels d.Labels.
func (r *Registry) NewHistogramVec(d HistogramDesc) (*HistogramVec, error) {
	if err := d.validate(true); err != nil {
		return nil, err
	}
	v := prometheus.NewHistogramVec(d.opts(), append([]string(nil), d.Labels...))
	if err := r.register([]string{d.Name}, v); err != nil {
		return nil, err
	}
	return &HistogramVec{v: v, labels: len(d.Labels)}, nil
}

// With returns the histogram of one label combination, creating its series
// (all buckets at zero, so it shows up in the next scrape). The values go
// in the order of HistogramDesc.Labels. A wrong number of values is a
// programming error and panics. With on a nil *HistogramVec returns nil
// (a Histogram that records nothing).
func (v *HistogramVec) With(labelValues ...string) *Histogram {
	if v == nil {
		return nil
	}
	if len(labelValues) != v.labels {
		panic(fmt.Sprintf("metrics: HistogramVec.With: %d label values for %d labels", len(labelValues), v.labels))
	}
	return &Histogram{o: v.v.WithLabelValues(labelValues...)}
}
