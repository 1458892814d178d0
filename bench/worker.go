package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
)

// WorkerEnv is the environment variable that turns a chat-bench process
// into a worker of another one. The coordinator sets it when it re-executes
// itself; a main function checks IsWorker first thing.
const WorkerEnv = "RELAYCHAT_BENCH_WORKER"

// IsWorker reports whether this process was started as a bench worker.
func IsWorker() bool { return os.Getenv(WorkerEnv) == "1" }

// handle is the coordinator's view of one engine, in this process or in a
// worker process. The coordinator calls connect, then start, then stop,
// then finish, each once and in that order; snapshot may be called any
// time from another goroutine.
type handle interface {
	connect(ctx context.Context) (connectResult, error)
	start(warmup time.Duration)
	// stop closes the measured window and stops sending at once, without
	// waiting; the engine then drains for at most drain.
	stop(drain time.Duration)
	// finish waits for the drain, closes the clients and returns the
	// engine's account.
	finish() (engineResult, error)
	snapshot() tick
	// kill releases everything at once; for error paths.
	kill()
}

// localHandle runs the engine in this process.
type localHandle struct {
	e        *engine
	deadline time.Time
}

func (h *localHandle) connect(ctx context.Context) (connectResult, error) {
	return h.e.connect(ctx), nil
}
func (h *localHandle) start(w time.Duration) { h.e.startSending(w) }
func (h *localHandle) stop(drain time.Duration) {
	h.e.stopSending()
	h.deadline = time.Now().Add(drain)
}
func (h *localHandle) finish() (engineResult, error) {
	h.e.waitSenders()
	h.e.drain(h.deadline)
	return h.e.finish(), nil
}
func (h *localHandle) snapshot() tick { return h.e.snapshot() }
func (h *localHandle) kill()          { h.e.finish() }

// Worker protocol, one JSON object or word per line.
//
//	coordinator -> worker (stdin):  workerSpec, then "go <warmup ns>", then "stop <drain ns>"
//	worker -> coordinator (stdout): workerMsg "ready", then "tick" each second, then "result"
//
// A worker whose stdin closes stops sending, drains briefly and exits: the
// coordinator is gone, so nobody would read its result.
type workerSpec struct {
	Options Options `json:"options"`
	Lo      int     `json:"lo"`
	Hi      int     `json:"hi"`
	Tag     string  `json:"tag"`
	SrcIPs  []string
}

type workerMsg struct {
	T       string        `json:"t"`
	Connect connectResult `json:"connect"`
	Tick    tick          `json:"tick"`
	Result  engineResult  `json:"result"`
	Error   string        `json:"error,omitempty"`
}

// WorkerMain runs this process as a worker: it reads its spec from stdin,
// runs its engine as told and writes its results to stdout. It returns the
// process exit code. SIGINT and SIGTERM are ignored: a Ctrl-C reaches the
// whole process group, and the coordinator decides how the run ends; if
// the coordinator dies, stdin closes and the worker ends on its own.
func WorkerMain() int {
	signal.Ignore(os.Interrupt, syscall.SIGTERM)
	if _, err := RaiseNoFile(); err != nil {
		fmt.Fprintln(os.Stderr, "bench worker:", err)
	}
	if err := runWorker(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench worker:", err)
		return 1
	}
	return 0
}

func runWorker(in io.Reader, out io.Writer) error {
	br := bufio.NewReaderSize(in, 1<<16)
	var spec workerSpec
	line, err := br.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("read spec: %w", err)
	}
	if err := json.Unmarshal(line, &spec); err != nil {
		return fmt.Errorf("decode spec: %w", err)
	}
	var tag [tagLen]byte
	if len(spec.Tag) != tagLen {
		return errors.New("bad tag in spec")
	}
	copy(tag[:], spec.Tag)
	ips, err := parseSrcIPs(strings.Join(spec.SrcIPs, ","))
	if err != nil {
		return err
	}
	e := newEngine(spec.Options, spec.Lo, spec.Hi, tag, ips)

	var wmu sync.Mutex
	enc := json.NewEncoder(out)
	send := func(m workerMsg) error {
		wmu.Lock()
		defer wmu.Unlock()
		return enc.Encode(m)
	}

	// Commands arrive on their own goroutine so that a closed stdin is
	// seen at once, whatever phase the engine is in.
	cmds := make(chan string, 4)
	go func() {
		defer close(cmds)
		for {
			l, err := br.ReadString('\n')
			if s := strings.TrimSpace(l); s != "" {
				cmds <- s
			}
			if err != nil {
				return
			}
		}
	}()
	// Ticks go out every second from the start, so the coordinator's
	// progress line counts this worker's logins too.
	stopTicks := make(chan struct{})
	ticksDone := make(chan struct{})
	go func() {
		defer close(ticksDone)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stopTicks:
				return
			case <-t.C:
			}
			tk := e.snapshot()
			tk.IvalEnc = encodeHist(tk.Ival)
			if send(workerMsg{T: "tick", Tick: tk}) != nil {
				return
			}
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	connDone := make(chan connectResult, 1)
	go func() { connDone <- e.connect(ctx) }()
	var cr connectResult
	pending := ""
