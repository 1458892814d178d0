package bench

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"time"
)

// Event counters of the processes under test, read at the two edges of the
// measured window. What each source counts was checked on the development
// VM (Linux 6.18, as root) with a probe process whose threads do known
// numbers of sleeps and system calls; TestProcCounterSources is that probe
// (go test -run ProcCounterSources -v ./bench/ prints its table):
//
//   - /proc/PID/status, /proc/PID/sched (nr_switches) and the third field
//     of /proc/PID/schedstat count the thread group leader only: while 4
//     other threads did 8,000 sleeps (getrusage: +11,913 switches) all
//     three moved by 2,114, the leader's own.
//   - The sum over /proc/PID/task/*/status of voluntary_ctxt_switches plus
//     nonvoluntary_ctxt_switches is the whole process as long as no thread
//     exits: +11,911 against getrusage's +11,913. A thread that exits
//     takes its counts with it (+3,327 against +12,336 when the 4 threads
//     exited), so the report counts threads that vanish in the window.
//   - /proc/PID/io is whole-process (exited threads included). syscr
//     counts read(2) and readv(2) (pread and the like too), syscw write(2),
//     writev(2) and eventfd writes; sendto, recvfrom, epoll_wait and
//     getpid moved neither (nor do futex, nanosleep, sendmsg, recvmsg).
//   - A perf counter on the tracepoint raw_syscalls:sys_enter, opened on
//     every thread with inherit (threads created later are counted and
//     stay counted when they exit), counts every system call: 1,000 calls
//     of each kind above moved it by 1,003 to 1,065 (the rest is the Go
//     runtime's own). It needs tracefs and root (or CAP_PERFMON, or
//     kernel.perf_event_paranoid <= -1). The same kind of counter on the
//     software event context-switches gave +11,910 and +12,335: whole
//     process, exited threads included.
//
// So: context switches come from the sum over /proc/PID/task/*/status
// (perf's count is kept beside it as a check); system calls from perf when
// it can be opened, and always the read-like plus write-like calls of
// /proc/PID/io, labelled as exactly that. Counting with perf makes each
// system call of the counted processes about 80 ns (6%) dearer on the
// development VM (1.3 us for a 1-byte write to /dev/null); -syscalls=false
// turns it off.

// ctxCount is one thread's context switches.
type ctxCount struct{ vol, invol int64 }

// countSample is one reading of a process's counters.
type countSample struct {
	At      time.Time
	Err     string           // why the /proc part could not be read ("" = it was)
	Threads map[int]ctxCount // tid -> switches, from /proc/PID/task/*/status
	Syscr   int64            // /proc/PID/io
	Syscw   int64
	// PerfSyscalls and PerfCS are the perf counters (every system call,
	// every context switch, whole process); -1 when not counted.
	PerfSyscalls int64
	PerfCS       int64
}

// parseCtxSwitches reads voluntary_ctxt_switches and
// nonvoluntary_ctxt_switches from a /proc/.../status file.
func parseCtxSwitches(b []byte) (c ctxCount, ok bool) {
	ok = procFields(b, []string{"voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"}, &c.vol, &c.invol)
	return c, ok
}

// parseIO reads syscr and syscw from /proc/PID/io.
func parseIO(b []byte) (syscr, syscw int64, ok bool) {
	ok = procFields(b, []string{"syscr", "syscw"}, &syscr, &syscw)
	return syscr, syscw, ok
}

// procFields reads the integer values of the "key: value" lines named by
// keys into dst (in the same order); ok when each key was found once with
// a number.
func procFields(b []byte, keys []string, dst ...*int64) bool {
	seen := 0
	for _, line := range bytes.Split(b, []byte{'\n'}) {
		k, v, found := bytes.Cut(line, []byte{':'})
		if !found {
			continue
		}
		for i, key := range keys {
			if string(k) != key {
				continue
			}
			n, err := strconv.ParseInt(string(bytes.TrimSpace(v)), 10, 64)
			if err != nil {
				return false
			}
			*dst[i] = n
			seen++
		}
	}
	return seen == len(keys)
}

