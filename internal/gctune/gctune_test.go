package gctune

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"math"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"testing"
	"time"
)

// feed runs the model over n intervals of one second in which the process
// allocates rate bytes per second and each collection of a live heap of
// live bytes costs costByte seconds per byte; collections come when GOGC%
// of live was allocated, as the runtime paces them.
func feed(m *model, n int, rate, live, costByte float64) int {
	s := m.prev
	var owed float64 // bytes allocated since the last collection
	for i := 0; i < n; i++ {
		s.at = s.at.Add(time.Second)
		s.allocs += rate
		owed += rate
		per := live * float64(m.gogc) / 100
		for owed >= per {
			owed -= per
			s.cycles++
			s.gcCPU += costByte * live
		}
		s.live = live
		m.step(s)
	}
	return m.gogc
}

func TestModelPicksGOGCFromAllocationRate(t *testing.T) {
	o := Options{}.withDefaults()
	const cost = 1.2e-9 // s per live byte per collection
	for _, tc := range []struct {
		name       string
		rate, live float64
		want       func(g int) bool
		desc       string
	}{
		// 1.7 MB/s and 14 MB live, a server with 9,000 trickling clients:
		// collecting at 25 costs 1.7e6*1.2e-9*4 = 8 ms/s, within 10 ms/s.
		{"trickle", 1.7e6, 14e6, func(g int) bool { return g <= 30 }, "near Min"},
		// 6.3 MB/s and 20 MB live, a server under the anchor load: at 100
		// the collector already costs 7.6 ms/s; the tuner stays near 100.
		{"anchor", 6.3e6, 20e6, func(g int) bool { return g >= 75 }, "near Max"},
		// Far beyond the budget: Max.
		{"burst", 100e6, 20e6, func(g int) bool { return g == o.Max }, "Max"},
		// Idle: Min.
		{"idle", 0, 14e6, func(g int) bool { return g == o.Min }, "Min"},
	} {
		m := newModel(o, sample{at: time.Unix(0, 0)}, o.Max)
		if g := feed(m, 30, tc.rate, tc.live, cost); !tc.want(g) {
			t.Errorf("%s: GOGC %d, want %s (rate %.0f B/s, cost %.3g s/B)", tc.name, g, tc.desc, m.rate, m.costByte)
		}
	}
}

func TestModelFollowsLoadBothWays(t *testing.T) {
	o := Options{}.withDefaults()
	m := newModel(o, sample{at: time.Unix(0, 0)}, o.Max)
	if g := feed(m, 20, 1e6, 14e6, 1.2e-9); g != o.Min {
		t.Fatalf("quiet: GOGC %d, want %d", g, o.Min)
	}
	if g := feed(m, 10, 50e6, 14e6, 1.2e-9); g != o.Max {
		t.Fatalf("loaded: GOGC %d, want %d", g, o.Max)
	}
	if g := feed(m, 20, 1e6, 14e6, 1.2e-9); g != o.Min {
		t.Fatalf("quiet again: GOGC %d, want %d", g, o.Min)
	}
}

// The measured cost per byte, not the initial guess, decides: a collector
// four times as slow as assumed keeps GOGC higher at the same rate.
func TestModelLearnsCollectionCost(t *testing.T) {
	o := Options{}.withDefaults()
	fast := feed(newModel(o, sample{at: time.Unix(0, 0)}, o.Max), 120, 2e6, 14e6, 1e-9)
	slow := feed(newModel(o, sample{at: time.Unix(0, 0)}, o.Max), 120, 2e6, 14e6, 4e-9)
	if !(slow > fast) {
		t.Fatalf("GOGC %d with a slow collector, %d with a fast one: want the slow one higher", slow, fast)
	}
	// 2 MB/s at 4 ns/B: 100*2e6*4e-9/0.01 = 80.
	if slow < 70 || slow > 90 {
		t.Fatalf("slow collector: GOGC %d, want about 80", slow)
	}
}

// Small changes are ignored, so that GOGC does not flutter with noise.
func TestModelHysteresis(t *testing.T) {
	o := Options{}.withDefaults()
	m := newModel(o, sample{at: time.Unix(0, 0)}, 50)
	m.rate, m.costByte = 4.2e6, 1.2e-9 // wants ceil(50.4) = 51
	s := m.prev
	s.at = s.at.Add(time.Second)
	s.allocs += 4.2e6
	if g := m.step(s); g != 50 {
		t.Fatalf("GOGC %d after a 2%% change, want 50 kept", g)
	}
}

