package deploy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/relaychat/relaychat/internal/metrics"
)

// The metric names rules and panels may use. relaychatMetrics must equal
// the catalog in internal/metrics (checked below), so neither the
// dashboard nor the alerts can drift from what the binaries export.
var (
	relaychatMetrics = []string{
		"relaychat_ready",
		"relaychat_links",
		"relaychat_connections",
		"relaychat_sessions",
		"relaychat_chats_received_total",
		"relaychat_chats_delivered_total",
		"relaychat_chats_stored_total",
		"relaychat_chat_errors_total",
		"relaychat_stream_unacked_chats",
		"relaychat_stream_unacked_bytes",
		"relaychat_stream_resent_total",
		"relaychat_mailbox_dropped_total",
		"relaychat_mailbox_drain_seconds",
		"relaychat_redis_op_seconds",
		"relaychat_redis_errors_total",
		"relaychat_slow_consumers_total",
		"relaychat_kicks_total",
		"relaychat_logins_total",
		"relaychat_proxy_links",
		"relaychat_proxy_frames_total",
		"relaychat_proxy_dropped_frames_total",
	}
	// runtimeMetrics come from the Go and process collectors (checked
	// against a real registry below).
	runtimeMetrics = []string{
		"go_goroutines",
		"go_threads",
		"go_gc_duration_seconds",
		"go_memstats_heap_inuse_bytes",
		"go_memstats_alloc_bytes_total",
		"go_sched_latencies_seconds",
		"process_cpu_seconds_total",
		"process_resident_memory_bytes",
		"process_open_fds",
		"process_max_fds",
		"process_start_time_seconds",
	}
	// prometheusMetrics are made by Prometheus itself.
	prometheusMetrics = []string{"up"}
	// histograms (and summaries) also have _bucket, _sum and _count series.
	histograms = []string{"relaychat_mailbox_drain_seconds", "relaychat_redis_op_seconds", "go_sched_latencies_seconds", "go_gc_duration_seconds"}
)

func allowedMetric(name string) bool {
	if slices.Contains(relaychatMetrics, name) || slices.Contains(runtimeMetrics, name) || slices.Contains(prometheusMetrics, name) {
		return true
	}
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suf); ok && slices.Contains(histograms, base) {
			return true
		}
	}
	return false
}

// checkExpr fails t when expr names a metric outside the declared lists,
// and records the names it uses in used.
func checkExpr(t *testing.T, where, expr string, used map[string]bool) {
	t.Helper()
	names, err := metricNames(expr)
	if err != nil {
		t.Errorf("%s: %v", where, err)
		return
	}
	if len(names) == 0 {
		t.Errorf("%s: no metric in %q", where, expr)
	}
	for _, n := range names {
		if !allowedMetric(n) {
			t.Errorf("%s: metric %q is not one the binaries export (declared in deploy_test.go and internal/metrics/catalog.go): %s", where, n, expr)
		}
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(n, suf); ok && slices.Contains(histograms, base) {
				n = base
			}
		}
		used[n] = true
	}
}

func TestDeclaredMetricsMatchCatalog(t *testing.T) {
	names, hists := metrics.CatalogNames()
	sort.Strings(names)
	want := slices.Clone(relaychatMetrics)
	sort.Strings(want)
	if !slices.Equal(names, want) {
		t.Errorf("internal/metrics catalog %v\ndeploy_test.go declares %v", names, want)
	}
	for _, h := range hists {
		if !slices.Contains(histograms, h) {
			t.Errorf("histogram %s not declared here", h)
		}
	}
	mfs, err := metrics.NewRegistry().Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, mf := range mfs {
		have[mf.GetName()] = true
	}
	for _, n := range runtimeMetrics {
		if !have[n] {
			t.Errorf("runtime metric %s is not exported by metrics.NewRegistry", n)
		}
	}
}

