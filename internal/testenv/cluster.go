package testenv

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// DefaultClusterNodeTimeout is RedisClusterConfig.NodeTimeout's zero value:
// small, so a failover takes about two and a half seconds on loopback.
const DefaultClusterNodeTimeout = 1000 * time.Millisecond

// clusterReadyTimeout bounds the waits for a cluster to form or heal.
const clusterReadyTimeout = 30 * time.Second

// RedisClusterConfig configures RedisCluster; the zero value is 3 masters
// with one replica each and a 1s cluster-node-timeout.
type RedisClusterConfig struct {
	// Masters is the number of masters; 0 means 3. Each gets one replica.
	Masters int
	// NodeTimeout is cluster-node-timeout; 0 means
	// DefaultClusterNodeTimeout.
	NodeTimeout time.Duration
	// FullCoverage sets cluster-require-full-coverage yes (the Redis
	// default): the whole cluster refuses commands while any slot has no
	// master. false (the zero value) keeps the other masters serving.
	FullCoverage bool
}

// ClusterNode is one redis-server of a RedisClusterProc. Its methods are
// for the test goroutine.
type ClusterNode struct {
	// Addr is "127.0.0.1:<port>"; it stays the same across Restart.
	Addr string
	// ID is the node's cluster id; it survives Restart (nodes.conf is kept).
	ID string

	cl      *RedisClusterProc
	port    int
	busPort int
	dir     string
	out     *tailBuffer
	paused  bool
	redisServer
}

// RedisClusterProc is a private Redis Cluster on loopback: masters with
// one replica each, no persistence (a node restarted after it was failed
// over resynchronises from its new master). Its methods are for the test
// goroutine.
type RedisClusterProc struct {
	Nodes       []*ClusterNode
	NodeTimeout time.Duration

	bin string
	cfg RedisClusterConfig
}

// RedisCluster starts 2×Masters redis-servers in cluster mode on free
// loopback ports (client and bus ports both chosen free), forms a cluster
// of them as `redis-cli --cluster create --cluster-replicas 1` would, and
// waits until every node agrees on the topology and each replica is in
// sync. Everything is
// stopped in t.Cleanup, with the nodes' logs dumped if the test failed. If
// the cluster cannot be formed the test is skipped with the reason when
// redis-server lacks cluster support, and failed otherwise.
func RedisCluster(t testing.TB, cfg RedisClusterConfig) *RedisClusterProc {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("testenv: redis-server not found on PATH (%v); `make test` installs it", err)
	}
	if cfg.Masters == 0 {
		cfg.Masters = 3
	}
	if cfg.NodeTimeout == 0 {
		cfg.NodeTimeout = DefaultClusterNodeTimeout
	}
	bin, _ := exec.LookPath("redis-server")
	c := &RedisClusterProc{bin: bin, cfg: cfg, NodeTimeout: cfg.NodeTimeout}
	t.Cleanup(func() {
		for _, n := range c.Nodes {
			n.stop()
		}
		if t.Failed() {
			for _, n := range c.Nodes {
				t.Logf("redis cluster node %s (%s) log (tail):\n%s", n.Addr, n.ID, tail(n.out.String(), 4000))
			}
		}
	})
	base := t.TempDir()
	for i := 0; i < 2*cfg.Masters; i++ {
		n := &ClusterNode{cl: c, dir: filepath.Join(base, "n"+strconv.Itoa(i)), out: newTailBuffer(64 << 10)}
		if err := os.MkdirAll(n.dir, 0o755); err != nil {
			t.Fatalf("testenv: %v", err)
		}
		var err error
		for attempt := 1; ; attempt++ {
			n.port, n.busPort = FreePort(t), FreePort(t)
			n.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(n.port))
			if err = n.start(); err == nil {
				break
			}
			if attempt < 3 && strings.Contains(n.out.String(), "Address already in use") {
				continue
			}
			if out := n.out.String(); strings.Contains(out, "Bad directive") || strings.Contains(out, "cluster support") {
				// An old or stripped-down redis-server: no cluster options.
				t.Skipf("testenv: redis-server cannot run in cluster mode: %v\n%s", err, out)
			}
			t.Fatalf("testenv: cluster node on %s: %v\n%s", n.Addr, err, n.out.String())
		}
		c.Nodes = append(c.Nodes, n)
	}
	for _, n := range c.Nodes {
		id, err := n.do("CLUSTER", "MYID")
		if err != nil {
			t.Fatalf("testenv: CLUSTER MYID on %s: %v", n.Addr, err)
		}
		n.ID, _ = id.(string)
	}
	if err := c.create(); err != nil {
		t.Fatalf("testenv: forming the redis cluster: %v", err)
	}
	c.WaitHealthy(t)
	return c
}

