package wsproto

import (
	"bytes"
	"encoding/base64"
	"errors"
	"net/http"

	"github.com/gobwas/ws"
)

// DefaultMaxHead is the cap on a request head (request line and headers,
// up to and including the blank line) when ParseHandshake is given 0.
// Browsers send well under 2 KiB; cookies for another site on the same host
// are the usual reason for more.
const DefaultMaxHead = 8192

// HandshakeKind says what ParseHandshake found.
type HandshakeKind uint8

const (
	// NeedMore: the head is not complete yet; call again with more bytes.
	// Nothing is consumed.
	NeedMore HandshakeKind = iota
	// Upgrade: a valid WebSocket upgrade. Write Response (the 101), discard
	// Consumed bytes; what follows in the stream is frames for a Reader.
	Upgrade
	// Plain: an HTTP GET or HEAD without an Upgrade header. Method and Path
	// are set; answer with AppendResponse, then close the connection.
	Plain
	// Reject: a bad request. Write Response (a complete HTTP error with
	// Connection: close), then close the connection. Err says why.
	Reject
)

// String returns the kind's name, for logs and test messages.
func (k HandshakeKind) String() string {
	switch k {
	case NeedMore:
		return "NeedMore"
	case Upgrade:
		return "Upgrade"
	case Plain:
		return "Plain"
	case Reject:
		return "Reject"
	}
	return "HandshakeKind(?)"
}

// Handshake is ParseHandshake's answer. Its byte slices and strings are
// its own (never aliases of the input).
type Handshake struct {
	Kind HandshakeKind
	// Consumed is the length of the request head in bytes (Upgrade and
	// Plain); 0 for NeedMore and Reject.
	Consumed int
	// Response is the bytes to write: the 101 for Upgrade, the error
	// response for Reject; nil otherwise.
	Response []byte
	// Method is "GET" or "HEAD" for Plain; set for Upgrade too.
	Method string
	// Path is the request target up to any '?' (Plain and Upgrade), e.g. "/"
	// or "/ws". The contract accepts an upgrade on any path.
	Path string
	// Status is the HTTP status of Response: 101 for Upgrade, 4xx or 5xx for
	// Reject.
	Status int
	// Err says why a request was rejected (for logs); nil otherwise.
	Err error
}

// Errors a Reject carries in Handshake.Err, besides those of gobwas/ws
// (ws.ErrHandshakeBadUpgrade, ws.ErrHandshakeUpgradeRequired, ...).
var (
	ErrHeadTooLarge = errors.New("wsproto: request head too large")
	ErrBadRequest   = errors.New("wsproto: malformed HTTP request")
	ErrBadVersion   = errors.New("wsproto: HTTP version not supported")
	ErrBadMethod    = errors.New("wsproto: method not allowed (only GET and HEAD, or a WebSocket upgrade)")
	ErrBadKey       = errors.New("wsproto: bad Sec-WebSocket-Key: must be the base64 encoding of 16 bytes")
)

// upgrader validates a complete head and writes the 101. It is stateless
// (no callbacks), so one value serves every connection.
var upgrader = ws.Upgrader{}

// ParseHandshake looks at the bytes a new connection has sent so far (buf,
// from the start of the connection) and says what to do; see
// HandshakeKind. maxHead caps the request head (0 means DefaultMaxHead): a
// head not complete within that many bytes is rejected with 431, and a
// first line that is not an HTTP/1.x request line is rejected with 400 as
// soon as it is complete, so a client speaking another protocol is not
// buffered up to the cap. Only buf[:Consumed] is read; ParseHandshake does
// not modify buf.
//
// A request counts as an upgrade attempt when it has an Upgrade header; it
// is then validated by gobwas/ws (GET, HTTP/1.1 or later, Host, Upgrade:
// websocket, Connection: upgrade, Sec-WebSocket-Version: 13, a
// Sec-WebSocket-Key of 24 bytes) and here (the key decodes to 16 bytes).
// Subprotocols and extensions are never negotiated. A request without an
// Upgrade header is Plain when its method is GET or HEAD, else rejected
// with 405.
func ParseHandshake(buf []byte, maxHead int) Handshake {
	if maxHead <= 0 {
		maxHead = DefaultMaxHead
	}
	h := scanHead(buf, maxHead)
	switch {
	case h.err != nil:
		return reject(h.err)
	case !h.complete:
		return Handshake{Kind: NeedMore}
	}
	method, path := string(h.method), string(h.path)
	if path == "" {
		path = "/"
	}
	if !h.upgrade {
		if method != http.MethodGet && method != http.MethodHead {
			return reject(ErrBadMethod)
		}
		return Handshake{Kind: Plain, Consumed: h.end, Method: method, Path: path}
	}
	var resp bytes.Buffer
	_, err := upgrader.Upgrade(&headRW{r: bytes.NewReader(buf[h.start:h.end]), w: &resp})
	if err != nil {
		return reject(err)
	}
	if !validKey(h.key) {
		return reject(ErrBadKey)
	}
	return Handshake{Kind: Upgrade, Consumed: h.end, Response: resp.Bytes(), Method: method, Path: path, Status: http.StatusSwitchingProtocols}
}

