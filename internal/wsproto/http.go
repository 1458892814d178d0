package wsproto

import (
	"net/http"
	"strconv"
)

// DefaultCSP is the Content-Security-Policy of a Response that sets none:
// nothing may load, nothing may frame it.
const DefaultCSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

// Response is a complete HTTP/1.1 response for AppendResponse. The zero
// value of each field says what it means.
type Response struct {
	// Status is the status code; 0 means 200.
	Status int
	// ContentType is the Content-Type; "" means text/plain; charset=utf-8.
	ContentType string
	// Body is sent as is, with its Content-Length.
	Body []byte
	// HeadOnly leaves the body out but keeps its Content-Length, for a HEAD
	// request.
	HeadOnly bool
	// CSP is the Content-Security-Policy; "" means DefaultCSP.
	CSP string
	// Header holds extra header lines, each "Name: value" without CRLF.
	// They must not contain CR or LF (they are written as given).
	Header []string
}

// AppendResponse appends r to dst as a complete HTTP/1.1 response that
// ends the exchange (Connection: close): the caller writes it and closes
// the connection. Every response carries security headers: nosniff, no
// framing, no referrer, no caching, and a Content-Security-Policy.
func AppendResponse(dst []byte, r Response) []byte {
	status := r.Status
	if status == 0 {
		status = http.StatusOK
	}
	ctype := r.ContentType
	if ctype == "" {
		ctype = "text/plain; charset=utf-8"
	}
	csp := r.CSP
	if csp == "" {
		csp = DefaultCSP
	}
	dst = append(dst, "HTTP/1.1 "...)
	dst = strconv.AppendInt(dst, int64(status), 10)
	dst = append(dst, ' ')
	dst = append(dst, http.StatusText(status)...)
	dst = append(dst, "\r\nContent-Type: "...)
	dst = append(dst, ctype...)
	dst = append(dst, "\r\nContent-Length: "...)
	dst = strconv.AppendInt(dst, int64(len(r.Body)), 10)
	dst = append(dst, "\r\nConnection: close"+
		"\r\nCache-Control: no-store"+
		"\r\nX-Content-Type-Options: nosniff"+
		"\r\nX-Frame-Options: DENY"+
		"\r\nReferrer-Policy: no-referrer"+
		"\r\nCross-Origin-Opener-Policy: same-origin"+
		"\r\nCross-Origin-Resource-Policy: same-origin"+
		"\r\nContent-Security-Policy: "...)
	dst = append(dst, csp...)
	for _, h := range r.Header {
		dst = append(dst, "\r\n"...)
		dst = append(dst, h...)
	}
	dst = append(dst, "\r\n\r\n"...)
	if !r.HeadOnly {
		dst = append(dst, r.Body...)
	}
	return dst
}
