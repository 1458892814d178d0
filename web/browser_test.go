package web

import (
	"encoding/json"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/relaychat/relaychat/internal/testenv"
	"github.com/relaychat/relaychat/internal/wsproto"
)

const wait = 20 * time.Second

// fakeServer is the smallest chat server that the page can be tried on,
// built on wsproto the way the real server serves a WebSocket port: GET /
// gets the page, any other path 404, an upgrade gets a session speaking the
// contract's messages (login, chat with ack, kicked, errors). A chat to
// "nobody" gets an error; a chat to a name not logged in is "stored" (acked
// with stored:true). It lets the page be tested in a browser without the
// real server.
type fakeServer struct {
	mu    sync.Mutex
	users map[string]*fakeConn
}

type fakeConn struct {
	mu   sync.Mutex
	conn net.Conn
	name string
}

func (c *fakeConn) send(v any) {
	b, _ := json.Marshal(v)
	c.mu.Lock()
	defer c.mu.Unlock()
	_, _ = c.conn.Write(wsproto.AppendText(nil, append(b, '\n')))
}

func startFake(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	s := &fakeServer{users: map[string]*fakeConn{}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go s.serve(&fakeConn{conn: c})
		}
	}()
	return ln.Addr().String()
}

func (s *fakeServer) serve(c *fakeConn) {
	defer c.conn.Close()
	defer func() {
		s.mu.Lock()
		if s.users[c.name] == c {
			delete(s.users, c.name)
		}
		s.mu.Unlock()
	}()
	var in []byte
	buf := make([]byte, 4096)
	upgraded := false
	var rd wsproto.Reader
	for {
		n, err := c.conn.Read(buf)
		if err != nil {
			return
		}
		in = append(in, buf[:n]...)
		if !upgraded {
			h := wsproto.ParseHandshake(in, 0)
			switch h.Kind {
			case wsproto.NeedMore:
				continue
			case wsproto.Plain:
				r := wsproto.Response{Status: 404, Body: []byte("not found\n"), HeadOnly: h.Method == "HEAD"}
				if h.Path == "/" {
					r = wsproto.Response{ContentType: ContentType, Body: Index(), CSP: CSP(), HeadOnly: h.Method == "HEAD"}
				}
				_, _ = c.conn.Write(wsproto.AppendResponse(nil, r))
				return
			case wsproto.Reject:
				_, _ = c.conn.Write(h.Response)
				return
			}
			_, _ = c.conn.Write(h.Response)
			in, upgraded = in[h.Consumed:], true
		}
		for {
			m, n, err := rd.Next(in)
			in = in[n:]
			if err != nil || m.Kind == wsproto.Close {
				return
			}
			if m.Kind == wsproto.None {
				break
			}
			if m.Kind == wsproto.Text {
				s.handle(c, m.Payload)
			}
		}
	}
}

func (s *fakeServer) handle(c *fakeConn, line []byte) {
	var req struct {
		Cmd, Name, Recv, Content string
		ID                       any
	}
	if json.Unmarshal(line, &req) != nil {
		c.send(map[string]any{"cmd": "error", "error": "invalid JSON"})
		return
	}
	switch req.Cmd {
	case "login":
		s.mu.Lock()
		old := s.users[req.Name]
		s.users[req.Name] = c
		s.mu.Unlock()
		if old != nil && old != c {
			old.send(map[string]any{"cmd": "kicked", "reason": "logged in elsewhere"})
			_ = old.conn.Close()
		}
		c.name = req.Name
		c.send(map[string]any{"cmd": "login", "ok": true, "name": req.Name, "server": "fake"})
	case "chat":
		if req.Recv == "nobody" {
			c.send(map[string]any{"cmd": "error", "error": "recipient not online", "id": req.ID})
			return
		}
		s.mu.Lock()
		dst := s.users[req.Recv]
		s.mu.Unlock()
		if dst == nil {
			c.send(map[string]any{"cmd": "ack", "id": req.ID, "stored": true})
			return
		}
		dst.send(map[string]any{"cmd": "chat", "send": c.name, "recv": req.Recv, "content": req.Content, "ts": time.Now().UnixMilli()})
		c.send(map[string]any{"cmd": "ack", "id": req.ID})
	case "ping":
		c.send(map[string]any{"cmd": "pong"})
	}
}

