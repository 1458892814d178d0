package bench

import (
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"math"
	"strings"
)

// WriteHTML writes the report as one self-contained HTML page: summary
// tables and inline SVG charts of the latency distribution, throughput over
// time and per-second latency over time. It loads nothing from elsewhere.
// The full JSON report is embedded too, so the page is the whole record.
func (r *Report) WriteHTML(w io.Writer) error {
	var text strings.Builder
	_ = r.WriteText(&text)
	js, err := json.Marshal(r)
	if err != nil {
		return err
	}
	data := struct {
		R          *Report
		Text       string
		Dist       template.HTML
		Throughput template.HTML
		LatTime    template.HTML
		Costs      template.HTML
		JSON       template.JS
	}{R: r, Text: text.String(), JSON: template.JS(strings.ReplaceAll(string(js), "</", `<\/`))}
	data.Dist = template.HTML(distChart(r.Distribution))
	data.Throughput = template.HTML(throughputChart(r.Timeline))
	data.LatTime = template.HTML(latencyTimeChart(r.Timeline))
	data.Costs = template.HTML(costTable(r))
	return htmlPage.Execute(w, data)
}

var htmlPage = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>chat-bench {{.R.Scenario}} {{.R.Mode}} {{.R.Started.Format "2006-01-02 15:04:05"}}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:2em}
pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}
svg{background:#fff;border:1px solid #ddd}
svg text{font:11px system-ui,sans-serif;fill:#444}
.grid{stroke:#eee}.axis{stroke:#888}
.warn{color:#a40}
table{border-collapse:collapse;font-size:13px}td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:right}
td:first-child,th:first-child{text-align:left}tr.sum td{font-weight:bold}
.note{font-size:12px;color:#555}
</style></head><body>
<h1>chat-bench report{{if .R.Scenario}}: {{.R.Scenario}}{{end}}</h1>
{{if .R.Interrupted}}<p class="warn">Interrupted: the figures cover the part that ran.</p>{{end}}
{{range .R.Warnings}}<p class="warn">Warning: {{.}}</p>{{end}}
<h2>Summary</h2>
<pre>{{.Text}}</pre>
{{if .Costs}}<h2>Cost per delivered message (measured window)</h2>{{.Costs}}{{end}}
{{if .Dist}}<h2>Latency distribution (send to receipt, measured window)</h2>{{.Dist}}{{end}}
{{if .Throughput}}<h2>Throughput over time</h2>{{.Throughput}}{{end}}
{{if .LatTime}}<h2>Latency over time (deliveries of each second)</h2>{{.LatTime}}{{end}}
<script type="application/json" id="report">{{.JSON}}</script>
</body></html>
`))

// costTable is the per-process table of costs per delivered message, with
// the sums over the servers and over all the -pids processes; "" when the
// run has none.
func costTable(r *Report) string {
	if r.TotalCost == nil {
		return ""
	}
	esc := template.HTMLEscapeString
	var b strings.Builder
	b.WriteString(`<table><tr><th>process</th><th>CPU µs</th><th>context switches</th><th>voluntary</th><th>involuntary</th><th>system calls</th><th>read+write calls</th><th>CPU %</th></tr>`)
	for _, pr := range r.Processes {
		fmt.Fprintf(&b, `<tr><td>%s (pid %d)</td><td>%.2f</td>`, esc(pr.Name), pr.PID, pr.CPUMicrosPerMsg)
		if c := pr.Counts; c != nil {
			vol, n := 0.0, c.CtxVoluntary+c.CtxInvoluntary
			if n > 0 {
				vol = c.CtxPerMsg * float64(c.CtxVoluntary) / float64(n)
			}
			sys := "–"
			if c.Syscalls >= 0 {
				sys = fmt.Sprintf("%.3f", c.SyscallsPerMsg)
			}
			fmt.Fprintf(&b, `<td>%.3f</td><td>%.3f</td><td>%.3f</td><td>%s</td><td>%.3f</td>`, c.CtxPerMsg, vol, c.CtxPerMsg-vol, sys, c.RWPerMsg)
		} else {
			b.WriteString(`<td>–</td><td>–</td><td>–</td><td>–</td><td>–</td>`)
		}
		fmt.Fprintf(&b, `<td>%.0f</td></tr>`, pr.CPUPercent)
	}
	for _, g := range []struct {
		name string
		m    *MsgCost
	}{{"servers", r.ServersCost}, {"all -pids", r.TotalCost}} {
		if g.m == nil {
			continue
		}
		fmt.Fprintf(&b, `<tr class="sum"><td>%s: %s</td><td>%.2f</td><td>%s</td><td></td><td></td><td>%s</td><td>%s</td><td></td></tr>`,
			esc(g.name), esc(strings.Join(g.m.Processes, " + ")), g.m.CPUMicros, optf(g.m.CtxSwitches), optf(g.m.Syscalls), optf(g.m.RWSyscalls))
	}
	b.WriteString(`</table>`)
	fmt.Fprintf(&b, `<p class="note">Each figure is the process's count over the measured window divided by the messages delivered in it. `+
		`Context switches: voluntary + involuntary, summed over /proc/PID/task/*/status. System calls: every call, %s. `+
		`Read+write calls: /proc/PID/io syscr + syscw (read, readv, pread, write, writev, pwrite; not epoll_wait, futex, sendmsg, recvmsg).</p>`, esc(r.SyscallSource))
	return b.String()
}

// series is one line of a chart.
type series struct {
	name  string
	color string
	pts   [][2]float64
}

// chart draws line series on linear x and linear or log10 y axes. xticks
// and yticks are values with labels; the axis ranges cover them and the
// data.
type chart struct {
	w, h           float64
	xlabel, ylabel string
	logY           bool
	xticks, yticks []tick2
	bands          []band
	series         []series
}

type tick2 struct {
	v     float64
	label string
}

// band shades an x range (a phase of the run).
type band struct {
	x0, x1 float64
	label  string
	color  string
}

func (c *chart) svg() string {
	const ml, mr, mt, mb = 80.0, 130.0, 15.0, 45.0
	pw, ph := c.w-ml-mr, c.h-mt-mb
	xmin, xmax := math.Inf(1), math.Inf(-1)
	ymin, ymax := math.Inf(1), math.Inf(-1)
	fy := func(v float64) float64 {
		if c.logY {
			return math.Log10(math.Max(v, 1e-9))
		}
		return v
	}
	for _, s := range c.series {
		for _, p := range s.pts {
			xmin, xmax = math.Min(xmin, p[0]), math.Max(xmax, p[0])
			ymin, ymax = math.Min(ymin, fy(p[1])), math.Max(ymax, fy(p[1]))
		}
	}
	for _, t := range c.xticks {
		xmin, xmax = math.Min(xmin, t.v), math.Max(xmax, t.v)
	}
	for _, t := range c.yticks {
		ymin, ymax = math.Min(ymin, fy(t.v)), math.Max(ymax, fy(t.v))
	}
	if math.IsInf(xmin, 0) || math.IsInf(ymin, 0) {
		return ""
	}
	if xmax == xmin {
		xmax = xmin + 1
	}
	if ymax == ymin {
		ymax = ymin + 1
	}
	X := func(v float64) float64 { return ml + (v-xmin)/(xmax-xmin)*pw }
	Y := func(v float64) float64 { return mt + ph - (fy(v)-ymin)/(ymax-ymin)*ph }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f">`, c.w, c.h, c.w, c.h)
	for _, bd := range c.bands {
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" opacity="0.35"/>`,
			X(bd.x0), mt, math.Max(0, X(bd.x1)-X(bd.x0)), ph, bd.color)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f">%s</text>`, X(bd.x0)+3, mt+12, template.HTMLEscapeString(bd.label))
	}
	for _, t := range c.xticks {
		fmt.Fprintf(&b, `<line class="grid" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f"/>`, X(t.v), mt, X(t.v), mt+ph)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`, X(t.v), mt+ph+15, template.HTMLEscapeString(t.label))
	}
	for _, t := range c.yticks {
		fmt.Fprintf(&b, `<line class="grid" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f"/>`, ml, Y(t.v), ml+pw, Y(t.v))
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="end">%s</text>`, ml-5, Y(t.v)+4, template.HTMLEscapeString(t.label))
	}
	fmt.Fprintf(&b, `<line class="axis" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f"/>`, ml, mt+ph, ml+pw, mt+ph)
	fmt.Fprintf(&b, `<line class="axis" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f"/>`, ml, mt, ml, mt+ph)
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`, ml+pw/2, c.h-8, template.HTMLEscapeString(c.xlabel))
	fmt.Fprintf(&b, `<text transform="translate(14 %.1f) rotate(-90)" text-anchor="middle">%s</text>`, mt+ph/2, template.HTMLEscapeString(c.ylabel))
	for i, s := range c.series {
		var pts strings.Builder
		for _, p := range s.pts {
			fmt.Fprintf(&pts, "%.1f,%.1f ", X(p[0]), Y(p[1]))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`, s.color, pts.String())
		if len(s.pts) == 1 {
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`, X(s.pts[0][0]), Y(s.pts[0][1]), s.color)
		}
		ly := mt + 10 + float64(i)*16
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"/>`, ml+pw+10, ly, ml+pw+30, ly, s.color)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f">%s</text>`, ml+pw+35, ly+4, template.HTMLEscapeString(s.name))
	}
	b.WriteString(`</svg>`)
	return b.String()
}

