// Package bench is the load generator behind chat-bench: thousands of plain
// TCP line clients that log in to the message servers and chat, while the
// bench checks every message end to end (delivered, lost, duplicated,
// reordered, latency) and samples the CPU and memory of the processes under
// test. Run drives one run and returns its Report.
package bench

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// Options configures one run. The zero value of every field is documented;
// Run fills defaults where zero means "default".
type Options struct {
	// Servers are the client addresses of the message servers (host:port;
	// their WebSocket addresses when Transport is "ws"). Client i connects
	// to Servers[i%len(Servers)], so the bench knows where every user is
	// logged in. Required.
	Servers []string `json:"servers"`
	// Transport is how clients talk to the servers: TransportTCP (lines)
	// or TransportWS (WebSocket text frames, upgraded on path /). Zero
	// value: TCP.
	Transport string `json:"transport"`
	// Clients is the number of clients (users). Zero means 1000.
	Clients int `json:"clients"`
	// Duration is how long the measured phase lasts (after Warmup). Zero
	// means 10s.
	Duration time.Duration `json:"duration"`
	// Warmup is sent before the measured phase: its messages are checked
	// for loss and order but left out of latency and rates. Zero: none.
	Warmup time.Duration `json:"warmup"`
	// Rate is the total offered message rate over all clients (open loop).
	// Zero means saturation: each client keeps Window messages in flight.
	Rate float64 `json:"rate"`
	// Size is the content size in bytes (the stamp header is at least
	// about 20 bytes; smaller sizes send just the header). Zero means 64.
	Size int `json:"size"`
	// Cross is the fraction of messages sent to a user on another server,
	// 0 to 1. Use CrossSet to make an explicit 0 mean "same-server only";
	// otherwise zero means 0.5.
	Cross    float64 `json:"cross"`
	CrossSet bool    `json:"cross_set"`
	// Window is the number of messages per client in flight (sent and not
	// yet received by the recipient, nor refused with an error) in
	// saturation mode. Zero means 8. A lost message keeps its slot for the
	// rest of the run, so heavy loss throttles the sender; the report's
	// lost count says so.
	Window int `json:"window"`
	// Drain is how long to wait after sending stops for messages still in
	// flight; what has not arrived then is lost. Zero means 5s.
	Drain time.Duration `json:"drain"`
	// Fanout is the number of recipients each client picks (at random,
	// with the Cross mix) and then sends to at random. Zero means 16.
	Fanout int `json:"fanout"`
	// Ack adds an "id" to every chat so servers answer with acks, which
	// are counted. Zero value: no ids, as in the original protocol.
	Ack bool `json:"ack"`
	// Hold logs the clients in and keeps them idle (pinging every Ping)
	// for Duration: no chats. For memory per connection.
	Hold bool `json:"hold"`
	// Ping is the interval at which every client sends a ping. Zero: no
	// pings (in Hold mode zero means 10s).
	Ping time.Duration `json:"ping"`
	// Procs is the number of worker processes holding the clients; 1 runs
	// them in this process. Zero means one per 15,000 clients.
	Procs int `json:"procs"`
	// SrcIPs lists the local source addresses to spread connections over:
	// "" picks enough 127.0.0.x addresses for at most 10,000 clients each
	// when every server is on loopback, else none;
	// "N" is 127.0.0.1 .. 127.0.0.N; "A-B" a range; "A,B,..." a list;
	// "none" never binds.
	SrcIPs string `json:"src_ips"`
	// ConnectConcurrency bounds the connects and logins in progress. Zero
	// means 256.
	ConnectConcurrency int `json:"connect_concurrency"`
	// LoginRate caps new connections per second over all clients. Zero: no
	// cap.
	LoginRate float64 `json:"login_rate"`
	// ConnectTimeout bounds one connect plus login. Zero means 10s.
	ConnectTimeout time.Duration `json:"connect_timeout"`
	// Prefix starts every user name; the client index follows. Zero value:
	// "b" plus the run tag and "-", unique per run, so messages stored for
	// offline users by earlier runs never reach this one.
	Prefix string `json:"prefix"`
	// Seed seeds recipient choice; zero picks one from the clock (the
	// report shows it, so a run can be repeated).
	Seed int64 `json:"seed"`
	// Pids are processes under test to sample from /proc (CPU, RSS,
	// context switches, read and write calls) and perf (system calls).
	Pids []ProcSpec `json:"pids"`
	// NoPerf leaves out the perf counters of the Pids (every system call,
	// and context switches as a check). Zero value: they are opened when
	// the kernel allows it (root, or kernel.perf_event_paranoid <= -1).
	NoPerf bool `json:"no_perf"`
	// Scenario is a label copied into the report.
	Scenario string `json:"scenario"`

	// Progress receives the live one-line progress display every second;
	// nil means none. ProgressTTY redraws one line with '\r' instead of
	// printing a line per second.
	Progress    io.Writer `json:"-"`
	ProgressTTY bool      `json:"-"`
	// Log receives worker processes' stderr and warnings; nil discards.
	Log io.Writer `json:"-"`
	// WorkerCommand is the command started for each worker process (with
	// WorkerEnv set); nil means this executable with no arguments.
	WorkerCommand []string `json:"-"`
}

