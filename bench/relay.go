package bench

import (
	"bytes"
	"strconv"
	"sync"
	"sync/atomic"
)

// The floor relay of SCENARIO=floor: the least work a process can do to
// relay the bench's chats on this machine, so that its CPU, context
// switches and system calls per delivered message sit next to the real
// system's in the same report.
//
// It speaks just enough of the client protocol for the load generator's
// own code path: login (answered in the server's shape), chat and ping.
// Per readiness of a connection it does one read of whatever is there and
// splits it into lines; per chat one scan for "recv" (no other JSON
// decoding) and one write of the delivery straight to the recipient's
// socket: no batching across recipients, no queue in between, no Redis,
// no second server, no mailbox. Chats with an "id" are acked.
//
// Two transports share this protocol core: StartRelay (epoll, the one
// bench.sh uses) and StartNetRelay (Go's net package, a goroutine per
// connection, for comparison).

// Relay is a running floor relay.
type Relay struct {
	addrs     []string
	stats     []*relayStats
	closeFn   func()
	closeOnce sync.Once
}

// Addrs returns the bound listener addresses, in the order given.
func (r *Relay) Addrs() []string { return r.addrs }

// Stats returns the chats delivered and refused (recipient not online) so
// far.
func (r *Relay) Stats() (delivered, refused int64) {
	for _, s := range r.stats {
		delivered += s.delivered.Load()
		refused += s.refused.Load()
	}
	return
}

// Close stops serving and closes every socket.
func (r *Relay) Close() error {
	r.closeOnce.Do(r.closeFn)
	return nil
}

// relayStats counts chats; each event loop has its own, so counting
// shares no cache line between cores.
type relayStats struct {
	delivered, refused atomic.Int64
	_                  [48]byte
}

// relaySender is a connection the relay may write to from any goroutine:
// send writes b at once or keeps a copy for later.
type relaySender interface{ send(b []byte) }

// relayHub is the registry of logged-in names.
type relayHub struct {
	mu    sync.RWMutex
	users map[string]relaySender
}

// relaySession is one connection's state; only its reader touches it.
type relaySession struct {
	self relaySender
	name string
}

var (
	keyRecv    = []byte(`"recv"`)
	keyName    = []byte(`"name"`)
	chatPrefix = []byte(`{"cmd":"chat",`)
)

// handle answers one request line of s. ts is the receive time (unix ms)
// for deliveries; out is scratch space, returned for reuse.
func (h *relayHub) handle(s *relaySession, line []byte, ts int64, out []byte, st *relayStats) []byte {
	if bytes.HasPrefix(line, chatPrefix) {
		return h.chat(s, line, ts, out, st)
	}
	cmd, _, _ := jsonField(line, keyCmd)
	switch string(cmd) {
	case "chat":
		return h.chat(s, line, ts, out, st)
	case "login":
		name, isStr, ok := jsonField(line, keyName)
		if !ok || !isStr || len(name) == 0 || s.name != "" {
			return relayError(s, line, "bad login", out)
		}
		s.name = string(name)
		h.mu.Lock()
		h.users[s.name] = s.self
		h.mu.Unlock()
		out = append(out[:0], `{"cmd":"login","ok":true,"name":"`...)
		out = append(out, name...)
		out = append(out, `","server":"relay"}`+"\n"...)
		s.self.send(out)
	case "ping":
		out = append(out[:0], `{"cmd":"pong"`...)
		if id, isStr, ok := jsonField(line, keyID); ok {
			out = appendID(append(out, `,"id":`...), id, isStr)
		}
		out = append(out, "}\n"...)
		s.self.send(out)
	default:
		return relayError(s, line, "unknown cmd", out)
	}
	return out
}

// chat delivers one chat line: the request with "send" put in front and
// "ts" at the end, in one write to the recipient.
func (h *relayHub) chat(s *relaySession, line []byte, ts int64, out []byte, st *relayStats) []byte {
	if s.name == "" {
		return relayError(s, line, "not logged in", out)
	}
	recv, _, ok := jsonField(line, keyRecv)
	end := bytes.LastIndexByte(line, '}')
	if !ok || end < len(chatPrefix) || !bytes.HasPrefix(line, chatPrefix) {
		return relayError(s, line, "missing recv", out)
	}
	h.mu.RLock()
	to := h.users[string(recv)]
	h.mu.RUnlock()
	if to == nil {
		st.refused.Add(1)
		return relayError(s, line, "recipient not online", out)
	}
	out = append(out[:0], `{"cmd":"chat","send":"`...)
	out = append(out, s.name...)
	out = append(out, `",`...)
	out = append(out, line[len(chatPrefix):end]...)
	out = append(out, `,"ts":`...)
	out = strconv.AppendInt(out, ts, 10)
	out = append(out, "}\n"...)
	to.send(out)
	st.delivered.Add(1)
	if id, isStr, ok := jsonField(line, keyID); ok {
		out = appendID(append(out[:0], `{"cmd":"ack","id":`...), id, isStr)
		out = append(out, "}\n"...)
		s.self.send(out)
	}
	return out
}

// leave forgets s's login, unless a newer connection took the name.
func (h *relayHub) leave(s *relaySession) {
	if s.name == "" {
		return
	}
	h.mu.Lock()
	if h.users[s.name] == s.self {
		delete(h.users, s.name)
	}
	h.mu.Unlock()
}

// relayError sends an error reply, with the request's id if it had one.
func relayError(s *relaySession, line []byte, reason string, out []byte) []byte {
	out = append(out[:0], `{"cmd":"error","error":"`...)
	out = append(out, reason...)
	out = append(out, '"')
	if id, isStr, ok := jsonField(line, keyID); ok {
		out = appendID(append(out, `,"id":`...), id, isStr)
	}
	out = append(out, "}\n"...)
	s.self.send(out)
	return out
}

func appendID(o, id []byte, isStr bool) []byte {
	if isStr {
		o = append(o, '"')
		o = append(o, id...)
		return append(o, '"')
	}
	return append(o, id...)
}

// splitLines calls fn for every complete non-empty line of b (without its
// "\n" or "\r\n") and returns the incomplete rest.
func splitLines(b []byte, fn func(line []byte)) []byte {
	for {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return b
		}
		line := b[:i]
		b = b[i+1:]
		if m := len(line); m > 0 && line[m-1] == '\r' {
			line = line[:m-1]
		}
		if len(line) > 0 {
			fn(line)
		}
	}
}
