package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relaychat/relaychat/internal/testenv"
	"github.com/relaychat/relaychat/route"
)

const (
	// wait bounds every wait for something that should happen promptly: a
	// reply, a delivery, a log line, a Redis key change. It is generous
	// because the binaries run under the race detector on two cores.
	wait = 10 * time.Second
	// quiet is ExpectNothing's window, used only right after something that
	// would have produced the unwanted line promptly.
	quiet = 150 * time.Millisecond
	// pollEvery is the interval of eventually's condition checks; it is a
	// poll interval, not synchronisation.
	pollEvery = 10 * time.Millisecond
)

// Log lines of the binaries (INTERFACE.md). slog's text handler quotes a
// value only when it needs to, so the address may or may not be quoted.
const (
	listenerReadyRE = `msg="(client|peer) listener ready".*\baddr="?([^"\s]+)`
	proxyReadyRE    = `msg="proxy ready"`
	proxyLinkUpRE   = `msg="proxy link up"` // on a server
	proxyLinkDownRE = `msg="proxy link down"`
)

// server is one running chat-server.
type server struct {
	id   string
	proc *testenv.Proc
	addr string // client listener
	peer string // peer listener, for the proxy
}

// clusterConfig holds what differs between tests' clusters; the zero value
// is the default cluster.
type clusterConfig struct {
	// maxLine, when not 0, is passed as -max-line to both servers.
	maxLine int
	// serverArgs are extra flags for both servers.
	serverArgs []string
	// plain runs binaries built without the race detector (load and
	// memory tests).
	plain bool
}

// cluster is a private Redis, chat-servers s1 and s2, and one chat-proxy
// linked to both. Everything is stopped in t.Cleanup.
type cluster struct {
	bin       string
	redis     *testenv.RedisProc
	prefix    string
	s         [2]*server
	proxy     *testenv.Proc
	proxyArgs []string
	names     atomic.Int64
}

// startCluster starts the whole stack and returns once the proxy has
// logged "proxy ready", i.e. both servers are linked.
func startCluster(t *testing.T, cfg clusterConfig) *cluster {
	t.Helper()
	bin := testenv.Build
	if cfg.plain {
		bin = testenv.BuildPlain
	}
	cl := &cluster{
		bin:    bin(t),
		redis:  testenv.Redis(t),
		prefix: prefixFor(t),
	}
	// Start both servers before waiting for either: they boot in parallel.
	ids := [2]string{"s1", "s2"}
	for i, id := range ids {
		args := []string{
			"-id", id,
			"-listen", "127.0.0.1:0",
			"-peer-listen", "127.0.0.1:0",
			"-redis", cl.redis.Addr,
			"-redis-prefix", cl.prefix,
		}
		if cfg.maxLine != 0 {
			args = append(args, "-max-line", strconv.Itoa(cfg.maxLine))
		}
		args = append(args, cfg.serverArgs...)
		cl.s[i] = &server{id: id, proc: testenv.Start(t, filepath.Join(cl.bin, "chat-server"), args...)}
	}
	for _, s := range cl.s {
		got := map[string]string{}
		for len(got) < 2 {
			m := s.proc.WaitLine(t, listenerReadyRE, wait)
			got[m[1]] = m[2]
		}
		s.addr, s.peer = got["client"], got["peer"]
	}
	cl.proxyArgs = []string{
		"-id", "proxy1",
		"-servers", cl.s[0].id + "=" + cl.s[0].peer + "," + cl.s[1].id + "=" + cl.s[1].peer,
		"-redis", cl.redis.Addr,
		"-redis-prefix", cl.prefix,
	}
	cl.proxy = cl.startProxy(t)
	return cl
}

// startProxy starts a chat-proxy linked to both servers and waits for
// "proxy ready" (every server linked; per INTERFACE.md a server has
// registered its link before the proxy logs "link up" for it).
func (cl *cluster) startProxy(t *testing.T) *testenv.Proc {
	t.Helper()
	p := testenv.Start(t, filepath.Join(cl.bin, "chat-proxy"), cl.proxyArgs...)
	p.WaitLine(t, proxyReadyRE, wait)
	return p
}

// prefixFor returns a Redis key prefix unique to the test.
func prefixFor(t *testing.T) string {
	var b strings.Builder
	b.WriteString("e2e-")
	for _, r := range strings.ToLower(t.Name()) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	b.WriteString(":")
	return b.String()
}

// name returns a user name unique within the cluster, built on base.
func (cl *cluster) name(base string) string {
	return fmt.Sprintf("%s-%d", base, cl.names.Add(1))
}

