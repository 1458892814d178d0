package deploy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bytedance/sonic"
	"golang.org/x/sys/unix"

	"github.com/relaychat/relaychat/internal/metrics"
)

var unitFiles = []string{"systemd/chat-server@.service", "systemd/chat-proxy.service"}

// unit is a parsed systemd unit file: section -> key -> values in order
// (a key may repeat; an empty assignment resets the list, as in systemd).
type unit map[string]map[string][]string

func (u unit) get(section, key string) string {
	v := u[section][key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

func (u unit) has(section, key string) bool { _, ok := u[section][key]; return ok }

func parseUnit(t *testing.T, path string) unit {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := unit{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	for ln := 1; sc.Scan(); ln++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" || strings.HasSuffix(line, `\`) {
				t.Fatalf("%s:%d: cannot parse %q", path, ln, line)
			}
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			if v == "" {
				u[section][k] = []string{""}
			} else {
				u[section][k] = append(u[section][k], v)
			}
		}
	}
	return u
}

// seconds parses a systemd time span such as "30s", "2min", "1min 30s" or "5".
func seconds(t *testing.T, s string) float64 {
	t.Helper()
	s = strings.NewReplacer("min", "m", " ", "").Replace(s)
	if n, err := strconv.ParseFloat(s, 64); err == nil {
		return n
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("time span %q: %v", s, err)
	}
	return d.Seconds()
}

func TestUnitsLint(t *testing.T) {
	want := map[string]string{ // [Service] key -> required value
		"Type":                    "exec",
		"Restart":                 "on-failure",
		"KillSignal":              "SIGTERM",
		"NoNewPrivileges":         "yes",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"PrivateDevices":          "yes",
		"ProtectKernelTunables":   "yes",
		"ProtectKernelModules":    "yes",
		"ProtectKernelLogs":       "yes",
		"ProtectControlGroups":    "yes",
		"ProtectClock":            "yes",
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
		"RestrictNamespaces":      "yes",
		"RestrictRealtime":        "yes",
		"RestrictSUIDSGID":        "yes",
		"LockPersonality":         "yes",
		"SystemCallArchitectures": "native",
		"SystemCallErrorNumber":   "EPERM",
		"CapabilityBoundingSet":   "",
		"AmbientCapabilities":     "",
	}
	for _, path := range unitFiles {
		u := parseUnit(t, path)
		bin, args, env := "chat-proxy", "$CHAT_PROXY_ARGS", "/etc/relaychat/chat-proxy.env"
		if strings.Contains(path, "server@") {
			bin, args, env = "chat-server", "$CHAT_SERVER_ARGS", "/etc/relaychat/chat-server-%i.env"
		}
		for k, v := range want {
			if !u.has("Service", k) || u.get("Service", k) != v {
				t.Errorf("%s: [Service] %s=%q, want %q", path, k, u.get("Service", k), v)
			}
		}
		exe := u.get("Service", "ExecStart")
		if !strings.HasPrefix(exe, "/usr/local/bin/"+bin+" ") || !strings.Contains(exe, " "+args) {
			t.Errorf("%s: ExecStart=%q, want /usr/local/bin/%s ... %s", path, exe, bin, args)
		}
		if bin == "chat-server" && !strings.Contains(exe, "-id %i") {
			t.Errorf("%s: ExecStart does not pass the instance name as -id", path)
		}
		if got := u.get("Service", "EnvironmentFile"); got != env {
			t.Errorf("%s: EnvironmentFile=%q, want %q (required: a missing secrets file must stop the start)", path, got, env)
		}
		if u.get("Service", "DynamicUser") != "yes" && u.get("Service", "User") == "" {
			t.Errorf("%s: neither DynamicUser=yes nor User=", path)
		}
		if !strings.Contains(strings.Join(u["Service"]["SystemCallFilter"], " "), "@system-service") {
			t.Errorf("%s: SystemCallFilter does not allow-list @system-service", path)
		}
		if mdwe := u.get("Service", "MemoryDenyWriteExecute"); mdwe == "" {
			t.Errorf("%s: MemoryDenyWriteExecute not stated (see TestMemoryDenyWriteExecute)", path)
		}
		minNoFile := 65536
		if bin == "chat-server" {
			minNoFile = 1 << 20 // the connection cap is derived from it
		}
		if n, err := strconv.Atoi(u.get("Service", "LimitNOFILE")); err != nil || n < minNoFile {
			t.Errorf("%s: LimitNOFILE=%q, want at least %d", path, u.get("Service", "LimitNOFILE"), minNoFile)
		}
		if rs := seconds(t, u.get("Service", "RestartSec")); rs < 1 || rs > 30 {
			t.Errorf("%s: RestartSec=%vs, want 1s..30s", path, rs)
		}
		// The graceful drain takes the server's 5s shutdown deadline plus
		// Redis timeouts; give it room before SIGKILL.
		if ts := seconds(t, u.get("Service", "TimeoutStopSec")); ts < 15 {
			t.Errorf("%s: TimeoutStopSec=%vs, want at least 15s", path, ts)
		}
		if u.get("Service", "RestartPreventExitStatus") != "2" {
			t.Errorf("%s: RestartPreventExitStatus should be 2 (usage errors)", path)
		}
		if u.get("Unit", "StartLimitIntervalSec") == "" || u.get("Unit", "StartLimitBurst") == "" {
			t.Errorf("%s: no start limit in [Unit]", path)
		}
		if u.get("Install", "WantedBy") != "multi-user.target" {
			t.Errorf("%s: WantedBy=%q", path, u.get("Install", "WantedBy"))
		}
	}
}

