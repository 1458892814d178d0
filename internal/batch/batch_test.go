package batch

import (
	"bytes"
	"testing"

	"github.com/panjf2000/gnet/v2"
)

// fakeConn is the part of gnet.Conn an Endpoint uses. onWrite runs inside
// Write, as gnet runs OnClose inside a Write that fails.
type fakeConn struct {
	gnet.Conn
	got     bytes.Buffer
	onWrite func()
	fd      int // a real socket for the raw write; 0: none
	queued  int // what OutboundBuffered reports
}

func (c *fakeConn) Fd() int {
	if c.fd == 0 {
		return -1
	}
	return c.fd
}

func (c *fakeConn) Write(b []byte) (int, error) {
	if f := c.onWrite; f != nil {
		c.onWrite = nil
		f()
		return 0, nil
	}
	return c.got.Write(b)
}

func (c *fakeConn) OutboundBuffered() int { return c.queued }

type lostHooks struct{ lost, written int }

func (h *lostHooks) Written([]byte, []Mark) { h.written++ }
func (h *lostHooks) Lost([]byte, []Mark)    { h.lost++ }

// TestFlushReentered: a write that fails closes its connection at once,
// and the OnClose handler gathers output for other connections and
// flushes. The nested Flush must not touch the buffers being written, and
// what it gathered must still go out, once.
func TestFlushReentered(t *testing.T) {
	l := NewLoop(nil)
	failing := &fakeConn{}
	hooks := &lostHooks{}
	a := &Endpoint{C: failing, Loop: l, Hooks: hooks}
	bc, cc := &fakeConn{}, &fakeConn{}
	b := &Endpoint{C: bc, Loop: l}
	c := &Endpoint{C: cc, Loop: l}
	failing.onWrite = func() { // gnet: the write failed, OnClose runs now
		a.MarkClosed()
		l.Append(b, []byte("reach b\n"))
		l.Append(c, []byte("reach c\n"))
		l.Flush()
	}
	l.Append(b, []byte("first b\n"))
	l.OutMarked(a, 1, func(d []byte) []byte { return append(d, "chat\n"...) })
	l.Append(c, []byte("first c\n"))
	l.Flush()

	if got, want := bc.got.String(), "first b\nreach b\n"; got != want {
		t.Errorf("b got %q, want %q", got, want)
	}
	if got, want := cc.got.String(), "first c\nreach c\n"; got != want {
		t.Errorf("c got %q, want %q", got, want)
	}
	if hooks.lost != 1 || hooks.written != 0 {
		t.Errorf("closed endpoint: %d lost, %d written; want 1 lost", hooks.lost, hooks.written)
	}
	// The loop is usable afterwards.
	l.Append(b, []byte("later\n"))
	l.Flush()
	if got := bc.got.String(); got != "first b\nreach b\nlater\n" {
		t.Errorf("after a second flush b got %q", got)
	}
}

// TestWideFlushKeepsFewBuffers: a callback that writes to many endpoints
// gets every write out, and the loop keeps at most keepSlots buffers
// afterwards.
func TestWideFlushKeepsFewBuffers(t *testing.T) {
	l := NewLoop(nil)
	conns := make([]*fakeConn, 4*keepSlots)
	for round := range 2 {
		for i := range conns {
			if conns[i] == nil {
				conns[i] = &fakeConn{}
			}
			e := &Endpoint{C: conns[i], Loop: l}
			l.Append(e, []byte("x\n"))
		}
		l.Flush()
		for i, c := range conns {
			if got := c.got.Len(); got != 2*(round+1) {
				t.Fatalf("round %d: endpoint %d got %d bytes", round, i, got)
			}
		}
		for _, g := range []*gather{l.g, l.idle} {
			if len(g.bufs) > keepSlots || len(g.marks) > keepSlots {
				t.Fatalf("round %d: a gather keeps %d buffers, %d mark lists", round, len(g.bufs), len(g.marks))
			}
		}
	}
}
