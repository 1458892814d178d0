package wsproto

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/gobwas/ws"
)

// rfcKey and rfcAccept are the example of RFC 6455 section 1.3.
const (
	rfcKey    = "dGhlIHNhbXBsZSBub25jZQ=="
	rfcAccept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
)

func upgradeReq(path string, extra ...string) string {
	h := []string{
		"GET " + path + " HTTP/1.1",
		"Host: 127.0.0.1:9000",
		"Upgrade: websocket",
		"Connection: keep-alive, Upgrade",
		"Sec-WebSocket-Key: " + rfcKey,
		"Sec-WebSocket-Version: 13",
		"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
		"Origin: http://127.0.0.1:9000",
	}
	return strings.Join(append(h, extra...), "\r\n") + "\r\n\r\n"
}

// without returns req with the header line starting with name removed.
func without(req, name string) string {
	var out []string
	for _, l := range strings.Split(req, "\r\n") {
		if !strings.HasPrefix(l, name+":") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\r\n")
}

func replace(req, name, value string) string {
	return strings.Replace(without(req, name), "\r\n\r\n", "\r\n"+name+": "+value+"\r\n\r\n", 1)
}

// readResponse parses resp as an HTTP response and returns it with its body.
func readResponse(t *testing.T, resp []byte) (*http.Response, string) {
	t.Helper()
	r, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(resp)), nil)
	if err != nil {
		t.Fatalf("response does not parse (%v):\n%s", err, resp)
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		t.Fatalf("response body: %v", err)
	}
	return r, string(body)
}

func TestHandshakeUpgrade(t *testing.T) {
	for _, path := range []string{"/", "/ws", "/any/path?x=1"} {
		req := upgradeReq(path)
		frame := cf(ws.OpText, true, "early")
		h := ParseHandshake(append([]byte(req), frame...), 0)
		if h.Kind != Upgrade || h.Consumed != len(req) || h.Status != 101 || h.Err != nil {
			t.Fatalf("%s: got %v consumed %d (head is %d) status %d err %v", path, h.Kind, h.Consumed, len(req), h.Status, h.Err)
		}
		if want, _, _ := strings.Cut(path, "?"); h.Path != want || h.Method != "GET" {
			t.Fatalf("%s: path %q method %q", path, h.Path, h.Method)
		}
		resp := string(h.Response)
		if !strings.HasPrefix(resp, "HTTP/1.1 101 Switching Protocols\r\n") ||
			!strings.Contains(resp, "\r\nSec-WebSocket-Accept: "+rfcAccept+"\r\n") ||
			!strings.Contains(resp, "\r\nUpgrade: websocket\r\n") ||
			!strings.HasSuffix(resp, "\r\n\r\n") ||
			strings.Contains(resp, "Extensions") || strings.Contains(resp, "Protocol:") {
			t.Fatalf("%s: 101 response:\n%s", path, resp)
		}
	}
}

func TestHandshakeByteAtATime(t *testing.T) {
	for _, req := range []string{upgradeReq("/ws"), "GET / HTTP/1.1\r\nHost: x\r\n\r\n"} {
		stream := []byte(req)
		for i := range len(stream) {
			if h := ParseHandshake(stream[:i], 0); h.Kind != NeedMore || h.Consumed != 0 {
				t.Fatalf("after %d of %d bytes: %v consumed %d (%v)", i, len(stream), h.Kind, h.Consumed, h.Err)
			}
		}
		if h := ParseHandshake(stream, 0); h.Kind != Upgrade && h.Kind != Plain || h.Consumed != len(stream) {
			t.Fatalf("whole head: %v consumed %d of %d (%v)", h.Kind, h.Consumed, len(stream), h.Err)
		}
	}
}

func TestHandshakePlain(t *testing.T) {
	for _, tc := range []struct {
		req, method, path string
	}{
		{req: "GET / HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\n\r\n", method: "GET", path: "/"},
		{req: "GET /?name=a HTTP/1.1\r\nHost: x\r\n\r\n", method: "GET", path: "/"},
		{req: "HEAD /index.html HTTP/1.1\r\nHost: x\r\n\r\n", method: "HEAD", path: "/index.html"},
		{req: "GET / HTTP/1.0\n\n", method: "GET", path: "/"},                    // bare LF, HTTP/1.0
		{req: "\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", method: "GET", path: "/"}, // leading CRLF
	} {
		h := ParseHandshake([]byte(tc.req+"ignored body"), 0)
		if h.Kind != Plain || h.Method != tc.method || h.Path != tc.path || h.Consumed != len(tc.req) || h.Response != nil {
			t.Fatalf("%q: got %+v", tc.req, h)
		}
	}
}