// create forms the cluster the way `redis-cli --cluster create
// --cluster-replicas 1` does, without its one-second waits: the first
// Masters nodes share the slots evenly (each with its own config epoch),
// every node meets the first, and once all know each other the other
// nodes replicate one master each.
func (c *RedisClusterProc) create() error {
	m := c.cfg.Masters
	for i := 0; i < m; i++ {
		n := c.Nodes[i]
		lo, hi := i*16384/m, (i+1)*16384/m-1
		if _, err := n.do("CLUSTER", "ADDSLOTSRANGE", strconv.Itoa(lo), strconv.Itoa(hi)); err != nil {
			// Redis before 7.0: one argument per slot.
			args := []string{"CLUSTER", "ADDSLOTS"}
			for s := lo; s <= hi; s++ {
				args = append(args, strconv.Itoa(s))
			}
			if _, err := n.do(args...); err != nil {
				return fmt.Errorf("%s: ADDSLOTS: %w", n.Addr, err)
			}
		}
	}
	for i, n := range c.Nodes {
		if _, err := n.do("CLUSTER", "SET-CONFIG-EPOCH", strconv.Itoa(i+1)); err != nil {
			return fmt.Errorf("%s: SET-CONFIG-EPOCH: %w", n.Addr, err)
		}
	}
	first := c.Nodes[0]
	for _, n := range c.Nodes[1:] {
		if _, err := first.do("CLUSTER", "MEET", "127.0.0.1", strconv.Itoa(n.port), strconv.Itoa(n.busPort)); err != nil {
			return fmt.Errorf("MEET %s: %w", n.Addr, err)
		}
	}
	deadline := time.Now().Add(clusterReadyTimeout)
	for _, n := range c.Nodes {
		for {
			view, err := n.view()
			known := 0
			for _, nv := range view {
				if nv.Linked || nv.ID == n.ID {
					known++
				}
			}
			if err == nil && known == len(c.Nodes) {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s knows %d of %d nodes after %v (%v)", n.Addr, known, len(c.Nodes), clusterReadyTimeout, err)
			}
			time.Sleep(20 * time.Millisecond) // poll interval: the loop re-checks
		}
	}
	for i, n := range c.Nodes[m:] {
		if _, err := n.do("CLUSTER", "REPLICATE", c.Nodes[i%m].ID); err != nil {
			return fmt.Errorf("%s: REPLICATE: %w", n.Addr, err)
		}
	}
	return nil
}

