package bench

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// probeEnv turns the test binary into the probe process of
// TestProcCounterSources.
const probeEnv = "RELAYCHAT_BENCH_PROBE"

// probeChild runs one phase per line of stdin and answers each with its
// getrusage(RUSAGE_SELF) context switches (every thread, exited ones too):
//
//	live: 4 new threads sleep 2000 times each and stay
//	exit: 4 new threads sleep 2000 times each and exit
//	sys NAME: 1000 calls of one kind of system call
func probeChild() {
	in := bufio.NewScanner(os.Stdin)
	park := make(chan struct{})
	a, b := probeTCPPair()
	ep, _ := unix.EpollCreate1(0)
	efd, _ := unix.Eventfd(0, unix.EFD_NONBLOCK)
	buf := []byte("0123456789abcdef")
	one := binary.NativeEndian.AppendUint64(nil, 1)
	evs := make([]unix.EpollEvent, 4)
	calls := map[string]func(){
		"write":      func() { unix.Write(a, buf) },
		"read":       func() { unix.Read(b, buf) },
		"sendto":     func() { unix.Sendto(a, buf, 0, nil) },
		"recvfrom":   func() { unix.Recvfrom(b, buf, 0) },
		"writev":     func() { unix.Writev(a, [][]byte{buf}) },
		"readv":      func() { unix.Readv(b, [][]byte{buf}) },
		"eventfd":    func() { unix.Write(efd, one) },
		"epoll_wait": func() { unix.EpollWait(ep, evs, 0) },
		"getpid":     func() { unix.Getpid() },
	}
	for in.Scan() {
		cmd, arg, _ := strings.Cut(in.Text(), " ")
		switch cmd {
		case "live", "exit":
			var wg sync.WaitGroup
			for i := 0; i < 4; i++ {
				wg.Add(1)
				go func() {
					runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
					ts := unix.Timespec{Nsec: 20000}
					for j := 0; j < 2000; j++ {
						unix.Nanosleep(&ts, nil)
					}
					wg.Done()
					if cmd == "live" {
						<-park
					}
				}()
			}
			wg.Wait()
		case "sys":
			f := calls[arg]
			for i := 0; i < 1000; i++ {
				f()
			}
		}
		var ru unix.Rusage
		_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
		fmt.Printf("%d\n", ru.Nvcsw+ru.Nivcsw)
	}
}

func probeTCPPair() (int, int) {
	l, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	_ = unix.Bind(l, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}})
	_ = unix.Listen(l, 1)
	sa, _ := unix.Getsockname(l)
	c, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
	_ = unix.Connect(c, sa)
	s, _, _ := unix.Accept4(l, unix.SOCK_NONBLOCK)
	unix.Close(l)
	return c, s
}

// probeReading is everything the parent reads about the probe at once.
type probeReading struct {
	leader, sched, schedstat int64 // /proc/PID/status, sched, schedstat: the leader thread's
	cnt                      countSample
}

func readProbe(t *testing.T, cs *counterSet) probeReading {
	t.Helper()
	p := "/proc/" + strconv.Itoa(cs.pid)
	var r probeReading
	if b, err := os.ReadFile(p + "/status"); err == nil {
		c, _ := parseCtxSwitches(b)
		r.leader = c.vol + c.invol
	}
	if b, err := os.ReadFile(p + "/sched"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) == 3 && f[0] == "nr_switches" {
				r.sched, _ = strconv.ParseInt(f[2], 10, 64)
			}
		}
	}
	if b, err := os.ReadFile(p + "/schedstat"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 3 {
			r.schedstat, _ = strconv.ParseInt(f[2], 10, 64)
		}
	}
	r.cnt = cs.read()
	if r.cnt.Err != "" {
		t.Fatal(r.cnt.Err)
	}
	return r
}

func sumThreads(m map[int]ctxCount) (n int64) {
	for _, c := range m {
		n += c.vol + c.invol
	}
	return n
}