func TestHandshakeReject(t *testing.T) {
	up := upgradeReq("/ws")
	for _, tc := range []struct {
		name   string
		req    string
		status int
		err    error
		header string // a header line the response must have
	}{
		{name: "version 8", req: replace(up, "Sec-WebSocket-Version", "8"), status: 426, err: ws.ErrHandshakeUpgradeRequired, header: "Sec-WebSocket-Version: 13"},
		{name: "no version", req: without(up, "Sec-WebSocket-Version"), status: 400, err: ws.ErrHandshakeBadSecVersion},
		{name: "no key", req: without(up, "Sec-WebSocket-Key"), status: 400, err: ws.ErrHandshakeBadSecKey},
		{name: "short key", req: replace(up, "Sec-WebSocket-Key", "abc"), status: 400, err: ws.ErrHandshakeBadSecKey},
		{name: "key not base64", req: replace(up, "Sec-WebSocket-Key", "!!!!!!!!!!!!!!!!!!!!!!!!"), status: 400, err: ErrBadKey},
		{name: "key of 17 bytes", req: replace(up, "Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAAA="), status: 400, err: ErrBadKey},
		{name: "POST upgrade", req: strings.Replace(up, "GET", "POST", 1), status: 405, err: ws.ErrHandshakeBadMethod},
		{name: "POST", req: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", status: 405, err: ErrBadMethod, header: "Allow: GET, HEAD"},
		{name: "no host", req: without(up, "Host"), status: 400, err: ws.ErrHandshakeBadHost},
		{name: "upgrade h2c", req: replace(up, "Upgrade", "h2c"), status: 400, err: ws.ErrHandshakeBadUpgrade},
		{name: "no connection", req: without(up, "Connection"), status: 400, err: ws.ErrHandshakeBadConnection},
		{name: "HTTP/1.0 upgrade", req: strings.Replace(up, "HTTP/1.1", "HTTP/1.0", 1), status: 505, err: ws.ErrHandshakeBadProtocol},
		{name: "HTTP/2", req: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", status: 505, err: ErrBadVersion},
		{name: "JSON line", req: `{"cmd":"login","name":"a"}` + "\n", status: 400, err: ErrBadRequest},
		{name: "header without colon", req: "GET / HTTP/1.1\r\nHost x\r\n\r\n", status: 400, err: ErrBadRequest},
		{name: "no end of head", req: "GET / HTTP/1.1\r\n" + strings.Repeat("X-Pad: "+strings.Repeat("p", 90)+"\r\n", 100), status: 431, err: ErrHeadTooLarge},
		{name: "endless request line", req: "GET /" + strings.Repeat("a", DefaultMaxHead), status: 431, err: ErrHeadTooLarge},
		{name: "complete but too big", req: "GET / HTTP/1.1\r\nX-Pad: " + strings.Repeat("p", DefaultMaxHead) + "\r\n\r\n", status: 431, err: ErrHeadTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := ParseHandshake([]byte(tc.req), 0)
			if h.Kind != Reject || h.Status != tc.status || !errors.Is(h.Err, tc.err) || h.Consumed != 0 {
				t.Fatalf("got %v status %d err %v, want Reject %d %v", h.Kind, h.Status, h.Err, tc.status, tc.err)
			}
			r, body := readResponse(t, h.Response)
			if r.StatusCode != tc.status || !r.Close || !bytes.Contains(h.Response, []byte("\r\nConnection: close\r\n")) ||
				r.Header.Get("X-Content-Type-Options") != "nosniff" || body != h.Err.Error()+"\n" {
				t.Fatalf("response %d %v body %q:\n%s", r.StatusCode, r.Header, body, h.Response)
			}
			if tc.header != "" && !bytes.Contains(h.Response, []byte("\r\n"+tc.header+"\r\n")) {
				t.Fatalf("response lacks %q:\n%s", tc.header, h.Response)
			}
		})
	}
}

// TestHandshakeCap checks a smaller cap, and that a head that fits exactly
// is accepted.
func TestHandshakeCap(t *testing.T) {
	req := "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
	if h := ParseHandshake([]byte(req), len(req)); h.Kind != Plain {
		t.Fatalf("head of exactly the cap: %v %v", h.Kind, h.Err)
	}
	if h := ParseHandshake([]byte(req), len(req)-1); h.Kind != Reject || h.Status != 431 {
		t.Fatalf("head one over the cap: %v %v", h.Kind, h.Err)
	}
	if h := ParseHandshake([]byte(req[:20]), 16); h.Kind != Reject || h.Status != 431 {
		t.Fatalf("incomplete head over the cap: %v %v", h.Kind, h.Err)
	}
}

func TestAppendResponse(t *testing.T) {
	body := []byte("<!doctype html><title>x</title>")
	resp := AppendResponse([]byte("keep"), Response{ContentType: "text/html; charset=utf-8", Body: body, CSP: "default-src 'self'", Header: []string{"X-Test: 1"}})
	if !bytes.HasPrefix(resp, []byte("keep")) {
		t.Fatal("dst not kept")
	}
	r, got := readResponse(t, resp[len("keep"):])
	for k, v := range map[string]string{
		"Content-Type":            "text/html; charset=utf-8",
		"Content-Length":          "31",
		"X-Frame-Options":         "DENY",
		"Content-Security-Policy": "default-src 'self'",
		"X-Test":                  "1",
	} {
		if r.Header.Get(k) != v {
			t.Fatalf("%s: %q, want %q", k, r.Header.Get(k), v)
		}
	}
	if r.StatusCode != 200 || got != string(body) || !r.Close {
		t.Fatalf("status %d body %q", r.StatusCode, got)
	}
	head := AppendResponse(nil, Response{Status: 404, Body: []byte("not found"), HeadOnly: true})
	if !bytes.HasSuffix(head, []byte("\r\n\r\n")) || !bytes.Contains(head, []byte("Content-Length: 9\r\n")) ||
		!bytes.HasPrefix(head, []byte("HTTP/1.1 404 Not Found\r\n")) || !bytes.Contains(head, []byte(DefaultCSP)) {
		t.Fatalf("HEAD response:\n%s", head)
	}
}
