package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// Commands are the packages Build builds, relative to the module root; each
// binary is named after the last path element.
var Commands = []string{"./cmd/chat-server", "./cmd/chat-proxy", "./cmd/chat-bench"}

const binDirPrefix = "relaychat-testbin-"

type buildResult struct {
	once sync.Once
	dir  string
	out  []byte
	err  error
}

var built, builtPlain buildResult

// Build builds Commands once per test process (with -race when RaceEnabled)
// into $TMPDIR/relaychat-testbin-<pid> and returns that directory; the
// binaries are filepath.Join(dir, "chat-server") and so on. go build runs in
// the module root, found by walking up from the package under test to
// go.mod. A failed build fails the test with go's output, in every test that
// calls Build.
//
// A command directory that does not exist yet, or has no non-test .go file,
// is skipped: its path is still dir/<name>, and Start fails clearly on it.
// The directory outlives the process (no hook runs at exit); Build removes
// those left by test processes that are no longer running.
func Build(t testing.TB) string {
	t.Helper()
	return buildOnce(t, &built, RaceEnabled)
}

// BuildPlain is Build without the race detector, for the few tests that
// measure the binaries' own memory or push load through them (the race
// detector multiplies both).
func BuildPlain(t testing.TB) string {
	t.Helper()
	return buildOnce(t, &builtPlain, false)
}

func buildOnce(t testing.TB, b *buildResult, race bool) string {
	t.Helper()
	b.once.Do(func() { b.dir, b.out, b.err = build(race) })
	if b.err != nil {
		t.Fatalf("testenv: build: %v\n%s", b.err, b.out)
	}
	return b.dir
}

func build(race bool) (string, []byte, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", nil, err
	}
	removeStaleBinDirs()
	dir := filepath.Join(os.TempDir(), binDirPrefix+strconv.Itoa(os.Getpid()))
	if !race && RaceEnabled {
		dir += "-plain"
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", nil, err
	}
	args := []string{"build"}
	if race {
		args = append(args, "-race")
	}
	args = append(args, "-o", dir+string(filepath.Separator))
	n := 0
	for _, pkg := range Commands {
		if hasGoFiles(filepath.Join(root, pkg)) {
			args = append(args, pkg)
			n++
		}
	}
	if n == 0 {
		return dir, nil, nil
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", out, fmt.Errorf("go %s: %w", strings.Join(args, " "), err)
	}
	return dir, out, nil
}

// hasGoFiles reports whether dir holds a .go file that is not a test.
func hasGoFiles(dir string) bool {
	files, _ := filepath.Glob(filepath.Join(dir, "*.go"))
	for _, f := range files {
		if !strings.HasSuffix(f, "_test.go") {
			return true
		}
	}
	return false
}

// removeStaleBinDirs deletes the binary directories of test processes that
// have exited.
func removeStaleBinDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), binDirPrefix+"*"))
	for _, d := range dirs {
		pid, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(filepath.Base(d), binDirPrefix), "-plain"))
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.RemoveAll(d)
		}
	}
}
