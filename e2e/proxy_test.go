package e2e

import (
	"fmt"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/relaychat/relaychat/internal/testenv"
)

// TestProxyRestart kills the proxy with SIGKILL, twice: while it is down,
// cross-server chats are acked and held by their server (the default), and
// same-server chat still works; once a new proxy is ready, the held chats
// arrive first, in order, then cross-server chat goes on on the same
// sessions. Last, SIGINT stops the proxy cleanly.
func TestProxyRestart(t *testing.T) {
	t.Parallel()
	proxyRestart(t, clusterConfig{}, true)
}

// TestProxyRestartNoHold: with holding off (-hold-bytes -1) cross-server
// chats get "forwarding tier unavailable" (with their id) while the proxy
// is down, and nothing refused shows up late.
func TestProxyRestartNoHold(t *testing.T) {
	t.Parallel()
	proxyRestart(t, clusterConfig{serverArgs: []string{"-hold-bytes", "-1"}}, false)
}

func proxyRestart(t *testing.T, cfg clusterConfig, held bool) {
	cl := startCluster(t, cfg)
	an, bn, cn := cl.name("alice"), cl.name("bob"), cl.name("carol")
	a, b, c := cl.login(t, 0, an), cl.login(t, 1, bn), cl.login(t, 0, cn)

	a.Send(t, chatReq(t, an, bn, "before", "b0"))
	expectAck(t, a, "b0")
	expectDelivery(t, b, an, bn, "before")

	for round := range 2 {
		cl.proxy.Kill()
		// Both servers notice the link is gone.
		for _, s := range cl.s {
			s.proc.WaitLine(t, proxyLinkDownRE, wait)
		}

		// Same-server chat does not need the proxy.
		t.Run(fmt.Sprintf("SameServerWhileDown%d", round), func(t *testing.T) {
			a.Send(t, chatReq(t, an, cn, "local while down", "l1"))
			expectAck(t, a, "l1")
			expectDelivery(t, c, an, cn, "local while down")
			c.Send(t, chatReq(t, cn, an, "local reply", nil))
			expectDelivery(t, a, cn, an, "local reply")
		})

		t.Run(fmt.Sprintf("CrossServerWhileDown%d", round), func(t *testing.T) {
			if held {
				// Held: acknowledged once they have left the server, when
				// a path is back (see CrossServerAfterRestart).
				a.Send(t, chatReq(t, an, bn, "while down 1", "down-1"))
				a.Send(t, chatReq(t, an, bn, "while down 2", 17))
				a.Send(t, chatReq(t, an, bn, "while down 3", nil))
				b.Send(t, chatReq(t, bn, an, "while down 4", "down-2"))
				a.ExpectNothing(t, quiet)
				b.ExpectNothing(t, quiet)
				return
			}
			a.Send(t, chatReq(t, an, bn, "while down", "down-1"))
			expectError(t, a, "forwarding tier unavailable", "down-1")
			a.Send(t, chatReq(t, an, bn, "while down", 17))
			expectError(t, a, "forwarding tier unavailable", 17)
			a.Send(t, chatReq(t, an, bn, "while down", nil))
			expectError(t, a, "forwarding tier unavailable", nil)
			b.Send(t, chatReq(t, bn, an, "while down", "down-2"))
			expectError(t, b, "forwarding tier unavailable", "down-2")
		})

		// Logins still work on both servers.
		dn := cl.name("dave")
		d := cl.login(t, 1, dn)

		cl.proxy = cl.startProxy(t) // waits for "proxy ready"
		for i, s := range cl.s {
			s.proc.WaitLine(t, proxyLinkUpRE, wait)
			// Each server's stream to the other has its path again (the
			// proxy's reach line has arrived).
			s.proc.WaitLine(t, `msg="stream path" .*server=`+cl.s[1-i].id+` via="proxy proxy1"`, wait)
			if !hasLine(cl.proxy, regexp.MustCompile(`msg="link up".* server=`+s.id+`\b`)) {
				t.Fatalf("new proxy said \"proxy ready\" without a \"link up\" for %s:\n%s", s.id, strings.Join(cl.proxy.Lines(), "\n"))
			}
		}

		t.Run(fmt.Sprintf("CrossServerAfterRestart%d", round), func(t *testing.T) {
			if held {
				// The held chats arrive first, in the order they were sent,
				// and their senders get their acks.
				expectInterleaved(t, a, []any{"down-1", 17}, bn, an, []string{"while down 4"})
				expectInterleaved(t, b, []any{"down-2"}, an, bn, []string{"while down 1", "while down 2", "while down 3"})
			}
			a.Send(t, chatReq(t, an, bn, "after", "after-1"))
			expectAck(t, a, "after-1")
			expectDelivery(t, b, an, bn, "after")
			b.Send(t, chatReq(t, bn, an, "after too", "after-2"))
			expectAck(t, b, "after-2")
			expectDelivery(t, a, bn, an, "after too")
			c.Send(t, chatReq(t, cn, dn, "to the newcomer", nil))
			expectDelivery(t, d, cn, dn, "to the newcomer")
			// Nothing else shows up late (refused chats, or held ones twice).
			for _, x := range []*testenv.Client{a, b, c, d} {
				x.ExpectNothing(t, quiet)
			}
		})
	}

	// SIGINT is a clean shutdown: exit status 0, and the servers see the
	// link go.
	cl.proxy.Signal(t, syscall.SIGINT)
	if err := cl.proxy.Wait(t, wait); err != nil {
		t.Errorf("chat-proxy after SIGINT: %v, want exit status 0", err)
	}
	for _, s := range cl.s {
		s.proc.WaitLine(t, proxyLinkDownRE, wait)
	}
}

// expectInterleaved reads from c exactly the acks with ids and the
// deliveries from send to recv with contents, which may come in any
// interleaving, but the deliveries in the order given.
func expectInterleaved(t *testing.T, c *testenv.Client, ids []any, send, recv string, contents []string) {
	t.Helper()
	acks := map[string]bool{}
	for _, id := range ids {
		acks[fmt.Sprint(id)] = true
	}
	for len(acks) > 0 || len(contents) > 0 {
		m := next(t, c)
		switch m["cmd"] {
		case "ack":
			k := fmt.Sprint(m["id"])
			if !acks[k] {
				t.Fatalf("unexpected ack %v (waiting for acks %v, deliveries %q)", m, acks, contents)
			}
			delete(acks, k)
		case "chat":
			if len(contents) == 0 {
				t.Fatalf("unexpected delivery %v", m)
			}
			checkDelivery(t, m, send, recv, contents[0])
			contents = contents[1:]
		default:
			t.Fatalf("got %v while waiting for acks %v and deliveries %q", m, acks, contents)
		}
	}
}

// hasLine reports whether p has logged a line matching re so far.
func hasLine(p *testenv.Proc, re *regexp.Regexp) bool {
	for _, l := range p.Lines() {
		if re.MatchString(l) {
			return true
		}
	}
	return false
}
