package testenv

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// redisReadyTimeout bounds how long Redis and Restart wait for PONG.
const redisReadyTimeout = 10 * time.Second

// RedisProc is a private redis-server on a loopback port. Its methods are
// for the test goroutine.
type RedisProc struct {
	// Addr is "127.0.0.1:<Port>"; it stays the same across Restart.
	Addr string
	Port int

	bin string
	dir string
	out *tailBuffer

	redisServer
}

// redisServer is one redis-server process of a test (Redis, RedisWith,
// the nodes of RedisCluster).
type redisServer struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once cmd has exited and its output is drained
}

// launch starts bin with args, its output to out, and waits until ready
// answers nil (polled every interval), killing it past redisReadyTimeout.
func (p *redisServer) launch(bin string, args []string, out io.Writer, ready func() error, interval time.Duration) error {
	cmd := exec.Command(bin, args...)
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	p.cmd, p.done = cmd, done
	deadline := time.Now().Add(redisReadyTimeout)
	for {
		err := ready()
		if err == nil {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("exited before answering PING: %v", cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			p.kill()
			return fmt.Errorf("no PONG within %v (last: %v)", redisReadyTimeout, err)
		}
		select { // poll interval: the loop re-checks the condition
		case <-done:
		case <-time.After(interval):
		}
	}
}

// running reports whether the current process has not exited (it may be
// stopped by SIGSTOP).
func (p *redisServer) running() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL, like a crash, and waits for the process to exit.
func (p *redisServer) kill() {
	if !p.running() {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// term continues the process if it was stopped, sends SIGTERM, and kills
// it if it has not exited after grace.
func (p *redisServer) term(grace time.Duration) {
	if !p.running() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.kill()
	}
}

// Redis starts a private redis-server on a free loopback port, without
// persistence (--save "" --appendonly no), waits up to 10s until it answers
// PING, and stops it in t.Cleanup (its log is dumped if the test failed).
// If redis-server is not on PATH the test fails: `make test` installs it
// (apt-get install redis-server).
func Redis(t testing.TB) *RedisProc {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("testenv: redis-server not found on PATH (%v); `make test` installs it (apt-get install redis-server)", err)
	}
	r := &RedisProc{bin: bin, dir: t.TempDir(), out: newTailBuffer(64 << 10)}
	t.Cleanup(func() {
		r.Stop()
		if t.Failed() {
			t.Logf("redis-server %s log (tail):\n%s", r.Addr, r.out.String())
		}
	})
	// FreePort is racy: another process may take the port before Redis
	// binds it. Try a few ports.
	for attempt := 1; ; attempt++ {
		r.Port = FreePort(t)
		r.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(r.Port))
		err := r.start()
		if err == nil {
			return r
		}
		if attempt < 3 && strings.Contains(r.out.String(), "Address already in use") {
			continue
		}
		t.Fatalf("testenv: redis-server on %s: %v\n%s", r.Addr, err, r.out.String())
	}
}

// start launches redis-server on r.Port and waits until it answers PING.
func (r *RedisProc) start() error {
	args := []string{
		"--port", strconv.Itoa(r.Port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--daemonize", "no",
		"--dir", r.dir,
		"--logfile", "",
	}
	return r.launch(r.bin, args, r.out, func() error { return ping(r.Addr) }, 10*time.Millisecond)
}

// ping sends one inline PING and expects +PONG.
func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(500 * time.Millisecond)); err != nil {
		return err
	}
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

// Kill sends SIGKILL, like a crash, and waits for the process to exit. It
// does nothing if Redis is not running.
func (r *RedisProc) Kill() { r.kill() }

// Stop shuts Redis down with SIGTERM, waiting up to 10s before SIGKILL. It
// does nothing if Redis is not running.
func (r *RedisProc) Stop() { r.term(10 * time.Second) }

// Restart stops Redis if it is running, then starts a new, empty one on the
// same port and waits until it answers PING. It fails the test if the port
// was taken meanwhile or Redis does not come up within 10s.
func (r *RedisProc) Restart(t testing.TB) {
	t.Helper()
	r.Stop()
	if err := r.start(); err != nil {
		t.Fatalf("testenv: restart redis-server on %s: %v\n%s", r.Addr, err, r.out.String())
	}
}

// tailBuffer is an io.Writer keeping the last max bytes written, safe for
// concurrent use.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func newTailBuffer(max int) *tailBuffer { return &tailBuffer{max: max} }

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.b = append(b.b, p...)
	if over := len(b.b) - b.max; over > 0 {
		b.b = append(b.b[:0], b.b[over:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.b)
}
