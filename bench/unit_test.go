package bench

import (
	"bufio"
	"encoding/json"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestRecvPairKinds(t *testing.T) {
	var p recvPair
	steps := []struct {
		seq  uint32
		want recvKind
	}{
		{1, recvInOrder}, {2, recvInOrder}, {5, recvAfterGap}, // 3, 4 missing
		{4, recvLate}, {4, recvDup}, {2, recvDup}, {6, recvInOrder},
		{9, recvAfterGap}, // 7, 8 missing
		{3, recvLate}, {0, recvInvalid}, {8, recvLate}, {8, recvDup},
	}
	for i, s := range steps {
		if got := p.receive(s.seq); got != s.want {
			t.Fatalf("step %d: receive(%d) = %d, want %d", i, s.seq, got, s.want)
		}
	}
	if got := p.received(); got != 8 { // 1-6, 8, 9
		t.Fatalf("received %d, want 8", got)
	}
	if got := p.missing(9); got != 1 { // 7
		t.Fatalf("missing(9) = %d, want 1", got)
	}
	if got := p.missing(12); got != 4 { // 7, 10, 11, 12
		t.Fatalf("missing(12) = %d, want 4", got)
	}
}

// TestRecvPairRandom checks recvPair against a map on random arrival
// orders with duplicates.
func TestRecvPairRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 200; round++ {
		n := 1 + rng.IntN(60)
		var seqs []uint32
		for q := 1; q <= n; q++ {
			if rng.IntN(10) > 0 { // ~10% never arrive
				seqs = append(seqs, uint32(q))
			}
			if rng.IntN(10) == 0 {
				seqs = append(seqs, uint32(q)) // duplicate
			}
		}
		// Local shuffles only, as a network would do.
		for i := range seqs {
			if j := i + rng.IntN(3); j < len(seqs) && rng.IntN(4) == 0 {
				seqs[i], seqs[j] = seqs[j], seqs[i]
			}
		}
		var p recvPair
		seen := map[uint32]bool{}
		var max uint32
		for _, q := range seqs {
			k := p.receive(q)
			switch {
			case seen[q]:
				if k != recvDup {
					t.Fatalf("round %d: dup %d classified %d", round, q, k)
				}
			case q < max:
				if k != recvLate {
					t.Fatalf("round %d: late %d classified %d", round, q, k)
				}
			default:
				if k != recvInOrder && k != recvAfterGap {
					t.Fatalf("round %d: new max %d classified %d", round, q, k)
				}
			}
			seen[q] = true
			if q > max {
				max = q
			}
		}
		if got, want := p.missing(uint32(n)), int64(n-len(seen)); got != want {
			t.Fatalf("round %d: missing %d, want %d", round, got, want)
		}
	}
}

func TestContentRoundTrip(t *testing.T) {
	tag := [tagLen]byte{'0', '1', '2', '3', 'a', 'b', 'c', 'd'}
	st := stamp{sender: 123456, slot: 15, seq: 4000000000, ts: 1234567890123}
	for _, size := range []int{0, 10, 64, 1000, 10000} {
		c := appendContent(nil, &tag, st, size)
		if size > 60 && len(c) != size {
			t.Fatalf("size %d: content is %d bytes", size, len(c))
		}
		got, ok := parseContent(c, &tag)
		if !ok || got != st {
			t.Fatalf("size %d: parse = %+v %v", size, got, ok)
		}
	}
	other := [tagLen]byte{'f', 'f', 'f', 'f', 'f', 'f', 'f', 'f'}
	if _, ok := parseContent(appendContent(nil, &other, st, 64), &tag); ok {
		t.Fatal("content of another run accepted")
	}
	for _, bad := range []string{"", "0123abcd", "0123abcd:1:2:3", "0123abcd:x:2:3:4:", "0123abcd:1:99999:3:4:"} {
		if _, ok := parseContent([]byte(bad), &tag); ok {
			t.Fatalf("%q accepted", bad)
		}
	}
}