func TestPromQLLexer(t *testing.T) {
	cases := map[string][]string{
		`sum by (le, op) (rate(relaychat_redis_op_seconds_bucket{job=~"$job", op!="x"}[$__rate_interval]))`: {"relaychat_redis_op_seconds_bucket"},
		`a / on (job) group_left(instance) b offset 5m > bool 0.5e3`:                                        {"a", "b"},
		`histogram_quantile(0.99, sum without (pod) (rate(x_bucket[5m:1m])))`:                               {"x_bucket"},
		`up{job="a{b}"} == 0 and count(foo) > 1 # comment names bar`:                                        {"up", "foo"},
		`topk(3, sum(rate(c_total{reason='it\'s'}[1h])) by (reason))`:                                       {"c_total"},
	}
	for expr, want := range cases {
		got, err := metricNames(expr)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("metricNames(%q) = %v, %v; want %v", expr, got, err, want)
		}
	}
	if _, err := metricNames(`rate(x{job="a"[5m])`); err == nil {
		t.Error("unbalanced braces: want an error")
	}
	if got := labelValuesMetric(`label_values(relaychat_ready{job=~"$job"}, instance)`); got != "relaychat_ready" {
		t.Errorf("labelValuesMetric = %q", got)
	}
}

// --- Grafana ---

