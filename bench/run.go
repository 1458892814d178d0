package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// interruptDrain caps the drain after the run was interrupted: the user
// asked to stop, but chats already on the wire still deserve a moment.
const interruptDrain = 2 * time.Second

// Run connects and logs in o.Clients clients, chats (or holds) for
// o.Duration after o.Warmup, drains, and returns the report. When ctx is
// cancelled, Run stops sending, drains for at most two seconds and returns
// the report of what ran, marked Interrupted, with a nil error. An error
// means the run could not be set up or a worker process failed.
func Run(ctx context.Context, o Options) (*Report, error) {
	c, err := newCoordinator(o)
	if err != nil {
		return nil, err
	}
	defer c.closeFiles() // after stopTicker, which every return below follows
	c.startTicker()
	crs, err := c.connectAll(ctx)
	if err != nil {
		c.stopTicker()
		for _, h := range c.hs {
			h.kill()
		}
		return nil, err
	}
	c.r.Connect = mergeConnect(c.o.Clients, crs)
	c.r.ServerIDs = map[string]string{}
	for _, cr := range crs {
		for k, v := range cr.ServerIDs {
			c.r.ServerIDs[k] = v
		}
	}
	if c.r.Connect.Connected == 0 && ctx.Err() == nil {
		c.warnings = append(c.warnings, "no client could log in")
	}
	w := c.sendPhase(ctx)
	ers, err := c.finishAll()
	c.stopTicker()
	if err != nil {
		return nil, err
	}
	if err := c.assemble(ers, w); err != nil {
		return nil, err
	}
	return c.r, nil
}

// coordinator runs one run from the calling process: it owns the engines'
// handles, samples the processes and keeps the timeline.
type coordinator struct {
	o        Options
	r        *Report
	hs       []handle
	warnings []string

	samplerMu sync.Mutex // guards sut and self: the ticker and the coordinator both sample
	sut       *procTracker
	self      *procTracker // the bench's own processes
	stat      procFile     // /proc/stat

	runStart time.Time
	phaseMu  sync.Mutex
	phase    string
	// timeline is written by the ticker goroutine only and read after it
	// has stopped.
	timeline           []TimePoint
	tickStop, tickDone chan struct{}
}

// newCoordinator checks the options, prepares the run and starts the
// worker processes, if any.
func newCoordinator(o Options) (*coordinator, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	c := &coordinator{o: o, phase: "connect", tickStop: make(chan struct{}), tickDone: make(chan struct{}),
		stat: procFile{path: "/proc/stat"}}
	if _, err := RaiseNoFile(); err != nil {
		c.warnings = append(c.warnings, err.Error())
	}
	var tagb [tagLen / 2]byte
	if _, err := rand.Read(tagb[:]); err != nil {
		return nil, fmt.Errorf("bench: run tag: %w", err)
	}
	var tag [tagLen]byte
	hex.Encode(tag[:], tagb[:])
	if c.o.Seed == 0 {
		c.o.Seed = time.Now().UnixNano()
	}
	if c.o.Prefix == "" {
		c.o.Prefix = "b" + string(tag[:]) + "-"
	}
	o = c.o
	ips, err := srcIPsFor(&o)
	if err != nil {
		return nil, err
	}
	perProc := (o.Clients + o.Procs - 1) / o.Procs
	if lim := noFileLimit(); lim > 0 && uint64(perProc)+64 > lim {
		return nil, fmt.Errorf("bench: %d clients per process exceed the open-file limit %d: use -procs %d or more",
			perProc, lim, (o.Clients+int(lim)-65)/(int(lim)-64))
	}
	var ipStrs []string
	for _, ip := range ips {
		ipStrs = append(ipStrs, ip.String())
	}
	c.r = &Report{
		Scenario: o.Scenario, Mode: o.mode(), Tag: string(tag[:]), Seed: o.Seed,
		Started: time.Now(), Options: o, Workers: o.Procs,
	}
	c.sut = newProcTracker(o.Pids, true, o.NoPerf)
	c.hs = make([]handle, o.Procs)
	benchSpecs := []ProcSpec{{Name: "bench", PID: os.Getpid()}}
	if o.Procs == 1 {
		c.hs[0] = &localHandle{e: newEngine(o, 0, o.Clients, tag, ips)}
	} else {
		for p := range c.hs {
			lo, hi := p*o.Clients/o.Procs, (p+1)*o.Clients/o.Procs
			h, err := startWorker(o, lo, hi, tag, ipStrs)
			if err != nil {
				for _, h := range c.hs[:p] {
					h.kill()
				}
				return nil, err
			}
			c.hs[p] = h
			benchSpecs = append(benchSpecs, ProcSpec{Name: fmt.Sprintf("worker%d", p+1), PID: h.cmd.Process.Pid})
		}
	}
	c.self = newProcTracker(benchSpecs, false, true)
	c.runStart = time.Now()
	return c, nil
}

