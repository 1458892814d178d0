package testenv

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	// clientQueue is how many received lines wait for the test before the
	// reader stops reading, which pushes back on the server like a slow user.
	clientQueue = 4096
	// historyLen is how many recent lines failure messages list.
	historyLen = 50
	// writeTimeout bounds Send and SendRaw.
	writeTimeout = 5 * time.Second
)

var errClosedByTest = errors.New("closed by the test")

// Client is a raw TCP line client, like a telnet user. A background
// goroutine reads lines into a queue; the methods, for the test goroutine
// only, take them from it. Lines are returned without "\n" or "\r\n".
type Client struct {
	addr    string
	conn    net.Conn
	lines   chan string
	stop    chan struct{}
	stopped sync.Once
	// readErr and partial are written by the reader before it closes lines,
	// and read by the test goroutine only after seeing lines closed.
	readErr error
	partial string
	eof     bool     // the test goroutine has seen lines closed
	history []string // recent lines handed to the test, for messages
}

// Dial connects to addr (5s timeout) and closes the connection in
// t.Cleanup. It fails the test if the connection is refused.
func Dial(t testing.TB, addr string) *Client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("testenv: dial %s: %v", addr, err)
	}
	c := &Client{
		addr:  addr,
		conn:  conn,
		lines: make(chan string, clientQueue),
		stop:  make(chan struct{}),
	}
	go c.read()
	t.Cleanup(c.Close)
	return c
}

func (c *Client) read() {
	r := bufio.NewReader(c.conn)
	for {
		s, err := r.ReadString('\n')
		if err != nil {
			select {
			case <-c.stop:
				err = errClosedByTest
			default:
			}
			c.partial, c.readErr = s, err
			close(c.lines)
			return
		}
		s = strings.TrimSuffix(strings.TrimSuffix(s, "\n"), "\r")
		select {
		case c.lines <- s:
		case <-c.stop:
			c.readErr = errClosedByTest
			close(c.lines)
			return
		}
	}
}

// Close closes the connection and stops the reader. It is idempotent.
func (c *Client) Close() {
	c.stopped.Do(func() {
		close(c.stop)
		_ = c.conn.Close()
	})
}

// LocalAddr returns the client's side of the connection.
func (c *Client) LocalAddr() net.Addr { return c.conn.LocalAddr() }

// Send writes line + "\n".
func (c *Client) Send(t testing.TB, line string) {
	t.Helper()
	c.SendRaw(t, []byte(line+"\n"))
}

// SendRaw writes b as is (e.g. a partial line, or bytes one at a time).
// It fails the test if the write fails or takes over 5s.
func (c *Client) SendRaw(t testing.TB, b []byte) {
	t.Helper()
	if err := c.conn.SetWriteDeadline(time.Now().Add(writeTimeout)); err != nil {
		t.Fatalf("testenv: %s: %v", c.addr, err)
	}
	if _, err := c.conn.Write(b); err != nil {
		t.Fatalf("testenv: %s: write: %v; read so far:%s", c.addr, err, c.sofar())
	}
}

// next waits until deadline for a line. ok=false means the connection is
// closed; timedOut means the deadline passed.
func (c *Client) next(deadline time.Time) (line string, ok, timedOut bool) {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case line, ok = <-c.lines:
		if !ok {
			c.eof = true
		} else {
			c.history = append(c.history, line)
			if len(c.history) > historyLen {
				c.history = c.history[len(c.history)-historyLen:]
			}
		}
		return line, ok, false
	case <-timer.C:
		return "", false, true
	}
}

// sofar lists the recent lines and, once closed, the unterminated rest.
func (c *Client) sofar() string {
	var b strings.Builder
	for _, l := range c.history {
		fmt.Fprintf(&b, "\n\t%q", l)
	}
	if c.eof && c.partial != "" {
		fmt.Fprintf(&b, "\n\tunterminated: %q", c.partial)
	}
	if b.Len() == 0 {
		return " (nothing)"
	}
	return b.String()
}

// closedErr describes why the connection is closed; only after lines closed.
func (c *Client) closedErr() string {
	return fmt.Sprintf("connection closed (%v)", c.readErr)
}