// start launches the node and waits until it answers PING.
func (n *ClusterNode) start() error {
	c := n.cl
	args := []string{
		"--port", strconv.Itoa(n.port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--daemonize", "no",
		"--dir", n.dir,
		"--logfile", "",
		"--cluster-enabled", "yes",
		"--cluster-port", strconv.Itoa(n.busPort),
		"--cluster-config-file", "nodes.conf",
		"--cluster-node-timeout", strconv.FormatInt(c.cfg.NodeTimeout.Milliseconds(), 10),
		"--cluster-require-full-coverage", yesNo(c.cfg.FullCoverage),
		// Let a replica take over however long it was cut off: tests kill
		// nodes in quick succession.
		"--cluster-replica-validity-factor", "0",
		// Full syncs through a file: a diskless one (the default) waits
		// for the replica's first REPLCONF ACK, up to a second, before it
		// streams writes, and a master killed meanwhile loses them.
		"--repl-diskless-sync", "no",
	}
	n.paused = false
	return n.launch(c.bin, args, n.out, func() error { return ping(n.Addr) }, 10*time.Millisecond)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// Running reports whether the node's process has not exited (it may be

// Running reports whether the node's process has not exited (it may be
// paused).
func (n *ClusterNode) Running() bool { return n.running() }

// Up reports whether the node runs and is not paused.
func (n *ClusterNode) Up() bool { return n.Running() && !n.paused }

// Kill sends SIGKILL and waits for the process to exit.
func (n *ClusterNode) Kill() {
	n.kill()
	n.paused = false
}

// Pause freezes the node with SIGSTOP: its sockets stay open but it
// answers nothing, like a hung host.
func (n *ClusterNode) Pause(t testing.TB) {
	t.Helper()
	if err := n.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("testenv: SIGSTOP %s: %v", n.Addr, err)
	}
	n.paused = true
}

// Resume undoes Pause with SIGCONT.
func (n *ClusterNode) Resume(t testing.TB) {
	t.Helper()
	if err := n.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatalf("testenv: SIGCONT %s: %v", n.Addr, err)
	}
	n.paused = false
}

// Restart starts a killed node again on the same ports with the same
// nodes.conf, so it rejoins the cluster under its id (as a replica if it
// was failed over). Its data set starts empty.
func (n *ClusterNode) Restart(t testing.TB) {
	t.Helper()
	n.Kill()
	if err := n.start(); err != nil {
		t.Fatalf("testenv: restart cluster node %s: %v\n%s", n.Addr, err, n.out.String())
	}
}

func (n *ClusterNode) stop() {
	n.term(5 * time.Second)
	n.paused = false
}

// Do runs one command on this node.
func (n *ClusterNode) Do(t testing.TB, args ...string) any {
	t.Helper()
	v, err := n.do(args...)
	if err != nil {
		t.Fatalf("testenv: %s on %s: %v", strings.Join(args, " "), n.Addr, err)
	}
	return v
}

func (n *ClusterNode) do(args ...string) (any, error) {
	return RedisDo(n.Addr, RedisAuth{}, args...)
}

// Log returns the tail of the node's output.
func (n *ClusterNode) Log() string { return n.out.String() }

// Addrs returns every node's address.
func (c *RedisClusterProc) Addrs() []string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = n.Addr
	}
	return out
}

// AddrList returns Addrs as a comma list, the form of -redis.
func (c *RedisClusterProc) AddrList() string { return strings.Join(c.Addrs(), ",") }

// NodeView is one line of CLUSTER NODES as seen by some node.
type NodeView struct {
	ID, Addr string
	Master   bool
	MasterID string // for a replica
	Fail     bool   // flagged fail or fail?
	Slots    int    // number of slots served (masters)
	Linked   bool   // link-state connected
}

// view returns the cluster as node n sees it.
func (n *ClusterNode) view() (map[string]NodeView, error) {
	v, err := n.do("CLUSTER", "NODES")
	if err != nil {
		return nil, err
	}
	s, _ := v.(string)
	out := make(map[string]NodeView)
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		nv := NodeView{ID: f[0], Addr: strings.SplitN(f[1], "@", 2)[0], MasterID: f[3], Linked: f[7] == "connected"}
		for _, flag := range strings.Split(f[2], ",") {
			switch flag {
			case "master":
				nv.Master = true
			case "fail", "fail?":
				nv.Fail = true
			}
		}
		for _, r := range f[8:] {
			if strings.HasPrefix(r, "[") {
				continue // migrating/importing
			}
			lo, hi, ok := strings.Cut(r, "-")
			a, _ := strconv.Atoi(lo)
			b := a
			if ok {
				b, _ = strconv.Atoi(hi)
			}
			nv.Slots += b - a + 1
		}
		out[nv.ID] = nv
	}
	return out, nil
}