// TestEnvExamples checks the example environment files: the variables the
// units and binaries read, and no value that looks like a real secret.
func TestEnvExamples(t *testing.T) {
	for file, vars := range map[string][]string{
		"systemd/chat-server.env.example": {"CHAT_SERVER_ARGS", "RELAYCHAT_PEER_SECRET", "RELAYCHAT_AUTH_SECRET", "RELAYCHAT_REDIS_USERNAME", "RELAYCHAT_REDIS_PASSWORD"},
		"systemd/chat-proxy.env.example":  {"CHAT_PROXY_ARGS", "RELAYCHAT_PEER_SECRET", "RELAYCHAT_REDIS_USERNAME", "RELAYCHAT_REDIS_PASSWORD"},
	} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, line := range strings.Split(string(b), "\n") {
			line = strings.TrimSpace(line)
			if line == "" || line[0] == '#' {
				continue
			}
			k, v, ok := strings.Cut(line, "=")
			if !ok || !regexp.MustCompile(`^[A-Z_][A-Z0-9_]*$`).MatchString(k) {
				t.Errorf("%s: %q is not NAME=value", file, line)
				continue
			}
			got[k] = v
		}
		for _, v := range vars {
			if _, ok := got[v]; !ok {
				t.Errorf("%s: %s missing", file, v)
			}
		}
		for k, v := range got {
			if strings.Contains(k, "SECRET") || strings.Contains(k, "PASSWORD") {
				if v != "" && !strings.HasPrefix(v, "replace-with") {
					t.Errorf("%s: %s has a value that could be a real secret; use empty or replace-with-...", file, k)
				}
			}
		}
		if args := got["CHAT_SERVER_ARGS"] + got["CHAT_PROXY_ARGS"]; strings.Contains(args, "secret") {
			t.Errorf("%s: a secret in the args (visible in ps): %s", file, args)
		}
		if strings.Contains(got["CHAT_SERVER_ARGS"], "-id ") {
			t.Errorf("%s: -id comes from the unit's instance name, not the args", file)
		}
	}
}

