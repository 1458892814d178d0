// Command chat-bench is the load generator of the chat servers: it logs in
// thousands of plain TCP line clients (the bytes a telnet user types), or
// WebSocket clients with -transport ws, has them chat, checks every message
// end to end and prints a report.
//
//	chat-bench -servers 127.0.0.1:9501,127.0.0.1:9502 -clients 5000 -duration 10s
//
// -scenario picks a preset (mixed, cross, local, hold, anchor, latency,
// floor); flags given explicitly override it. With -relay it is instead the
// floor relay that SCENARIO=floor runs the anchor load against. The first Ctrl-C stops the run and
// still prints what was measured; a second one exits at once.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/relaychat/relaychat/bench"
	"github.com/relaychat/relaychat/internal/cli"
)

// scenarios are presets of flag values; explicit flags win over them.
var scenarios = map[string]struct {
	doc  string
	args map[string]string
}{
	"mixed": {"5,000 clients at saturation (8 in flight each), half the chats cross servers",
		map[string]string{"clients": "5000", "rate": "0", "window": "8", "cross": "0.5", "duration": "10s", "warmup": "2s"}},
	"cross": {"like mixed, every chat crosses servers (through the proxy)",
		map[string]string{"clients": "5000", "rate": "0", "window": "8", "cross": "1", "duration": "10s", "warmup": "2s"}},
	"local": {"like mixed, every chat stays on its server (cross / local = the proxy's cost)",
		map[string]string{"clients": "5000", "rate": "0", "window": "8", "cross": "0", "duration": "10s", "warmup": "2s"}},
	"hold": {"18,000 idle clients pinging every 10s for 20s: memory per connection",
		map[string]string{"clients": "18000", "hold": "true", "ping": "10s", "duration": "20s"}},
	"trickle": {"18,000 clients each sending a chat every 10s (1,800 msg/s), half crossing: memory per connection in use",
		map[string]string{"clients": "18000", "rate": "1800", "size": "64", "cross": "0.5", "duration": "20s", "warmup": "5s"}},
	"anchor": {"the NATS comparison workload: 2,000 clients, 8 in flight, 64 B, half crossing",
		map[string]string{"clients": "2000", "rate": "0", "window": "8", "size": "64", "cross": "0.5", "duration": "10s", "warmup": "2s"}},
	"latency": {"2,000 clients offering 20,000 msg/s in open loop, half crossing: latency at load",
		map[string]string{"clients": "2000", "rate": "20000", "size": "64", "cross": "0.5", "duration": "10s", "warmup": "2s"}},
	"floor": {"the anchor load against the minimal relay (chat-bench -relay): the machine's floor cost per message",
		map[string]string{"clients": "2000", "rate": "0", "window": "8", "size": "64", "cross": "0.5", "duration": "10s", "warmup": "2s"}},
}

func main() {
	if bench.IsWorker() {
		os.Exit(bench.WorkerMain())
	}
	os.Exit(run())
}