// health returns "" when every node that is up agrees that the nodes that
// are up form a healthy cluster: cluster_state ok, all 16384 slots served
// by the same masters in every node's view, all up, every replica that is up in sync with its
// master, and nobody that is up flagged as failing. Nodes that are
// down are expected to be flagged; their slots must have moved.
func (c *RedisClusterProc) health() string {
	up := map[string]*ClusterNode{}
	for _, n := range c.Nodes {
		if n.Up() {
			up[n.ID] = n
		}
	}
	// owners is the set of masters serving slots, as one node sees it; all
	// nodes must see the same (a restarted master believes for a moment
	// that it still serves its old slots, and takes writes it then loses).
	owners := ""
	for _, n := range up {
		info, err := n.do("CLUSTER", "INFO")
		if err != nil {
			return fmt.Sprintf("%s: CLUSTER INFO: %v", n.Addr, err)
		}
		if s, _ := info.(string); !strings.Contains(s, "cluster_state:ok") {
			return fmt.Sprintf("%s: cluster_state not ok", n.Addr)
		}
		view, err := n.view()
		if err != nil {
			return fmt.Sprintf("%s: CLUSTER NODES: %v", n.Addr, err)
		}
		slots := 0
		for id, nv := range view {
			_, isUp := up[id]
			if isUp && nv.Fail {
				return fmt.Sprintf("%s sees %s as failing", n.Addr, nv.Addr)
			}
			if nv.Master && nv.Slots > 0 {
				if !isUp {
					return fmt.Sprintf("%s sees %s (down) still serving %d slots", n.Addr, nv.Addr, nv.Slots)
				}
				slots += nv.Slots
			}
			if isUp && id != n.ID && !nv.Linked {
				return fmt.Sprintf("%s has no link to %s", n.Addr, nv.Addr)
			}
		}
		if slots != 16384 {
			return fmt.Sprintf("%s sees %d slots served", n.Addr, slots)
		}
		var ids []string
		for id, nv := range view {
			if nv.Master && nv.Slots > 0 {
				ids = append(ids, id+":"+strconv.Itoa(nv.Slots))
			}
		}
		sort.Strings(ids)
		mine := strings.Join(ids, ",")
		switch {
		case len(ids) != c.cfg.Masters:
			return fmt.Sprintf("%s sees %d masters, want %d", n.Addr, len(ids), c.cfg.Masters)
		case owners == "":
			owners = mine
		case owners != mine:
			return fmt.Sprintf("nodes disagree on the slot owners: %s vs %s", owners, mine)
		}
	}
	// Each replica that is up replicates a master that is up, in sync.
	for _, n := range up {
		v, err := n.do("INFO", "replication")
		if err != nil {
			return fmt.Sprintf("%s: INFO: %v", n.Addr, err)
		}
		s, _ := v.(string)
		if strings.Contains(s, "role:slave") && !strings.Contains(s, "master_link_status:up") {
			return fmt.Sprintf("replica %s not in sync with its master", n.Addr)
		}
		if strings.Contains(s, "role:slave") && strings.Contains(s, "master_sync_in_progress:1") {
			return fmt.Sprintf("replica %s still syncing", n.Addr)
		}
		for _, line := range strings.Split(s, "\r\n") {
			if strings.HasPrefix(line, "slave") && strings.Contains(line, ":ip=") && !strings.Contains(line, "state=online") {
				return fmt.Sprintf("master %s: replica not online yet: %s", n.Addr, line)
			}
		}
	}
	return ""
}

