// Package gctune sets the garbage collector's GOGC while a server runs, so
// that collections cost about a fixed share of one core: low (down to 25)
// while the process allocates little, as with thousands of connected
// clients that chat now and then, and Go's default 100 while it allocates
// fast, as under load.
//
// Why: between two collections the heap may grow by GOGC percent of what
// was live, and that headroom is resident memory. With 9,000 clients
// trickling chats a server's live heap is about 14 MB and its RSS grows by
// about twice that; at GOGC=25 by a quarter more. A collection costs about
// the same per live byte whatever GOGC is (about 1.2 ms per MB here), and
// collections come every GOGC% × live bytes allocated, so the collector's
// CPU per second is
//
//	allocation rate × cost per live byte × 100 / GOGC
//
// independent of the live heap. The tuner measures both factors from
// runtime/metrics every Interval and picks the lowest GOGC in [Min, Max]
// that keeps that product within Budget. A process that allocates fast
// gets Max, so the CPU spent under load does not change.
package gctune

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Defaults of Options.
const (
	DefaultBudget   = 0.01 // CPU seconds per second: 1% of one core
	DefaultMin      = 25
	DefaultMax      = 100
	DefaultInterval = time.Second
)

// Options configure Start. Zero fields take the defaults.
type Options struct {
	// Budget is the collector's CPU, in seconds per second, that the
	// tuner aims at: it lowers GOGC only while collecting at the lower
	// value would cost less than this.
	Budget float64
	// Min and Max bound GOGC.
	Min, Max int
	// Interval is how often the tuner samples and decides.
	Interval time.Duration
}

func (o Options) withDefaults() Options {
	if !(o.Budget > 0) || math.IsInf(o.Budget, 1) { // NaN too
		o.Budget = DefaultBudget
	}
	if o.Min <= 0 {
		o.Min = DefaultMin
	}
	if o.Max <= 0 {
		o.Max = DefaultMax
	}
	if o.Max < o.Min {
		o.Max = o.Min
	}
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	return o
}

// sample is one reading of the runtime's cumulative counters.
type sample struct {
	at     time.Time
	allocs float64 // bytes allocated since start
	gcCPU  float64 // CPU seconds the collector used since start
	cycles float64 // collections since start
	live   float64 // live heap bytes after the last collection (0 before the first)
}

var sampleNames = []string{
	"/gc/heap/allocs:bytes",
	"/cpu/classes/gc/total:cpu-seconds",
	"/gc/cycles/total:gc-cycles",
	"/gc/heap/live:bytes",
}

// reader reads samples from runtime/metrics.
type reader struct{ s []metrics.Sample }

func newReader() (*reader, error) {
	r := &reader{s: make([]metrics.Sample, len(sampleNames))}
	for i, n := range sampleNames {
		r.s[i].Name = n
	}
	metrics.Read(r.s)
	for _, m := range r.s {
		if m.Value.Kind() == metrics.KindBad {
			return nil, errors.New("runtime/metrics has no " + m.Name)
		}
	}
	return r, nil
}

func (r *reader) read(now time.Time) sample {
	metrics.Read(r.s)
	return sample{
		at:     now,
		allocs: float64(r.s[0].Value.Uint64()),
		gcCPU:  r.s[1].Value.Float64(),
		cycles: float64(r.s[2].Value.Uint64()),
		live:   float64(r.s[3].Value.Uint64()),
	}
}

// model is the tuner's state: smoothed allocation rate and collection
// cost per live byte, and the GOGC it last chose.
type model struct {
	o        Options
	prev     sample
	rate     float64 // bytes allocated per second, smoothed
	costByte float64 // collector CPU seconds per live byte per collection, smoothed
	gogc     int
}

// initialCost is the cost per live byte assumed until a collection was
// measured: about what this VM measured (17 ms for a 14 MB live heap).
const initialCost = 1.2e-9

// rateWeight is the weight of a new interval's allocation rate in its
// running average: the tuner follows a change of load within a few
// intervals. costWeight is that of a collection's measured cost, which
// varies from one collection to the next (1.1 to 2.2 ms per MB in one
// quiet run here, as idle processors join the marking or not) while the
// cost of marking a byte does not change with the load.
const (
	rateWeight = 0.5
	costWeight = 0.2
)

func newModel(o Options, first sample, gogc int) *model {
	return &model{o: o, prev: first, costByte: initialCost, rate: -1, gogc: gogc}
}

// step takes the next sample and returns the GOGC to use.
func (m *model) step(s sample) int {
	dt := s.at.Sub(m.prev.at).Seconds()
	if dt <= 0 {
		return m.gogc
	}
	rate := math.Max(s.allocs-m.prev.allocs, 0) / dt
	if m.rate < 0 {
		m.rate = rate
	} else {
		m.rate += rateWeight * (rate - m.rate)
	}
	if dc := s.cycles - m.prev.cycles; dc > 0 && s.live > 0 {
		if c := (s.gcCPU - m.prev.gcCPU) / dc / s.live; c > 0 && !math.IsInf(c, 0) {
			m.costByte += costWeight * (c - m.costByte)
		}
	}
	m.prev = s
	// GC CPU per second at GOGC g is rate × costByte × 100 / g.
	want := m.rate * m.costByte * 100 / m.o.Budget
	g := m.o.Max
	if want < float64(m.o.Max) { // (false for NaN; converting a huge float to int is undefined)
		g = max(int(math.Ceil(want)), m.o.Min)
	}
	// Hysteresis: ignore changes under a tenth, except to reach a bound.
	if g != m.gogc && (g == m.o.Min || g == m.o.Max || math.Abs(float64(g-m.gogc)) >= float64(m.gogc)/10) {
		m.gogc = g
	}
	return m.gogc
}

// Start runs the tuner until ctx ends, setting GOGC with
// debug.SetGCPercent (to Max at once), and returns a channel closed when it
// has stopped. It does nothing, and says why in the log, when GOGC is set
// in the environment (the operator chose) or the runtime lacks a metric it
// reads. It logs each change at debug level; go_gc_gogc_percent shows the
// value on /metrics.
func Start(ctx context.Context, o Options, gogcEnv string, log *slog.Logger) <-chan struct{} {
	done := make(chan struct{})
	o = o.withDefaults()
	if gogcEnv != "" {
		log.Info("gc tuner off", "reason", "GOGC is set", "gogc", gogcEnv)
		close(done)
		return done
	}
	r, err := newReader()
	if err != nil {
		log.Warn("gc tuner off", "err", err)
		close(done)
		return done
	}
	cur := debug.SetGCPercent(o.Max)
	m := newModel(o, r.read(time.Now()), o.Max)
	log.Debug("gc tuner on", "budget", o.Budget, "min", o.Min, "max", o.Max, "was", cur)
	go func() {
		defer close(done)
		t := time.NewTicker(o.Interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				before := m.gogc
				if g := m.step(r.read(time.Now())); g != before {
					debug.SetGCPercent(g)
					log.Debug("gc percent", "gogc", g, "was", before,
						"alloc_rate", int64(m.rate), "cost_per_mb_ms", m.costByte*1e9)
				}
			}
		}
	}()
	return done
}
