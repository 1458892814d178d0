package testenv

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// stopGrace is how long cleanup waits after SIGTERM before SIGKILL.
const stopGrace = 5 * time.Second

// Proc is a started binary whose stdout and stderr lines are captured, in
// the order written, in one log. Its methods are for the test goroutine.
type Proc struct {
	// Name is the binary's base name, used in messages.
	Name string

	cmd  *exec.Cmd
	log  *lineLog
	done chan struct{} // closed after exit, once all output is in log
	err  error         // cmd.Wait's result; read only after done is closed
	next int           // WaitLine's cursor into log
}

// Start starts bin with args. Output is captured line by line; see WaitLine
// and Lines. In t.Cleanup a still-running process gets SIGTERM, then SIGKILL
// after 5s; if the test failed, or the output contains a race detector
// report (which fails the test), the output is logged with t.Log.
func Start(t testing.TB, bin string, args ...string) *Proc {
	t.Helper()
	p := &Proc{
		Name: filepath.Base(bin),
		cmd:  exec.Command(bin, args...),
		log:  newLineLog(),
		done: make(chan struct{}),
	}
	// One comparable writer for both streams: exec then copies them with a
	// single goroutine, which keeps their relative order.
	p.cmd.Stdout = p.log
	p.cmd.Stderr = p.log
	// If the process leaves children holding the pipe open, Wait gives up
	// on the output after this long instead of hanging.
	p.cmd.WaitDelay = 2 * time.Second
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("testenv: start %s: %v (was it built? see Build)", bin, err)
	}
	go func() {
		err := p.cmd.Wait()
		p.log.flush()
		p.err = err
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop()
		lines := p.Lines()
		race := false
		for _, l := range lines {
			if strings.Contains(l, "WARNING: DATA RACE") {
				race = true
				break
			}
		}
		if race {
			t.Errorf("testenv: %s reported a data race", p.Name)
		}
		if race || t.Failed() {
			t.Logf("%s (pid %d) output, %d lines:\n%s", p.Name, p.cmd.Process.Pid, len(lines), strings.Join(lines, "\n"))
		}
	})
	return p
}

// stop ends the process gracefully if it is still running.
func (p *Proc) stop() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopGrace):
		p.Kill()
	}
}

func (p *Proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Pid returns the process ID.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed once the process has exited and its output is captured.
func (p *Proc) Done() <-chan struct{} { return p.done }

// WaitLine waits up to timeout for an output line matching the regexp re
// and returns its submatches (index 0 is the whole match). It looks only at
// lines after the one matched by the previous WaitLine call, so waiting twice
// for the same pattern waits for two occurrences; Lines shows everything.
// It fails the test on timeout, or if the process exits without printing a
// match, listing the output.
func (p *Proc) WaitLine(t testing.TB, re string, timeout time.Duration) []string {
	t.Helper()
	rx, err := regexp.Compile(re)
	if err != nil {
		t.Fatalf("testenv: WaitLine: %v", err)
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		lines, changed := p.log.since(p.next)
		for i, l := range lines {
			if m := rx.FindStringSubmatch(l); m != nil {
				p.next += i + 1
				return m
			}
		}
		p.next += len(lines)
		select {
		case <-changed:
		case <-p.done:
			if lines, _ := p.log.since(p.next); len(lines) > 0 {
				continue // output that arrived with the exit
			}
			t.Fatalf("testenv: %s exited (%v) without a line matching %q; output:\n%s", p.Name, p.err, re, strings.Join(p.Lines(), "\n"))
		case <-timer.C:
			t.Fatalf("testenv: %s: no line matching %q within %v; output:\n%s", p.Name, re, timeout, strings.Join(p.Lines(), "\n"))
		}
	}
}

// Lines returns a copy of every output line seen so far, without newlines.
func (p *Proc) Lines() []string {
	lines, _ := p.log.since(0)
	return lines
}

// Signal sends sig to the process; it fails the test if that fails (e.g.
// the process has already exited).
func (p *Proc) Signal(t testing.TB, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("testenv: signal %v to %s: %v", sig, p.Name, err)
	}
}

// Kill sends SIGKILL and waits for the process to exit. It does nothing if
// the process has already exited.
func (p *Proc) Kill() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Wait waits up to timeout for the process to exit and returns what
// exec.Cmd.Wait returned (nil for exit status 0, *exec.ExitError
// otherwise). It fails the test on timeout.
func (p *Proc) Wait(t testing.TB, timeout time.Duration) error {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return p.err
	case <-timer.C:
		t.Fatalf("testenv: %s did not exit within %v; output:\n%s", p.Name, timeout, strings.Join(p.Lines(), "\n"))
		return nil
	}
}

// lineLog is an io.Writer splitting what is written into lines. Readers get
// a channel that is closed when the next line arrives.
type lineLog struct {
	mu      sync.Mutex
	lines   []string
	partial []byte
	changed chan struct{}
}

func newLineLog() *lineLog { return &lineLog{changed: make(chan struct{})} }

func (l *lineLog) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(b)
	added := false
	for {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			break
		}
		l.partial = append(l.partial, b[:i]...)
		l.lines = append(l.lines, strings.TrimSuffix(string(l.partial), "\r"))
		l.partial = l.partial[:0]
		b = b[i+1:]
		added = true
	}
	l.partial = append(l.partial, b...)
	if added {
		l.notify()
	}
	return n, nil
}

// flush turns an unterminated last line into a line; called after exit.
func (l *lineLog) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.partial) > 0 {
		l.lines = append(l.lines, string(l.partial))
		l.partial = nil
		l.notify()
	}
}

func (l *lineLog) notify() {
	close(l.changed)
	l.changed = make(chan struct{})
}

// since returns a copy of the lines from index i on, and a channel closed
// when more arrive.
func (l *lineLog) since(i int) ([]string, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	if i < len(l.lines) {
		out = append(out, l.lines[i:]...)
	}
	return out, l.changed
}

// String implements fmt.Stringer for debugging.
func (p *Proc) String() string { return fmt.Sprintf("%s[%d]", p.Name, p.cmd.Process.Pid) }
