package bench

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary serve as a bench worker process, so the
// multi-process path runs in tests exactly as chat-bench runs it.
func TestMain(m *testing.M) {
	if IsWorker() {
		os.Exit(WorkerMain())
	}
	if os.Getenv(probeEnv) == "1" {
		probeChild()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runFake runs the bench against two fake servers sharing dir.
func runFake(t *testing.T, dir *fakeDir, o Options) *Report {
	t.Helper()
	s1, s2 := startFake(t, "s1", dir), startFake(t, "s2", dir)
	o.Servers = []string{s1.addr(), s2.addr()}
	if o.Duration == 0 {
		o.Duration = 300 * time.Millisecond
	}
	if o.Drain == 0 {
		o.Drain = time.Second
	}
	var log strings.Builder
	o.Progress = &log
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, err := Run(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	_ = r.WriteText(&b)
	t.Logf("report:\n%s", b.String())
	return r
}

func TestRunClean(t *testing.T) {
	r := runFake(t, newFakeDir(faultNone, 0), Options{Clients: 40, Ack: true, Ping: 50 * time.Millisecond})
	k := r.Counters
	if k.Sent < 100 || k.Delivered != k.Sent || r.Lost != 0 || k.Duplicated != 0 || k.Reordered != 0 {
		t.Fatalf("clean run: sent %d delivered %d lost %d dup %d reord %d", k.Sent, k.Delivered, r.Lost, k.Duplicated, k.Reordered)
	}
	if k.Acked != k.Sent {
		t.Errorf("acked %d, want %d", k.Acked, k.Sent)
	}
	if r.Connect.Connected != 40 || r.ServerIDs[r.Options.Servers[1]] != "s2" {
		t.Errorf("connect %+v servers %v", r.Connect, r.ServerIDs)
	}
	if r.Latency.Count == 0 || r.Latency.Count != k.DeliveredMeasured || r.DeliveredPerSec <= 0 {
		t.Errorf("latency %+v, delivered measured %d, rate %f", r.Latency, k.DeliveredMeasured, r.DeliveredPerSec)
	}
	if k.SentCross == 0 || k.SentCross == k.Sent {
		t.Errorf("cross %d of %d: want a mix", k.SentCross, k.Sent)
	}
	if k.PingsSent == 0 || r.Ping.Count == 0 {
		t.Errorf("pings %d, rtt count %d", k.PingsSent, r.Ping.Count)
	}
	if len(r.Errors) != 0 {
		t.Errorf("errors %v", r.Errors)
	}
}

// TestRunDetectsFaults proves each check can fail: the fake server spoils
// exactly one chat, and the bench must count exactly that.
func TestRunDetectsFaults(t *testing.T) {
	cases := []struct {
		name               string
		f                  fault
		lost, dup, reorder int64
	}{
		{"drop", faultDrop, 1, 0, 0},
		{"duplicate", faultDup, 0, 1, 0},
		{"reorder", faultReorder, 0, 0, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := newFakeDir(tc.f, 50)
			// One recipient per sender, so "the next chat from the same
			// sender to the same recipient" is the next of the same pair.
			r := runFake(t, dir, Options{Clients: 20, Fanout: 1})
			if !dir.applied.Load() {
				t.Fatal("the fault was never applied")
			}
			k := r.Counters
			if r.Lost != tc.lost || k.Duplicated != tc.dup || k.Reordered != tc.reorder {
				t.Fatalf("lost %d dup %d reordered %d; want %d %d %d", r.Lost, k.Duplicated, k.Reordered, tc.lost, tc.dup, tc.reorder)
			}
			if k.Delivered != k.Sent-tc.lost {
				t.Fatalf("delivered %d of %d sent", k.Delivered, k.Sent)
			}
		})
	}
}

func TestRunOpenLoop(t *testing.T) {
	const rate = 2000
	r := runFake(t, newFakeDir(faultNone, 0), Options{Clients: 50, Rate: rate, Duration: 500 * time.Millisecond, Warmup: 100 * time.Millisecond})
	k := r.Counters
	want := rate * r.MeasuredSeconds
	if got := float64(k.SentMeasured); got < 0.8*want || got > 1.2*want {
		t.Fatalf("sent %v in the window, want about %v", got, want)
	}
	if r.Lost != 0 || k.Delivered != k.Sent || k.Sent <= k.SentMeasured {
		t.Fatalf("sent %d (measured %d) delivered %d lost %d", k.Sent, k.SentMeasured, k.Delivered, r.Lost)
	}
	if len(r.Timeline) == 0 {
		t.Fatal("no timeline")
	}
}

func TestRunHold(t *testing.T) {
	r := runFake(t, newFakeDir(faultNone, 0), Options{Clients: 30, Hold: true, Ping: 100 * time.Millisecond, Duration: 500 * time.Millisecond,
		Pids: []ProcSpec{{Name: "self", PID: os.Getpid()}}})
	k := r.Counters
	if k.Sent != 0 || k.PingsSent < 30 || k.Pongs < k.PingsSent-30 {
		t.Fatalf("hold: sent %d pings %d pongs %d", k.Sent, k.PingsSent, k.Pongs)
	}
	if len(r.Processes) != 1 || r.Processes[0].PeakRSS == 0 || r.Processes[0].Error != "" {
		t.Fatalf("processes %+v", r.Processes)
	}
}

func TestRunWorkers(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := newFakeDir(faultDrop, 30)
	r := runFake(t, dir, Options{Clients: 40, Procs: 2, WorkerCommand: []string{exe}, Log: os.Stderr})
	k := r.Counters
	if r.Workers != 2 || len(r.Bench) != 3 {
		t.Fatalf("workers %d, bench processes %d", r.Workers, len(r.Bench))
	}
	if r.Connect.Connected != 40 || k.Sent < 100 || r.Lost != 1 || k.Delivered != k.Sent-1 {
		t.Fatalf("connected %d sent %d delivered %d lost %d", r.Connect.Connected, k.Sent, k.Delivered, r.Lost)
	}
	if r.Latency.Count == 0 || r.Latency.Count != k.DeliveredMeasured {
		t.Fatalf("latency count %d, delivered measured %d", r.Latency.Count, k.DeliveredMeasured)
	}
}

func TestRunInterrupted(t *testing.T) {
	dir := newFakeDir(faultNone, 0)
	s1 := startFake(t, "s1", dir)
	ctx, cancel := context.WithCancel(context.Background())
	o := Options{Servers: []string{s1.addr()}, Clients: 10, Duration: time.Hour}
	// Cancel once chats are flowing: the progress writer sees the first
	// tick with deliveries.
	o.Progress = writerFunc(func(p []byte) (int, error) {
		if strings.Contains(string(p), "dlvd") {
			cancel()
		}
		return len(p), nil
	})
	done := make(chan struct{})
	var r *Report
	var err error
	go func() { defer close(done); r, err = Run(ctx, o) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if err != nil {
		t.Fatal(err)
	}
	if !r.Interrupted || r.Counters.Sent == 0 || r.Lost != 0 || r.MeasuredSeconds > 60 {
		t.Fatalf("interrupted %v sent %d lost %d measured %v", r.Interrupted, r.Counters.Sent, r.Lost, r.MeasuredSeconds)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// TestRunCosts: with -pids, every process gets its CPU, context switches
// and read/write calls per delivered message (and every system call when
// perf counters can be opened here), and the sums are filled.
func TestRunCosts(t *testing.T) {
	r := runFake(t, newFakeDir(faultNone, 0), Options{Clients: 20, Duration: 500 * time.Millisecond,
		Pids: []ProcSpec{{Name: "s1", PID: os.Getpid()}, {Name: "self", PID: os.Getpid()}}})
	if len(r.Processes) != 2 || r.TotalCost == nil || r.ServersCost == nil {
		t.Fatalf("processes %+v total %+v servers %+v", r.Processes, r.TotalCost, r.ServersCost)
	}
	pr := r.Processes[0]
	c := pr.Counts
	if c == nil || pr.CPUMicrosPerMsg <= 0 || c.CtxPerMsg <= 0 || c.RWPerMsg <= 0 || c.Syscr <= 0 || c.Syscw <= 0 {
		t.Fatalf("process %+v counts %+v", pr, c)
	}
	if got := r.ServersCost.Processes; len(got) != 1 || got[0] != "s1" {
		t.Errorf("servers %v, want [s1]", got)
	}
	if d := r.TotalCost.CPUMicros - 2*pr.CPUMicrosPerMsg; d > 0.5*pr.CPUMicrosPerMsg || d < -0.5*pr.CPUMicrosPerMsg {
		t.Errorf("total cpu %v, per process %v", r.TotalCost.CPUMicros, pr.CPUMicrosPerMsg)
	}
	if c.Syscalls >= 0 {
		// perf counts every call, so at least the read and write ones.
		if c.Syscalls < c.Syscr+c.Syscw || r.SyscallSource != "perf raw_syscalls:sys_enter" {
			t.Errorf("perf syscalls %d < syscr+syscw %d (source %q)", c.Syscalls, c.Syscr+c.Syscw, r.SyscallSource)
		}
	} else {
		t.Logf("perf not counting here: %s", c.PerfMissing)
	}
	var b strings.Builder
	_ = r.WriteText(&b)
	if !strings.Contains(b.String(), "per msg") {
		t.Errorf("text report lacks the per-message table")
	}
	var h strings.Builder
	if err := r.WriteHTML(&h); err != nil || !strings.Contains(h.String(), "Cost per delivered message") || !strings.Contains(h.String(), "servers: s1") {
		t.Errorf("HTML report lacks the cost table (%v)", err)
	}
}
