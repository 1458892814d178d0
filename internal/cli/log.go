package cli

import (
	"fmt"
	"io"
	"log/slog"
	"os"
)

// LogFormats is the usage text of a -log-format flag.
const LogFormats = "log line format: text (key=value) or json (one object a line)"

// NewLogger returns a logger on stderr at the named level (debug, info,
// warn, error) in the named format: "text" (slog's key=value lines, the
// default when format is "") or "json" (one JSON object per line, with the
// keys time, level and msg first). A bad level or format is an error
// naming the flag, for the caller to report as a usage error.
func NewLogger(level, format string) (*slog.Logger, error) {
	return newLogger(os.Stderr, level, format)
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("bad -log-level %q: want debug, info, warn or error", level)
	}
	o := &slog.HandlerOptions{Level: l}
	switch format {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, o)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, o)), nil
	}
	return nil, fmt.Errorf("bad -log-format %q: want text or json", format)
}
