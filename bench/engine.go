package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"
)

// numShards is the number of lock stripes of an engine's statistics. Each
// shard holds about 220 KiB of HDR histograms, so the count stays modest.
const numShards = 32

// readBufSize is each client's read buffer. Deliveries are a few hundred
// bytes; longer lines are still read whole (readLine).
const readBufSize = 4096

// client is one simulated user: one TCP connection speaking the line
// protocol, or WebSocket. The reader goroutine owns lines; writes go
// through wmu because the sender and the pinger share the connection.
type client struct {
	local int    // index in engine.clients
	idx   int    // global index: name suffix and server choice
	name  string // login name
	srv   int    // index in Options.Servers
	conn  net.Conn
	lines lineSource

	wmu sync.Mutex // serialises writes to conn

	alive atomic.Bool // logged in and not yet disconnected
	// pending counts this client's chats written and neither delivered
	// nor rejected yet (saturation mode's window). The recipient's reader
	// decrements it and pokes wake.
	pending atomic.Int32
	wake    chan struct{} // capacity 1: "pending went down"
}

// pairState is one sender-recipient pair (sender local index s, slot k at
// index s*Fanout+k). sent belongs to the sender's goroutine and rx to the
// recipient's reader goroutine while the run goes on; finish reads both
// after those goroutines have stopped.
type pairState struct {
	recv  int32 // local index of the recipient
	cross bool  // the recipient is on another server
	dead  bool  // the recipient is not logged in: senders skip the pair (set before sending starts)
	sent  uint32
	rx    recvPair
}

// engine runs the clients lo..hi-1 of a run inside one process. Pairs never
// leave the engine, so one monotonic clock (base) times every message.
type engine struct {
	o      Options
	lo, hi int
	tag    [tagLen]byte
	base   time.Time
	srcIPs []net.IP
	ws     bool // Transport is WebSocket

	clients []*client
	pairs   []pairState
	shards  []shard
	errs    reasons

	connected atomic.Int64
	inflight  atomic.Int64 // chats written minus chats delivered (first copy) or rejected
	// unanswered counts chats written with an id (Ack) and not yet acked
	// or rejected: an ack may come after the delivery, and the drain
	// waits for it too.
	unanswered atomic.Int64
	// measureStart and measureEnd (ns since base) bound the measured
	// window; a chat stamped inside it counts for latency, and a delivery
	// arriving inside it counts for throughput. measureEnd is MaxInt64
	// until sending stops.
	measureStart atomic.Int64
	measureEnd   atomic.Int64
	stopping     atomic.Bool // connections are being closed on purpose

	sendStop chan struct{}
	sendWG   sync.WaitGroup
	readWG   sync.WaitGroup

	srvMu  sync.Mutex
	srvIDs map[string]string // server address -> id from the login reply
}

// newEngine prepares clients lo..hi-1 and chooses every pair's recipient,
// deterministically from o.Seed.
func newEngine(o Options, lo, hi int, tag [tagLen]byte, srcIPs []net.IP) *engine {
	n := hi - lo
	e := &engine{
		o: o, lo: lo, hi: hi, tag: tag, base: time.Now(), srcIPs: srcIPs, ws: o.Transport == TransportWS,
		clients:  make([]*client, n),
		shards:   newShards(numShards),
		sendStop: make(chan struct{}),
		srvIDs:   make(map[string]string),
	}
	e.measureStart.Store(0)
	e.measureEnd.Store(1<<63 - 1)
	ns := len(o.Servers)
	for i := range e.clients {
		g := lo + i
		e.clients[i] = &client{local: i, idx: g, name: o.Prefix + strconv.Itoa(g), srv: g % ns, wake: make(chan struct{}, 1)}
	}
	if o.Hold {
		return e
	}
	F := o.Fanout
	e.pairs = make([]pairState, n*F)
	rng := rand.New(rand.NewPCG(uint64(o.Seed), uint64(lo)))
	for i := 0; i < n; i++ {
		s := (lo + i) % ns
		for k := 0; k < F; k++ {
			cross := ns > 1 && rng.Float64() < o.Cross
			r := -1
			for try := 0; try < 64 && n > 1; try++ {
				c := rng.IntN(n)
				if c != i && (((lo+c)%ns != s) == cross) {
					r = c
					break
				}
			}
			if r < 0 { // no candidate of the wanted kind: any other client, or itself when alone
				r = i
				if n > 1 {
					r = (i + 1 + rng.IntN(n-1)) % n
				}
			}
			e.pairs[i*F+k] = pairState{recv: int32(r), cross: (lo+r)%ns != s}
		}
	}
	return e
}