// TestSystemdAnalyzeVerify runs systemd-analyze verify on the units, with
// ExecStart pointed at a binary that exists (verify checks it), and checks
// the hardening score with systemd-analyze security --offline.
func TestSystemdAnalyzeVerify(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (scripts/ensure-systemd-analyze.sh installs it); the lint above still ran")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var paths []string
	for _, f := range unitFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b = regexp.MustCompile(`/usr/local/bin/chat-(server|proxy)`).ReplaceAll(b, []byte(self))
		name := filepath.Base(f)
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(name, "@.service") {
			inst := strings.Replace(name, "@.service", "@s1.service", 1)
			if err := os.Symlink(name, filepath.Join(dir, inst)); err != nil {
				t.Fatal(err)
			}
			name = inst
		}
		paths = append(paths, filepath.Join(dir, name))
	}
	verify := func(paths ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, sa, append([]string{"verify"}, paths...)...).CombinedOutput()
		return string(out), err
	}
	// verify exits 0 on unknown keys and bad values and only prints a
	// warning, so any line about our units is a failure.
	out, err := verify(paths...)
	if err != nil {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.Contains(line, "chat-server") || strings.Contains(line, "chat-proxy") || strings.Contains(line, dir) {
			t.Errorf("systemd-analyze verify: %s", line)
		} else if line != "" {
			t.Logf("systemd-analyze verify (not about our units): %s", line)
		}
	}
	// And it does see mistakes: a canary with a misspelt key and a missing binary.
	canary := filepath.Join(dir, "canary.service")
	os.WriteFile(canary, []byte("[Service]\nExecStart=/nonexistent/chat-canary\nLimitNOFILEE=5\n"), 0o644)
	if out, err := verify(canary); err == nil && !strings.Contains(out, "LimitNOFILEE") {
		t.Errorf("systemd-analyze verify missed a broken unit, so its silence proves nothing:\n%s", out)
	}

	// Exposure score (0 = locked down, 10 = unprotected); ours is about 1.4.
	for _, p := range paths {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := exec.CommandContext(ctx, sa, "security", "--offline=yes", "--threshold=20", p).CombinedOutput()
		cancel()
		if err != nil && bytes.Contains(out, []byte("unrecognized option")) {
			t.Logf("systemd-analyze security --offline not supported here: %s", bytes.TrimSpace(out))
			break
		}
		m := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`).FindSubmatch(out)
		if err != nil || m == nil {
			t.Errorf("systemd-analyze security %s (threshold 2.0): %v\n%s", filepath.Base(p), err, lastLines(out, 25))
			continue
		}
		t.Logf("%s: exposure %s", filepath.Base(p), m[1])
	}
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// mdweChildEnv marks the re-executed test binary that runs under
// PR_SET_MDWE, the kernel's form of MemoryDenyWriteExecute=yes.
const mdweChildEnv = "RELAYCHAT_TEST_MDWE_CHILD"

// TestMemoryDenyWriteExecute runs, under the kernel's memory-deny-write-
// execute (what MemoryDenyWriteExecute=yes enforces, through prctl on
// kernels >= 6.3 or seccomp before), (1) plain Go: the metrics server and
// a scrape, and (2) the JIT of sonic, the JSON library the server decodes
// client requests with. Plain Go works; sonic's JIT mprotects its code
// RW -> RX, which is refused, and it panics. So the server unit must keep
// MemoryDenyWriteExecute off; if the JIT ever stops failing, the test says
// it can be turned on.
func TestMemoryDenyWriteExecute(t *testing.T) {
	if os.Getenv(mdweChildEnv) == "1" {
		mdweChild()
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestMemoryDenyWriteExecute$", "-test.count=1")
	cmd.Env = append(os.Environ(), mdweChildEnv+"=1")
	out, _ := cmd.CombinedOutput()
	res := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && strings.HasPrefix(k, "mdwe.") {
			res[k] = v
		}
	}
	if res["mdwe.prctl"] != "ok" {
		t.Skipf("PR_SET_MDWE unavailable here (%q); kernel < 6.3 or a sandbox", res["mdwe.prctl"])
	}
	if res["mdwe.go"] != "ok" {
		t.Errorf("plain Go (metrics server, scrape) failed under MDWE: %q\n%s", res["mdwe.go"], out)
	}
	t.Logf("sonic JIT under MDWE: %s", res["mdwe.sonic"])
	sonicBreaks := res["mdwe.sonic"] != "ok"
	for _, path := range unitFiles {
		on := parseUnit(t, path).get("Service", "MemoryDenyWriteExecute") == "yes"
		switch {
		case on && sonicBreaks && strings.Contains(path, "server@"):
			t.Errorf("%s: MemoryDenyWriteExecute=yes, but the server's JSON decoder (sonic JIT) fails under it: %s", path, res["mdwe.sonic"])
		case !on && !sonicBreaks:
			t.Logf("%s: sonic now works under MDWE; MemoryDenyWriteExecute=yes could be turned on", path)
		}
	}
}

func mdweChild() {
	report := func(k, v string) { fmt.Printf("\nmdwe.%s=%s\n", k, strings.ReplaceAll(v, "\n", " ")) }
	if err := unix.Prctl(unix.PR_SET_MDWE, unix.PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0); err != nil {
		report("prctl", err.Error())
		return
	}
	report("prctl", "ok")
	report("go", func() string {
		s, err := metrics.New(metrics.Options{Addr: "127.0.0.1:0"})
		if err != nil {
			return err.Error()
		}
		defer s.Shutdown(context.Background())
		resp, err := http.Get("http://" + s.Addr() + "/metrics")
		if err != nil {
			return err.Error()
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return resp.Status
		}
		return "ok"
	}())
	report("sonic", func() (res string) {
		defer func() {
			if p := recover(); p != nil {
				res = fmt.Sprintf("panic: %v", p)
			}
		}()
		type req struct {
			Cmd     string `json:"cmd"`
			Recv    string `json:"recv"`
			Content string `json:"content"`
		}
		if err := sonic.Pretouch(reflect.TypeOf(req{})); err != nil {
			return err.Error()
		}
		var r req
		if err := sonic.Unmarshal([]byte(`{"cmd":"chat","recv":"bob","content":"hi"}`), &r); err != nil || r.Recv != "bob" {
			return fmt.Sprintf("unmarshal: %v %+v", err, r)
		}
		return "ok"
	}())
}
