package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

var errESRCH = syscall.ESRCH

// perfEvent names one kind of perf counter.
type perfEvent int

const (
	perfSyscalls    perfEvent = iota // tracepoint raw_syscalls:sys_enter
	perfCtxSwitches                  // software event context-switches
)

// perfCounter is one perf counter per thread of a process, each opened with
// inherit: the threads those threads create later are counted in their
// parent's counter, and a thread's count stays there when it exits. So
// reading all of them gives the whole process from the moment of opening,
// except threads created by a not-yet-attached thread while openPerf was
// scanning (it runs before the load starts, when threads are rarely born).
type perfCounter struct {
	fds []int
}

// tracepointID returns the id of a tracepoint such as
// "raw_syscalls/sys_enter" from tracefs.
func tracepointID(name string) (uint64, error) {
	var firstErr error
	for _, root := range []string{"/sys/kernel/tracing", "/sys/kernel/debug/tracing"} {
		b, err := os.ReadFile(root + "/events/" + name + "/id")
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	}
	return 0, fmt.Errorf("tracepoint %s not found (is tracefs mounted on /sys/kernel/tracing?): %v", name, firstErr)
}

// openPerf opens counters of kind ev on every thread of pid.
func openPerf(pid int, ev perfEvent) (*perfCounter, error) {
	attr := unix.PerfEventAttr{Bits: unix.PerfBitInherit}
	switch ev {
	case perfSyscalls:
		id, err := tracepointID("raw_syscalls/sys_enter")
		if err != nil {
			return nil, err
		}
		attr.Type, attr.Config = unix.PERF_TYPE_TRACEPOINT, id
	case perfCtxSwitches:
		attr.Type, attr.Config = unix.PERF_TYPE_SOFTWARE, unix.PERF_COUNT_SW_CONTEXT_SWITCHES
	}
	attr.Size = uint32(unsafe.Sizeof(attr))
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil {
		return nil, err
	}
	p := &perfCounter{}
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fd, err := unix.PerfEventOpen(&attr, tid, -1, -1, unix.PERF_FLAG_FD_CLOEXEC)
		if errors.Is(err, unix.ESRCH) {
			continue // the thread exited meanwhile
		}
		if err != nil {
			p.close()
			if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
				return nil, fmt.Errorf("perf_event_open: %v (needs root, CAP_PERFMON or kernel.perf_event_paranoid <= -1)", err)
			}
			return nil, fmt.Errorf("perf_event_open: %v", err)
		}
		p.fds = append(p.fds, fd)
	}
	if len(p.fds) == 0 {
		return nil, fmt.Errorf("perf_event_open: no thread of process %d", pid)
	}
	return p, nil
}

// read returns the sum of the counters.
func (p *perfCounter) read() (int64, error) {
	var total int64
	var b [8]byte
	for _, fd := range p.fds {
		n, err := unix.Read(fd, b[:])
		if err != nil {
			return 0, fmt.Errorf("read perf counter: %w", err)
		}
		if n != 8 {
			return 0, errors.New("read perf counter: short read")
		}
		total += int64(binary.NativeEndian.Uint64(b[:]))
	}
	return total, nil
}

func (p *perfCounter) close() {
	for _, fd := range p.fds {
		unix.Close(fd)
	}
	p.fds = nil
}
