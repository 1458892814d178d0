// Package cli holds what the three binaries share: logging set-up, the
// open-file limit, and waiting for SIGINT/SIGTERM.
//
// Logs go to stderr through log/slog, as text (key=value) or JSON
// (-log-format, see NewLogger). Every line's msg is the name of its event:
// a constant phrase written once in the source ("server ready", "link
// down", "disconnecting slow consumer"), never formatted with values, so
// operators can filter on it (msg="link down", or .msg == "link down" in
// JSON) and count it. Everything that varies goes in attributes, with the
// same key for the same thing everywhere: err, addr, id (this process),
// peer (the other end of a link), dst (a destination server), reason,
// count. A msg is part of the operational surface (alerts and saved
// queries match it): rename one as deliberately as a flag. No log line
// carries chat content, tokens or secrets.
package cli

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof" // served by ServePprof only when asked
	"os"
	"os/signal"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Logger returns a text logger on stderr at the named level
// (debug, info, warn, error). It is NewLogger(level, "text").
func Logger(level string) (*slog.Logger, error) {
	return NewLogger(level, "text")
}

// RaiseNoFile lifts the soft open-file limit to the hard limit (each client
// is one descriptor) and returns the new soft limit.
func RaiseNoFile() (uint64, error) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			return 0, err
		}
	}
	return lim.Cur, nil
}

// SignalContext returns a context cancelled on the first SIGINT or SIGTERM;
// a second signal restores the default (immediate exit).
func SignalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// SplitList splits a comma list, dropping empty entries and spaces.
func SplitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// Fatal prints "<prog>: <err>" to stderr and exits 1 (2 for usage errors,
// which callers signal with exit=2).
func Fatal(prog string, err error, exit int) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", prog, err)
	os.Exit(exit)
}

// ServePprof serves net/http/pprof on addr (e.g. 127.0.0.1:6060) in the
// background when addr is not empty. Profiling is opt-in and should stay on
// loopback.
func ServePprof(addr string, log *slog.Logger) {
	if addr == "" {
		return
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Error("pprof server", "err", err)
		return
	}
	log.Info("pprof listening", "addr", ln.Addr().String())
	go func() {
		if err := http.Serve(ln, nil); err != nil {
			log.Error("pprof server", "err", err)
		}
	}()
}
