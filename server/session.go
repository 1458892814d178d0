package server

import (
	"sync/atomic"

	"github.com/relaychat/relaychat/internal/batch"
	"github.com/relaychat/relaychat/route"
)

// session is one client connection. Fields without a note are touched only
// on the connection's own event loop.
type session struct {
	batch.Endpoint

	// name is the logged-in name, "" before login and after logout: the
	// loop's own copy, for the hot path.
	name string
	// id is the same login as seen from other goroutines (the registry's
	// readers, the peer loop, shutdown): stored before the session enters
	// the registry, replaced, never modified, so a reader always sees one
	// consistent login. nil when not logged in.
	id atomic.Pointer[identity]

	// busy is set while a request waits on Redis off the loop; the lines
	// after it stay in gnet's inbound buffer until the result is applied, so
	// requests are handled in the order they came.
	busy bool
	// result is where the off-loop worker leaves its outcome before waking
	// the connection.
	result atomic.Pointer[outcome]
	// gone is set when the session is kicked or the server shuts down: its
	// route belongs to someone else (or is released in bulk), so closing
	// must not release it.
	gone atomic.Bool

	// lastActive is the unix-nano time of the last bytes received, read by
	// the idle sweeper.
	lastActive atomic.Int64
	// tokens and refilled are the rate limiter's bucket (loop only).
	tokens   float64
	refilled int64
}

// identity is one login of a session. It is immutable.
type identity struct {
	name, token string
	// claimedOver is the token the route held before this login's claim:
	// a concurrent login of the same name that claimed earlier but finished
	// later recognises this one as newer by it.
	claimedOver string
}

func (id *identity) route(server string) route.Route {
	return route.Route{Server: server, Token: id.token}
}

// outcome is the result of an off-loop Redis operation for a session.
type outcome struct {
	// login
	login   bool
	name    string
	token   string
	prev    route.Route
	hadPrev bool
	// chat whose route had to be looked up
	chat  bool
	recv  string
	r     route.Route
	found bool
	// request fields that the result needs
	content string
	id      []byte
	ts      int64
	err     error
}
