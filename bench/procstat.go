package bench

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// clkTck is USER_HZ, the unit of utime and stime in /proc/PID/stat; it is
// 100 on every Linux architecture Go supports.
const clkTck = 100

// procSample is one reading of a process's counters.
type procSample struct {
	// At is when the CPU counter was read: taken just before the one
	// pread(2) that reads it. A goroutine can wait long for a processor
	// after a system call returns when the machine is overloaded, so a
	// clock read after the call could be late by a second.
	At  time.Time
	CPU float64 // utime+stime, seconds
	RSS int64   // VmRSS, bytes
	HWM int64   // VmHWM (peak RSS), bytes
}

// procFile is a /proc file kept open and re-read with pread(2) at offset 0,
// which makes the kernel generate it afresh: one system call per reading.
type procFile struct {
	path string
	f    *os.File
	buf  []byte
}

// read returns the file's current content (valid until the next read) and
// the time just before it was read.
func (p *procFile) read() (time.Time, []byte, error) {
	if p.f == nil {
		f, err := os.Open(p.path)
		if err != nil {
			return time.Time{}, nil, err
		}
		p.f, p.buf = f, make([]byte, 8192)
	}
	for {
		at := time.Now()
		n, err := p.f.ReadAt(p.buf, 0)
		if err != nil && !errors.Is(err, io.EOF) {
			return at, nil, err
		}
		if n < len(p.buf) {
			return at, p.buf[:n], nil
		}
		p.buf = make([]byte, 2*len(p.buf))
	}
}

func (p *procFile) close() {
	if p.f != nil {
		p.f.Close()
		p.f = nil
	}
}

// readProc samples /proc/PID/stat (through stat, kept open) and
// /proc/PID/status.
func readProc(pid int, stat *procFile) (procSample, error) {
	var s procSample
	at, b, err := stat.read()
	if err != nil {
		return s, fmt.Errorf("bench: process %d: %w", pid, err)
	}
	s.At = at
	// The command name (field 2) is in parentheses and may hold spaces;
	// the fields after the last ')' start with field 3 (state).
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return s, fmt.Errorf("bench: process %d: malformed stat", pid)
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 13 {
		return s, fmt.Errorf("bench: process %d: short stat", pid)
	}
	if f[0][0] == 'Z' || f[0][0] == 'X' {
		return s, fmt.Errorf("bench: process %d has exited", pid)
	}
	ut, _ := strconv.ParseUint(string(f[11]), 10, 64)
	st, _ := strconv.ParseUint(string(f[12]), 10, 64)
	s.CPU = float64(ut+st) / clkTck
	status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return s, fmt.Errorf("bench: process %d: %w", pid, err)
	}
	for _, line := range bytes.Split(status, []byte{'\n'}) {
		switch {
		case bytes.HasPrefix(line, []byte("VmRSS:")):
			s.RSS = kbField(line)
		case bytes.HasPrefix(line, []byte("VmHWM:")):
			s.HWM = kbField(line)
		}
	}
	return s, nil
}

// kbField reads "Name:   1234 kB" as bytes.
func kbField(line []byte) int64 {
	f := bytes.Fields(line)
	if len(f) < 2 {
		return 0
	}
	v, _ := strconv.ParseInt(string(f[1]), 10, 64)
	return v * 1024
}

// RaiseNoFile raises this process's soft limit of open files to its hard
// limit and returns the new soft limit. Each client holds one descriptor.
func RaiseNoFile() (uint64, error) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("bench: getrlimit: %w", err)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			return 0, fmt.Errorf("bench: setrlimit: %w", err)
		}
	}
	return lim.Cur, nil
}

func noFileLimit() uint64 {
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) != nil {
		return 0
	}
	return lim.Cur
}