// WaitHealthy waits until health reports nothing wrong, failing the test
// after 30s with the last problem seen.
func (c *RedisClusterProc) WaitHealthy(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(clusterReadyTimeout)
	for {
		why := c.health()
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("testenv: redis cluster not healthy after %v: %s", clusterReadyTimeout, why)
		}
		time.Sleep(50 * time.Millisecond) // poll interval: the loop re-checks
	}
}

// roles returns the masters and replicas as seen by the first node that
// is up and answers.
func (c *RedisClusterProc) roles() (masters, replicas []*ClusterNode, err error) {
	byID := map[string]*ClusterNode{}
	for _, n := range c.Nodes {
		byID[n.ID] = n
	}
	for _, n := range c.Nodes {
		if !n.Up() {
			continue
		}
		view, verr := n.view()
		if verr != nil {
			err = verr
			continue
		}
		for id, nv := range view {
			node := byID[id]
			if node == nil || nv.Fail {
				continue
			}
			if nv.Master && nv.Slots > 0 {
				masters = append(masters, node)
			} else if !nv.Master {
				replicas = append(replicas, node)
			}
		}
		sort.Slice(masters, func(i, j int) bool { return masters[i].Addr < masters[j].Addr })
		sort.Slice(replicas, func(i, j int) bool { return replicas[i].Addr < replicas[j].Addr })
		return masters, replicas, nil
	}
	if err == nil {
		err = errors.New("no node is up")
	}
	return nil, nil, err
}

// Masters returns the nodes serving slots, by address.
func (c *RedisClusterProc) Masters(t testing.TB) []*ClusterNode {
	t.Helper()
	m, _, err := c.roles()
	if err != nil {
		t.Fatalf("testenv: cluster roles: %v", err)
	}
	return m
}

// Replicas returns the replica nodes, by address.
func (c *RedisClusterProc) Replicas(t testing.TB) []*ClusterNode {
	t.Helper()
	_, r, err := c.roles()
	if err != nil {
		t.Fatalf("testenv: cluster roles: %v", err)
	}
	return r
}

// MasterOf returns the node currently serving key's slot, by asking a node
// that is up (CLUSTER KEYSLOT, then CLUSTER NODES).
func (c *RedisClusterProc) MasterOf(t testing.TB, key string) *ClusterNode {
	t.Helper()
	for _, n := range c.Nodes {
		if !n.Up() {
			continue
		}
		v, err := n.do("CLUSTER", "KEYSLOT", key)
		if err != nil {
			continue
		}
		slot, _ := v.(int64)
		raw, err := n.do("CLUSTER", "SLOTS")
		if err != nil {
			continue
		}
		ranges, _ := raw.([]any)
		for _, r := range ranges {
			e, _ := r.([]any)
			if len(e) < 3 {
				continue
			}
			lo, _ := e[0].(int64)
			hi, _ := e[1].(int64)
			if slot < lo || slot > hi {
				continue
			}
			m, _ := e[2].([]any)
			if len(m) < 2 {
				continue
			}
			host, _ := m[0].(string)
			port, _ := m[1].(int64)
			addr := net.JoinHostPort(host, strconv.FormatInt(port, 10))
			for _, node := range c.Nodes {
				if node.Addr == addr {
					return node
				}
			}
		}
	}
	t.Fatalf("testenv: no node serves the slot of %q", key)
	return nil
}

// WaitFailover waits until node's slots are served by another master (as
// seen by the nodes that are up) and returns how long that took from
// since. It fails the test after 30s.
func (c *RedisClusterProc) WaitFailover(t testing.TB, node *ClusterNode, since time.Time) time.Duration {
	t.Helper()
	deadline := time.Now().Add(clusterReadyTimeout)
	for {
		done := true
		for _, n := range c.Nodes {
			if !n.Up() {
				continue
			}
			view, err := n.view()
			if err != nil {
				done = false
				break
			}
			if nv, ok := view[node.ID]; !ok || (nv.Master && nv.Slots > 0) {
				done = false
				break
			}
		}
		if done {
			return time.Since(since)
		}
		if time.Now().After(deadline) {
			t.Fatalf("testenv: %s was not failed over within %v", node.Addr, clusterReadyTimeout)
		}
		time.Sleep(20 * time.Millisecond) // poll interval: the loop re-checks
	}
}