// now is the engine's clock: nanoseconds since base.
func (e *engine) now() int64 { return int64(time.Since(e.base)) }

// connectResult is what the connect phase of one engine measured.
type connectResult struct {
	Attempted int               `json:"attempted"`
	Connected int               `json:"connected"`
	Seconds   float64           `json:"seconds"`
	Dial      string            `json:"dial_hist"`  // encoded histogram, µs
	Login     string            `json:"login_hist"` // encoded histogram, µs
	ServerIDs map[string]string `json:"server_ids"`
}

// connect dials and logs in every client, at most ConnectConcurrency at a
// time and no faster than the engine's share of LoginRate. Failures are
// counted by reason; the run goes on with the clients that made it. Pairs
// towards clients that failed are marked dead. It returns early, with what
// it has, when ctx is done.
func (e *engine) connect(ctx context.Context) connectResult {
	n := len(e.clients)
	start := time.Now()
	var next atomic.Int64
	var mu sync.Mutex
	dialH, loginH := newHist(), newHist()
	rate := 0.0
	if e.o.LoginRate > 0 {
		rate = e.o.LoginRate * float64(n) / float64(e.o.Clients)
	}
	workers := min(e.o.ConnectConcurrency, n)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := int(next.Add(1) - 1)
				if k >= n || ctx.Err() != nil {
					return
				}
				if rate > 0 {
					at := start.Add(time.Duration(float64(k) / rate * float64(time.Second)))
					if d := time.Until(at); d > 0 {
						t := time.NewTimer(d)
						select {
						case <-t.C:
						case <-ctx.Done():
							t.Stop()
							return
						}
					}
				}
				dial, login, err := e.login(ctx, e.clients[k])
				if err != nil {
					if ctx.Err() != nil {
						return // cut short on purpose, not a failure
					}
					e.errs.add(err.Error(), 1)
					e.count(k, func(c *Counters) { c.ConnectErrors++ })
					continue
				}
				mu.Lock()
				record(dialH, dial.Microseconds())
				record(loginH, login.Microseconds())
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for i := range e.pairs {
		if !e.clients[e.pairs[i].recv].alive.Load() {
			e.pairs[i].dead = true
		}
	}
	e.srvMu.Lock()
	ids := make(map[string]string, len(e.srvIDs))
	for k, v := range e.srvIDs {
		ids[k] = v
	}
	e.srvMu.Unlock()
	return connectResult{
		Attempted: min(int(next.Load()), n),
		Connected: int(e.connected.Load()),
		Seconds:   time.Since(start).Seconds(),
		Dial:      encodeHist(dialH),
		Login:     encodeHist(loginH),
		ServerIDs: ids,
	}
}

// srcIP returns the local address client c binds to, or nil. Clients of
// one server take the addresses in turn, so each (source, server) pair
// carries an equal share.
func (e *engine) srcIP(c *client) net.IP {
	if len(e.srcIPs) == 0 {
		return nil
	}
	return e.srcIPs[(c.idx/len(e.o.Servers))%len(e.srcIPs)]
}