// nines maps a percentile below 100 to the HDR "nines" axis: 90 -> 1,
// 99 -> 2, ...
func nines(p float64) float64 { return -math.Log10(1 - p/100) }

// logTicks returns decade ticks (in microseconds, labelled in time units)
// covering lo..hi.
func logTicks(lo, hi float64) []tick2 {
	lo, hi = math.Max(lo, 1), math.Max(hi, 1)
	var out []tick2
	for d := math.Floor(math.Log10(lo)); d <= math.Ceil(math.Log10(hi)); d++ {
		v := math.Pow(10, d)
		out = append(out, tick2{v, us(int64(v))})
	}
	return out
}

func distChart(d []DistPoint) string {
	if len(d) == 0 {
		return ""
	}
	s := series{name: "latency", color: "#1f77b4"}
	lo, hi := math.Inf(1), 0.0
	// The last point is the maximum (percentile 100), drawn half a decade
	// right of the last finite percentile.
	last := 0.0
	for _, p := range d[:len(d)-1] {
		last = math.Max(last, nines(p.Percentile))
	}
	for _, p := range d {
		v := math.Max(float64(p.Micros), 1)
		x := last + 0.5
		if p.Percentile < 100 {
			x = nines(p.Percentile)
		}
		s.pts = append(s.pts, [2]float64{x, v})
		lo, hi = math.Min(lo, v), math.Max(hi, v)
	}
	var xt []tick2
	for i, l := range []string{"0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"} {
		if float64(i) <= last+0.01 {
			xt = append(xt, tick2{float64(i), l})
		}
	}
	xt = append(xt, tick2{last + 0.5, "max"})
	c := chart{w: 900, h: 340, xlabel: "percentile", ylabel: "latency (log scale)", logY: true,
		xticks: xt, yticks: logTicks(lo, hi), series: []series{s}}
	return c.svg()
}

