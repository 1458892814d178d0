// Package web holds the browser chat client that a server's WebSocket
// address serves on GET /: one self-contained HTML page (inline CSS and
// JavaScript, no build step, nothing loaded from elsewhere) that connects
// back to the same host over ws:// or wss:// on /ws.
package web

import (
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"regexp"
	"strings"
)

// ContentType is the page's Content-Type.
const ContentType = "text/html; charset=utf-8"

//go:embed index.html
var index []byte

// csp is computed once from the page; see CSP.
var csp = buildCSP(index)

// Index returns the page. The slice is shared by every caller: do not
// modify it.
func Index() []byte { return index }

// CSP returns the Content-Security-Policy to serve the page with: the
// page's own inline script and style, allowed by their SHA-256 hashes, and
// WebSocket connections to its own origin; nothing else loads, frames it
// or submits anywhere.
func CSP() string { return csp }

var inline = regexp.MustCompile(`(?s)<(script|style)>(.*?)</(?:script|style)>`)

func buildCSP(page []byte) string {
	var scripts, styles []string
	for _, m := range inline.FindAllSubmatch(page, -1) {
		sum := sha256.Sum256(m[2])
		src := "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
		if string(m[1]) == "script" {
			scripts = append(scripts, src)
		} else {
			styles = append(styles, src)
		}
	}
	return strings.Join([]string{
		"default-src 'none'",
		"script-src " + strings.Join(scripts, " "),
		"style-src " + strings.Join(styles, " "),
		"connect-src 'self'",
		"img-src data:",
		"base-uri 'none'",
		"form-action 'none'",
		"frame-ancestors 'none'",
	}, "; ")
}