// login connects c and logs it in, then starts its reader. It returns the
// time to connect and the time from sending the login to its reply.
func (e *engine) login(ctx context.Context, c *client) (dial, login time.Duration, err error) {
	addr := e.o.Servers[c.srv]
	d := net.Dialer{Timeout: e.o.ConnectTimeout}
	if ip := e.srcIP(c); ip != nil {
		d.LocalAddr = &net.TCPAddr{IP: ip}
		// Without this, bind picks a port unique per source address over
		// all destinations; with it, the kernel picks the port at connect
		// time, unique per (source, destination) pair.
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	t0 := time.Now()
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, 0, fmt.Errorf("connect: %s", errText(err))
	}
	_ = conn.SetDeadline(time.Now().Add(e.o.ConnectTimeout))
	var lines lineSource
	login1 := appendLogin(nil, c.name)
	if e.ws {
		// The opening handshake counts as part of connecting.
		br, err := wsUpgrade(conn, addr)
		if err != nil {
			conn.Close()
			return 0, 0, fmt.Errorf("websocket handshake: %s", errText(err))
		}
		lines = newWSLines(br, conn, &c.wmu)
		login1 = appendWSText(nil, login1, ws.NewMask())
	} else {
		lines = &tcpLines{br: bufio.NewReaderSize(conn, readBufSize)}
	}
	t1 := time.Now()
	if _, err := conn.Write(login1); err != nil {
		conn.Close()
		return 0, 0, fmt.Errorf("login write: %s", errText(err))
	}
	for {
		line, err := lines.next()
		if err != nil {
			conn.Close()
			return 0, 0, fmt.Errorf("login read: %s", errText(err))
		}
		cmd, _, _ := jsonField(line, keyCmd)
		switch string(cmd) {
		case "login":
			if ok, _, _ := jsonField(line, keyOK); string(ok) != "true" {
				conn.Close()
				return 0, 0, errors.New("login refused")
			}
			if id, ok := jsonText(line, keyServer); ok {
				e.srvMu.Lock()
				if len(e.srvIDs) < 1024 {
					e.srvIDs[addr] = id
				}
				e.srvMu.Unlock()
			}
		case "error":
			reason, _ := jsonText(line, keyError)
			conn.Close()
			return 0, 0, fmt.Errorf("login error: %s", reason)
		default:
			continue
		}
		break
	}
	t2 := time.Now()
	_ = conn.SetDeadline(time.Time{})
	c.conn, c.lines = conn, lines
	c.alive.Store(true)
	e.connected.Add(1)
	e.readWG.Add(1)
	go e.readLoop(c)
	return t1.Sub(t0), t2.Sub(t1), nil
}

// errText shortens network errors to a reason that groups well: the
// addresses in *net.OpError differ per connection.
func errText(err error) string {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		err = op.Err
	}
	var se *os.SyscallError
	if errors.As(err, &se) {
		err = se.Err
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return "timeout"
	}
	return err.Error()
}

// readLoop reads c's lines until the connection closes.
func (e *engine) readLoop(c *client) {
	defer e.readWG.Done()
	for {
		line, err := c.lines.next()
		if err != nil {
			if c.alive.Swap(false) && !e.stopping.Load() {
				e.errs.add("disconnected: "+errText(err), 1)
				e.count(c.local, func(c *Counters) { c.Disconnects++ })
			}
			return
		}
		if len(line) > 0 {
			e.handle(c, line)
		}
	}
}

var (
	keySend = []byte(`"send"`)
	cmdChat = []byte(`{"cmd":"chat"`)
)

// handle processes one line received by c.
func (e *engine) handle(c *client, line []byte) {
	var cmd []byte
	if len(line) >= len(cmdChat) && string(line[:len(cmdChat)]) == string(cmdChat) {
		cmd = cmdChat[8:12]
	} else {
		cmd, _, _ = jsonField(line, keyCmd)
	}
	switch string(cmd) {
	case "chat":
		e.delivery(c, line)
	case "pong":
		var rtt int64 = -1
		if id, isStr, ok := jsonField(line, keyID); ok && !isStr {
			if v, err := strconv.ParseInt(string(id), 10, 64); err == nil && v > 0 {
				rtt = (e.now() - v) / 1000
			}
		}
		sh := e.lockShard(c.local)
		sh.c.Pongs++
		if rtt >= 0 {
			record(sh.ping, rtt)
		}
		sh.mu.Unlock()
	case "ack":
		e.unanswered.Add(-1)
		e.count(c.local, func(c *Counters) { c.Acked++ })
	case "error":
		// Pings and logins never fail, so an error after login rejects
		// one chat of c's: free its window slot.
		reason, _ := jsonText(line, keyError)
		e.errs.add("server error: "+reason, 1)
		e.count(c.local, func(c *Counters) { c.Rejected++ })
		e.inflight.Add(-1)
		if e.o.Ack {
			e.unanswered.Add(-1)
		}
		e.release(c)
	case "kicked":
		reason, _ := jsonText(line, keyReason)
		e.errs.add("kicked: "+reason, 1)
		e.count(c.local, func(c *Counters) { c.Kicked++ })
	default:
		e.errs.add("unexpected line: "+string(line[:min(len(line), 80)]), 1)
		e.count(c.local, func(c *Counters) { c.Foreign++ })
	}
}

