package testenv

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// RedisConn is a minimal RESP2 connection for tests that need to talk to
// one Redis node directly (cluster administration, counting keys on one
// master), without a client library's routing or retries in the way. It is
// not safe for concurrent use.
type RedisConn struct {
	c net.Conn
	r *bufio.Reader
	// Timeout bounds each command's round trip; 0 means 5s.
	Timeout time.Duration
}

// RedisAuth holds what DialRedis needs beyond an address: AUTH credentials
// and a TLS configuration. The zero value is a plain connection with no
// AUTH.
type RedisAuth struct {
	Username, Password string
	TLS                *tls.Config
}

// ErrRedisReply is wrapped by errors that are Redis error replies.
var ErrRedisReply = errors.New("redis error reply")

// DialRedis connects to addr within timeout and, with credentials, sends
// AUTH.
func DialRedis(addr string, auth RedisAuth, timeout time.Duration) (*RedisConn, error) {
	d := net.Dialer{Timeout: timeout}
	var c net.Conn
	var err error
	if auth.TLS != nil {
		c, err = tls.DialWithDialer(&d, "tcp", addr, auth.TLS)
	} else {
		c, err = d.Dial("tcp", addr)
	}
	if err != nil {
		return nil, err
	}
	rc := &RedisConn{c: c, r: bufio.NewReader(c), Timeout: timeout}
	if auth.Password != "" {
		args := []string{"AUTH", auth.Password}
		if auth.Username != "" {
			args = []string{"AUTH", auth.Username, auth.Password}
		}
		if _, err := rc.Do(args...); err != nil {
			c.Close()
			return nil, err
		}
	}
	return rc, nil
}

// Close closes the connection.
func (rc *RedisConn) Close() error { return rc.c.Close() }

// Do sends one command and returns its reply: string for simple and bulk
// strings, int64, nil for a nil reply, []any for arrays. An error reply
// comes back as an error wrapping ErrRedisReply.
func (rc *RedisConn) Do(args ...string) (any, error) {
	to := rc.Timeout
	if to == 0 {
		to = 5 * time.Second
	}
	if err := rc.c.SetDeadline(time.Now().Add(to)); err != nil {
		return nil, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(rc.c, b.String()); err != nil {
		return nil, err
	}
	return rc.read()
}

func (rc *RedisConn) read() (any, error) {
	line, err := rc.r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return nil, errors.New("empty RESP line")
	}
	switch line[0] {
	case '+':
		return line[1:], nil
	case '-':
		return nil, fmt.Errorf("%w: %s", ErrRedisReply, line[1:])
	case ':':
		return strconv.ParseInt(line[1:], 10, 64)
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return nil, err
		}
		if n < 0 {
			return nil, nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(rc.r, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return nil, err
		}
		if n < 0 {
			return nil, nil
		}
		out := make([]any, n)
		var firstErr error
		for i := range out {
			v, err := rc.read()
			if err != nil && !errors.Is(err, ErrRedisReply) {
				return nil, err
			}
			if err != nil && firstErr == nil {
				firstErr = err
			}
			out[i] = v
		}
		return out, firstErr
	}
	return nil, fmt.Errorf("unexpected RESP line %q", line)
}

// RedisDo dials addr, runs one command and closes the connection.
func RedisDo(addr string, auth RedisAuth, args ...string) (any, error) {
	rc, err := DialRedis(addr, auth, 2*time.Second)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return rc.Do(args...)
}

// Scan returns the keys matching pattern on this node (SCAN MATCH).
func (rc *RedisConn) Scan(pattern string) ([]string, error) {
	var keys []string
	cursor := "0"
	for {
		v, err := rc.Do("SCAN", cursor, "MATCH", pattern, "COUNT", "1000")
		if err != nil {
			return nil, err
		}
		arr, ok := v.([]any)
		if !ok || len(arr) != 2 {
			return nil, fmt.Errorf("SCAN answered %v", v)
		}
		cursor, _ = arr[0].(string)
		page, _ := arr[1].([]any)
		for _, k := range page {
			if s, ok := k.(string); ok {
				keys = append(keys, s)
			}
		}
		if cursor == "0" {
			return keys, nil
		}
	}
}
