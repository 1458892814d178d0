package bench

import (
	"errors"
	"net"
	"sync"
	"time"
)

// StartNetRelay is the floor relay over Go's net package, to compare with
// StartRelay's epoll loops: a goroutine per connection, each Read taking
// whatever is there, each delivery one Write to the recipient's
// connection under its mutex. Same protocol, same checks.
func StartNetRelay(addrs []string) (*Relay, error) {
	if len(addrs) == 0 {
		return nil, errors.New("bench: relay: no address")
	}
	nr := &netRelay{hub: relayHub{users: make(map[string]relaySender)}, conns: make(map[*netRelayConn]struct{})}
	r := &Relay{closeFn: nr.close, stats: []*relayStats{&nr.stats}}
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			nr.close()
			return nil, err
		}
		nr.lns = append(nr.lns, ln)
		r.addrs = append(r.addrs, ln.Addr().String())
	}
	for _, ln := range nr.lns {
		nr.wg.Add(1)
		go nr.accept(ln)
	}
	return r, nil
}

type netRelay struct {
	hub   relayHub
	stats relayStats
	lns   []net.Listener
	wg    sync.WaitGroup

	mu     sync.Mutex
	conns  map[*netRelayConn]struct{}
	closed bool
}

type netRelayConn struct {
	c   net.Conn
	wmu sync.Mutex
}

// send writes b in one Write; a failed write is seen by the reader, which
// closes the connection.
func (c *netRelayConn) send(b []byte) {
	c.wmu.Lock()
	_, _ = c.c.Write(b)
	c.wmu.Unlock()
}

func (r *netRelay) accept(ln net.Listener) {
	defer r.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		nc := &netRelayConn{c: c}
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			c.Close()
			return
		}
		r.conns[nc] = struct{}{}
		r.mu.Unlock()
		r.wg.Add(1)
		go r.serve(nc)
	}
}

func (r *netRelay) serve(c *netRelayConn) {
	defer r.wg.Done()
	s := relaySession{self: c}
	buf := make([]byte, 4096) // grows up to relayReadBuf for long lines
	var out []byte
	k := 0
	for {
		n, err := c.c.Read(buf[k:])
		if n > 0 {
			ts := time.Now().UnixMilli()
			rest := splitLines(buf[:k+n], func(line []byte) {
				out = r.hub.handle(&s, line, ts, out, &r.stats)
			})
			if len(rest) == len(buf) {
				if len(buf) >= relayReadBuf {
					c.send([]byte(`{"cmd":"error","error":"line too long"}` + "\n"))
					break
				}
				buf = append(buf, make([]byte, len(buf))...)
			}
			k = copy(buf, rest)
		}
		if err != nil {
			break
		}
	}
	r.hub.leave(&s)
	c.c.Close()
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
}

func (r *netRelay) close() {
	r.mu.Lock()
	r.closed = true
	for _, ln := range r.lns {
		ln.Close()
	}
	for c := range r.conns {
		c.c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}
