package bench

import (
	"os"
	"strings"
	"testing"
	"time"
)

// The fixtures in testdata/proc are real /proc files of this kernel with
// the counters set to known values.
func TestParseProcFixtures(t *testing.T) {
	th, err := readThreadSwitches("testdata/proc", 1234)
	if err != nil {
		t.Fatal(err)
	}
	want := map[int]ctxCount{1234: {1200, 34}, 1240: {5000, 77}}
	if len(th) != len(want) || th[1234] != want[1234] || th[1240] != want[1240] {
		t.Fatalf("threads %v, want %v", th, want)
	}
	b, err := os.ReadFile("testdata/proc/1234/io")
	if err != nil {
		t.Fatal(err)
	}
	if r, w, ok := parseIO(b); !ok || r != 987654 || w != 123456 {
		t.Fatalf("io: %d %d %v", r, w, ok)
	}
	if _, _, ok := parseIO([]byte("rchar: 1\nsyscr: 2\n")); ok {
		t.Error("io without syscw parsed")
	}
	if _, ok := parseCtxSwitches([]byte("Name:\tx\nvoluntary_ctxt_switches:\tlots\nnonvoluntary_ctxt_switches:\t1\n")); ok {
		t.Error("bad number parsed")
	}
	if _, err := readThreadSwitches("testdata/proc", 99); err == nil {
		t.Error("missing process read")
	}
}

func TestCtxDelta(t *testing.T) {
	a := map[int]ctxCount{1: {100, 10}, 2: {50, 5}, 3: {7, 7}}
	b := map[int]ctxCount{1: {130, 12}, 2: {50, 9}, 4: {3, 1}, 5: {1, 0}}
	// 1: +30+2, 2: +0+4, 4 and 5 born: +4+1, 3 exited.
	vol, invol, exited := ctxDelta(a, b)
	if vol != 34 || invol != 7 || exited != 1 {
		t.Fatalf("vol %d invol %d exited %d", vol, invol, exited)
	}
	// A reused tid (counts lower than before) counts as a new thread.
	if vol, invol, _ := ctxDelta(map[int]ctxCount{9: {500, 50}}, map[int]ctxCount{9: {4, 2}}); vol != 4 || invol != 2 {
		t.Fatalf("reused tid: %d %d", vol, invol)
	}
}

func TestProcCounts(t *testing.T) {
	t0 := time.Unix(1000, 0)
	a := countSample{At: t0, Threads: map[int]ctxCount{1: {100, 0}}, Syscr: 1000, Syscw: 2000, PerfSyscalls: 10000, PerfCS: 100}
	b := countSample{At: t0.Add(2 * time.Second), Threads: map[int]ctxCount{1: {300, 100}}, Syscr: 3000, Syscw: 4000, PerfSyscalls: 20000, PerfCS: 420}
	// 2 s at 1000 deliveries/s = 2000 messages.
	pc, ok := procCounts(a, b, 1000, "")
	if !ok || pc.CtxVoluntary != 200 || pc.CtxInvoluntary != 100 || pc.CtxPerMsg != 0.15 || pc.RWPerMsg != 2 ||
		pc.Syscalls != 10000 || pc.SyscallsPerMsg != 5 || pc.CtxPerf != 320 {
		t.Fatalf("%+v %v", pc, ok)
	}
	a.PerfSyscalls = -1
	if pc, _ := procCounts(a, b, 1000, "perf_event_open: permission denied"); pc.Syscalls != -1 || pc.SyscallsPerMsg != 0 || !strings.Contains(pc.PerfMissing, "denied") {
		t.Fatalf("without perf: %+v", pc)
	}
	b.Err = "gone"
	if _, ok := procCounts(a, b, 1000, ""); ok {
		t.Fatal("failed reading accepted")
	}
}

func TestSumCost(t *testing.T) {
	prs := []ProcReport{
		{Name: "s1", CPUMicrosPerMsg: 10, Counts: &ProcCounts{CtxPerMsg: 0.5, SyscallsPerMsg: 2, Syscalls: 9, RWPerMsg: 1.5}},
		{Name: "s2", CPUMicrosPerMsg: 12, Counts: &ProcCounts{CtxPerMsg: 0.25, SyscallsPerMsg: 3, Syscalls: 9, RWPerMsg: 1}},
		{Name: "proxy", CPUMicrosPerMsg: 3, Counts: &ProcCounts{CtxPerMsg: 0.25, Syscalls: -1, RWPerMsg: 0.5}},
		{Name: "redis", CPUMicrosPerMsg: 1},
	}
	s := sumCost(prs, isServerName)
	if s == nil || strings.Join(s.Processes, ",") != "s1,s2" || s.CPUMicros != 22 || s.CtxSwitches != 0.75 || s.Syscalls != 5 || s.RWSyscalls != 2.5 {
		t.Fatalf("servers %+v", s)
	}
	all := sumCost(prs, func(string) bool { return true })
	if all.CPUMicros != 26 || all.CtxSwitches != -1 || all.Syscalls != -1 || all.RWSyscalls != -1 {
		t.Fatalf("all %+v", all)
	}
	if sumCost(prs, func(string) bool { return false }) != nil {
		t.Fatal("empty group")
	}
	for n, want := range map[string]bool{"s1": true, "s12": true, "server-a": true, "s": false, "sx": false, "proxy": false, "relay": false} {
		if isServerName(n) != want {
			t.Errorf("isServerName(%q) = %v", n, !want)
		}
	}
}

func TestWritePairs(t *testing.T) {
	run := func(sc string, rate, cpu, ctx, sys, rw float64, lost int64) *Report {
		return &Report{Scenario: sc, Mode: "saturation", DeliveredPerSec: rate, Lost: lost,
			TotalCost: &MsgCost{Processes: []string{sc}, CPUMicros: cpu, CtxSwitches: ctx, Syscalls: sys, RWSyscalls: rw}}
	}
	runs := []*Report{
		run("anchor", 40000, 24, 0.2, 1.2, 1.0, 0), run("floor", 80000, 12, 0.02, 1.2, 1.2, 0),
		run("anchor", 50000, 30, 0.3, 1.5, 1.0, 1), run("floor", 50000, 10, 0.03, 1.0, 1.0, 0),
		run("anchor", 45000, 27, 0.2, 1.2, 1.0, 0), run("floor", 60000, 9, 0.02, 1.2, 1.0, 0),
	}
	var b strings.Builder
	if err := WritePairs(&b, runs); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	t.Logf("\n%s", out)
	for _, want := range []string{"pair 1/3", "pair 3/3", "median, 3 pairs", "anchor/floor", "2.00x", "3.00x", "0/0/0", "1/0/0"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// Median CPU ratio of 2.0, 3.0 and 3.0 is 3.00x; median anchor CPU 27.00.
	med := out[strings.Index(out, "median"):]
	if !strings.Contains(med, "27.00") || !strings.Contains(strings.Split(med, "\n")[3], "3.00x") {
		t.Errorf("medians wrong:\n%s", med)
	}
	if err := WritePairs(&b, runs[:3]); err == nil {
		t.Error("odd number of runs accepted")
	}
}
