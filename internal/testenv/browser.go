package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// browserStartTimeout bounds the start of Chromium and of a tab.
const browserStartTimeout = 60 * time.Second

var chromium struct {
	once sync.Once
	path string
	why  string // why there is none, when path is ""
}

// Chromium returns the path of a Chromium binary: $CHROMIUM, or
// /usr/bin/chromium, or whatever scripts/ensure-chromium.sh installs (it
// runs once per test process, only when none is found; it installs
// Debian's chromium package). It skips the test, with the reason, only when
// no Chromium can be found or installed; a browser test never fails for
// want of one.
func Chromium(t testing.TB) string {
	t.Helper()
	chromium.once.Do(func() { chromium.path, chromium.why = findChromium() })
	if chromium.path == "" {
		t.Skipf("testenv: no Chromium for browser tests: %s", chromium.why)
	}
	return chromium.path
}

func findChromium() (path, why string) {
	for _, p := range []string{os.Getenv("CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if p == "" {
			continue
		}
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, ""
		}
	}
	root, err := moduleRoot()
	if err != nil {
		return "", "not found, and cannot find scripts/ensure-chromium.sh: " + err.Error()
	}
	script := filepath.Join(root, "scripts", "ensure-chromium.sh")
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("bash", script)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Sprintf("not found, and %s failed (%v): %s", script, err, lastLines(stderr.String(), 5))
	}
	p := strings.TrimSpace(stdout.String())
	if p == "" {
		return "", script + " printed no path: " + lastLines(stderr.String(), 5)
	}
	return p, ""
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// Browser is a headless Chromium for one test, stopped in t.Cleanup. Its
// methods are for the test goroutine.
type Browser struct {
	ctx context.Context // the browser's first tab; pages are tabs beside it
	out *tailBuffer     // Chromium's stdout and stderr
}

// StartBrowser starts a headless Chromium (see Chromium for where it comes
// from) with a fresh profile in a temporary directory and the flags this
// machine needs: no sandbox (tests run as root), no GPU, and no background
// networking, component updates, sync or QUIC (the network is closed, and
// Chromium's own connection attempts are refused many at a time). The
// browser's output is logged if the test fails.
func StartBrowser(t testing.TB) *Browser {
	t.Helper()
	path := Chromium(t)
	b := &Browser{out: newTailBuffer(64 << 10)}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.DisableGPU,
		chromedp.NoSandbox,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-breakpad", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		// Several tabs chat at once; none may be slowed for being behind.
		chromedp.Flag("disable-background-timer-throttling", true),
		chromedp.Flag("disable-backgrounding-occluded-windows", true),
		chromedp.Flag("disable-renderer-backgrounding", true),
		chromedp.Flag("disable-features", "Translate,MediaRouter,OptimizationHints"),
		chromedp.Flag("password-store", "basic"),
		chromedp.Flag("use-mock-keychain", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1000, 760),
		chromedp.CombinedOutput(b.out),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	logf := func(format string, args ...any) { fmt.Fprintf(b.out, "chromedp: "+format+"\n", args...) }
	ctx, cancel := chromedp.NewContext(allocCtx, chromedp.WithLogf(logf), chromedp.WithErrorf(logf))
	b.ctx = ctx
	t.Cleanup(func() {
		cancel()
		cancelAlloc() // kills Chromium, waits for it and removes its profile
		if t.Failed() {
			t.Logf("chromium output (tail):\n%s", b.out.String())
		}
	})
	// The first Do starts the browser and binds it to ctx, which must have
	// no deadline (a deadline would close the browser when it passes), so
	// bound the start from here instead.
	if err := within(browserStartTimeout, cancel, func() error { return chromedp.Do(ctx) }); err != nil {
		t.Fatalf("testenv: start %s: %v\n%s", path, err, b.out.String())
	}
	return b
}

// within runs f, and calls stop if f has not returned after d (f then
// returns an error soon).
func within(d time.Duration, stop func(), f func() error) error {
	done := make(chan error, 1)
	go func() { done <- f() }()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case err := <-done:
		return err
	case <-timer.C:
		stop()
		<-done
		return fmt.Errorf("no answer within %v", d)
	}
}