// TestChatLineIsJSON checks that the request lines are exactly one valid
// JSON object per line, as the contract requires.
func TestChatLineIsJSON(t *testing.T) {
	tag := [tagLen]byte{'0', '1', '2', '3', 'a', 'b', 'c', 'd'}
	st := stamp{sender: 7, slot: 3, seq: 9, ts: 42}
	for _, withID := range []bool{false, true} {
		line := appendChat(nil, "bob-1", &tag, st, 64, 77, withID)
		if strings.Count(string(line), "\n") != 1 || line[len(line)-1] != '\n' {
			t.Fatalf("not one line: %q", line)
		}
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		if m["cmd"] != "chat" || m["recv"] != "bob-1" || len(m["content"].(string)) != 64 {
			t.Fatalf("fields %v", m)
		}
		if _, has := m["id"]; has != withID {
			t.Fatalf("id present %v, want %v", has, withID)
		}
	}
	var m map[string]any
	if err := json.Unmarshal(appendLogin(nil, "alice"), &m); err != nil || m["cmd"] != "login" || m["name"] != "alice" {
		t.Fatalf("login line: %v %v", m, err)
	}
}

func TestJSONField(t *testing.T) {
	line := []byte(`{"cmd":"chat", "send" : "a\"b","recv":"c","content":"0123:1","ts":17,"ok":true}`)
	cases := []struct {
		key, val string
		isStr    bool
	}{
		{`"cmd"`, "chat", true}, {`"send"`, `a\"b`, true}, {`"content"`, "0123:1", true},
		{`"ts"`, "17", false}, {`"ok"`, "true", false},
	}
	for _, c := range cases {
		v, isStr, ok := jsonField(line, []byte(c.key))
		if !ok || string(v) != c.val || isStr != c.isStr {
			t.Errorf("%s: %q %v %v", c.key, v, isStr, ok)
		}
	}
	if _, _, ok := jsonField(line, []byte(`"missing"`)); ok {
		t.Error("found a missing key")
	}
	if s, ok := jsonText([]byte(`{"error":"bad \"name\" \u00e9"}`), keyError); !ok || s != `bad "name" é` {
		t.Errorf("jsonText = %q %v", s, ok)
	}
}

func TestReadLine(t *testing.T) {
	long := strings.Repeat("y", 10000)
	in := "a\r\n\n" + long + "\nb"
	br := bufio.NewReaderSize(strings.NewReader(in), 16)
	var buf []byte
	for _, want := range []string{"a", "", long} {
		got, err := readLine(br, &buf)
		if err != nil || string(got) != want {
			t.Fatalf("got %q %v, want %d bytes", got, err, len(want))
		}
	}
	if _, err := readLine(br, &buf); err == nil {
		t.Fatal("unterminated last line returned")
	}
	br = bufio.NewReaderSize(strings.NewReader(strings.Repeat("z", maxLine+10)+"\n"), 4096)
	if _, err := readLine(br, &buf); err != errLineTooLong {
		t.Fatalf("over-long line: %v", err)
	}
}

func TestHistEncodeMerge(t *testing.T) {
	a, b := newHist(), newHist()
	for i := int64(1); i <= 1000; i++ {
		record(a, i)
		record(b, i*1000)
	}
	record(b, 0)           // clamped to 1
	record(b, histMax*100) // clamped to max
	dst := newHist()
	for _, h := range []string{encodeHist(a), encodeHist(b), ""} {
		if err := mergeEncoded(dst, h); err != nil {
			t.Fatal(err)
		}
	}
	if dst.TotalCount() != 2002 {
		t.Fatalf("count %d", dst.TotalCount())
	}
	p := percentilesOf(dst)
	if p.P50 < 900 || p.P50 > 1100 || p.Max < histMax*99/100 || p.Min != 1 {
		t.Fatalf("percentiles %+v", p)
	}
	d := distribution(dst)
	if len(d) < 10 || d[len(d)-1].Percentile != 100 {
		t.Fatalf("distribution %v", d)
	}
	for i := 1; i < len(d); i++ {
		if d[i].Micros < d[i-1].Micros || d[i].Percentile <= d[i-1].Percentile {
			t.Fatalf("distribution not monotonic at %d: %v", i, d)
		}
	}
	if err := mergeEncoded(dst, "not a histogram"); err == nil {
		t.Fatal("garbage decoded")
	}
}

func TestCountersAddCoversEveryField(t *testing.T) {
	var one, sum Counters
	v := reflect.ValueOf(&one).Elem()
	for i := 0; i < v.NumField(); i++ {
		v.Field(i).SetInt(1)
	}
	sum.add(&one)
	sum.add(&one)
	s := reflect.ValueOf(sum)
	for i := 0; i < s.NumField(); i++ {
		if s.Field(i).Int() != 2 {
			t.Errorf("Counters.add misses %s", s.Type().Field(i).Name)
		}
	}
}

