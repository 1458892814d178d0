// Package gnetlog adapts a *slog.Logger to gnet's logging.Logger, so gnet's
// own messages go to the same stderr stream as the process's, not stdout.
package gnetlog

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/panjf2000/gnet/v2/pkg/logging"
)

// Logger implements logging.Logger over slog. Fatalf logs and exits 1, as
// gnet expects.
type Logger struct{ L *slog.Logger }

var _ logging.Logger = Logger{}

func (l Logger) log(level slog.Level, format string, args []any) {
	if l.L.Enabled(context.Background(), level) {
		l.L.Log(context.Background(), level, "gnet: "+fmt.Sprintf(format, args...))
	}
}

func (l Logger) Debugf(format string, args ...any) { l.log(slog.LevelDebug, format, args) }
func (l Logger) Infof(format string, args ...any)  { l.log(slog.LevelInfo, format, args) }
func (l Logger) Warnf(format string, args ...any)  { l.log(slog.LevelWarn, format, args) }
func (l Logger) Errorf(format string, args ...any) { l.log(slog.LevelError, format, args) }
func (l Logger) Fatalf(format string, args ...any) {
	l.log(slog.LevelError, format, args)
	os.Exit(1)
}
