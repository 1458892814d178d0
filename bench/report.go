package bench

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// Report is the outcome of one run, in the form -json prints. Rates are
// per second over the measured window; latencies are microseconds.
type Report struct {
	Scenario    string    `json:"scenario,omitempty"`
	Mode        string    `json:"mode"` // "saturation", "rate" or "hold"
	Tag         string    `json:"tag"`  // run tag carried by every chat
	Seed        int64     `json:"seed"`
	Started     time.Time `json:"started"`
	Interrupted bool      `json:"interrupted"` // stopped early (Ctrl-C): the figures cover what ran
	Options     Options   `json:"options"`
	// Workers is the number of processes that held the clients (1: this
	// one).
	Workers int `json:"workers"`
	// ServerIDs maps each server address to the id its login replies
	// named.
	ServerIDs map[string]string `json:"server_ids,omitempty"`
	Connect   ConnectReport     `json:"connect"`
	Counters  Counters          `json:"counters"`
	// Lost counts chats written whole but never delivered by the end of
	// the drain (including those whose recipient disconnected).
	Lost int64 `json:"lost"`
	// MeasuredSeconds is the length of the measured window: after warmup,
	// until sending stopped (in hold mode: the hold).
	MeasuredSeconds float64 `json:"measured_seconds"`
	SentPerSec      float64 `json:"sent_per_sec"`
	DeliveredPerSec float64 `json:"delivered_per_sec"`
	// Latency is from the send stamp to receipt, for chats stamped in the
	// measured window. In open loop the stamp is when the chat was due,
	// so time the bench spent behind schedule counts.
	Latency      Percentiles `json:"latency"`
	LatencyHist  string      `json:"latency_hist,omitempty"` // HdrHistogram V2 compressed, base64
	Distribution []DistPoint `json:"distribution,omitempty"`
	Ping         Percentiles `json:"ping"`
	// Errors counts every failure by reason (connect, login, server error
	// replies, disconnects, check failures).
	Errors    map[string]int64 `json:"errors,omitempty"`
	Processes []ProcReport     `json:"processes,omitempty"`
	// CPUMicrosPerMsg is the CPU time of all -pids processes during the
	// measured window divided by the chats delivered in it: what a message
	// costs the system, however fast the bench is.
	CPUMicrosPerMsg float64 `json:"cpu_us_per_msg"`
	// RSSGrowthPerConn is the RSS growth of all -pids processes from
	// before connecting to the end of the measured window, divided by the
	// clients logged in (bytes). Meaningful in hold mode.
	RSSGrowthPerConn float64 `json:"rss_growth_per_conn"`
	// ServersCost sums the per-message costs of the -pids processes that
	// are message servers (named s1, s2, ...); TotalCost of all of them.
	ServersCost *MsgCost `json:"servers_per_msg,omitempty"`
	TotalCost   *MsgCost `json:"total_per_msg,omitempty"`
	// SyscallSource says where the system call counts come from.
	SyscallSource string `json:"syscall_source,omitempty"`
	// Machine splits the CPU time of the whole machine during the
	// measured window; on a shared machine Other shows the disturbance.
	Machine MachineCPU `json:"machine"`
	// Bench lists the bench's own processes (CPU over the whole run).
	Bench    []ProcReport `json:"bench"`
	Timeline []TimePoint  `json:"timeline"`
	Warnings []string     `json:"warnings,omitempty"`
}

// ConnectReport describes the connect and login phase.
type ConnectReport struct {
	Clients   int     `json:"clients"`
	Connected int     `json:"connected"`
	Failed    int     `json:"failed"`
	Seconds   float64 `json:"seconds"`
	// PerSecond is logged-in clients per second of the phase (each one a
	// TCP connect plus a login round trip).
	PerSecond float64     `json:"per_second"`
	Dial      Percentiles `json:"dial"`  // TCP connect time
	Login     Percentiles `json:"login"` // login request to reply
}