// Page is one browser tab. Its methods are for the test goroutine.
type Page struct {
	// Name labels the page in messages and artefact names.
	Name string

	ctx     context.Context
	mu      sync.Mutex
	console []string // console messages and uncaught exceptions
}

// NewPage opens a tab, closed in t.Cleanup; the page's console messages
// and uncaught exceptions are logged if the test fails.
func (b *Browser) NewPage(t testing.TB, name string) *Page {
	t.Helper()
	ctx, cancel := chromedp.NewContext(b.ctx)
	p := &Page{Name: name, ctx: ctx}
	if err := within(browserStartTimeout, cancel, func() error { return chromedp.Do(ctx) }); err != nil {
		cancel()
		t.Fatalf("testenv: open a tab: %v", err)
	}
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			p.mu.Lock()
			p.console = append(p.console, fmt.Sprintf("%s %s:%d %s", m.Type, m.URL, m.Line+1, m))
			p.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("page %s console:\n\t%s", p.Name, strings.Join(p.Console(), "\n\t"))
		}
		cancel()
	})
	return p
}

// Console returns the page's console messages and uncaught exceptions so
// far.
func (p *Page) Console() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.console...)
}

// Do runs actions on the page, failing the test if they fail or take over
// timeout together.
func (p *Page) Do(t testing.TB, timeout time.Duration, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, timeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("not done within %v (%w)", timeout, err)
		}
		t.Fatalf("testenv: page %s: %v", p.Name, err)
	}
}

// Eval evaluates a JavaScript expression and returns its value decoded into
// T, failing the test if that fails or takes over timeout.
func Eval[T any](t testing.TB, p *Page, timeout time.Duration, expr string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, timeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("testenv: page %s: evaluate %q: %v", p.Name, expr, err)
	}
	return v
}

// WaitJS waits until the JavaScript expression expr is truthy, failing the
// test after timeout with the value of describe (another expression, for
// the message).
func (p *Page) WaitJS(t testing.TB, timeout time.Duration, expr, describe string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, timeout)
	defer cancel()
	// Interval polling: requestAnimationFrame, the default, does not run in
	// a tab that is not in front.
	_, err := chromedp.Run(ctx, chromedp.Poll[bool]("!!("+expr+")",
		chromedp.WithPollingInterval(25*time.Millisecond), chromedp.WithPollingTimeout(timeout)))
	if err != nil {
		what := "?"
		if describe != "" {
			dctx, dcancel := context.WithTimeout(p.ctx, 5*time.Second)
			if v, derr := chromedp.Run(dctx, chromedp.Evaluate[any](describe)); derr == nil {
				what = fmt.Sprint(v)
			}
			dcancel()
		}
		t.Fatalf("testenv: page %s: %s not true within %v (%v); %s = %s", p.Name, expr, timeout, err, describe, what)
	}
}

// Screenshot saves a PNG of the page's viewport as <ArtefactDir>/<name>.png,
// logs the path and returns it.
func (p *Page) Screenshot(t testing.TB, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatalf("testenv: page %s: screenshot: %v", p.Name, err)
	}
	path := filepath.Join(ArtefactDir(t), name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatalf("testenv: save screenshot: %v", err)
	}
	t.Logf("screenshot of page %s: %s", p.Name, path)
	return path
}

// ArtefactDir returns a directory for the test's artefacts (screenshots),
// creating it: $RELAYCHAT_ARTEFACTS/<test name>, or <module root>/.artefacts/
// <test name> (ignored by git). Artefacts are kept after the test.
func ArtefactDir(t testing.TB) string {
	t.Helper()
	base := os.Getenv("RELAYCHAT_ARTEFACTS")
	if base == "" {
		root, err := moduleRoot()
		if err != nil {
			t.Fatalf("testenv: artefact dir: %v", err)
		}
		base = filepath.Join(root, ".artefacts")
	}
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, t.Name())
	dir := filepath.Join(base, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("testenv: artefact dir: %v", err)
	}
	return dir
}