// login connects to server i (0 = s1, 1 = s2), logs in as name and checks
// the reply: ok, the name and the server's id.
func (cl *cluster) login(t *testing.T, i int, name string) *testenv.Client {
	t.Helper()
	c := testenv.Dial(t, cl.s[i].addr)
	c.Send(t, mustJSON(t, map[string]any{"cmd": "login", "name": name}))
	expectLogin(t, c, name, cl.s[i].id)
	return c
}

// routeOf returns the value of name's route key, and whether it exists.
func (cl *cluster) routeOf(t *testing.T, name string) (string, bool) {
	t.Helper()
	return redisGet(t, cl.redis.Addr, route.RouteKey(cl.prefix, name))
}

// routeServer returns the server id named by name's route ("" if none).
func (cl *cluster) routeServer(t *testing.T, name string) string {
	t.Helper()
	v, ok := cl.routeOf(t, name)
	if !ok {
		return ""
	}
	f := strings.Fields(v)
	if len(f) != 2 {
		t.Fatalf("route of %q is %q, want \"<serverID> <token>\"", name, v)
	}
	return f[0]
}

// waitRoute waits until name's route names server id ("" = no route key).
func (cl *cluster) waitRoute(t *testing.T, name, id string) {
	t.Helper()
	eventually(t, wait, func() (bool, string) {
		got := cl.routeServer(t, name)
		return got == id, fmt.Sprintf("route of %q names %q, want %q", name, got, id)
	})
}

// eventually polls cond until it reports true, failing the test with cond's
// last description after timeout.
func eventually(t *testing.T, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, what := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", timeout, what)
		}
		time.Sleep(pollEvery) // poll interval: the loop re-checks the condition
	}
}

// redisGet runs GET key over a fresh RESP connection to addr.
func redisGet(t *testing.T, addr, key string) (string, bool) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("redis %s: %v", addr, err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatalf("redis %s: %v", addr, err)
	}
	if _, err := fmt.Fprintf(conn, "*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n", len(key), key); err != nil {
		t.Fatalf("redis %s: GET %q: %v", addr, key, err)
	}
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("redis %s: GET %q: %v", addr, key, err)
	}
	line = strings.TrimSuffix(line, "\r\n")
	if !strings.HasPrefix(line, "$") {
		t.Fatalf("redis %s: GET %q answered %q", addr, key, line)
	}
	n, err := strconv.Atoi(line[1:])
	if err != nil {
		t.Fatalf("redis %s: GET %q answered %q", addr, key, line)
	}
	if n < 0 {
		return "", false
	}
	buf := make([]byte, n+2)
	if _, err := io.ReadFull(r, buf); err != nil {
		t.Fatalf("redis %s: GET %q: %v", addr, key, err)
	}
	return string(buf[:n]), true
}

// mustJSON encodes v as one line of JSON.
func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("encode %v: %v", v, err)
	}
	return string(b)
}

// chatReq returns a chat request; send is left out when "", id when nil.
func chatReq(t *testing.T, send, recv, content string, id any) string {
	t.Helper()
	m := map[string]any{"cmd": "chat", "recv": recv, "content": content}
	if send != "" {
		m["send"] = send
	}
	if id != nil {
		m["id"] = id
	}
	return mustJSON(t, m)
}

// sameJSON reports whether a and b are equal after a JSON round trip, so
// 42 equals float64(42).
func sameJSON(a, b any) bool {
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	if err1 != nil || err2 != nil {
		return false
	}
	var va, vb any
	if json.Unmarshal(ja, &va) != nil || json.Unmarshal(jb, &vb) != nil {
		return false
	}
	return reflect.DeepEqual(va, vb)
}

// next reads the very next line, which must be a JSON object.
func next(t *testing.T, c *testenv.Client) map[string]any {
	t.Helper()
	return c.ReadJSON(t, wait)
}

// expectLogin checks that the next line is a successful login reply.
func expectLogin(t *testing.T, c *testenv.Client, name, serverID string) {
	t.Helper()
	m := next(t, c)
	if m["cmd"] != "login" || m["ok"] != true || m["name"] != name || m["server"] != serverID {
		t.Fatalf("login reply %v, want cmd=login ok=true name=%q server=%q", m, name, serverID)
	}
}

// expectDelivery checks that the next line is the delivery of content from
// send to recv, with a numeric ts of about now (unix ms).
func expectDelivery(t *testing.T, c *testenv.Client, send, recv, content string) map[string]any {
	t.Helper()
	m := next(t, c)
	checkDelivery(t, m, send, recv, content)
	return m
}