// lockShard locks a statistics shard and returns it; the caller unlocks
// it. Every reader of the statistics merges all shards, so any shard will
// do: it tries them all, starting at home, before waiting for home's. With
// thousands of runnable goroutines on two cores, each hand-off of a
// contended mutex waits for its new owner to come round a long run queue.
func (e *engine) lockShard(home int) *shard {
	for i := 0; i < numShards; i++ {
		sh := &e.shards[(home+i)%numShards]
		if sh.mu.TryLock() {
			return sh
		}
	}
	sh := &e.shards[home%numShards]
	sh.mu.Lock()
	return sh
}

// count applies f to the counters of a shard; for rare events.
func (e *engine) count(home int, f func(*Counters)) {
	sh := e.lockShard(home)
	f(&sh.c)
	sh.mu.Unlock()
}

// release frees one of c's window slots (saturation mode).
func (e *engine) release(c *client) {
	c.pending.Add(-1)
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// delivery checks one chat delivered to c.
func (e *engine) delivery(c *client, line []byte) {
	now := e.now()
	content, _, ok := jsonField(line, keyContent)
	var st stamp
	if ok {
		st, ok = parseContent(content, &e.tag)
	}
	F := e.o.Fanout
	s := st.sender - e.lo
	if !ok || s < 0 || s >= len(e.clients) || st.slot >= F || e.pairs == nil {
		e.errs.add("delivery not sent by this run", 1)
		e.count(c.local, func(c *Counters) { c.Foreign++ })
		return
	}
	p := &e.pairs[s*F+st.slot]
	if int(p.recv) != c.local {
		e.errs.add("delivered to the wrong recipient", 1)
		e.count(c.local, func(c *Counters) { c.Misrouted++ })
		return
	}
	if send, _, ok := jsonField(line, keySend); !ok || string(send) != e.clients[s].name {
		e.errs.add("delivery with a wrong send field", 1)
		e.count(c.local, func(c *Counters) { c.Errors++ })
	}
	kind := p.rx.receive(st.seq)
	lat := (now - st.ts) / 1000
	measured := st.ts >= e.measureStart.Load() && st.ts < e.measureEnd.Load()
	inWindow := now >= e.measureStart.Load() && now < e.measureEnd.Load()
	sh := e.lockShard(c.local)
	switch kind {
	case recvInOrder, recvAfterGap, recvLate:
		sh.c.Delivered++
		if kind == recvLate {
			sh.c.Reordered++
		}
		if measured {
			sh.c.DeliveredMeasured++
			record(sh.lat, lat)
		}
		if inWindow {
			sh.c.DeliveredInWindow++
		}
		record(sh.ival, lat)
	case recvDup:
		sh.c.Duplicated++
	default:
		sh.c.Foreign++
	}
	sh.mu.Unlock()
	if kind.unique() {
		e.inflight.Add(-1)
		e.release(e.clients[s])
	} else if kind == recvInvalid {
		e.errs.add("delivery with sequence number 0", 1)
	}
}

// startSending starts the senders (chats unless Hold) and the pinger. The
// measured window opens warmup from now.
func (e *engine) startSending(warmup time.Duration) {
	e.measureStart.Store(e.now() + int64(warmup))
	if e.o.Ping > 0 {
		e.sendWG.Add(1)
		go e.pinger()
	}
	if e.o.Hold {
		return
	}
	for _, c := range e.clients {
		if !c.alive.Load() {
			continue
		}
		e.sendWG.Add(1)
		go e.sender(c)
	}
}

// stopSending closes the measured window and tells every sender and the
// pinger to stop; it does not wait for them (waitSenders does).
func (e *engine) stopSending() {
	if e.measureEnd.CompareAndSwap(1<<63-1, e.now()) {
		close(e.sendStop)
	}
}

// waitSenders returns once the senders and the pinger have exited. Writes
// blocked on a server that does not read are cut by a past write deadline;
// the chats they did not finish writing are rolled back (counted as
// unsent, not lost).
func (e *engine) waitSenders() {
	done := make(chan struct{})
	go func() { e.sendWG.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-time.After(200 * time.Millisecond):
	}
	for _, c := range e.clients {
		if c.conn != nil {
			_ = c.conn.SetWriteDeadline(time.Unix(1, 0))
		}
	}
	<-done
}

// windowSeconds is the length of the measured window once it has closed.
func (e *engine) windowSeconds() float64 {
	end := e.measureEnd.Load()
	if end == 1<<63-1 || end < e.measureStart.Load() {
		return 0
	}
	return float64(end-e.measureStart.Load()) / 1e9
}

// outMsg is one chat in a sender's write batch.
type outMsg struct {
	pair     int    // index in engine.pairs
	seq      uint32 // its sequence number in the pair
	end      int    // offset just past its line in the batch
	measured bool
	cross    bool
}

// sender is c's chat loop: open loop at a fixed period when Rate > 0,
// otherwise a window of Window chats in flight. In open loop a chat is
// stamped with the time it was due, not the time it went out, so a bench
// or server that falls behind shows up as latency (no coordinated
// omission).
func (e *engine) sender(c *client) {
	defer e.sendWG.Done()
	F := e.o.Fanout
	var slots []int
	for k := 0; k < F; k++ {
		if !e.pairs[c.local*F+k].dead {
			slots = append(slots, k)
		}
	}
	if len(slots) == 0 {
		return
	}
	rng := rand.New(rand.NewPCG(uint64(e.o.Seed)^0x9e3779b97f4a7c15, uint64(c.idx)))
	var buf, line []byte
	var batch []outMsg
	var id uint64
	add := func(ts int64) {
		k := slots[rng.IntN(len(slots))]
		pi := c.local*F + k
		p := &e.pairs[pi]
		p.sent++
		st := stamp{sender: c.idx, slot: k, seq: p.sent, ts: ts}
		id++
		if e.ws {
			line = appendChat(line[:0], e.clients[p.recv].name, &e.tag, st, e.o.Size, id, e.o.Ack)
			buf = appendWSText(buf, line, maskOf(rng.Uint32()))
		} else {
			buf = appendChat(buf, e.clients[p.recv].name, &e.tag, st, e.o.Size, id, e.o.Ack)
		}
		batch = append(batch, outMsg{pair: pi, seq: p.sent, end: len(buf), measured: ts >= e.measureStart.Load() && ts < e.measureEnd.Load(), cross: p.cross})
	}
	flush := func() bool {
		if len(batch) == 0 {
			return true
		}
		c.wmu.Lock()
		n, err := c.conn.Write(buf)
		c.wmu.Unlock()
		e.wrote(c, batch, n, err)
		buf, batch = buf[:0], batch[:0]
		return err == nil
	}
	if e.o.Rate <= 0 {
		for {
			free := int(int32(e.o.Window) - c.pending.Load())
			for i := 0; i < free; i++ {
				add(e.now())
			}
			c.pending.Add(int32(len(batch)))
			e.inflight.Add(int64(len(batch)))
			if !flush() {
				return
			}
			select {
			case <-c.wake:
			case <-e.sendStop:
				return
			}
		}
	}
	period := float64(e.o.Clients) / e.o.Rate * float64(time.Second)
	due := float64(e.now()) + rng.Float64()*period
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		now := e.now()
		for float64(now) >= due && len(batch) < 1024 {
			add(int64(due))
			due += period
		}
		e.inflight.Add(int64(len(batch)))
		if !flush() {
			return
		}
		timer.Reset(time.Duration(due - float64(e.now())))
		select {
		case <-timer.C:
		case <-e.sendStop:
			return
		}
	}
}