// TestPageInBrowser drives the page in headless Chromium against the fake
// server: two users log in, chat both ways, see acks, a stored chat, a
// failed one, and a kick. It is skipped (with the reason) only when no
// Chromium can be found or installed.
func TestPageInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a browser")
	}
	addr := startFake(t)
	b := testenv.StartBrowser(t)
	alice, bob := b.NewPage(t, "alice"), b.NewPage(t, "bob")
	for _, p := range []*testenv.Page{alice, bob} {
		p.Do(t, wait, chromedp.Navigate("http://"+addr+"/"))
		p.WaitJS(t, wait, `document.querySelector('[data-testid=status]').dataset.state === "open"`, `document.querySelector('[data-testid=status]').textContent`)
		login(t, p, p.Name)
	}
	sendChat(t, alice, "bob", "hello bob <b>not bold</b>")
	waitState(t, alice, "acked", 1)
	waitText(t, bob, `[data-testid=message][data-kind=received]`, "hello bob <b>not bold</b>")
	sendChat(t, bob, "alice", "hi alice")
	waitState(t, bob, "acked", 1)
	waitText(t, alice, `[data-testid=message][data-kind=received]`, "hi alice")
	sendChat(t, alice, "carol", "for later")
	waitState(t, alice, "stored", 1)
	sendChat(t, alice, "nobody", "into the void")
	waitState(t, alice, "failed", 1)
	if n := testenv.Eval[int](t, bob, wait, `document.querySelectorAll('b').length - document.querySelectorAll('#me, #server, .who b').length`); n != 0 {
		t.Fatalf("chat text was rendered as markup (%d <b> elements)", n)
	}
	alice.Screenshot(t, "alice")
	bob.Screenshot(t, "bob")

	// A second login as bob kicks the first page.
	c := testenv.DialWS(t, addr, "/ws")
	c.Send(t, `{"cmd":"login","name":"bob"}`)
	c.Expect(t, wait, map[string]any{"cmd": "login", "ok": true})
	bob.WaitJS(t, wait, `document.querySelector('[data-testid=status]').dataset.state === "kicked"`, `document.querySelector('[data-testid=status]').textContent`)
	bob.Screenshot(t, "bob-kicked")
	for _, p := range []*testenv.Page{alice, bob} {
		for _, m := range p.Console() {
			if strings.Contains(m, "Content Security Policy") || strings.Contains(strings.ToLower(m), "exception") {
				t.Errorf("page %s console: %s", p.Name, m)
			}
		}
	}
}

func login(t *testing.T, p *testenv.Page, name string) {
	t.Helper()
	p.Do(t, wait,
		chromedp.SendKeys(chromedp.CSS(`[data-testid=login-name]`), name),
		chromedp.Click(chromedp.CSS(`[data-testid=login-button]`)),
	)
	p.WaitJS(t, wait, `document.querySelector('[data-testid=status]').dataset.state === "logged-in"`, `document.querySelector('[data-testid=status]').textContent`)
}

func sendChat(t *testing.T, p *testenv.Page, to, text string) {
	t.Helper()
	p.Do(t, wait,
		chromedp.SetValue(chromedp.CSS(`[data-testid=recipient]`), to),
		chromedp.SendKeys(chromedp.CSS(`[data-testid=message-input]`), text),
		chromedp.Click(chromedp.CSS(`[data-testid=send-button]`)),
	)
}

// waitState waits until n of the page's sent messages are in state.
func waitState(t *testing.T, p *testenv.Page, state string, n int) {
	t.Helper()
	p.WaitJS(t, wait,
		`document.querySelectorAll('[data-testid=message][data-kind=sent][data-state=`+state+`]').length >= `+strconv.Itoa(n),
		`[...document.querySelectorAll('[data-testid=message]')].map(e => e.dataset.state + ": " + e.textContent).join(" | ")`)
}

// waitText waits until an element matching sel contains text.
func waitText(t *testing.T, p *testenv.Page, sel, text string) {
	t.Helper()
	q, _ := json.Marshal(sel)
	want, _ := json.Marshal(text)
	p.WaitJS(t, wait,
		`[...document.querySelectorAll(`+string(q)+`)].some(e => e.textContent.includes(`+string(want)+`))`,
		`[...document.querySelectorAll('[data-testid=message]')].map(e => e.dataset.state + ": " + e.textContent).join(" | ")`)
}