// ProcSpec names one process to sample.
type ProcSpec struct {
	Name string `json:"name"`
	PID  int    `json:"pid"`
}

// ParsePids parses "name=pid,name=pid".
func ParsePids(s string) ([]ProcSpec, error) {
	var out []ProcSpec
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		name, pid, ok := strings.Cut(f, "=")
		if !ok {
			return nil, fmt.Errorf("bench: -pids entry %q: want name=pid", f)
		}
		n, err := strconv.Atoi(strings.TrimSpace(pid))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("bench: -pids entry %q: bad pid", f)
		}
		out = append(out, ProcSpec{Name: strings.TrimSpace(name), PID: n})
	}
	return out, nil
}

const perProcClients = 15000

// withDefaults returns o with zero fields replaced by their defaults, or an
// error for settings that cannot work.
func (o Options) withDefaults() (Options, error) {
	if len(o.Servers) == 0 {
		return o, errors.New("bench: no servers (-servers)")
	}
	for _, s := range o.Servers {
		if _, _, err := net.SplitHostPort(s); err != nil {
			return o, fmt.Errorf("bench: server address %q: %v", s, err)
		}
	}
	switch o.Transport {
	case "":
		o.Transport = TransportTCP
	case TransportTCP, TransportWS:
	default:
		return o, fmt.Errorf("bench: transport %q: want tcp or ws", o.Transport)
	}
	if o.Clients == 0 {
		o.Clients = 1000
	}
	if o.Duration == 0 {
		o.Duration = 10 * time.Second
	}
	if o.Size == 0 {
		o.Size = 64
	}
	if !o.CrossSet && o.Cross == 0 {
		o.Cross = 0.5
	}
	o.CrossSet = true
	if o.Window == 0 {
		o.Window = 8
	}
	if o.Drain == 0 {
		o.Drain = 5 * time.Second
	}
	if o.Fanout == 0 {
		o.Fanout = 16
	}
	if o.Hold && o.Ping == 0 {
		o.Ping = 10 * time.Second
	}
	if o.Procs == 0 {
		o.Procs = (o.Clients + perProcClients - 1) / perProcClients
	}
	if o.ConnectConcurrency == 0 {
		o.ConnectConcurrency = 256
	}
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = 10 * time.Second
	}
	switch {
	case o.Clients < 1:
		return o, errors.New("bench: -clients must be at least 1")
	case o.Duration < 0 || o.Warmup < 0 || o.Drain < 0 || o.Ping < 0:
		return o, errors.New("bench: durations must not be negative")
	case o.Rate < 0:
		return o, errors.New("bench: -rate must not be negative")
	case o.Size < 0 || o.Size > 1<<20:
		return o, errors.New("bench: -size must be 0 to 1 MiB")
	case o.Cross < 0 || o.Cross > 1:
		return o, errors.New("bench: -cross must be between 0 and 1")
	case o.Window < 1:
		return o, errors.New("bench: -window must be at least 1")
	case o.Fanout < 1 || o.Fanout > 1024:
		return o, errors.New("bench: -fanout must be 1 to 1024")
	case o.Procs < 1 || o.Procs > o.Clients:
		return o, errors.New("bench: -procs must be between 1 and -clients")
	case o.ConnectConcurrency < 1:
		return o, errors.New("bench: -connect-concurrency must be at least 1")
	case len(o.Prefix) > 40 || strings.ContainsAny(o.Prefix, " \t\r\n\"\\"):
		return o, errors.New("bench: -prefix must be at most 40 bytes without spaces, quotes or backslashes")
	}
	if o.Cross > 0 && len(o.Servers) < 2 {
		o.Cross = 0
	}
	if _, err := parseSrcIPs(o.SrcIPs); err != nil {
		return o, err
	}
	return o, nil
}