// TestProcCounterSources is the probe behind the choice of sources in
// counters.go: a child process does known work, and each source's count of
// it is compared with getrusage(RUSAGE_SELF) inside the child (context
// switches) or with the number of calls made (system calls). Run it with
// -v to see the table.
func TestProcCounterSources(t *testing.T) {
	if testing.Short() {
		t.Skip("probe takes a second")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), probeEnv+"=1")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); _ = cmd.Wait() }()
	out := bufio.NewReader(stdout)
	ask := func(c string) int64 {
		t.Helper()
		if _, err := io.WriteString(stdin, c+"\n"); err != nil {
			t.Fatal(err)
		}
		l, err := out.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		v, _ := strconv.ParseInt(strings.TrimSpace(l), 10, 64)
		return v
	}
	ru0 := ask("sys getpid") // the child is up and its runtime settled
	cs := newCounterSet(cmd.Process.Pid, true)
	defer cs.close()
	perf := cs.sys != nil && cs.cs != nil
	if !perf {
		t.Logf("perf counters not available here (%s): checking /proc only", cs.perfErr)
	}
	near := func(got, want int64) bool { return got >= want*95/100-20 && got <= want*105/100+20 }

	for _, phase := range []string{"live", "exit"} {
		a := readProbe(t, cs)
		ru1 := ask(phase)
		b := readProbe(t, cs)
		ru := ru1 - ru0
		ru0 = ru1
		task := sumThreads(b.cnt.Threads) - sumThreads(a.cnt.Threads)
		perfCS := b.cnt.PerfCS - a.cnt.PerfCS
		t.Logf("%s: 4 threads x 2000 sleeps; getrusage %+d; /proc/PID/status %+d, sched %+d, schedstat %+d; sum of task/*/status %+d (threads %d -> %d); perf context-switches %+d",
			phase, ru, b.leader-a.leader, b.sched-a.sched, b.schedstat-a.schedstat, task, len(a.cnt.Threads), len(b.cnt.Threads), perfCS)
		if ru < 8000 {
			t.Fatalf("getrusage counted %d switches for 8000 sleeps", ru)
		}
		if b.leader-a.leader > ru/2 || b.sched-a.sched > ru/2 || b.schedstat-a.schedstat > ru/2 {
			t.Errorf("%s: a leader-only source counted most switches: expected it to miss the other threads", phase)
		}
		switch phase {
		case "live":
			if !near(task, ru) {
				t.Errorf("live threads: task sum %d, getrusage %d", task, ru)
			}
		case "exit":
			if task > ru/2 {
				t.Errorf("exited threads: task sum %d kept their switches (getrusage %d)?", task, ru)
			}
		}
		if perf && !near(perfCS, ru) {
			t.Errorf("%s: perf context-switches %d, getrusage %d", phase, perfCS, ru)
		}
	}

	// System calls: 1000 of each kind. syscr/syscw must move by 1000 or
	// by about 0 (the runtime adds a few), perf by at least 1000.
	wantR := map[string]bool{"read": true, "readv": true}
	wantW := map[string]bool{"write": true, "writev": true, "eventfd": true}
	for _, k := range []string{"write", "read", "sendto", "recvfrom", "writev", "readv", "eventfd", "epoll_wait", "getpid"} {
		a := readProbe(t, cs)
		ask("sys " + k)
		b := readProbe(t, cs)
		r, w := b.cnt.Syscr-a.cnt.Syscr, b.cnt.Syscw-a.cnt.Syscw
		p := b.cnt.PerfSyscalls - a.cnt.PerfSyscalls
		t.Logf("1000 x %-10s syscr %+5d  syscw %+5d  perf %+5d", k, r, w, p)
		check := func(name string, got int64, counted bool) {
			if counted && (got < 1000 || got > 1010) || !counted && got > 10 {
				t.Errorf("%s: %s moved by %d", k, name, got)
			}
		}
		check("syscr", r, wantR[k])
		check("syscw", w, wantW[k])
		if perf && (p < 1000 || p > 1500) {
			t.Errorf("%s: perf counted %d calls", k, p)
		}
	}
}