// readThreadSwitches reads the context switches of every thread of pid
// from procRoot (normally "/proc"). Threads that exit while it reads are
// skipped.
func readThreadSwitches(procRoot string, pid int) (map[int]ctxCount, error) {
	dir := procRoot + "/" + strconv.Itoa(pid) + "/task"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := make(map[int]ctxCount, len(ents))
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(dir + "/" + e.Name() + "/status")
		if err != nil {
			if errors.Is(err, os.ErrNotExist) || errors.Is(err, errESRCH) {
				continue
			}
			return nil, err
		}
		if c, ok := parseCtxSwitches(b); ok {
			out[tid] = c
		}
	}
	if len(out) == 0 {
		return nil, errors.New("bench: no thread of process " + strconv.Itoa(pid) + " readable")
	}
	return out, nil
}

// ctxDelta is the switches between two readings of one process: for
// every thread alive at the end, its count minus its count at the start
// (zero if it was born in between). exited counts the threads of the start
// that were gone at the end: their switches during the window are missing
// from vol and invol.
func ctxDelta(a, b map[int]ctxCount) (vol, invol int64, exited int) {
	for tid, cb := range b {
		ca := a[tid]
		if cb.vol < ca.vol || cb.invol < ca.invol { // tid reused by a new thread
			ca = ctxCount{}
		}
		vol += cb.vol - ca.vol
		invol += cb.invol - ca.invol
	}
	for tid := range a {
		if _, ok := b[tid]; !ok {
			exited++
		}
	}
	return vol, invol, exited
}

// counterSet reads one process's counters: /proc always, perf when it
// could be opened.
type counterSet struct {
	pid     int
	sys, cs *perfCounter // nil when not available
	perfErr string       // why perf is not counting
}

// newCounterSet prepares the counters of pid; withPerf opens the perf
// counters now, so that every thread the process creates from now on is
// counted.
func newCounterSet(pid int, withPerf bool) *counterSet {
	s := &counterSet{pid: pid}
	if !withPerf {
		s.perfErr = "off (-syscalls=false)"
		return s
	}
	var err error
	if s.sys, err = openPerf(pid, perfSyscalls); err != nil {
		s.perfErr = err.Error()
		return s
	}
	if s.cs, err = openPerf(pid, perfCtxSwitches); err != nil {
		s.cs = nil // the syscall count still stands
	}
	return s
}

func (s *counterSet) read() countSample {
	r := countSample{At: time.Now(), PerfSyscalls: -1, PerfCS: -1}
	if s.sys != nil {
		if v, err := s.sys.read(); err == nil {
			r.PerfSyscalls = v
		}
	}
	if s.cs != nil {
		if v, err := s.cs.read(); err == nil {
			r.PerfCS = v
		}
	}
	th, err := readThreadSwitches("/proc", s.pid)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	r.Threads = th
	b, err := os.ReadFile("/proc/" + strconv.Itoa(s.pid) + "/io")
	if err != nil {
		r.Err = err.Error()
		return r
	}
	var ok bool
	if r.Syscr, r.Syscw, ok = parseIO(b); !ok {
		r.Err = "malformed /proc/" + strconv.Itoa(s.pid) + "/io"
	}
	return r
}

func (s *counterSet) close() {
	if s.sys != nil {
		s.sys.close()
	}
	if s.cs != nil {
		s.cs.close()
	}
}

// ProcCounts are one process's event counts over the measured window, and
// per delivered message (the count's rate over the deliveries' rate).
type ProcCounts struct {
	// CtxVoluntary and CtxInvoluntary are context switches summed over the
	// threads of /proc/PID/task/*/status.
	CtxVoluntary   int64   `json:"ctx_switches_voluntary"`
	CtxInvoluntary int64   `json:"ctx_switches_involuntary"`
	CtxPerMsg      float64 `json:"ctx_switches_per_msg"`
	// ThreadsExited counts threads gone by the end of the window; their
	// switches in it are missing from the /proc figures (not from perf's).
	ThreadsExited int `json:"threads_exited,omitempty"`
	// CtxPerf is perf's count of the same switches (every thread,
	// exited ones too), as a check; -1 when perf was not counting.
	CtxPerf int64 `json:"ctx_switches_perf"`
	// Syscalls counts every system call (perf, raw_syscalls:sys_enter);
	// -1 when perf was not counting.
	Syscalls       int64   `json:"syscalls"`
	SyscallsPerMsg float64 `json:"syscalls_per_msg"`
	// Syscr and Syscw are /proc/PID/io's read-like and write-like system
	// calls (read, readv, pread; write, writev, pwrite): not epoll_wait,
	// futex, sendmsg, recvmsg and the rest.
	Syscr       int64   `json:"syscr"`
	Syscw       int64   `json:"syscw"`
	RWPerMsg    float64 `json:"rw_syscalls_per_msg"`
	WindowSecs  float64 `json:"window_s"`
	PerfMissing string  `json:"perf_missing,omitempty"` // why Syscalls is -1
}