func TestStartRespectsGOGCFromEnvironment(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	before := debug.SetGCPercent(77)
	defer debug.SetGCPercent(before)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	<-Start(ctx, Options{}, "200", log) // closed at once
	if g := gogcNow(); g != 77 {
		t.Fatalf("GOGC changed to %d although the environment set it", g)
	}
	if !strings.Contains(buf.String(), `msg="gc tuner off"`) || !strings.Contains(buf.String(), "GOGC is set") {
		t.Fatalf("log %q: want the reason the tuner is off", buf.String())
	}
}

// The real runtime: a process that allocates nothing ends at Min, and the
// tuner stops with its context.
func TestStartLowersGOGCWhenQuiet(t *testing.T) {
	before := debug.SetGCPercent(40)
	defer debug.SetGCPercent(before)
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	done := Start(ctx, Options{Interval: 5 * time.Millisecond, Budget: 1}, "", log)
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		g := gogcNow()
		if g == DefaultMin {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GOGC %d after 10 s with a budget of a whole core, want %d", g, DefaultMin)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Start sets Max at once, whatever GOGC was.
func TestStartBeginsAtMax(t *testing.T) {
	before := debug.SetGCPercent(40)
	defer debug.SetGCPercent(before)
	ctx, cancel := context.WithCancel(context.Background())
	done := Start(ctx, Options{Interval: time.Hour}, "", slog.New(slog.NewTextHandler(io.Discard, nil)))
	defer func() { cancel(); <-done }()
	if g := gogcNow(); g != DefaultMax {
		t.Fatalf("GOGC %d after Start, want %d", g, DefaultMax)
	}
}

// The real runtime, allocating: with a budget far below what collecting
// at Min would cost, the tuner keeps Max. (It reads the allocation counter:
// a reader that saw no allocation would go to Min.)
func TestStartKeepsMaxWhileAllocating(t *testing.T) {
	before := debug.SetGCPercent(100)
	defer debug.SetGCPercent(before)
	ctx, cancel := context.WithCancel(context.Background())
	done := Start(ctx, Options{Interval: 2 * time.Millisecond, Budget: 1e-9}, "", slog.New(slog.NewTextHandler(io.Discard, nil)))
	var sink [][]byte
	for i := 0; i < 20000; i++ {
		sink = append(sink, make([]byte, 4096))
		if len(sink) > 256 {
			sink = sink[:0]
		}
		if i%1000 == 0 {
			time.Sleep(time.Millisecond) // let the tuner take samples in between
		}
	}
	cancel()
	<-done
	if g := gogcNow(); g != DefaultMax {
		t.Fatalf("GOGC %d while allocating about 80 MB, want %d", g, DefaultMax)
	}
}

// A step to a bound is taken even when smaller than the hysteresis.
func TestModelReachesBounds(t *testing.T) {
	o := Options{}.withDefaults()
	m := newModel(o, sample{at: time.Unix(0, 0)}, 27)
	if g := feed(m, 5, 0, 14e6, 1.2e-9); g != o.Min {
		t.Fatalf("GOGC %d from 27 with nothing allocated, want %d", g, o.Min)
	}
	m = newModel(o, sample{at: time.Unix(0, 0)}, 95)
	if g := feed(m, 5, 1e9, 14e6, 1.2e-9); g != o.Max {
		t.Fatalf("GOGC %d from 95 at 1 GB/s, want %d", g, o.Max)
	}
}

// Budgets the flag cannot give (NaN, infinite, tiny) still pick a bound,
// never a wrapped-around integer.
func TestModelExtremeBudgets(t *testing.T) {
	for _, b := range []float64{math.NaN(), math.Inf(1), -1, 0} {
		if got := (Options{Budget: b}).withDefaults().Budget; got != DefaultBudget {
			t.Errorf("budget %v: %v, want the default %v", b, got, DefaultBudget)
		}
	}
	o := Options{Budget: 1e-300}.withDefaults()
	m := newModel(o, sample{at: time.Unix(0, 0)}, o.Max)
	if g := feed(m, 5, 50e6, 14e6, 1.2e-9); g != o.Max {
		t.Fatalf("GOGC %d with a budget of 1e-300 at 50 MB/s, want %d", g, o.Max)
	}
}

func gogcNow() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}