func TestReasonsBounded(t *testing.T) {
	var r reasons
	for i := 0; i < 1000; i++ {
		r.add(strings.Repeat("x", i%200)+string(rune('a'+i%26)), 1)
	}
	m := r.snapshot()
	if len(m) > maxReasons+1 {
		t.Fatalf("%d reasons kept", len(m))
	}
	var n int64
	for _, v := range m {
		n += v
	}
	if n != 1000 {
		t.Fatalf("counted %d of 1000", n)
	}
}

func TestSrcIPs(t *testing.T) {
	ips, err := parseSrcIPs("3")
	if err != nil || len(ips) != 3 || ips[2].String() != "127.0.0.3" {
		t.Fatalf("3: %v %v", ips, err)
	}
	if ips, _ := parseSrcIPs("127.0.0.250-127.0.1.2"); len(ips) != 9 || ips[8].String() != "127.0.1.2" {
		t.Fatalf("range: %v", ips)
	}
	for _, bad := range []string{"0", "x", "127.0.0.5-127.0.0.1", "1.2.3.4,zz"} {
		if _, err := parseSrcIPs(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	o := Options{Servers: []string{"127.0.0.1:1", "127.0.0.1:2"}, Clients: 100000}
	ips, _ = srcIPsFor(&o)
	if len(ips) != 10 { // 10,000 per source address
		t.Fatalf("auto: %d addresses", len(ips))
	}
	o.Clients = 10000
	if ips, _ := srcIPsFor(&o); ips != nil {
		t.Fatalf("auto below the limit: %v", ips)
	}
	o.Clients = 30000
	o.Servers = []string{"10.0.0.1:1"}
	if ips, _ := srcIPsFor(&o); ips != nil {
		t.Fatalf("auto for a remote server: %v", ips)
	}
}

func TestParsePids(t *testing.T) {
	p, err := ParsePids(" s1=10, proxy=20 ,")
	if err != nil || !reflect.DeepEqual(p, []ProcSpec{{"s1", 10}, {"proxy", 20}}) {
		t.Fatalf("%v %v", p, err)
	}
	for _, bad := range []string{"s1", "s1=x", "s1=-1"} {
		if _, err := ParsePids(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestOptionsDefaults(t *testing.T) {
	o, err := Options{Servers: []string{"127.0.0.1:1"}}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if o.Clients != 1000 || o.Window != 8 || o.Size != 64 || o.Procs != 1 || o.Cross != 0 {
		t.Fatalf("defaults %+v", o)
	}
	o, _ = Options{Servers: []string{"a:1", "b:1"}, Clients: 40000}.withDefaults()
	if o.Cross != 0.5 || o.Procs != 3 {
		t.Fatalf("cross %v procs %d", o.Cross, o.Procs)
	}
	o, _ = Options{Servers: []string{"a:1", "b:1"}, CrossSet: true}.withDefaults()
	if o.Cross != 0 {
		t.Fatalf("explicit cross 0 became %v", o.Cross)
	}
	for _, bad := range []Options{
		{}, {Servers: []string{"nohost"}}, {Servers: []string{"a:1"}, Rate: -1},
		{Servers: []string{"a:1"}, Cross: 2}, {Servers: []string{"a:1"}, Clients: 2, Procs: 3},
		{Servers: []string{"a:1"}, Prefix: "has space"},
	} {
		if _, err := bad.withDefaults(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

// TestRecipientChoice checks the cross-server mix of the pairs and that
// nobody is paired with itself when there is anyone else.
func TestRecipientChoice(t *testing.T) {
	servers := []string{"127.0.0.1:1", "127.0.0.1:2"}
	for _, cross := range []float64{0, 0.5, 1} {
		o, err := Options{Servers: servers, Clients: 400, Cross: cross, CrossSet: true, Seed: 5}.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		e := newEngine(o, 100, 500, [tagLen]byte{}, nil)
		var n int
		for i, p := range e.pairs {
			s := i / o.Fanout
			if int(p.recv) == s {
				t.Fatalf("cross %v: client %d paired with itself", cross, s)
			}
			if got := (e.clients[p.recv].srv != e.clients[s].srv); got != p.cross {
				t.Fatalf("pair %d: cross flag %v, servers say %v", i, p.cross, got)
			}
			if p.cross {
				n++
			}
		}
		frac := float64(n) / float64(len(e.pairs))
		if frac < cross-0.05 || frac > cross+0.05 {
			t.Fatalf("cross %v: %.3f of pairs cross", cross, frac)
		}
	}
}

// TestConnectFailures: clients that cannot log in are counted by reason
// and the run goes on without them.
func TestConnectFailures(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close() // nothing listens there now
	dir := newFakeDir(faultNone, 0)
	s := startFake(t, "s1", dir)
	r, err := Run(t.Context(), Options{Servers: []string{s.addr(), dead}, Clients: 10, Duration: 200 * time.Millisecond, Drain: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if r.Connect.Connected != 5 || r.Connect.Failed != 5 || r.Counters.ConnectErrors != 5 || r.Errors["connect: connection refused"] != 5 {
		t.Fatalf("connect %+v errors %v", r.Connect, r.Errors)
	}
	if r.Counters.Sent == 0 || r.Lost != 0 || r.Counters.Rejected != 0 {
		t.Fatalf("sent %d lost %d rejected %d", r.Counters.Sent, r.Lost, r.Counters.Rejected)
	}
}

func TestReportOutputs(t *testing.T) {
	r := runFake(t, newFakeDir(faultNone, 0), Options{Clients: 10, Duration: 1200 * time.Millisecond})
	var b strings.Builder
	if err := r.WriteHTML(&b); err != nil {
		t.Fatal(err)
	}
	h := b.String()
	for _, want := range []string{"<svg", "Latency distribution", "Throughput over time", `id="report"`} {
		if !strings.Contains(h, want) {
			t.Errorf("HTML lacks %q", want)
		}
	}
	for _, bad := range []string{"http://", "https://", "<link", "src="} {
		if strings.Contains(strings.ReplaceAll(h, `xmlns="http://www.w3.org/2000/svg"`, ""), bad) {
			t.Errorf("HTML refers to an external resource (%q)", bad)
		}
	}
	js, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js, &back); err != nil || back.Counters != r.Counters || back.Latency != r.Latency {
		t.Fatalf("JSON round trip: %v", err)
	}
}

// TestSourceAddresses: with SrcIPs the clients of each server are spread
// evenly over the given 127.0.0.x source addresses.
func TestSourceAddresses(t *testing.T) {
	dir := newFakeDir(faultNone, 0)
	s1, s2 := startFake(t, "s1", dir), startFake(t, "s2", dir)
	r, err := Run(t.Context(), Options{Servers: []string{s1.addr(), s2.addr()}, Clients: 24, SrcIPs: "3",
		Duration: 100 * time.Millisecond, Drain: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if r.Connect.Connected != 24 || r.Lost != 0 {
		t.Fatalf("connected %d lost %d errors %v", r.Connect.Connected, r.Lost, r.Errors)
	}
	for _, s := range []*fakeServer{s1, s2} {
		s.mu.Lock()
		got := maps.Clone(s.sources)
		s.mu.Unlock()
		want := map[string]int{"127.0.0.1": 4, "127.0.0.2": 4, "127.0.0.3": 4}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: sources %v, want %v", s.id, got, want)
		}
	}
}

func TestProcSampling(t *testing.T) {
	tr := newProcTracker([]ProcSpec{{"self", os.Getpid()}, {"gone", 1 << 30}}, false, true)
	defer tr.close()
	a := tr.sample()
	for end := time.Now().Add(50 * time.Millisecond); time.Now().Before(end); {
	}
	b := tr.sample()
	if a[0].RSS == 0 || a[0].At.IsZero() || !b[0].At.After(a[0].At) {
		t.Fatalf("samples %+v %+v", a[0], b[0])
	}
	if r := cpuRate(a[:1], b[:1]); r <= 0 || r > 64 {
		t.Fatalf("cpu rate %v after a busy loop", r)
	}
	if tr.errs[0] != "" || tr.errs[1] == "" || tr.ok[1] {
		t.Fatalf("errors %q", tr.errs)
	}
	stat := procFile{path: "/proc/stat"}
	defer stat.close()
	m0, cpus, err := machineCPU(&stat)
	if err != nil || cpus < 1 || m0.Busy <= 0 || m0.Softirq < 0 || m0.Softirq > m0.Busy {
		t.Fatalf("machine %+v cpus %d err %v", m0, cpus, err)
	}
}