// ProcReport is one sampled process. CPU figures are seconds; memory is
// bytes.
type ProcReport struct {
	Name string `json:"name"`
	PID  int    `json:"pid"`
	// CPUWindow is CPU time used during the measured window; CPUTotal
	// from the first sample (before connecting) to the last.
	CPUWindow float64 `json:"cpu_window_s"`
	CPUTotal  float64 `json:"cpu_total_s"`
	// CPUPercent is CPUWindow over the window's length (100 = one core).
	CPUPercent float64 `json:"cpu_percent"`
	RSSBefore  int64   `json:"rss_before"` // before connecting
	RSSAfter   int64   `json:"rss_after"`  // at the end of the measured window
	PeakRSS    int64   `json:"peak_rss"`   // max of VmHWM and every sample
	// GrowthPerConn is (RSSAfter - RSSBefore) / clients logged in.
	GrowthPerConn float64 `json:"rss_growth_per_conn"`
	// CPUMicrosPerMsg is CPUWindow's rate over the deliveries' rate.
	CPUMicrosPerMsg float64 `json:"cpu_us_per_msg,omitempty"`
	// Counts are the process's context switches and system calls in the
	// window (nil in hold mode or when they could not be read).
	Counts *ProcCounts `json:"counts,omitempty"`
	Error  string      `json:"error,omitempty"`
}

// MachineCPU is CPU use during the measured window in percent of one core
// (the machine's maximum is 100 x CPUs).
type MachineCPU struct {
	CPUs         int     `json:"cpus"`
	BusyPercent  float64 `json:"busy_percent"`  // whole machine, /proc/stat
	PidsPercent  float64 `json:"pids_percent"`  // the -pids processes
	BenchPercent float64 `json:"bench_percent"` // the bench and its workers
	// SoftirqPercent is kernel softirq time, charged to no process: on
	// loopback it carries much of the TCP work of both ends.
	SoftirqPercent float64 `json:"softirq_percent"`
	OtherPercent   float64 `json:"other_percent"` // everything else: other processes, kernel threads
}

// TimePoint is one second of the run.
type TimePoint struct {
	T           float64 `json:"t"` // seconds since the run started
	Phase       string  `json:"phase"`
	Connected   int64   `json:"connected"`
	SentPS      float64 `json:"sent_ps"`
	DeliveredPS float64 `json:"delivered_ps"`
	Inflight    int64   `json:"inflight"`
	P50         int64   `json:"p50_us"` // of the deliveries in this second
	P99         int64   `json:"p99_us"`
	Max         int64   `json:"max_us"`
	CPUPercent  float64 `json:"cpu_percent"` // sum over the -pids processes
}

