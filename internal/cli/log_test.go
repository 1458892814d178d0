package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestNewLogger(t *testing.T) {
	var b bytes.Buffer
	l, err := newLogger(&b, "info", "json")
	if err != nil {
		t.Fatal(err)
	}
	l.Debug("hidden")
	l.Info("link down", "peer", "proxy1", "err", "EOF")
	var m map[string]any
	if err := json.Unmarshal(b.Bytes(), &m); err != nil {
		t.Fatalf("not one JSON object: %q: %v", b.String(), err)
	}
	if m["msg"] != "link down" || m["peer"] != "proxy1" || m["level"] != "INFO" || m["time"] == nil {
		t.Errorf("json line %v", m)
	}

	for _, f := range []string{"text", ""} {
		b.Reset()
		l, err = newLogger(&b, "debug", f)
		if err != nil {
			t.Fatal(err)
		}
		l.Debug("server ready", "addr", "127.0.0.1:9501")
		if got := b.String(); !strings.Contains(got, `level=DEBUG msg="server ready" addr=127.0.0.1:9501`) {
			t.Errorf("format %q: text line %q", f, got)
		}
	}

	if _, err := NewLogger("info", "xml"); err == nil || !strings.Contains(err.Error(), `-log-format "xml": want text or json`) {
		t.Errorf("bad format: %v", err)
	}
	if _, err := NewLogger("loud", "json"); err == nil || !strings.Contains(err.Error(), "-log-level") {
		t.Errorf("bad level: %v", err)
	}
	if l, err := Logger("warn"); err != nil || l == nil || !l.Handler().Enabled(t.Context(), 4) || l.Handler().Enabled(t.Context(), 0) {
		t.Errorf("Logger(warn) = %v, %v", l, err)
	}
}