func checkDelivery(t *testing.T, m map[string]any, send, recv, content string) {
	t.Helper()
	if m["cmd"] != "chat" || m["send"] != send || m["recv"] != recv || m["content"] != content {
		t.Fatalf("got %v, want a delivery send=%q recv=%q content=%q", m, send, recv, content)
	}
	ts, ok := m["ts"].(float64)
	if !ok {
		t.Fatalf("delivery %v: ts is %T, want a number", m, m["ts"])
	}
	now := float64(time.Now().UnixMilli())
	if ts < now-5*60e3 || ts > now+60e3 || ts != float64(int64(ts)) {
		t.Fatalf("delivery %v: ts %v is not the unix ms of about now (%v)", m, ts, now)
	}
}

// expectError checks that the next line is an error whose reason contains
// reason and whose id is id (nil: the error must carry no id).
func expectError(t *testing.T, c *testenv.Client, reason string, id any) {
	t.Helper()
	m := next(t, c)
	checkError(t, m, reason, id)
}

func checkError(t *testing.T, m map[string]any, reason string, id any) {
	t.Helper()
	e, _ := m["error"].(string)
	if m["cmd"] != "error" || !strings.Contains(e, reason) {
		t.Fatalf("got %v, want an error containing %q", m, reason)
	}
	got, has := m["id"]
	switch {
	case id == nil && has:
		t.Fatalf("error %v carries an id, but the request had none", m)
	case id != nil && !has:
		t.Fatalf("error %v carries no id, want %v", m, id)
	case id != nil && !sameJSON(got, id):
		t.Fatalf("error %v carries id %v, want %v", m, got, id)
	}
}

// expectAck checks that the next line is {"cmd":"ack","id":id}.
func expectAck(t *testing.T, c *testenv.Client, id any) {
	t.Helper()
	m := next(t, c)
	if m["cmd"] != "ack" || !sameJSON(m["id"], id) {
		t.Fatalf("got %v, want an ack with id %v", m, id)
	}
}

// expectStoredAck checks that the next line is
// {"cmd":"ack","id":id,"stored":true}: the chat went to the recipient's
// mailbox.
func expectStoredAck(t *testing.T, c *testenv.Client, id any) {
	t.Helper()
	m := next(t, c)
	if m["cmd"] != "ack" || !sameJSON(m["id"], id) || m["stored"] != true {
		t.Fatalf("got %v, want a stored ack with id %v", m, id)
	}
}

// expectStoredDelivery checks that the next line is a stored chat.
func expectStoredDelivery(t *testing.T, c *testenv.Client, send, recv, content string) map[string]any {
	t.Helper()
	m := next(t, c)
	checkDelivery(t, m, send, recv, content)
	if m["stored"] != true {
		t.Fatalf("delivery %v is not marked stored", m)
	}
	return m
}

// expectPong sends a ping and checks that the next line is the pong: the
// connection is open and nothing else was queued before it.
func expectPong(t *testing.T, c *testenv.Client) {
	t.Helper()
	c.Send(t, `{"cmd":"ping"}`)
	m := next(t, c)
	if m["cmd"] != "pong" {
		t.Fatalf("got %v, want a pong", m)
	}
}

// expectKickedAndClosed checks that the only thing c gets before the server
// closes it is one kicked notice.
func expectKickedAndClosed(t *testing.T, c *testenv.Client) {
	t.Helper()
	lines := c.ExpectClosed(t, wait)
	if len(lines) != 1 {
		t.Fatalf("kicked session got %d lines before close, want exactly one kicked notice: %q", len(lines), lines)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &m); err != nil || m["cmd"] != "kicked" {
		t.Fatalf("kicked session got %q before close, want {\"cmd\":\"kicked\",...}", lines[0])
	}
	if r, _ := m["reason"].(string); r == "" {
		t.Fatalf("kicked notice %q has no reason", lines[0])
	}
}

// dial connects a client to server i (0 = s1, 1 = s2) without logging in.
func (cl *cluster) dial(t *testing.T, i int) *testenv.Client {
	t.Helper()
	return testenv.Dial(t, cl.s[i].addr)
}

// lineOfLen returns a chat request from send to recv with the given id that
// is exactly n bytes long, padding the content, and that content.
func lineOfLen(t *testing.T, send, recv string, id any, n int) (line, content string) {
	t.Helper()
	pad := n - len(chatReq(t, send, recv, "", id))
	if pad < 0 {
		t.Fatalf("test bug: a request to %q is longer than %d bytes", recv, n)
	}
	content = strings.Repeat("m", pad)
	line = chatReq(t, send, recv, content, id)
	if len(line) != n {
		t.Fatalf("test bug: line is %d bytes, want %d", len(line), n)
	}
	return line, content
}