type dashboard struct {
	SchemaVersion int     `json:"schemaVersion"`
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
			DS    *datasource     `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID      int                      `json:"id"`
	Type    string                   `json:"type"`
	Title   string                   `json:"title"`
	DS      *datasource              `json:"datasource"`
	GridPos struct{ H, W, X, Y int } `json:"gridPos"`
	Targets []struct {
		RefID string      `json:"refId"`
		Expr  string      `json:"expr"`
		DS    *datasource `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

func readDashboard(t *testing.T) (dashboard, []byte) {
	t.Helper()
	b, err := os.ReadFile("grafana/relaychat.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("grafana/relaychat.json: %v", err)
	}
	if dec.More() {
		t.Fatal("grafana/relaychat.json: data after the dashboard object")
	}
	return d, b
}

func TestGrafanaDashboard(t *testing.T) {
	d, raw := readDashboard(t)
	if !json.Valid(raw) {
		t.Fatal("not valid JSON")
	}
	if d.SchemaVersion < 36 || d.UID == "" || d.Title == "" {
		t.Errorf("schemaVersion %d, uid %q, title %q", d.SchemaVersion, d.UID, d.Title)
	}
	// The data source is a variable, so the dashboard imports anywhere.
	dsVar := false
	used := map[string]bool{}
	for _, v := range d.Templating.List {
		switch v.Type {
		case "datasource":
			var q string
			if json.Unmarshal(v.Query, &q) == nil && q == "prometheus" && v.Name == "ds" {
				dsVar = true
			}
		case "query":
			if v.DS == nil || v.DS.UID != "${ds}" {
				t.Errorf("variable %s: datasource %+v, want uid ${ds}", v.Name, v.DS)
			}
			var q struct{ Query string }
			if err := json.Unmarshal(v.Query, &q); err != nil {
				var s string
				if err := json.Unmarshal(v.Query, &s); err != nil {
					t.Errorf("variable %s: query %s", v.Name, v.Query)
				}
				q.Query = s
			}
			if m := labelValuesMetric(q.Query); m != "" {
				checkExpr(t, "variable "+v.Name, m, used)
			}
		}
	}
	if !dsVar {
		t.Error(`no datasource variable "ds" of type prometheus`)
	}

	ids := map[int]string{}
	var walk func(ps []panel)
	exprs := 0
	walk = func(ps []panel) {
		for _, p := range ps {
			if prev, dup := ids[p.ID]; dup {
				t.Errorf("panel id %d used by %q and %q", p.ID, prev, p.Title)
			}
			ids[p.ID] = p.Title
			if p.GridPos.W <= 0 || p.GridPos.X+p.GridPos.W > 24 || p.GridPos.H <= 0 {
				t.Errorf("panel %q: gridPos %+v outside the 24-column grid", p.Title, p.GridPos)
			}
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			if p.Title == "" || len(p.Targets) == 0 {
				t.Errorf("panel %d: title %q, %d targets", p.ID, p.Title, len(p.Targets))
			}
			if p.DS == nil || p.DS.UID != "${ds}" {
				t.Errorf("panel %q: datasource %+v, want uid ${ds}", p.Title, p.DS)
			}
			refs := map[string]bool{}
			for _, tg := range p.Targets {
				if refs[tg.RefID] {
					t.Errorf("panel %q: refId %s twice", p.Title, tg.RefID)
				}
				refs[tg.RefID] = true
				if tg.DS != nil && tg.DS.UID != "${ds}" {
					t.Errorf("panel %q target %s: datasource %+v", p.Title, tg.RefID, tg.DS)
				}
				checkExpr(t, fmt.Sprintf("panel %q target %s", p.Title, tg.RefID), tg.Expr, used)
				exprs++
			}
		}
	}
	walk(d.Panels)
	if exprs < 20 {
		t.Errorf("only %d queries", exprs)
	}
	// Every metric the binaries export has a panel.
	for _, n := range relaychatMetrics {
		if !used[n] {
			t.Errorf("no panel shows %s", n)
		}
	}
	for _, n := range []string{"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "go_gc_duration_seconds"} {
		if !used[n] {
			t.Errorf("no panel shows %s", n)
		}
	}
}

// --- Prometheus ---

type ruleFile struct {
	Groups []struct {
		Name     string `yaml:"name"`
		Interval string `yaml:"interval"`
		Rules    []struct {
			Alert         string            `yaml:"alert"`
			Record        string            `yaml:"record"`
			Expr          string            `yaml:"expr"`
			For           string            `yaml:"for"`
			KeepFiringFor string            `yaml:"keep_firing_for"`
			Labels        map[string]string `yaml:"labels"`
			Annotations   map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func decodeStrict(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func TestPrometheusYAMLParses(t *testing.T) {
	files, err := filepath.Glob("prometheus/*.yml")
	if err != nil || len(files) < 3 {
		t.Fatalf("prometheus/*.yml: %v %v", files, err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var v map[string]any
		if err := yaml.Unmarshal(b, &v); err != nil || len(v) == 0 {
			t.Errorf("%s: not a YAML mapping: %v", f, err)
		}
	}

	var cfg struct {
		Global        map[string]any   `yaml:"global"`
		RuleFiles     []string         `yaml:"rule_files"`
		Alerting      map[string]any   `yaml:"alerting"`
		ScrapeConfigs []map[string]any `yaml:"scrape_configs"`
	}
	decodeStrict(t, "prometheus/prometheus.yml", &cfg)
	if !slices.Contains(cfg.RuleFiles, "alerts.yml") {
		t.Errorf("rule_files %v does not load alerts.yml", cfg.RuleFiles)
	}
	var jobs []string
	for _, sc := range cfg.ScrapeConfigs {
		jobs = append(jobs, fmt.Sprint(sc["job_name"]))
	}
	for _, j := range []string{"relaychat-server", "relaychat-proxy"} {
		if !slices.Contains(jobs, j) {
			t.Errorf("no scrape job %s (alerts select on it): %v", j, jobs)
		}
	}
}

func TestAlertRules(t *testing.T) {
	var rf ruleFile
	decodeStrict(t, "prometheus/alerts.yml", &rf)
	seen := map[string]bool{}
	used := map[string]bool{}
	for _, g := range rf.Groups {
		if g.Name == "" || len(g.Rules) == 0 {
			t.Errorf("group %q: no name or no rules", g.Name)
		}
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("group %s: a rule without alert name (recording rules belong elsewhere)", g.Name)
				continue
			}
			if seen[r.Alert] {
				t.Errorf("alert %s defined twice", r.Alert)
			}
			seen[r.Alert] = true
			if sev := r.Labels["severity"]; sev != "page" && sev != "warning" {
				t.Errorf("alert %s: severity %q, want page or warning", r.Alert, sev)
			}
			if r.Annotations["summary"] == "" {
				t.Errorf("alert %s: no summary annotation", r.Alert)
			}
			if r.For != "" {
				if _, err := time.ParseDuration(r.For); err != nil {
					t.Errorf("alert %s: for %q: %v", r.Alert, r.For, err)
				}
			}
			checkExpr(t, "alert "+r.Alert, r.Expr, used)
		}
	}
	// The cases the operations issue asks to alert on.
	for _, a := range []string{"RelaychatServerNotReady", "RelaychatLinkDown", "RelaychatChatErrorsHigh",
		"RelaychatMailboxRetentionDrops", "RelaychatSlowConsumersSpike", "RelaychatUnackedChatsGrowing",
		"RelaychatProcessRestarting"} {
		if !seen[a] {
			t.Errorf("no alert %s", a)
		}
	}
}

// TestPromtool runs Prometheus' own checker on the config, the rules, the
// rules' unit tests (prometheus/alerts_test.yml) and every dashboard query,
// when promtool is installed (Debian: apt-get install prometheus).
func TestPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (apt-get install prometheus); the Go checks above still ran")
	}
	run := func(args ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("check", "config", "prometheus/prometheus.yml")
	run("check", "rules", "prometheus/alerts.yml")
	run("test", "rules", "prometheus/alerts_test.yml")

	// Dashboard queries, as recording rules, so promtool parses each one.
	d, _ := readDashboard(t)
	var b strings.Builder
	b.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	n := 0
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			walk(p.Panels)
			for _, tg := range p.Targets {
				n++
				fmt.Fprintf(&b, "      - record: dashboard:query%d\n        expr: %s\n", n, strconv.Quote(grafanaVars(tg.Expr)))
			}
		}
	}
	walk(d.Panels)
	f := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(f, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	run("check", "rules", f)
}

// --- sysctl ---

func TestSysctl(t *testing.T) {
	conf, err := os.ReadFile("sysctl/99-relaychat.conf")
	if err != nil {
		t.Fatal(err)
	}
	notes, err := os.ReadFile("sysctl/NOTES.md")
	if err != nil {
		t.Fatal(err)
	}
	set := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(conf))
	for ln := 1; sc.Scan(); ln++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" || v == "" {
			t.Errorf("line %d: %q is not key = value", ln, line)
			continue
		}
		if _, dup := set[k]; dup {
			t.Errorf("%s set twice", k)
		}
		set[k] = v
		if !bytes.Contains(notes, []byte("`"+k+"`")) {
			t.Errorf("%s is not explained in NOTES.md", k)
		}
		// The key exists on this kernel (skipped where /proc/sys is absent).
		p := "/proc/sys/" + strings.ReplaceAll(k, ".", "/")
		if _, err := os.Stat("/proc/sys/net"); err == nil {
			if _, err := os.Stat(p); err != nil {
				t.Errorf("%s: no %s on this kernel", k, p)
			}
		}
	}
	for _, k := range []string{"net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog", "net.ipv4.ip_local_port_range",
		"fs.file-max", "fs.nr_open", "net.core.netdev_max_backlog", "net.ipv4.tcp_tw_reuse"} {
		if set[k] == "" {
			t.Errorf("%s not set", k)
		}
	}
	for _, k := range []string{"net.ipv4.tcp_mem", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"} {
		if !bytes.Contains(conf, []byte(k)) || !bytes.Contains(notes, []byte(k)) {
			t.Errorf("%s: no note in the conf and NOTES.md", k)
		}
	}
	// fs.nr_open must admit the units' LimitNOFILE.
	nrOpen, _ := strconv.Atoi(set["fs.nr_open"])
	for _, u := range unitFiles {
		if lim, _ := strconv.Atoi(parseUnit(t, u).get("Service", "LimitNOFILE")); lim > nrOpen {
			t.Errorf("%s: LimitNOFILE=%d above fs.nr_open=%d", u, lim, nrOpen)
		}
	}
}
