package testenv

import (
	"net"
	"testing"
	"time"
)

// Conn returns the underlying connection, for tests that write from
// several goroutines at once or tune socket options.
func (c *Client) Conn() net.Conn { return c.conn }

// NextLine returns the next line, or ok=false once the connection is
// closed. It fails the test if neither happens within timeout.
func (c *Client) NextLine(t testing.TB, timeout time.Duration) (line string, ok bool) {
	t.Helper()
	line, ok, timedOut := c.next(time.Now().Add(timeout))
	if timedOut {
		t.Fatalf("testenv: %s: no line or close within %v; read so far:%s", c.addr, timeout, c.sofar())
	}
	return line, ok
}

// Alive reports whether the test has not yet seen the connection close.
func (c *Client) Alive() bool { return !c.eof }