// procTracker samples a set of processes over a run. It is used from one
// goroutine at a time (the coordinator's ticker, then the coordinator after
// the ticker has stopped).
type procTracker struct {
	specs []ProcSpec
	first []procSample // before connecting
	last  []procSample // latest good sample
	peak  []int64      // highest RSS or HWM seen
	errs  []string     // first error per process
	ok    []bool       // first is valid
	files []procFile   // each process's /proc/PID/stat
	// counters read the context switches and system calls at the edges
	// of the measured window; nil for a tracker without them.
	counters []*counterSet
}

// newProcTracker starts sampling specs. withCounters also prepares their
// event counters (readCounters), with perf counters unless noPerf.
func newProcTracker(specs []ProcSpec, withCounters, noPerf bool) *procTracker {
	t := &procTracker{
		specs: specs,
		first: make([]procSample, len(specs)),
		last:  make([]procSample, len(specs)),
		peak:  make([]int64, len(specs)),
		errs:  make([]string, len(specs)),
		ok:    make([]bool, len(specs)),
		files: make([]procFile, len(specs)),
	}
	for i, sp := range specs {
		t.files[i].path = "/proc/" + strconv.Itoa(sp.PID) + "/stat"
		if withCounters {
			t.counters = append(t.counters, newCounterSet(sp.PID, !noPerf))
		}
	}
	for i, s := range t.sample() {
		t.first[i] = s
		t.ok[i] = t.errs[i] == ""
	}
	return t
}

// sample reads every process once and returns the readings (the previous
// good reading for a process that failed).
func (t *procTracker) sample() []procSample {
	out := make([]procSample, len(t.specs))
	for i, sp := range t.specs {
		s, err := readProc(sp.PID, &t.files[i])
		if err != nil {
			if t.errs[i] == "" {
				t.errs[i] = err.Error()
			}
			out[i] = t.last[i]
			continue
		}
		t.last[i] = s
		t.peak[i] = max(t.peak[i], s.RSS, s.HWM)
		out[i] = s
	}
	return out
}

// readCounters reads every process's event counters; nil for a tracker
// without them.
func (t *procTracker) readCounters() []countSample {
	if t.counters == nil {
		return nil
	}
	out := make([]countSample, len(t.counters))
	for i, cs := range t.counters {
		out[i] = cs.read()
	}
	return out
}

// close releases the open /proc files and perf counters.
func (t *procTracker) close() {
	for i := range t.files {
		t.files[i].close()
	}
	for _, cs := range t.counters {
		cs.close()
	}
}

// cpuRate is the CPU used between two samples of the same processes, in
// cores (1 = one core busy), each process over its own reading times.
func cpuRate(a, b []procSample) float64 {
	var v float64
	for i := range a {
		if d := b[i].At.Sub(a[i].At).Seconds(); d > 0 && !a[i].At.IsZero() {
			v += (b[i].CPU - a[i].CPU) / d
		}
	}
	return v
}

// machineSample is one reading of /proc/stat's first line, in CPU
// seconds since boot.
type machineSample struct {
	At      time.Time
	Busy    float64 // everything but idle and iowait
	Softirq float64 // on loopback, much of the network stack runs here, charged to no process
}

// machineCPU reads /proc/stat (through f, kept open) and counts the CPUs.
func machineCPU(f *procFile) (s machineSample, cpus int, err error) {
	at, b, err := f.read()
	if err != nil {
		return s, 0, fmt.Errorf("bench: %w", err)
	}
	s.At = at
	for i, line := range bytes.Split(b, []byte{'\n'}) {
		fs := bytes.Fields(line)
		if len(fs) == 0 || !bytes.HasPrefix(fs[0], []byte("cpu")) {
			continue
		}
		if i > 0 {
			cpus++
			continue
		}
		// cpu user nice system idle iowait irq softirq steal ...
		for j := 1; j < len(fs) && j <= 8; j++ {
			if j == 4 || j == 5 {
				continue
			}
			v, _ := strconv.ParseUint(string(fs[j]), 10, 64)
			s.Busy += float64(v) / clkTck
			if j == 7 {
				s.Softirq = float64(v) / clkTck
			}
		}
	}
	return s, cpus, nil
}
