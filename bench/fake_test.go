package bench

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// fault is what the fake server does to one chat.
type fault int

const (
	faultNone    fault = iota
	faultDrop          // never deliver it
	faultDup           // deliver it twice
	faultReorder       // deliver it after the next chat from the same sender to the same recipient
)

// fakeServer is a minimal line server speaking the client protocol: login,
// chat (delivered to the logged-in recipient on any fake server sharing its
// directory), ping and errors. It applies one fault to the faultAt-th chat
// it receives (counting from 1 over the directory).
type fakeServer struct {
	t   *testing.T
	ln  net.Listener
	dir *fakeDir
	wg  sync.WaitGroup
	id  string
	ws  bool // speak WebSocket (text frames) instead of lines

	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	sources map[string]int // client source address -> connections
}

// fakeDir is the user directory shared by the fake servers of one test, so
// "cross-server" chats can be delivered.
type fakeDir struct {
	mu      sync.Mutex
	users   map[string]*fakeConn
	nchat   atomic.Int64
	fault   fault
	faultAt int64
	held    *heldChat // faultReorder: the chat waiting for its successor
	applied atomic.Bool
}

type heldChat struct {
	from, to string
	line     []byte
}

type fakeConn struct {
	c    net.Conn
	wmu  sync.Mutex
	name string
	ws   bool
}

// write sends one reply line; over WebSocket, as one text frame that keeps
// the line's trailing newline (which the contract allows).
func (fc *fakeConn) write(b []byte) {
	fc.wmu.Lock()
	if fc.ws {
		_ = wsutil.WriteServerText(fc.c, b)
	} else {
		_, _ = fc.c.Write(b)
	}
	fc.wmu.Unlock()
}

func newFakeDir(f fault, at int64) *fakeDir {
	return &fakeDir{users: map[string]*fakeConn{}, fault: f, faultAt: at}
}

// startFake starts a fake server on a free loopback port; the test's
// cleanup stops it and waits for its goroutines.
func startFake(t *testing.T, id string, dir *fakeDir) *fakeServer {
	t.Helper()
	return startFakeServer(t, id, dir, false)
}

// startFakeWS starts a fake server that speaks WebSocket.
func startFakeWS(t *testing.T, id string, dir *fakeDir) *fakeServer {
	t.Helper()
	return startFakeServer(t, id, dir, true)
}

func startFakeServer(t *testing.T, id string, dir *fakeDir, ws bool) *fakeServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeServer{t: t, ln: ln, dir: dir, id: id, ws: ws, conns: map[net.Conn]struct{}{}, sources: map[string]int{}}
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(s.close)
	return s
}

func (s *fakeServer) addr() string { return s.ln.Addr().String() }

func (s *fakeServer) close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *fakeServer) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
			s.sources[a.IP.String()]++
		}
		s.mu.Unlock()
		s.wg.Add(1)
		go s.serve(c)
	}
}

type fakeReq struct {
	Cmd     string          `json:"cmd"`
	Name    string          `json:"name"`
	Recv    string          `json:"recv"`
	Content string          `json:"content"`
	ID      json.RawMessage `json:"id"`
}

func (s *fakeServer) serve(c net.Conn) {
	defer s.wg.Done()
	defer c.Close()
	fc := &fakeConn{c: c, ws: s.ws}
	var in io.Reader = c
	if s.ws {
		if _, err := ws.Upgrade(c); err != nil {
			return
		}
		// Each text frame carries one request (or several lines).
		pr, pw := io.Pipe()
		defer pr.Close()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for {
				data, op, err := wsutil.ReadClientData(c)
				if err != nil {
					pw.CloseWithError(err)
					return
				}
				if op == ws.OpText {
					if _, err := pw.Write(append(data, '\n')); err != nil {
						return
					}
				}
			}
		}()
		in = pr
	}
	defer func() {
		if fc.name != "" {
			s.dir.mu.Lock()
			if s.dir.users[fc.name] == fc {
				delete(s.dir.users, fc.name)
			}
			s.dir.mu.Unlock()
		}
	}()
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 4096), 1<<20)
	for sc.Scan() {
		var q fakeReq
		if err := json.Unmarshal(sc.Bytes(), &q); err != nil {
			fc.write([]byte(`{"cmd":"error","error":"invalid JSON"}` + "\n"))
			continue
		}
		switch q.Cmd {
		case "login":
			fc.name = q.Name
			s.dir.mu.Lock()
			s.dir.users[q.Name] = fc
			s.dir.mu.Unlock()
			b, _ := json.Marshal(map[string]any{"cmd": "login", "ok": true, "name": q.Name, "server": s.id})
			fc.write(append(b, '\n'))
		case "ping":
			if len(q.ID) > 0 {
				fc.write([]byte(`{"cmd":"pong","id":` + string(q.ID) + "}\n"))
			} else {
				fc.write([]byte(`{"cmd":"pong"}` + "\n"))
			}
		case "chat":
			s.dir.chat(fc, q)
		default:
			fc.write([]byte(`{"cmd":"error","error":"unknown cmd"}` + "\n"))
		}
	}
}

// chat delivers one chat, applying the directory's fault when it is due.
func (d *fakeDir) chat(from *fakeConn, q fakeReq) {
	n := d.nchat.Add(1)
	b, _ := json.Marshal(map[string]any{"cmd": "chat", "send": from.name, "recv": q.Recv, "content": q.Content, "ts": time.Now().UnixMilli()})
	line := append(b, '\n')
	// The directory lock is held across the write, so deliveries from one
	// sender keep their order even when a held chat is released.
	d.mu.Lock()
	defer d.mu.Unlock()
	to := d.users[q.Recv]
	if to == nil {
		from.write([]byte(`{"cmd":"error","error":"recipient not online"}` + "\n"))
		return
	}
	if len(q.ID) > 0 {
		defer from.write([]byte(`{"cmd":"ack","id":` + string(q.ID) + "}\n"))
	}
	if n == d.faultAt {
		d.applied.Store(true)
		switch d.fault {
		case faultDrop:
			return
		case faultDup:
			to.write(line)
		case faultReorder:
			d.held = &heldChat{from: from.name, to: q.Recv, line: line}
			return
		}
	}
	to.write(line)
	if h := d.held; h != nil && h.from == from.name && h.to == q.Recv {
		to.write(h.line)
		d.held = nil
	}
}

func TestFakeServerSmoke(t *testing.T) {
	dir := newFakeDir(faultNone, 0)
	s := startFake(t, "s1", dir)
	c, err := net.Dial("tcp", s.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	_, _ = c.Write([]byte(`{"cmd":"login","name":"a"}` + "\n" + `{"cmd":"chat","recv":"a","content":"hi","id":7}` + "\n"))
	var got []string
	for i := 0; i < 3; i++ {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		l, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, l)
	}
	if want := strconv.Quote("hi"); !strings.Contains(got[1], want) || !strings.Contains(got[2], `"ack"`) {
		t.Fatalf("unexpected replies %q", got)
	}
}
