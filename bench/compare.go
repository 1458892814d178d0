package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// ReadReport reads a JSON report written by chat-bench -json-file.
func ReadReport(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("bench: %s: %w", path, err)
	}
	return &r, nil
}

// pairFigures are the figures one run contributes to a comparison; a
// missing figure is -1.
type pairFigures struct {
	name              string
	rate              float64 // delivered msg/s
	cpu, ctx, sys, rw float64 // per delivered message, summed over every -pids process
	lost, dup, reord  int64
	procs             string // which processes the sums cover
	busy              float64
	interrupted       bool
}

func figuresOf(r *Report) pairFigures {
	f := pairFigures{name: r.Scenario, rate: r.DeliveredPerSec, cpu: r.CPUMicrosPerMsg, ctx: -1, sys: -1, rw: -1,
		lost: r.Lost, dup: r.Counters.Duplicated, reord: r.Counters.Reordered, busy: r.Machine.BusyPercent,
		interrupted: r.Interrupted}
	if f.name == "" {
		f.name = r.Mode
	}
	if t := r.TotalCost; t != nil {
		f.cpu, f.ctx, f.sys, f.rw = t.CPUMicros, t.CtxSwitches, t.Syscalls, t.RWSyscalls
		f.procs = strings.Join(t.Processes, "+")
	}
	return f
}

// WritePairs writes the comparison of interleaved runs a1, b1, a2, b2, ...:
// a compact table per pair (each run's rate and costs per delivered
// message, and a/b), then, for more than one pair, the medians. The costs
// are summed over each run's -pids processes.
func WritePairs(w io.Writer, runs []*Report) error {
	if len(runs) == 0 || len(runs)%2 != 0 {
		return fmt.Errorf("bench: compare: need runs in pairs, got %d", len(runs))
	}
	var b strings.Builder
	n := len(runs) / 2
	var as, bs []pairFigures
	for i := 0; i < n; i++ {
		a, c := figuresOf(runs[2*i]), figuresOf(runs[2*i+1])
		as, bs = append(as, a), append(bs, c)
		writePairTable(&b, fmt.Sprintf("pair %d/%d", i+1, n), a, c, ratios(a, c))
	}
	if n > 1 {
		ma, mb := medianFigures(as), medianFigures(bs)
		var rs [][5]float64
		for i := range as {
			rs = append(rs, ratios(as[i], bs[i]))
		}
		var mr [5]float64
		for j := range mr {
			var col []float64
			for _, r := range rs {
				col = append(col, r[j])
			}
			mr[j] = median(col)
		}
		writePairTable(&b, fmt.Sprintf("median, %d pairs", n), ma, mb, mr)
		b.WriteString("  (medians of each figure and of each pair's ratio; lost/dup/reord are sums over the pairs)\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// ratios are a/b for rate, cpu, ctx, sys and rw (-1 when either is
// missing).
func ratios(a, b pairFigures) [5]float64 {
	q := func(x, y float64) float64 {
		if x < 0 || y <= 0 {
			return -1
		}
		return x / y
	}
	return [5]float64{q(a.rate, b.rate), q(a.cpu, b.cpu), q(a.ctx, b.ctx), q(a.sys, b.sys), q(a.rw, b.rw)}
}

func writePairTable(b *strings.Builder, title string, a, c pairFigures, r [5]float64) {
	p := func(format string, x ...any) { fmt.Fprintf(b, format, x...) }
	p("%-20s %11s %11s %11s %12s %11s %13s %6s\n", title, "msg/s", "cpu us/msg", "ctx sw/msg", "syscalls/msg", "r+w/msg", "lost/dup/reord", "busy%")
	for _, f := range []pairFigures{a, c} {
		label := f.name
		if f.interrupted {
			label += " (interrupted)"
		}
		bad := fmt.Sprintf("%d/%d/%d", f.lost, f.dup, f.reord)
		if f.lost < 0 {
			bad = "-"
		}
		p("  %-18s %11s %11s %11s %12s %11s %13s %6.0f", label, si(f.rate), opt2(f.cpu), opt3(f.ctx), opt3(f.sys), opt3(f.rw), bad, f.busy)
		if f.procs != "" {
			p("  %s", f.procs)
		}
		p("\n")
	}
	p("  %-18s %11s %11s %11s %12s %11s\n", a.name+"/"+c.name, ratioS(r[0]), ratioS(r[1]), ratioS(r[2]), ratioS(r[3]), ratioS(r[4]))
}

func opt2(v float64) string {
	if v < 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", v)
}

func opt3(v float64) string {
	if v < 0 {
		return "-"
	}
	return fmt.Sprintf("%.3f", v)
}

func ratioS(v float64) string {
	if v < 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", v)
}

// medianFigures takes the median of each figure over runs (-1 if any run
// lacks it); lost, duplicated and reordered are summed, as any of them is
// a failure.
func medianFigures(fs []pairFigures) pairFigures {
	m := pairFigures{name: fs[0].name, procs: fs[0].procs}
	col := func(get func(pairFigures) float64) float64 {
		var v []float64
		for _, f := range fs {
			x := get(f)
			if x < 0 {
				return -1
			}
			v = append(v, x)
		}
		return median(v)
	}
	m.rate = col(func(f pairFigures) float64 { return f.rate })
	m.cpu = col(func(f pairFigures) float64 { return f.cpu })
	m.ctx = col(func(f pairFigures) float64 { return f.ctx })
	m.sys = col(func(f pairFigures) float64 { return f.sys })
	m.rw = col(func(f pairFigures) float64 { return f.rw })
	m.busy = col(func(f pairFigures) float64 { return f.busy })
	for _, f := range fs {
		m.lost += f.lost
		m.dup += f.dup
		m.reord += f.reord
		m.interrupted = m.interrupted || f.interrupted
	}
	return m
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return -1
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