// procCounts turns two readings into a ProcCounts; deliveredPS is the
// deliveries' rate over the window. ok is false when either reading
// failed.
func procCounts(a, b countSample, deliveredPS float64, perfMissing string) (pc ProcCounts, ok bool) {
	if a.Err != "" || b.Err != "" || a.Threads == nil || b.Threads == nil {
		return pc, false
	}
	d := b.At.Sub(a.At).Seconds()
	if d <= 0 {
		return pc, false
	}
	perMsg := func(n int64) float64 {
		if deliveredPS <= 0 {
			return 0
		}
		return float64(n) / d / deliveredPS
	}
	pc.WindowSecs = d
	pc.CtxVoluntary, pc.CtxInvoluntary, pc.ThreadsExited = ctxDelta(a.Threads, b.Threads)
	pc.CtxPerMsg = perMsg(pc.CtxVoluntary + pc.CtxInvoluntary)
	pc.Syscr, pc.Syscw = b.Syscr-a.Syscr, b.Syscw-a.Syscw
	pc.RWPerMsg = perMsg(pc.Syscr + pc.Syscw)
	pc.CtxPerf, pc.Syscalls = -1, -1
	if a.PerfCS >= 0 && b.PerfCS >= 0 {
		pc.CtxPerf = b.PerfCS - a.PerfCS
	}
	if a.PerfSyscalls >= 0 && b.PerfSyscalls >= 0 {
		pc.Syscalls = b.PerfSyscalls - a.PerfSyscalls
		pc.SyscallsPerMsg = perMsg(pc.Syscalls)
	} else {
		pc.PerfMissing = perfMissing
		if pc.PerfMissing == "" {
			pc.PerfMissing = "perf counter could not be read"
		}
	}
	return pc, true
}

// MsgCost is what one delivered message cost a group of processes, summed
// over them. A figure some member lacks is -1.
type MsgCost struct {
	Processes   []string `json:"processes"`
	CPUMicros   float64  `json:"cpu_us_per_msg"`
	CtxSwitches float64  `json:"ctx_switches_per_msg"`
	Syscalls    float64  `json:"syscalls_per_msg"`    // every system call (perf); -1: not counted
	RWSyscalls  float64  `json:"rw_syscalls_per_msg"` // /proc/PID/io syscr+syscw
}

// sumCost adds up the per-message figures of the processes keep selects;
// nil when none is selected or none has counts.
func sumCost(prs []ProcReport, keep func(name string) bool) *MsgCost {
	var m MsgCost
	for _, pr := range prs {
		if !keep(pr.Name) {
			continue
		}
		m.Processes = append(m.Processes, pr.Name)
		m.CPUMicros += pr.CPUMicrosPerMsg
		if pr.Counts == nil {
			m.CtxSwitches, m.Syscalls, m.RWSyscalls = -1, -1, -1
			continue
		}
		c := pr.Counts
		if m.CtxSwitches >= 0 {
			m.CtxSwitches += c.CtxPerMsg
		}
		if m.RWSyscalls >= 0 {
			m.RWSyscalls += c.RWPerMsg
		}
		if m.Syscalls >= 0 {
			if c.Syscalls < 0 {
				m.Syscalls = -1
			} else {
				m.Syscalls += c.SyscallsPerMsg
			}
		}
	}
	if len(m.Processes) == 0 {
		return nil
	}
	return &m
}

// isServerName says whether a -pids name is a message server: "s" and
// digits, as bench.sh names them, or anything starting with "server".
func isServerName(n string) bool {
	if len(n) >= 6 && n[:6] == "server" {
		return true
	}
	if len(n) < 2 || n[0] != 's' {
		return false
	}
	for _, c := range n[1:] {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