// WriteText writes the human-readable report.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	o := &r.Options
	title := "chat-bench"
	if r.Scenario != "" {
		title += "  scenario " + r.Scenario
	}
	p("%s  mode %s  tag %s  seed %d  %s\n", title, r.Mode, r.Tag, r.Seed, r.Started.Format(time.RFC3339))
	if r.Interrupted {
		p("INTERRUPTED: the figures cover the part that ran\n")
	}
	var srv []string
	for _, s := range o.Servers {
		if id := r.ServerIDs[s]; id != "" {
			s += " (" + id + ")"
		}
		srv = append(srv, s)
	}
	p("setup      servers %s; %d clients in %d process(es)", strings.Join(srv, ", "), o.Clients, r.Workers)
	switch r.Mode {
	case "hold":
		p("; hold %s, ping every %s\n", o.Duration, o.Ping)
	case "rate":
		p("; offered %s msg/s, %d B content, cross %.2f, fanout %d\n", si(o.Rate), o.Size, o.Cross, o.Fanout)
	default:
		p("; window %d per client, %d B content, cross %.2f, fanout %d\n", o.Window, o.Size, o.Cross, o.Fanout)
	}
	c := r.Connect
	p("connect    %d/%d logged in in %.2f s: %s logins/s; connect p50 %s p99 %s; login p50 %s p99 %s\n",
		c.Connected, c.Clients, c.Seconds, si(c.PerSecond), us(c.Dial.P50), us(c.Dial.P99), us(c.Login.P50), us(c.Login.P99))
	k := r.Counters
	if r.Mode != "hold" {
		cross := 0.0
		if k.Sent > 0 {
			cross = 100 * float64(k.SentCross) / float64(k.Sent)
		}
		p("messages   sent %d (%.1f%% cross-server), delivered %d, lost %d, duplicated %d, reordered %d\n",
			k.Sent, cross, k.Delivered, r.Lost, k.Duplicated, k.Reordered)
		p("           rejected %d, misrouted %d, unexpected %d, unsent at stop %d", k.Rejected, k.Misrouted, k.Foreign, k.Unsent)
		if o.Ack {
			p(", acked %d", k.Acked)
		}
		p("\n")
		p("throughput %s msg/s delivered, %s msg/s sent, over %.2f s measured\n",
			si(r.DeliveredPerSec), si(r.SentPerSec), r.MeasuredSeconds)
		l := r.Latency
		p("latency    p50 %s  p90 %s  p99 %s  p99.9 %s  max %s  (%d msgs)\n",
			us(l.P50), us(l.P90), us(l.P99), us(l.P999), us(l.Max), l.Count)
	}
	if r.Ping.Count > 0 || k.PingsSent > 0 {
		p("ping       %d sent, %d pongs; rtt p50 %s p99 %s max %s\n", k.PingsSent, k.Pongs, us(r.Ping.P50), us(r.Ping.P99), us(r.Ping.Max))
	}
	if k.Disconnects > 0 || k.Kicked > 0 || k.ConnectErrors > 0 {
		p("failures   %d failed to log in, %d disconnected, %d kicked\n", k.ConnectErrors, k.Disconnects, k.Kicked)
	}
	if len(r.Errors) == 0 {
		p("errors     none\n")
	} else {
		p("errors     by reason:\n")
		for _, reason := range sortedReasons(r.Errors) {
			p("%12d  %s\n", r.Errors[reason], reason)
		}
	}
	if len(r.Processes) > 0 {
		p("processes  %-10s %7s %9s %6s %10s %10s %10s %10s\n", "name", "pid", "cpu s", "cpu%", "rss before", "rss after", "peak rss", "growth/conn")
		for _, pr := range r.Processes {
			if pr.Error != "" && pr.CPUTotal == 0 {
				p("           %-10s %7d  %s\n", pr.Name, pr.PID, pr.Error)
				continue
			}
			p("           %-10s %7d %9.2f %6.0f %10s %10s %10s %10s\n", pr.Name, pr.PID, pr.CPUWindow, pr.CPUPercent,
				bytesH(pr.RSSBefore), bytesH(pr.RSSAfter), bytesH(pr.PeakRSS), bytesH(int64(pr.GrowthPerConn)))
			if pr.Error != "" {
				p("           %-10s  %s\n", "", pr.Error)
			}
		}
		if r.Mode != "hold" && r.CPUMicrosPerMsg > 0 {
			p("cpu/msg    %.2f us of CPU per delivered message, summed over the processes above\n", r.CPUMicrosPerMsg)
		}
		writeCosts(&b, r)
		if r.RSSGrowthPerConn != 0 {
			p("memory     %s of RSS growth per logged-in client, summed over the processes above\n", bytesH(int64(r.RSSGrowthPerConn)))
		}
	}
	if m := r.Machine; m.CPUs > 0 {
		p("machine    %.0f%% of %d%% CPU busy in the window: -pids %.0f%%, bench %.0f%%, kernel softirq %.0f%%, other %.0f%%\n",
			m.BusyPercent, 100*m.CPUs, m.PidsPercent, m.BenchPercent, m.SoftirqPercent, m.OtherPercent)
	}
	var bench []string
	for _, pr := range r.Bench {
		bench = append(bench, fmt.Sprintf("pid %d %.2f CPU s, peak %s", pr.PID, pr.CPUTotal, bytesH(pr.PeakRSS)))
	}
	if len(bench) > 0 {
		p("bench      %s\n", strings.Join(bench, "; "))
	}
	for _, wn := range r.Warnings {
		p("warning    %s\n", wn)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeCosts writes the table of costs per delivered message.
func writeCosts(b *strings.Builder, r *Report) {
	if r.TotalCost == nil {
		return
	}
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	p("per msg    %-10s %8s %22s %9s %12s\n", "name", "cpu us", "ctx switches (vol+inv)", "syscalls", "read+write")
	for _, pr := range r.Processes {
		ctx, sys, rw := "-", "-", "-"
		if c := pr.Counts; c != nil {
			vol := 0.0
			if n := c.CtxVoluntary + c.CtxInvoluntary; n > 0 {
				vol = c.CtxPerMsg * float64(c.CtxVoluntary) / float64(n)
			}
			ctx = fmt.Sprintf("%.3f (%.3f+%.3f)", c.CtxPerMsg, vol, c.CtxPerMsg-vol)
			if c.Syscalls >= 0 {
				sys = fmt.Sprintf("%.3f", c.SyscallsPerMsg)
			}
			rw = fmt.Sprintf("%.3f", c.RWPerMsg)
		}
		p("           %-10s %8.2f %22s %9s %12s\n", pr.Name, pr.CPUMicrosPerMsg, ctx, sys, rw)
	}
	for _, g := range []struct {
		name string
		m    *MsgCost
	}{{"servers", r.ServersCost}, {"all -pids", r.TotalCost}} {
		if g.m == nil || (g.name == "servers" && len(g.m.Processes) == len(r.Processes)) {
			continue
		}
		p("           %-10s %8.2f %22s %9s %12s\n", g.name, g.m.CPUMicros, optf(g.m.CtxSwitches), optf(g.m.Syscalls), optf(g.m.RWSyscalls))
	}
	if strings.HasPrefix(r.SyscallSource, "perf") {
		p("           syscalls: every system call (%s);\n", r.SyscallSource)
	} else {
		p("           syscalls: %s;\n", r.SyscallSource)
	}
	p("           read+write: /proc/PID/io syscr+syscw (read, readv, pread, write, writev, pwrite;\n")
	p("           not epoll_wait, futex, sendmsg, recvmsg); ctx switches: voluntary+involuntary summed\n")
	p("           over /proc/PID/task/*/status\n")
}

// optf formats a figure that may be missing (-1).
func optf(v float64) string {
	if v < 0 {
		return "-"
	}
	return fmt.Sprintf("%.3f", v)
}

// us formats microseconds.
func us(v int64) string {
	switch {
	case v >= 10_000_000:
		return fmt.Sprintf("%.1fs", float64(v)/1e6)
	case v >= 1_000_000:
		return fmt.Sprintf("%.2fs", float64(v)/1e6)
	case v >= 10_000:
		return fmt.Sprintf("%.1fms", float64(v)/1e3)
	case v >= 1000:
		return fmt.Sprintf("%.2fms", float64(v)/1e3)
	}
	return fmt.Sprintf("%dus", v)
}

// si formats a rate with a k/M suffix.
func si(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.1fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}

// bytesH formats a byte count (which may be negative: RSS can shrink).
func bytesH(v int64) string {
	a := v
	if a < 0 {
		a = -a
	}
	switch {
	case a >= 10<<30:
		return fmt.Sprintf("%.1fGiB", float64(v)/(1<<30))
	case a >= 10<<20:
		return fmt.Sprintf("%.1fMiB", float64(v)/(1<<20))
	case a >= 10<<10:
		return fmt.Sprintf("%.1fKiB", float64(v)/(1<<10))
	}
	return fmt.Sprintf("%dB", v)
}

// progressLine formats the live one-line display for one second.
func progressLine(elapsed time.Duration, phase string, connected int64, clients int, k Counters, pt TimePoint, inflight int64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%5.0fs %-7s conn %d/%d", elapsed.Seconds(), phase, connected, clients)
	if phase != "connect" {
		fmt.Fprintf(&b, "  sent %d (%s/s)  dlvd %d (%s/s)  inflight %d", k.Sent, si(pt.SentPS), k.Delivered, si(pt.DeliveredPS), inflight)
		if pt.P99 > 0 {
			fmt.Fprintf(&b, "  p50 %s p99 %s", us(pt.P50), us(pt.P99))
		}
		if k.Duplicated+k.Reordered > 0 {
			fmt.Fprintf(&b, "  dup %d reord %d", k.Duplicated, k.Reordered)
		}
	}
	if bad := k.Rejected + k.Disconnects + k.ConnectErrors + k.Misrouted + k.Foreign + k.Errors; bad > 0 {
		fmt.Fprintf(&b, "  errors %d", bad)
	}
	if k.PingsSent > 0 {
		fmt.Fprintf(&b, "  pongs %d/%d", k.Pongs, k.PingsSent)
	}
	if pt.CPUPercent > 0 {
		fmt.Fprintf(&b, "  pids cpu %.0f%%", pt.CPUPercent)
	}
	return b.String()
}