// closeFiles releases the /proc files the samplers keep open.
func (c *coordinator) closeFiles() {
	c.sut.close()
	c.self.close()
	c.stat.close()
}

func (c *coordinator) setPhase(p string) {
	c.phaseMu.Lock()
	c.phase = p
	c.phaseMu.Unlock()
}

func (c *coordinator) getPhase() string {
	c.phaseMu.Lock()
	defer c.phaseMu.Unlock()
	return c.phase
}

// startTicker starts the goroutine that, every second, merges the engines'
// snapshots into a timeline point, samples the processes and prints the
// progress line. stopTicker ends it.
func (c *coordinator) startTicker() {
	go func() {
		defer close(c.tickDone)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		// Under overload a tick can come late and the snapshot or the /proc
		// reads can wait a while for a processor, so each rate is taken
		// over the time between the moments its readings were taken.
		var prev Counters
		prevT := time.Now()
		ival := newHist() // latency of the deliveries since the last point
		c.samplerMu.Lock()
		prevCPU := c.sut.sample()
		c.samplerMu.Unlock()
		for {
			final := false
			select {
			case <-c.tickStop:
				// One last, usually partial, second so that short runs
				// and the drain's tail show up in the timeline.
				final = true
			case <-t.C:
			}
			var k Counters
			var connected, inflight int64
			for _, h := range c.hs {
				tk := h.snapshot()
				k.add(&tk.Counters)
				connected += tk.Connected
				inflight += tk.Inflight
				if tk.Ival != nil {
					ival.Merge(tk.Ival)
				}
			}
			now := time.Now()
			dt := now.Sub(prevT).Seconds()
			if final && dt < 0.05 {
				return
			}
			if !final && dt < 0.5 {
				// The previous tick came very late: fold this one into
				// the next rather than divide by a sliver of time.
				continue
			}
			c.samplerMu.Lock()
			cpu := c.sut.sample()
			c.self.sample()
			c.samplerMu.Unlock()
			ph := c.getPhase()
			pt := TimePoint{
				T: now.Sub(c.runStart).Seconds(), Phase: ph, Connected: connected,
				SentPS:      float64(k.Sent-prev.Sent) / dt,
				DeliveredPS: float64(k.Delivered-prev.Delivered) / dt,
				Inflight:    inflight,
				P50:         ival.ValueAtQuantile(50), P99: ival.ValueAtQuantile(99), Max: ival.Max(),
				CPUPercent: 100 * cpuRate(prevCPU, cpu),
			}
			prev, prevT, prevCPU = k, now, cpu
			ival.Reset()
			c.timeline = append(c.timeline, pt)
			if c.o.Progress != nil && !final {
				line := progressLine(now.Sub(c.runStart), ph, connected, c.o.Clients, k, pt, inflight)
				if c.o.ProgressTTY {
					fmt.Fprintf(c.o.Progress, "\r\x1b[K%s", line)
				} else {
					fmt.Fprintln(c.o.Progress, line)
				}
			}
			if final {
				return
			}
		}
	}()
}

func (c *coordinator) stopTicker() {
	close(c.tickStop)
	<-c.tickDone
	if c.o.Progress != nil && c.o.ProgressTTY {
		fmt.Fprintln(c.o.Progress)
	}
}

// connectAll runs every engine's connect phase at once; each bounds its
// own concurrency.
func (c *coordinator) connectAll(ctx context.Context) ([]connectResult, error) {
	return eachEngine(c.hs, func(h handle) (connectResult, error) { return h.connect(ctx) })
}

// eachEngine calls fn for every engine at once and returns the results in
// engine order with the errors joined.
func eachEngine[T any](hs []handle, fn func(handle) (T, error)) ([]T, error) {
	out := make([]T, len(hs))
	errs := make([]error, len(hs))
	var wg sync.WaitGroup
	for i, h := range hs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i], errs[i] = fn(h)
		}()
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// windowSamples are the readings that bracket the measured window.
type windowSamples struct {
	taken        bool
	sut0, sut1   []procSample
	self0, self1 []procSample
	cnt0, cnt1   []countSample // the -pids processes' event counters
	mach0, mach1 machineSample
}

// sample takes the readings for one end of the window. The event
// counters are read after the CPU samples: reading every thread's status
// takes a while, and each figure is a rate over its own readings' times.
func (c *coordinator) sample() (sut, self []procSample, cnt []countSample, mach machineSample) {
	c.samplerMu.Lock()
	sut, self = c.sut.sample(), c.self.sample()
	cnt = c.sut.readCounters()
	c.samplerMu.Unlock()
	mach, _, _ = machineCPU(&c.stat)
	return
}