// ReadLine returns the next line, failing the test on timeout or if the
// connection closes first; the message lists what was read so far.
func (c *Client) ReadLine(t testing.TB, timeout time.Duration) string {
	t.Helper()
	line, ok, timedOut := c.next(time.Now().Add(timeout))
	switch {
	case timedOut:
		t.Fatalf("testenv: %s: no line within %v; read so far:%s", c.addr, timeout, c.sofar())
	case !ok:
		t.Fatalf("testenv: %s: %s before a line; read so far:%s", c.addr, c.closedErr(), c.sofar())
	}
	return line
}

// ReadJSON reads the next line and decodes it as a JSON object (numbers
// become float64), failing the test if it is not one.
func (c *Client) ReadJSON(t testing.TB, timeout time.Duration) map[string]any {
	t.Helper()
	line := c.ReadLine(t, timeout)
	var m map[string]any
	if err := json.Unmarshal([]byte(line), &m); err != nil || m == nil {
		t.Fatalf("testenv: %s: line is not a JSON object (%v): %q", c.addr, err, line)
	}
	return m
}

// Expect reads lines until one is a JSON object holding every key of kv with
// an equal value, and returns it decoded. Values are compared after a JSON
// round trip, so Expect(…, map[string]any{"ok": true, "n": 3}) matches
// {"ok":true,"n":3.0}. Lines before the match, JSON or not, are consumed. It
// fails the test if no line matches within timeout (one deadline for the
// whole call) or the connection closes, listing the lines it read.
func (c *Client) Expect(t testing.TB, timeout time.Duration, kv map[string]any) map[string]any {
	t.Helper()
	want, err := roundTrip(kv)
	if err != nil {
		t.Fatalf("testenv: Expect: cannot encode %v: %v", kv, err)
	}
	deadline := time.Now().Add(timeout)
	var seen []string
	for {
		line, ok, timedOut := c.next(deadline)
		if timedOut || !ok {
			why := fmt.Sprintf("no match within %v", timeout)
			if !timedOut {
				why = c.closedErr()
			}
			t.Fatalf("testenv: %s: expected a line with %s: %s; read %d lines:\n\t%s", c.addr, mustJSON(kv), why, len(seen), strings.Join(seen, "\n\t"))
		}
		seen = append(seen, line)
		var got map[string]any
		if json.Unmarshal([]byte(line), &got) != nil {
			continue
		}
		if matches(got, want) {
			return got
		}
	}
}

func roundTrip(kv map[string]any) (map[string]any, error) {
	b, err := json.Marshal(kv)
	if err != nil {
		return nil, err
	}
	var out map[string]any
	err = json.Unmarshal(b, &out)
	return out, err
}

func matches(got, want map[string]any) bool {
	for k, w := range want {
		g, ok := got[k]
		if !ok || !reflect.DeepEqual(g, w) {
			return false
		}
	}
	return true
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// ExpectNothing asserts that no line arrives, and the connection stays
// open, for d. This is the one helper that waits a fixed time: absence can
// only be observed for a bounded interval, so keep d short (tens of ms) and
// use it after something that would have produced the line promptly.
func (c *Client) ExpectNothing(t testing.TB, d time.Duration) {
	t.Helper()
	line, ok, timedOut := c.next(time.Now().Add(d))
	switch {
	case timedOut:
		return
	case !ok:
		t.Fatalf("testenv: %s: expected nothing for %v, got %s; read so far:%s", c.addr, d, c.closedErr(), c.sofar())
	default:
		t.Fatalf("testenv: %s: expected nothing for %v, got %q; read so far:%s", c.addr, d, line, c.sofar())
	}
}

// ExpectClosed waits up to timeout for the peer to close or reset the
// connection, and returns the lines received before that (e.g. a final
// error), which it consumes. It fails the test on timeout.
func (c *Client) ExpectClosed(t testing.TB, timeout time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var before []string
	for {
		line, ok, timedOut := c.next(deadline)
		if timedOut {
			t.Fatalf("testenv: %s: connection still open after %v; read so far:%s", c.addr, timeout, c.sofar())
		}
		if !ok {
			return before
		}
		before = append(before, line)
	}
}