// WaitReplicated waits until every replica that is up has processed its
// master's replication stream up to where it was when the wait began
// (slave_repl_offset reaches the master's master_repl_offset), so that
// killing a master then loses no earlier write. Replication is
// asynchronous: on a loaded machine a replica can lag by tens of
// milliseconds, and a master killed within them takes those writes along.
func (c *RedisClusterProc) WaitReplicated(t testing.TB) {
	t.Helper()
	offset := func(v any, field string) int64 {
		s, _ := v.(string)
		for _, line := range strings.Split(s, "\r\n") {
			if x, ok := strings.CutPrefix(line, field+":"); ok {
				n, _ := strconv.ParseInt(x, 10, 64)
				return n
			}
		}
		return -1
	}
	deadline := time.Now().Add(clusterReadyTimeout)
	for _, n := range c.Nodes {
		if !n.Up() {
			continue
		}
		info, err := n.do("INFO", "replication")
		if s, _ := info.(string); err != nil || !strings.Contains(s, "role:slave") {
			continue
		}
		master := net.JoinHostPort("127.0.0.1", strconv.FormatInt(offset(info, "master_port"), 10))
		mv, err := RedisDo(master, RedisAuth{}, "INFO", "replication")
		if err != nil {
			continue // its master is down: nothing more will come
		}
		want := offset(mv, "master_repl_offset")
		for {
			info, err = n.do("INFO", "replication")
			got := offset(info, "slave_repl_offset")
			if err == nil && got >= want {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("testenv: replica %s at offset %d, its master %s at %d after %v", n.Addr, got, master, want, clusterReadyTimeout)
			}
			time.Sleep(5 * time.Millisecond) // poll interval: the loop re-checks
		}
	}
}

// Heal restarts every node that is down, resumes every paused one, and
// waits until the cluster is healthy with all its nodes.
func (c *RedisClusterProc) Heal(t testing.TB) {
	t.Helper()
	for _, n := range c.Nodes {
		switch {
		case !n.Running():
			n.Restart(t)
		case n.paused:
			n.Resume(t)
		}
	}
	c.WaitHealthy(t)
}

// Keys returns the keys matching pattern on every master, scanned node by
// node (replicas hold copies and are left out). It fails the test if a
// node serving slots is down: its keys cannot be counted (wait for the
// failover first).
func (c *RedisClusterProc) Keys(t testing.TB, pattern string) []string {
	t.Helper()
	var all []string
	for _, m := range c.Masters(t) {
		if !m.Up() {
			t.Fatalf("testenv: cannot count keys: master %s is down and not failed over yet", m.Addr)
		}
		rc, err := DialRedis(m.Addr, RedisAuth{}, 2*time.Second)
		if err != nil {
			t.Fatalf("testenv: dial %s: %v", m.Addr, err)
		}
		keys, err := rc.Scan(pattern)
		rc.Close()
		if err != nil {
			t.Fatalf("testenv: scan %s: %v", m.Addr, err)
		}
		all = append(all, keys...)
	}
	sort.Strings(all)
	return all
}

// Get reads key from the master serving it ("" and false when absent).
func (c *RedisClusterProc) Get(t testing.TB, key string) (string, bool) {
	t.Helper()
	m := c.MasterOf(t, key)
	v, err := m.do("GET", key)
	if err != nil {
		t.Fatalf("testenv: GET %q on %s: %v", key, m.Addr, err)
	}
	s, ok := v.(string)
	return s, ok
}