// mode names the load model.
func (o *Options) mode() string {
	switch {
	case o.Hold:
		return "hold"
	case o.Rate > 0:
		return "rate"
	}
	return "saturation"
}

// parseSrcIPs parses the SrcIPs forms except the automatic "" (nil result).
func parseSrcIPs(s string) ([]net.IP, error) {
	s = strings.TrimSpace(s)
	switch {
	case s == "" || s == "none":
		return nil, nil
	case strings.Contains(s, ","):
		var out []net.IP
		for _, f := range strings.Split(s, ",") {
			ip := net.ParseIP(strings.TrimSpace(f))
			if ip == nil {
				return nil, fmt.Errorf("bench: -src-ips: bad address %q", f)
			}
			out = append(out, ip)
		}
		return out, nil
	case strings.Contains(s, "-"):
		a, b, _ := strings.Cut(s, "-")
		lo, hi := net.ParseIP(strings.TrimSpace(a)).To4(), net.ParseIP(strings.TrimSpace(b)).To4()
		if lo == nil || hi == nil {
			return nil, fmt.Errorf("bench: -src-ips: bad IPv4 range %q", s)
		}
		l, h := ip4int(lo), ip4int(hi)
		if h < l || h-l >= 1<<16 {
			return nil, fmt.Errorf("bench: -src-ips: bad range %q", s)
		}
		var out []net.IP
		for v := l; v <= h; v++ {
			out = append(out, intip4(v))
		}
		return out, nil
	}
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > 254*254 {
			return nil, fmt.Errorf("bench: -src-ips: bad count %d", n)
		}
		return loopbackIPs(n), nil
	}
	ip := net.ParseIP(s)
	if ip == nil {
		return nil, fmt.Errorf("bench: -src-ips: cannot parse %q", s)
	}
	return []net.IP{ip}, nil
}

// loopbackIPs returns n addresses from 127.0.0.1 upward.
func loopbackIPs(n int) []net.IP {
	out := make([]net.IP, n)
	base := ip4int(net.IPv4(127, 0, 0, 1).To4())
	for i := range out {
		out[i] = intip4(base + uint32(i))
	}
	return out
}

func ip4int(ip net.IP) uint32 {
	return uint32(ip[0])<<24 | uint32(ip[1])<<16 | uint32(ip[2])<<8 | uint32(ip[3])
}

func intip4(v uint32) net.IP { return net.IPv4(byte(v>>24), byte(v>>16), byte(v>>8), byte(v)).To4() }

// perAddrLimit is how many connections the bench puts on one source
// address when it picks the addresses itself. One address has ~28,000
// ephemeral ports (32768-60999) shared by every destination, and the
// kernel's search for a free one slows down as they fill: 100,000 clients
// from 127.0.0.1 alone over six servers connected at under 900/s with
// connect timeouts past 80,000, and from ten addresses at 3,200/s.
const perAddrLimit = 10000

// srcIPsFor resolves SrcIPs for a run, including the automatic choice:
// with every server on loopback and more than perAddrLimit clients, enough
// 127.0.0.x addresses that none carries more than perAddrLimit.
func srcIPsFor(o *Options) ([]net.IP, error) {
	if strings.TrimSpace(o.SrcIPs) != "" {
		return parseSrcIPs(o.SrcIPs)
	}
	if o.Clients <= perAddrLimit {
		return nil, nil
	}
	for _, s := range o.Servers {
		host, _, _ := net.SplitHostPort(s)
		ip := net.ParseIP(host)
		if ip == nil || !ip.IsLoopback() {
			return nil, nil
		}
	}
	return loopbackIPs((o.Clients + perAddrLimit - 1) / perAddrLimit), nil
}