// sendPhase starts the engines, waits out warmup and duration (or ctx),
// closes the window and stops them, leaving them draining.
func (c *coordinator) sendPhase(ctx context.Context) windowSamples {
	var w windowSamples
	o := &c.o
	if ctx.Err() == nil && c.r.Connect.Connected > 0 {
		switch {
		case o.Warmup > 0:
			c.setPhase("warmup")
		case o.Hold:
			c.setPhase("hold")
		default:
			c.setPhase("measure")
		}
		for _, h := range c.hs {
			h.start(o.Warmup)
		}
		sendStart := time.Now()
		if o.Warmup > 0 {
			sleepCtx(ctx, o.Warmup)
			c.setPhase("measure")
		}
		w.sut0, w.self0, w.cnt0, w.mach0 = c.sample()
		w.taken = true
		sleepCtx(ctx, time.Until(sendStart.Add(o.Warmup+o.Duration)))
	}
	c.r.Interrupted = ctx.Err() != nil
	drain := o.Drain
	if c.r.Interrupted {
		drain = min(drain, interruptDrain)
	}
	if o.Hold {
		drain = 0
	}
	// Close the engines' windows first, then read /proc: reading can wait
	// for a processor when the machine is overloaded.
	for _, h := range c.hs {
		h.stop(drain)
	}
	if w.taken {
		w.sut1, w.self1, w.cnt1, w.mach1 = c.sample()
	}
	c.setPhase("drain")
	return w
}

// finishAll waits for every engine's drain and final account.
func (c *coordinator) finishAll() ([]engineResult, error) {
	return eachEngine(c.hs, func(h handle) (engineResult, error) { return h.finish() })
}

// assemble fills the report from the engines' accounts and the samples.
func (c *coordinator) assemble(ers []engineResult, w windowSamples) error {
	r, o := c.r, &c.o
	lat, ping := newHist(), newHist()
	for _, er := range ers {
		r.Counters.add(&er.Counters)
		r.Lost += er.Lost
		if err := mergeEncoded(lat, er.Latency); err != nil {
			return err
		}
		if err := mergeEncoded(ping, er.Ping); err != nil {
			return err
		}
		r.Errors = mergeReasons(r.Errors, er.Errors)
	}
	// The window is the engines' own (mean over workers): the chats and
	// deliveries counted as measured fall inside it.
	var nwin int
	for _, er := range ers {
		if er.Window > 0 {
			r.MeasuredSeconds += er.Window
			nwin++
		}
	}
	if nwin > 0 {
		r.MeasuredSeconds /= float64(nwin)
	}
	if r.MeasuredSeconds > 0 {
		r.SentPerSec = float64(r.Counters.SentMeasured) / r.MeasuredSeconds
		r.DeliveredPerSec = float64(r.Counters.DeliveredInWindow) / r.MeasuredSeconds
	}
	r.Latency, r.Ping = percentilesOf(lat), percentilesOf(ping)
	r.Distribution = distribution(lat)
	if lat.TotalCount() > 0 {
		r.LatencyHist = encodeHist(lat)
	}
	c.samplerMu.Lock()
	final := c.sut.sample()
	c.self.sample()
	c.samplerMu.Unlock()
	r.Processes = procReports(c.sut, w.sut0, w.sut1, final, r.Connect.Connected)
	r.Bench = procReports(c.self, nil, nil, c.self.last, 0)
	if w.taken && r.Mode != "hold" {
		c.addCosts(w)
	}
	if w.taken && len(o.Pids) > 0 {
		// CPU per second between the samples over deliveries per second
		// in the engines' window: the spans differ by the time the
		// readings waited, which would skew a plain quotient.
		if r.DeliveredPerSec > 0 {
			r.CPUMicrosPerMsg = cpuRate(w.sut0, w.sut1) * 1e6 / r.DeliveredPerSec
		}
		var growth int64
		for i := range w.sut1 {
			growth += w.sut1[i].RSS - c.sut.first[i].RSS
		}
		if r.Connect.Connected > 0 {
			r.RSSGrowthPerConn = float64(growth) / float64(r.Connect.Connected)
		}
	}
	if d := w.mach1.At.Sub(w.mach0.At).Seconds(); w.taken && d > 0 {
		_, cpus, _ := machineCPU(&c.stat)
		m := &r.Machine
		m.CPUs = cpus
		m.BusyPercent = 100 * (w.mach1.Busy - w.mach0.Busy) / d
		m.SoftirqPercent = 100 * (w.mach1.Softirq - w.mach0.Softirq) / d
		m.PidsPercent = 100 * cpuRate(w.sut0, w.sut1)
		m.BenchPercent = 100 * cpuRate(w.self0, w.self1)
		m.OtherPercent = max(0, m.BusyPercent-m.SoftirqPercent-m.PidsPercent-m.BenchPercent)
		if m.OtherPercent > 25 {
			c.warnings = append(c.warnings, fmt.Sprintf("other processes kept %.0f%% of a core busy during the window: the figures are disturbed", m.OtherPercent))
		}
		if cpus > 0 && m.BusyPercent > 90*float64(cpus) {
			c.warnings = append(c.warnings, fmt.Sprintf("the machine was %.0f%% busy (of %d%%): latency includes waiting for a CPU, in the bench as well as in the servers", m.BusyPercent, 100*cpus))
		}
	}
	r.Timeline = c.timeline
	if d := r.Counters.SentMeasured; d > 0 && r.Mode == "rate" && float64(d) < 0.9*o.Rate*r.MeasuredSeconds && !r.Interrupted {
		c.warnings = append(c.warnings, fmt.Sprintf("offered %.0f msg/s but sent only %.0f msg/s: the bench (or the socket buffers) could not keep up", o.Rate, r.SentPerSec))
	}
	r.Warnings = c.warnings
	return nil
}

