package e2e

import (
	"fmt"
	"strings"
	"syscall"
	"testing"

	"github.com/relaychat/relaychat/internal/testenv"
)

// TestSessions covers duplicate logins (the newest wins, on another server
// or the same one) and the route's life: removed when its session closes,
// but never when a newer login elsewhere owns it.
func TestSessions(t *testing.T) {
	t.Parallel()
	cl := startCluster(t, clusterConfig{})

	t.Run("KickAcrossServers", func(t *testing.T) {
		an, pn, qn := cl.name("alice"), cl.name("peer1"), cl.name("peer2")
		p1, p2 := cl.login(t, 0, pn), cl.login(t, 1, qn)
		old := cl.login(t, 0, an)
		cl.waitRoute(t, an, "s1")
		newer := cl.login(t, 1, an)
		expectKickedAndClosed(t, old)
		if got := cl.routeServer(t, an); got != "s2" {
			t.Fatalf("route of %s names %q after the s2 login kicked s1's session, want s2", an, got)
		}
		// Both servers now deliver to the newest session.
		p1.Send(t, chatReq(t, pn, an, "from s1", "k1"))
		expectAck(t, p1, "k1")
		expectDelivery(t, newer, pn, an, "from s1")
		p2.Send(t, chatReq(t, qn, an, "from s2", "k2"))
		expectAck(t, p2, "k2")
		expectDelivery(t, newer, qn, an, "from s2")
		// And back across.
		newer.Send(t, chatReq(t, an, pn, "hello s1", nil))
		expectDelivery(t, p1, an, pn, "hello s1")
		newer.ExpectNothing(t, quiet)

		// A third login, back on s1, kicks the s2 session in turn.
		third := cl.login(t, 0, an)
		expectKickedAndClosed(t, newer)
		cl.waitRoute(t, an, "s1")
		p2.Send(t, chatReq(t, qn, an, "to the third", nil))
		expectDelivery(t, third, qn, an, "to the third")
	})

	t.Run("KickSameServer", func(t *testing.T) {
		an, pn := cl.name("alice"), cl.name("peer")
		p := cl.login(t, 1, pn)
		old := cl.login(t, 0, an)
		oldRoute, _ := cl.routeOf(t, an)
		newer := cl.login(t, 0, an)
		expectKickedAndClosed(t, old)
		if v, ok := cl.routeOf(t, an); !ok || v == oldRoute {
			t.Fatalf("route of %s is %q (exists %v) after a second login on s1; want a new token (old %q)", an, v, ok, oldRoute)
		}
		if got := cl.routeServer(t, an); got != "s1" {
			t.Fatalf("route of %s names %q, want s1", an, got)
		}
		p.Send(t, chatReq(t, pn, an, "to the newest", "n"))
		expectAck(t, p, "n")
		expectDelivery(t, newer, pn, an, "to the newest")
		newer.Send(t, chatReq(t, an, pn, "I am the newest", nil))
		expectDelivery(t, p, an, pn, "I am the newest")
	})

	t.Run("RouteCleanupOnClose", func(t *testing.T) {
		for i := range 2 {
			an := cl.name("leaver")
			c := cl.login(t, i, an)
			cl.waitRoute(t, an, cl.s[i].id)
			c.Close()
			cl.waitRoute(t, an, "")
		}
		// A logged-out-then-closed session leaves nothing either.
		an := cl.name("leaver")
		c := cl.login(t, 1, an)
		c.Send(t, `{"cmd":"logout"}`)
		next(t, c)
		c.Close()
		cl.waitRoute(t, an, "")
	})

	// alice on s1; alice logs in on s2, which kicks s1's session. s1's
	// close must not delete the route, which now belongs to s2.
	t.Run("CloseRacesNewLoginKick", func(t *testing.T) {
		const rounds = 25
		names := make([]string, rounds)
		newest := make([]*testenv.Client, rounds)
		for i := range rounds {
			names[i] = cl.name("racer")
			old := cl.login(t, 0, names[i])
			newest[i] = cl.login(t, 1, names[i])
			expectKickedAndClosed(t, old)
			if got := cl.routeServer(t, names[i]); got != "s2" {
				t.Fatalf("round %d: route of %s names %q right after s1's session closed, want s2", i, names[i], got)
			}
		}
		checkRoutesAfterClose(t, cl, names, newest)
	})

	// The same race with the client closing on its own while the new
	// login is on its way: whichever order s1 and s2 act in, the route
	// ends up naming s2 and stays so.
	t.Run("CloseRacesNewLoginClientClose", func(t *testing.T) {
		const rounds = 25
		names := make([]string, rounds)
		newest := make([]*testenv.Client, rounds)
		for i := range rounds {
			names[i] = cl.name("racer")
			old := cl.login(t, 0, names[i])
			c := cl.dial(t, 1)
			old.Close()
			c.Send(t, mustJSON(t, map[string]any{"cmd": "login", "name": names[i]}))
			expectLogin(t, c, names[i], "s2")
			newest[i] = c
		}
		checkRoutesAfterClose(t, cl, names, newest)
	})

	// Last, as it stops s2: SIGTERM is a clean shutdown (exit status 0)
	// that closes s2's clients and releases their routes; s1 carries on.
	t.Run("ServerShutdown", func(t *testing.T) {
		var names []string
		var clients []*testenv.Client
		for range 3 {
			n := cl.name("stayer")
			names = append(names, n)
			clients = append(clients, cl.login(t, 1, n))
			cl.waitRoute(t, n, "s2")
		}
		s2 := cl.s[1].proc
		s2.Signal(t, syscall.SIGTERM)
		for _, c := range clients {
			// Told why, then closed.
			lines := c.ExpectClosed(t, wait)
			if len(lines) != 1 || !strings.Contains(lines[0], `"error":"server shutting down"`) {
				t.Errorf("before the close a client got %q, want one \"server shutting down\" error", lines)
			}
		}
		if err := s2.Wait(t, wait); err != nil {
			t.Errorf("chat-server s2 after SIGTERM: %v, want exit status 0", err)
		}
		for _, n := range names {
			cl.waitRoute(t, n, "")
		}
		an, bn := cl.name("alice"), cl.name("bob")
		a, b := cl.login(t, 0, an), cl.login(t, 0, bn)
		a.Send(t, chatReq(t, an, bn, "s1 lives", "live"))
		expectAck(t, a, "live")
		expectDelivery(t, b, an, bn, "s1 lives")
	})
}