func run() int {
	fs := flag.NewFlagSet("chat-bench", flag.ContinueOnError)
	var (
		servers   = fs.String("servers", "127.0.0.1:9501,127.0.0.1:9502", "client `addresses` of the message servers, comma list (their -ws-listen addresses with -transport ws); client i uses server i mod n")
		transport = fs.String("transport", "tcp", "tcp (JSON lines) or ws (WebSocket: one text frame per request, one JSON object per frame received)")
		clients   = fs.Int("clients", 1000, "number of clients (users)")
		duration  = fs.Duration("duration", 10*time.Second, "length of the measured phase (the hold in -hold mode)")
		rate      = fs.Float64("rate", 0, "total offered chats per second (open loop); 0 = saturation, each client keeps -window chats in flight")
		size      = fs.Int("size", 64, "content bytes per chat (at least the ~40-byte stamp)")
		jsonOut   = fs.Bool("json", false, "print the machine-readable report on stdout (the text report then goes to stderr)")
		cross     = fs.Float64("cross", 0.5, "fraction of chats to a user on another server, 0 to 1")
		window    = fs.Int("window", 8, "chats in flight per client in saturation mode")
		warmup    = fs.Duration("warmup", 0, "chat this long before measuring (checked, not timed)")
		drain     = fs.Duration("drain", 5*time.Second, "after sending stops, wait at most this long for chats in flight; what is missing then is lost")
		fanout    = fs.Int("fanout", 16, "recipients per client (each chat goes to one of them at random)")
		ack       = fs.Bool("ack", false, "put an id on every chat so the server acks it (acks are counted)")
		hold      = fs.Bool("hold", false, "log in and stay idle (pinging) for -duration: memory per connection")
		ping      = fs.Duration("ping", 0, "ping interval per client; 0 = none (10s in -hold mode)")
		procs     = fs.Int("procs", 0, "worker processes holding the clients; 0 = one per 15,000 clients")
		srcIPs    = fs.String("src-ips", "", `local source addresses: "" = automatic (one 127.0.0.x per 10,000 clients when the servers are on loopback), "N" = 127.0.0.1..N, "A-B", "A,B,...", "none"`)
		pids      = fs.String("pids", "", "processes under test to sample, `name=pid,...` (CPU, RSS, context switches, system calls); names s1, s2, ... are summed as the servers")
		syscalls  = fs.Bool("syscalls", true, "count every system call of the -pids processes with perf counters (needs root or kernel.perf_event_paranoid <= -1; costs them ~80 ns per call); read and write calls from /proc are counted anyway")
		htmlOut   = fs.String("html", "", "write a self-contained HTML report to `file`")
		jsonFile  = fs.String("json-file", "", "also write the JSON report to `file`")
		scenario  = fs.String("scenario", "", "preset: "+scenarioNames()+"; explicit flags override it")
		concur    = fs.Int("connect-concurrency", 256, "connects plus logins in progress at once")
		loginRate = fs.Float64("login-rate", 0, "cap on new connections per second; 0 = none")
		cTimeout  = fs.Duration("connect-timeout", 10*time.Second, "limit for one connect plus login")
		prefix    = fs.String("prefix", "", "user name prefix; default b<run tag>- (unique per run)")
		seed      = fs.Int64("seed", 0, "seed of the recipient choice; 0 = from the clock (the report shows it)")
		quiet     = fs.Bool("quiet", false, "no live progress line")
		cpuProf   = fs.String("cpuprofile", "", "write a CPU profile of this process (not its workers) to `file`")
		relay     = fs.String("relay", "", "run as the floor relay instead (SCENARIO=floor): listen on these `addresses` (comma list, port 0 = free) until SIGINT/SIGTERM")
		relayN    = fs.Int("relay-loops", 0, "event loops of -relay; 0 = GOMAXPROCS")
		relayImpl = fs.String("relay-impl", "epoll", "transport of -relay: epoll (event loops on raw epoll, the floor) or net (Go's net package, a goroutine per connection, to compare)")
		compare   = fs.String("compare", "", "print the comparison of interleaved runs instead: JSON reports (-json-file) `a1,b1,a2,b2,...`, a table per pair and the medians")
	)
	fs.Usage = func() {
		out := fs.Output()
		fmt.Fprintf(out, "Usage: chat-bench [flags]\n\nLogs in -clients line clients over -servers, chats, checks every message\n(delivered, lost, duplicated, reordered, latency) and prints a report.\n\nScenarios (-scenario):\n")
		for _, n := range sortedScenarios() {
			fmt.Fprintf(out, "  %-8s %s\n", n, scenarios[n].doc)
		}
		fmt.Fprintf(out, "\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "chat-bench: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if *relay != "" {
		return runRelay(cli.SplitList(*relay), *relayImpl, *relayN)
	}
	if *compare != "" {
		return runCompare(cli.SplitList(*compare))
	}
	if *scenario != "" {
		sc, ok := scenarios[*scenario]
		if !ok {
			fmt.Fprintf(os.Stderr, "chat-bench: unknown scenario %q (have %s)\n", *scenario, scenarioNames())
			return 2
		}
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		for name, v := range sc.args {
			if !set[name] {
				if err := fs.Set(name, v); err != nil {
					fmt.Fprintf(os.Stderr, "chat-bench: scenario %s: %v\n", *scenario, err)
					return 2
				}
			}
		}
	}
	pidList, err := bench.ParsePids(*pids)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chat-bench:", err)
		return 2
	}
	o := bench.Options{
		Servers: cli.SplitList(*servers), Transport: *transport, Clients: *clients, Duration: *duration,
		Warmup: *warmup, Rate: *rate, Size: *size, Cross: *cross, CrossSet: true,
		Window: *window, Drain: *drain, Fanout: *fanout, Ack: *ack, Hold: *hold,
		Ping: *ping, Procs: *procs, SrcIPs: *srcIPs, ConnectConcurrency: *concur,
		LoginRate: *loginRate, ConnectTimeout: *cTimeout, Prefix: *prefix, Seed: *seed,
		Pids: pidList, NoPerf: !*syscalls, Scenario: *scenario, Log: os.Stderr,
	}
	if !*quiet {
		o.Progress = os.Stderr
		if fi, err := os.Stderr.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			o.ProgressTTY = true
		}
	}

	// First signal: stop and report. Second: leave at once.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		fmt.Fprintln(os.Stderr, "\nchat-bench: stopping (press Ctrl-C again to quit at once)")
		cancel()
		<-sigs
		os.Exit(130)
	}()

	if *cpuProf != "" {
		f, err := os.Create(*cpuProf)
		if err != nil {
			fmt.Fprintln(os.Stderr, "chat-bench:", err)
			return 1
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "chat-bench:", err)
			return 1
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	r, err := bench.Run(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chat-bench:", err)
		return 1
	}
	textOut := os.Stdout
	if *jsonOut {
		textOut = os.Stderr
	}
	_ = r.WriteText(textOut)
	if *jsonOut || *jsonFile != "" {
		b, err := json.MarshalIndent(r, "", "  ")
		if err != nil {
			fmt.Fprintln(os.Stderr, "chat-bench: json:", err)
			return 1
		}
		b = append(b, '\n')
		if *jsonOut {
			_, _ = os.Stdout.Write(b)
		}
		if *jsonFile != "" {
			if err := os.WriteFile(*jsonFile, b, 0o644); err != nil {
				fmt.Fprintln(os.Stderr, "chat-bench:", err)
				return 1
			}
		}
	}
	if *htmlOut != "" {
		if err := writeHTML(*htmlOut, r); err != nil {
			fmt.Fprintln(os.Stderr, "chat-bench:", err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "chat-bench: HTML report in %s\n", *htmlOut)
	}
	if r.Interrupted {
		return 130
	}
	return 0
}

// runRelay serves as the floor relay until SIGINT or SIGTERM. It logs
// each listener as the servers do (msg="relay listener ready" addr=...),
// so scripts find the addresses the same way.
func runRelay(addrs []string, impl string, loops int) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	var r *bench.Relay
	var err error
	switch impl {
	case "epoll":
		r, err = bench.StartRelay(addrs, loops)
	case "net":
		r, err = bench.StartNetRelay(addrs)
	default:
		err = fmt.Errorf("-relay-impl %q: want epoll or net", impl)
	}
	if err != nil {
		log.Error("relay failed to start", "err", err)
		return 1
	}
	for _, a := range r.Addrs() {
		log.Info("relay listener ready", "addr", a, "impl", impl)
	}
	<-sigs
	r.Close()
	d, f := r.Stats()
	log.Info("relay stopped", "delivered", d, "recipient_not_online", f)
	return 0
}

// runCompare prints the pair tables of the reports in files.
func runCompare(files []string) int {
	var runs []*bench.Report
	for _, f := range files {
		r, err := bench.ReadReport(f)
		if err != nil {
			fmt.Fprintln(os.Stderr, "chat-bench:", err)
			return 1
		}
		runs = append(runs, r)
	}
	if err := bench.WritePairs(os.Stdout, runs); err != nil {
		fmt.Fprintln(os.Stderr, "chat-bench:", err)
		return 2
	}
	return 0
}

func writeHTML(path string, r *bench.Report) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := r.WriteHTML(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func sortedScenarios() []string {
	var n []string
	for k := range scenarios {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

func scenarioNames() string { return strings.Join(sortedScenarios(), ", ") }