// wrote settles a batch after Write returned n, err: the chats wholly
// written count as sent; the rest are rolled back so they are neither
// lost nor in flight. A failed write ends the client.
func (e *engine) wrote(c *client, batch []outMsg, n int, err error) {
	var sent, measured, cross int64
	for i := range batch {
		if batch[i].end <= n {
			sent++
			if batch[i].measured {
				measured++
			}
			if batch[i].cross {
				cross++
			}
		}
	}
	unsent := int64(len(batch)) - sent
	for i := len(batch) - 1; i >= int(sent); i-- {
		// Seqs of one pair rise through the batch, so the earliest unsent
		// one is assigned last: the pair resumes just before it.
		e.pairs[batch[i].pair].sent = batch[i].seq - 1
	}
	if unsent > 0 {
		e.inflight.Add(-unsent)
		if e.o.Rate <= 0 {
			c.pending.Add(-int32(unsent))
		}
	}
	if e.o.Ack {
		e.unanswered.Add(sent)
	}
	sh := e.lockShard(c.local)
	sh.c.Sent += sent
	sh.c.SentMeasured += measured
	sh.c.SentCross += cross
	sh.c.Unsent += unsent
	sh.mu.Unlock()
	if err != nil && !e.stopping.Load() {
		select {
		case <-e.sendStop: // cut on purpose by stopSending
		default:
			if c.alive.Swap(false) {
				e.errs.add("write: "+errText(err), 1)
				e.count(c.local, func(c *Counters) { c.Disconnects++ })
			}
		}
	}
}