// checkRoutesAfterClose checks that every name's route names s2 once s1 has
// handled its closes, and that s1 delivers to the s2 session. As a barrier
// for s1's route releases it logs a user in on s1, closes it and waits for
// its route to go: s1 issued the earlier releases before that one.
func checkRoutesAfterClose(t *testing.T, cl *cluster, names []string, newest []*testenv.Client) {
	t.Helper()
	bn := cl.name("barrier")
	b := cl.login(t, 0, bn)
	cl.waitRoute(t, bn, "s1")
	b.Close()
	cl.waitRoute(t, bn, "")

	var lost []string
	for i, n := range names {
		if got := cl.routeServer(t, n); got != "s2" {
			lost = append(lost, fmt.Sprintf("round %d: route of %s names %q", i, n, got))
		}
	}
	if len(lost) > 0 {
		t.Fatalf("%d of %d routes do not name s2 after s1's session closed:\n%v", len(lost), len(names), lost)
	}
	pn := cl.name("prober")
	p := cl.login(t, 0, pn)
	for i, n := range names {
		id := fmt.Sprintf("probe-%d", i)
		p.Send(t, chatReq(t, pn, n, "still reachable", id))
		expectAck(t, p, id)
		expectDelivery(t, newest[i], pn, n, "still reachable")
	}
}