// phaseBands shades the phases of the timeline.
func phaseBands(tl []TimePoint) []band {
	colors := map[string]string{"connect": "#ddeeff", "warmup": "#fff2cc", "drain": "#eeeeee", "hold": "#e6f5e6"}
	var out []band
	start := 0.0
	for i, p := range tl {
		if i == len(tl)-1 || tl[i+1].Phase != p.Phase {
			if c, ok := colors[p.Phase]; ok {
				out = append(out, band{x0: start, x1: p.T, label: p.Phase, color: c})
			}
			start = p.T
		}
	}
	return out
}

func timeTicks(tl []TimePoint) []tick2 {
	if len(tl) == 0 {
		return nil
	}
	end := tl[len(tl)-1].T
	step := math.Max(1, math.Ceil(end/10))
	var out []tick2
	for v := 0.0; v <= end+0.001; v += step {
		out = append(out, tick2{v, fmt.Sprintf("%.0fs", v)})
	}
	return out
}

func throughputChart(tl []TimePoint) string {
	if len(tl) == 0 {
		return ""
	}
	sent := series{name: "sent/s", color: "#ff7f0e"}
	dl := series{name: "delivered/s", color: "#1f77b4"}
	hi := 0.0
	for _, p := range tl {
		sent.pts = append(sent.pts, [2]float64{p.T, p.SentPS})
		dl.pts = append(dl.pts, [2]float64{p.T, p.DeliveredPS})
		hi = math.Max(hi, math.Max(p.SentPS, p.DeliveredPS))
	}
	ss := []series{sent, dl}
	if hi == 0 { // hold mode: show connections instead
		cn := series{name: "connected", color: "#2ca02c"}
		for _, p := range tl {
			cn.pts = append(cn.pts, [2]float64{p.T, float64(p.Connected)})
			hi = math.Max(hi, float64(p.Connected))
		}
		ss = []series{cn}
	}
	c := chart{w: 900, h: 300, xlabel: "time since start", ylabel: "per second", xticks: timeTicks(tl),
		yticks: linTicks(hi), bands: phaseBands(tl), series: ss}
	return c.svg()
}

func latencyTimeChart(tl []TimePoint) string {
	p50 := series{name: "p50", color: "#2ca02c"}
	p99 := series{name: "p99", color: "#d62728"}
	mx := series{name: "max", color: "#9467bd"}
	lo, hi := math.Inf(1), 0.0
	for _, p := range tl {
		if p.P99 == 0 {
			continue
		}
		p50.pts = append(p50.pts, [2]float64{p.T, float64(max(p.P50, 1))})
		p99.pts = append(p99.pts, [2]float64{p.T, float64(p.P99)})
		mx.pts = append(mx.pts, [2]float64{p.T, float64(p.Max)})
		lo, hi = math.Min(lo, float64(max(p.P50, 1))), math.Max(hi, float64(p.Max))
	}
	if len(p99.pts) == 0 {
		return ""
	}
	c := chart{w: 900, h: 300, xlabel: "time since start", ylabel: "latency (log scale)", logY: true,
		xticks: timeTicks(tl), yticks: logTicks(lo, hi), bands: phaseBands(tl), series: []series{p50, p99, mx}}
	return c.svg()
}

// linTicks returns about five round ticks from 0 to at least hi.
func linTicks(hi float64) []tick2 {
	if hi <= 0 {
		hi = 1
	}
	step := math.Pow(10, math.Floor(math.Log10(hi/5)))
	for _, m := range []float64{1, 2, 5, 10} {
		if hi/(step*m) <= 6 {
			step *= m
			break
		}
	}
	var out []tick2
	for v := 0.0; v < hi+step; v += step {
		out = append(out, tick2{v, si(v)})
	}
	return out
}
