package e2e

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/relaychat/relaychat/internal/testenv"
)

// TestBrowserChat opens the page each server serves on its WebSocket
// address in headless Chromium, one page per server, logs two people in
// and has them chat across the servers and with a TCP user; a third login
// kicks one page. Screenshots are saved (see testenv.ArtefactDir). It is
// skipped, with the reason, only when no Chromium can be found or
// installed.
func TestBrowserChat(t *testing.T) {
	t.Parallel()
	testenv.Chromium(t) // skip early, before starting the cluster
	cl, wsAddr := startWSCluster(t, clusterConfig{})
	b := testenv.StartBrowser(t)
	an, bn, cn := cl.name("alice"), cl.name("bob"), cl.name("carol")
	alice, bob := b.NewPage(t, "alice"), b.NewPage(t, "bob")

	for i, p := range []*testenv.Page{alice, bob} {
		p.Do(t, wait, chromedp.Navigate("http://"+wsAddr[i]+"/"))
		waitStatus(t, p, "open")
		name := []string{an, bn}[i]
		p.Do(t, wait,
			chromedp.SendKeys(chromedp.CSS(`[data-testid=login-name]`), name),
			chromedp.Click(chromedp.CSS(`[data-testid=login-button]`)),
		)
		waitStatus(t, p, "logged-in")
		if got := testenv.Eval[string](t, p, wait, `document.getElementById("server").textContent`); got != cl.s[i].id {
			t.Fatalf("page %s shows server %q, want %q", p.Name, got, cl.s[i].id)
		}
	}
	cl.waitRoute(t, an, "s1")
	cl.waitRoute(t, bn, "s2")

	browserSend(t, alice, bn, "hello from s1's page")
	waitMessages(t, alice, `[data-kind=sent][data-state=acked]`, 1)
	waitMessageText(t, bob, `[data-kind=received]`, "hello from s1's page")
	browserSend(t, bob, an, "and hello back from s2")
	waitMessages(t, bob, `[data-kind=sent][data-state=acked]`, 1)
	waitMessageText(t, alice, `[data-kind=received]`, "and hello back from s2")

	// A TCP user on s1 writes to bob's page on s2, and the page answers.
	c := cl.login(t, 0, cn)
	c.Send(t, chatReq(t, "", bn, "a telnet user says hi", "t1"))
	expectAck(t, c, "t1")
	waitMessageText(t, bob, `[data-kind=received]`, "a telnet user says hi")
	browserSend(t, bob, cn, "hi telnet")
	expectDelivery(t, c, bn, cn, "hi telnet")

	// Someone offline: stored (mailbox) or refused, and the page says which.
	browserSend(t, alice, cl.name("offline"), "are you there?")
	waitMessages(t, alice, `[data-kind=sent][data-state=stored], [data-kind=sent][data-state=failed]`, 1)

	alice.Screenshot(t, "alice-s1")
	bob.Screenshot(t, "bob-s2")

	// bob logs in over TCP: the page's session is kicked.
	k := cl.login(t, 0, bn)
	waitStatus(t, bob, "kicked")
	expectPong(t, k)
	bob.Screenshot(t, "bob-kicked")

	for _, p := range []*testenv.Page{alice, bob} {
		for _, m := range p.Console() {
			if strings.Contains(m, "Content Security Policy") || strings.HasPrefix(m, "exception") {
				t.Errorf("page %s console: %s", p.Name, m)
			}
		}
	}
}

func waitStatus(t *testing.T, p *testenv.Page, state string) {
	t.Helper()
	p.WaitJS(t, wait, `document.querySelector('[data-testid=status]').dataset.state === `+strconv.Quote(state),
		`document.querySelector('[data-testid=status]').dataset.state + ": " + document.querySelector('[data-testid=status]').textContent`)
}

func browserSend(t *testing.T, p *testenv.Page, to, text string) {
	t.Helper()
	p.Do(t, wait,
		chromedp.SetValue(chromedp.CSS(`[data-testid=recipient]`), to),
		chromedp.SendKeys(chromedp.CSS(`[data-testid=message-input]`), text),
		chromedp.Click(chromedp.CSS(`[data-testid=send-button]`)),
	)
}

// listDump is a JavaScript expression describing the page's message list.
const listDump = `[...document.querySelectorAll('[data-testid=message]')].map(e => e.dataset.kind + "/" + e.dataset.state + ": " + e.textContent).join(" | ")`

// waitMessages waits until at least n message items match sel (a CSS
// selector list, each part applied to the items).
func waitMessages(t *testing.T, p *testenv.Page, sel string, n int) {
	t.Helper()
	parts := strings.Split(sel, ",")
	for i, s := range parts {
		parts[i] = `[data-testid=message]` + strings.TrimSpace(s)
	}
	q, _ := json.Marshal(strings.Join(parts, ", "))
	p.WaitJS(t, wait, `document.querySelectorAll(`+string(q)+`).length >= `+strconv.Itoa(n), listDump)
}

// waitMessageText waits until a message item matching sel contains text.
func waitMessageText(t *testing.T, p *testenv.Page, sel, text string) {
	t.Helper()
	q, _ := json.Marshal(`[data-testid=message]` + sel)
	want, _ := json.Marshal(text)
	p.WaitJS(t, wait, `[...document.querySelectorAll(`+string(q)+`)].some(e => e.textContent.includes(`+string(want)+`))`, listDump)
}
