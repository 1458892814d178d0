package web

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
)

func TestPage(t *testing.T) {
	page := Index()
	if len(page) == 0 || len(page) > 32<<10 {
		t.Fatalf("page is %d bytes; want a small, non-empty page", len(page))
	}
	for _, id := range []string{
		`data-testid="login-name"`, `data-testid="login-token"`, `data-testid="login-button"`,
		`data-testid="recipient"`, `data-testid="message-input"`, `data-testid="send-button"`,
		`data-testid="messages"`, `data-testid="status"`,
		`li.dataset.testid = "message"`, `li.dataset.state`,
		`(location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws"`,
	} {
		if !bytes.Contains(page, []byte(id)) {
			t.Errorf("page lacks %s", id)
		}
	}
	// Nothing from elsewhere: no CDN, fonts or absolute URLs.
	if m := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}`).Find(page); m != nil {
		t.Errorf("page refers to an outside address: %s", m)
	}
	if bytes.Contains(page, []byte("innerHTML")) {
		t.Error("page uses innerHTML; build elements with textContent so chat text cannot inject markup")
	}
}

func TestCSP(t *testing.T) {
	csp := CSP()
	if strings.Count(csp, "'sha256-") != 2 {
		t.Fatalf("CSP %q: want one hash for the script and one for the style", csp)
	}
	for _, d := range []string{"default-src 'none'", "connect-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, d) {
			t.Fatalf("CSP %q lacks %q", csp, d)
		}
	}
	if strings.Contains(csp, "unsafe") {
		t.Fatalf("CSP %q allows unsafe sources", csp)
	}
	// A change to the inline script changes its hash.
	other := buildCSP(bytes.Replace(Index(), []byte(`"use strict";`), []byte(`"use strict"; `), 1))
	if other == csp {
		t.Fatal("hash does not follow the script")
	}
}