// addCosts fills each process's cost per delivered message (CPU, context
// switches, system calls) and the sums over the servers and over all the
// -pids processes.
func (c *coordinator) addCosts(w windowSamples) {
	r := c.r
	if r.DeliveredPerSec <= 0 {
		return
	}
	for i := range r.Processes {
		pr := &r.Processes[i]
		pr.CPUMicrosPerMsg = cpuRate(w.sut0[i:i+1], w.sut1[i:i+1]) * 1e6 / r.DeliveredPerSec
		if i < len(w.cnt0) && i < len(w.cnt1) {
			pc, ok := procCounts(w.cnt0[i], w.cnt1[i], r.DeliveredPerSec, c.sut.counters[i].perfErr)
			if ok {
				pr.Counts = &pc
				if pc.ThreadsExited > 0 {
					c.warnings = append(c.warnings, fmt.Sprintf("%s: %d thread(s) exited during the window; their context switches are missing from the /proc figure", pr.Name, pc.ThreadsExited))
				}
				if r.SyscallSource == "" && pc.Syscalls < 0 {
					r.SyscallSource = "not counted: " + pc.PerfMissing
				}
			} else if e := w.cnt1[i].Err + w.cnt0[i].Err; e != "" && pr.Error == "" {
				pr.Error = e
			}
		}
	}
	if r.SyscallSource == "" {
		r.SyscallSource = "perf raw_syscalls:sys_enter"
	}
	r.ServersCost = sumCost(r.Processes, isServerName)
	r.TotalCost = sumCost(r.Processes, func(string) bool { return true })
}

// sleepCtx sleeps for d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// mergeConnect combines the engines' connect phases.
func mergeConnect(clients int, crs []connectResult) ConnectReport {
	c := ConnectReport{Clients: clients}
	dial, login := newHist(), newHist()
	for _, cr := range crs {
		c.Connected += cr.Connected
		c.Seconds = max(c.Seconds, cr.Seconds)
		_ = mergeEncoded(dial, cr.Dial)
		_ = mergeEncoded(login, cr.Login)
	}
	c.Failed = clients - c.Connected
	if c.Seconds > 0 {
		c.PerSecond = float64(c.Connected) / c.Seconds
	}
	c.Dial, c.Login = percentilesOf(dial), percentilesOf(login)
	return c
}

// procReports turns samples into per-process reports. atStart/atEnd bound
// the measured window (nil: none).
func procReports(t *procTracker, atStart, atEnd, final []procSample, conns int) []ProcReport {
	out := make([]ProcReport, len(t.specs))
	for i, sp := range t.specs {
		pr := ProcReport{Name: sp.Name, PID: sp.PID, Error: t.errs[i], PeakRSS: t.peak[i]}
		if t.ok[i] {
			pr.RSSBefore = t.first[i].RSS
			pr.CPUTotal = final[i].CPU - t.first[i].CPU
		}
		if atStart != nil {
			pr.CPUWindow = atEnd[i].CPU - atStart[i].CPU
			pr.CPUPercent = 100 * cpuRate(atStart[i:i+1], atEnd[i:i+1])
			pr.RSSAfter = atEnd[i].RSS
			if conns > 0 && t.ok[i] {
				pr.GrowthPerConn = float64(pr.RSSAfter-pr.RSSBefore) / float64(conns)
			}
		} else {
			pr.RSSAfter = final[i].RSS
		}
		out[i] = pr
	}
	return out
}