// pinger pings every live client once per Ping interval, spread evenly over
// the interval. A ping's id is its send time, so the pong gives the round
// trip.
func (e *engine) pinger() {
	defer e.sendWG.Done()
	n := len(e.clients)
	start := time.Now()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	sent := 0
	var buf, frame []byte
	for {
		select {
		case <-e.sendStop:
			return
		case <-tick.C:
		}
		due := int(float64(time.Since(start)) / float64(e.o.Ping) * float64(n))
		for ; sent < due; sent++ {
			select {
			case <-e.sendStop:
				return
			default:
			}
			c := e.clients[sent%n]
			if !c.alive.Load() {
				continue
			}
			buf = append(buf[:0], `{"cmd":"ping","id":`...)
			buf = strconv.AppendInt(buf, e.now(), 10)
			buf = append(buf, "}\n"...)
			if e.ws {
				frame = appendWSText(frame[:0], buf, ws.NewMask())
				buf, frame = frame, buf
			}
			// Counted before the write, so a fast pong never finds more
			// pongs than pings; a failed write takes it back.
			e.count(c.local, func(c *Counters) { c.PingsSent++ })
			c.wmu.Lock()
			_, err := c.conn.Write(buf)
			c.wmu.Unlock()
			if err != nil {
				e.count(c.local, func(c *Counters) { c.PingsSent-- })
			}
		}
	}
}

// drain waits until every chat written has been delivered or rejected (and
// answered, with acks), or until deadline.
func (e *engine) drain(deadline time.Time) {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for (e.inflight.Load() > 0 || e.unanswered.Load() > 0) && time.Now().Before(deadline) {
		<-t.C
	}
}

// engineResult is an engine's final account.
type engineResult struct {
	Counters Counters         `json:"counters"`
	Lost     int64            `json:"lost"`
	Latency  string           `json:"latency_hist"`
	Ping     string           `json:"ping_hist"`
	Errors   map[string]int64 `json:"errors"`
	// Window is the length of the engine's measured window in seconds (0
	// when sending never started).
	Window float64 `json:"window_s"`
}

// finish closes every connection, waits for the readers and counts what
// never arrived. Call it after waitSenders (or instead of it when sending
// never started).
func (e *engine) finish() engineResult {
	e.stopping.Store(true)
	for _, c := range e.clients {
		if c.conn != nil {
			c.conn.Close()
		}
	}
	e.readWG.Wait()
	var r engineResult
	lat, ping := newHist(), newHist()
	for i := range e.shards {
		sh := &e.shards[i]
		sh.mu.Lock()
		r.Counters.add(&sh.c)
		lat.Merge(sh.lat)
		ping.Merge(sh.ping)
		sh.mu.Unlock()
	}
	for i := range e.pairs {
		r.Lost += e.pairs[i].rx.missing(e.pairs[i].sent)
	}
	r.Latency, r.Ping = encodeHist(lat), encodeHist(ping)
	r.Errors = e.errs.snapshot()
	r.Window = e.windowSeconds()
	return r
}

// tick is a progress snapshot: cumulative counters plus the latency of the
// deliveries since the previous snapshot.
type tick struct {
	Counters  Counters       `json:"counters"`
	Connected int64          `json:"connected"`
	Inflight  int64          `json:"inflight"`
	Ival      *hdr.Histogram `json:"-"`
	IvalEnc   string         `json:"ival,omitempty"`
}

// snapshot takes a tick and resets the interval histograms.
func (e *engine) snapshot() tick {
	t := tick{Ival: newHist(), Connected: e.connected.Load(), Inflight: e.inflight.Load()}
	for i := range e.shards {
		sh := &e.shards[i]
		sh.mu.Lock()
		t.Counters.add(&sh.c)
		t.Ival.Merge(sh.ival)
		sh.ival.Reset()
		sh.mu.Unlock()
	}
	t.Connected -= t.Counters.Disconnects
	return t
}