wait:
	for {
		select {
		case cr = <-connDone:
			break wait
		case c, ok := <-cmds:
			switch {
			case !ok: // coordinator gone
				cancel()
				cmds = nil
			case strings.HasPrefix(c, "stop"):
				cancel()
				pending = c
			default:
				pending = c
			}
		}
	}
	if err := send(workerMsg{T: "ready", Connect: cr}); err != nil {
		close(stopTicks)
		<-ticksDone
		e.finish()
		return err
	}
	next := func() (string, int64) {
		c := pending
		pending = ""
		if c == "" && cmds != nil {
			var ok bool
			if c, ok = <-cmds; !ok {
				cmds = nil
			}
		}
		if c == "" {
			return "eof", int64(time.Second)
		}
		word, arg, _ := strings.Cut(c, " ")
		v, _ := strconv.ParseInt(arg, 10, 64)
		return word, v
	}
	word, arg := next()
	if word == "go" {
		e.startSending(time.Duration(arg))
		word, arg = next()
		e.stopSending()
		e.waitSenders()
	}
	if word != "stop" {
		arg = int64(time.Second)
	}
	e.drain(time.Now().Add(time.Duration(arg)))
	close(stopTicks)
	<-ticksDone
	res := e.finish()
	// The final tick carries the interval latency the last regular tick
	// missed, so the coordinator's timeline adds up.
	tk := e.snapshot()
	tk.IvalEnc = encodeHist(tk.Ival)
	if err := send(workerMsg{T: "tick", Tick: tk}); err != nil {
		return err
	}
	return send(workerMsg{T: "result", Result: res})
}

// remoteHandle drives a worker process.
type remoteHandle struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser

	ready  chan connectResult // closed without a value if the worker failed
	result chan engineResult  // likewise
	exited chan struct{}      // closed when the worker process has been reaped
	errMu  sync.Mutex
	err    error

	mu   sync.Mutex
	last tick           // latest cumulative counters
	ival *hdr.Histogram // interval latency since the last snapshot
}

// startWorker starts a worker process for clients lo..hi-1.
func startWorker(o Options, lo, hi int, tag [tagLen]byte, ips []string) (*remoteHandle, error) {
	argv := o.WorkerCommand
	if len(argv) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("bench: find own executable for workers: %w", err)
		}
		argv = []string{exe}
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), WorkerEnv+"=1")
	if o.Log != nil {
		cmd.Stderr = o.Log
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start worker: %w", err)
	}
	h := &remoteHandle{
		cmd: cmd, stdin: stdin,
		ready:  make(chan connectResult, 1),
		result: make(chan engineResult, 1),
		exited: make(chan struct{}),
		ival:   newHist(),
	}
	wo := o
	wo.Pids, wo.Progress, wo.Log, wo.WorkerCommand = nil, nil, nil, nil
	spec, _ := json.Marshal(workerSpec{Options: wo, Lo: lo, Hi: hi, Tag: string(tag[:]), SrcIPs: ips})
	go h.readLoop(stdout)
	if _, err := stdin.Write(append(spec, '\n')); err != nil {
		h.kill()
		return nil, fmt.Errorf("bench: send spec to worker: %w", err)
	}
	return h, nil
}

func (h *remoteHandle) setErr(err error) {
	h.errMu.Lock()
	if h.err == nil {
		h.err = err
	}
	h.errMu.Unlock()
}

func (h *remoteHandle) getErr() error {
	h.errMu.Lock()
	defer h.errMu.Unlock()
	if h.err == nil {
		return errors.New("bench: worker exited early")
	}
	return h.err
}

// readLoop reads the worker's messages until its stdout closes, then reaps
// the process.
func (h *remoteHandle) readLoop(r io.Reader) {
	defer close(h.exited)
	gotReady, gotResult := false, false
	defer func() {
		if !gotReady {
			close(h.ready)
		}
		if !gotResult {
			close(h.result)
		}
	}()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for sc.Scan() {
		var m workerMsg
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			h.setErr(fmt.Errorf("bench: worker sent a bad line: %w", err))
			continue
		}
		switch m.T {
		case "ready":
			if !gotReady {
				gotReady = true
				h.ready <- m.Connect
			}
		case "tick":
			h.mu.Lock()
			h.last = m.Tick
			if err := mergeEncoded(h.ival, m.Tick.IvalEnc); err != nil {
				h.setErr(err)
			}
			h.mu.Unlock()
		case "result":
			if !gotResult {
				gotResult = true
				h.result <- m.Result
			}
		}
	}
	if err := h.cmd.Wait(); err != nil {
		h.setErr(fmt.Errorf("bench: worker: %w", err))
	}
}

func (h *remoteHandle) connect(ctx context.Context) (connectResult, error) {
	select {
	case cr, ok := <-h.ready:
		if !ok {
			return cr, h.getErr()
		}
		return cr, nil
	case <-ctx.Done():
		// Closing stdin tells the worker to give up connecting; it then
		// still reports what it connected.
		_, _ = io.WriteString(h.stdin, "stop 0\n")
		cr, ok := <-h.ready
		if !ok {
			return cr, h.getErr()
		}
		return cr, nil
	}
}

func (h *remoteHandle) start(w time.Duration) {
	_, _ = fmt.Fprintf(h.stdin, "go %d\n", int64(w))
}

func (h *remoteHandle) stop(drain time.Duration) {
	_, _ = fmt.Fprintf(h.stdin, "stop %d\n", int64(drain))
}

func (h *remoteHandle) finish() (engineResult, error) {
	r, ok := <-h.result
	h.stdin.Close()
	<-h.exited
	if !ok {
		return r, h.getErr()
	}
	return r, nil
}

func (h *remoteHandle) snapshot() tick {
	h.mu.Lock()
	defer h.mu.Unlock()
	t := h.last
	t.Ival = h.ival
	h.ival = newHist()
	return t
}

func (h *remoteHandle) kill() {
	h.stdin.Close()
	if h.cmd.Process != nil {
		_ = h.cmd.Process.Kill()
	}
	<-h.exited
}