// reject builds a Reject for err, with the status gobwas/ws attached to
// its own errors, or the one of ours.
func reject(err error) Handshake {
	status := http.StatusBadRequest
	var rej *ws.ConnectionRejectedError
	switch {
	case errors.As(err, &rej):
		status = rej.StatusCode()
	case errors.Is(err, ErrHeadTooLarge):
		status = http.StatusRequestHeaderFieldsTooLarge
	case errors.Is(err, ErrBadVersion):
		status = http.StatusHTTPVersionNotSupported
	case errors.Is(err, ErrBadMethod):
		status = http.StatusMethodNotAllowed
	}
	r := Response{Status: status, ContentType: "text/plain; charset=utf-8", Body: []byte(err.Error() + "\n")}
	switch status {
	case http.StatusMethodNotAllowed:
		r.Header = []string{"Allow: GET, HEAD"}
	case http.StatusUpgradeRequired:
		r.Header = []string{"Upgrade: websocket", "Sec-WebSocket-Version: 13"}
	}
	return Handshake{Kind: Reject, Response: AppendResponse(nil, r), Status: status, Err: err}
}

// head is what scanHead learned; buf[start:end] is the request head from
// the request line through the blank line.
type head struct {
	complete bool
	err      error
	start    int
	end      int
	method   []byte // aliases buf, like path and key
	path     []byte
	upgrade  bool   // an Upgrade header is present
	key      []byte // the last Sec-WebSocket-Key value (aliases buf)
}

// scanHead finds the request line and the end of the head and picks out
// the few facts ParseHandshake decides on. Full validation of an upgrade is
// gobwas/ws's job. Lines end in "\r\n" or "\n" (RFC 9112 section 2.2
// allows a lone LF); empty lines before the request line are skipped (its
// section 2.2 again).
func scanHead(buf []byte, maxHead int) head {
	var h head
	for h.start < len(buf) && (buf[h.start] == '\r' || buf[h.start] == '\n') {
		h.start++
	}
	pos, first := h.start, true
	for {
		i := bytes.IndexByte(buf[pos:], '\n')
		if i < 0 {
			if len(buf) > maxHead {
				h.err = ErrHeadTooLarge
			}
			return h
		}
		line := buf[pos : pos+i]
		next := pos + i + 1
		if next > maxHead {
			h.err = ErrHeadTooLarge
			return h
		}
		line = bytes.TrimSuffix(line, []byte{'\r'})
		switch {
		case first:
			first = false
			if h.err = h.requestLine(line); h.err != nil {
				return h
			}
		case len(line) == 0:
			h.complete, h.end = true, next
			return h
		default:
			k, v, ok := bytes.Cut(line, []byte{':'})
			if !ok {
				h.err = ErrBadRequest
				return h
			}
			k = bytes.TrimSpace(k)
			switch {
			case bytes.EqualFold(k, []byte("Upgrade")):
				h.upgrade = true
			case bytes.EqualFold(k, []byte("Sec-WebSocket-Key")):
				h.key = bytes.TrimSpace(v)
			}
		}
		pos = next
	}
}

// requestLine parses "METHOD SP request-target SP HTTP-version".
func (h *head) requestLine(line []byte) error {
	method, rest, ok1 := bytes.Cut(line, []byte{' '})
	target, version, ok2 := bytes.Cut(rest, []byte{' '})
	if !ok1 || !ok2 || len(method) == 0 || len(target) == 0 || !isToken(method) ||
		bytes.IndexByte(version, ' ') >= 0 || !bytes.HasPrefix(version, []byte("HTTP/")) {
		return ErrBadRequest
	}
	if !bytes.Equal(version, []byte("HTTP/1.1")) && !bytes.Equal(version, []byte("HTTP/1.0")) {
		return ErrBadVersion
	}
	h.method = method
	h.path, _, _ = bytes.Cut(target, []byte{'?'})
	return nil
}

// isToken reports whether b is an HTTP token (RFC 9110 section 5.6.2).
func isToken(b []byte) bool {
	for _, c := range b {
		if c <= ' ' || c >= 0x7f || bytes.IndexByte([]byte(`"(),/:;<=>?@[\]{}`), c) >= 0 {
			return false
		}
	}
	return true
}

// validKey reports whether key is the base64 encoding of 16 bytes.
func validKey(key []byte) bool {
	var raw [18]byte // room for 24 base64 characters without padding checks
	if len(key) != 24 {
		return false
	}
	n, err := base64.StdEncoding.Decode(raw[:], key)
	return err == nil && n == 16
}

// headRW feeds a complete head to ws.Upgrader and collects its response.
type headRW struct {
	r *bytes.Reader
	w *bytes.Buffer
}

func (rw *headRW) Read(p []byte) (int, error)  { return rw.r.Read(p) }
func (rw *headRW) Write(p []byte) (int, error) { return rw.w.Write(p) }
