package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/relaychat/relaychat/codec"
	"github.com/relaychat/relaychat/route"
)

// Router is what the server needs from the routing store. *route.Store
// implements it; every method but CachedLookup may block on the network and
// is therefore only ever called off the event loops.
type Router interface {
	// CachedLookup answers from the client-side cache only and never blocks.
	CachedLookup(name string) (r route.Route, ok, hit bool)
	Lookup(ctx context.Context, name string) (r route.Route, ok bool, err error)
	FreshLookup(ctx context.Context, name string) (r route.Route, ok bool, err error)
	Claim(ctx context.Context, name string, r route.Route) (prev route.Route, hadPrev bool, err error)
	Release(ctx context.Context, name string, r route.Route) (bool, error)
	ReleaseAll(ctx context.Context, routes map[string]route.Route) (int, error)
	ClearServer(ctx context.Context, serverID string) (int, error)
	Heartbeat(ctx context.Context, serverID, peerAddr string, ttl time.Duration) error
	Reassert(ctx context.Context, routes map[string]route.Route) (int, error)
	// Drops counts lost Redis connections; a change means Redis may have
	// restarted and lost this server's routes.
	Drops() uint64
}

var _ Router = (*route.Store)(nil)

// Options configures a Server. The zero value of each field is documented.
type Options struct {
	// ID names this server in routes and link frames; required, see
	// codec.ValidServerID.
	ID string
	// Listen is the client address; "" means ":9501".
	Listen string
	// PeerListen is where the forwarding tier connects; "" means
	// "127.0.0.1:9601". It should not be reachable by clients.
	PeerListen string
	// Router is the routing store; required.
	Router Router
	// Multicore runs one event loop per core; false means one loop.
	Multicore bool
	// Loops, when > 0, sets the number of event loops and overrides Multicore.
	Loops int
	// MaxLine caps a request line in bytes; 0 means codec.DefaultMaxLine.
	MaxLine int
	// MaxPending caps the bytes a client may have queued behind one of its
	// requests that waits on Redis; past it the client is disconnected.
	// 0 means 1 MiB.
	MaxPending int
	// MaxOutbound caps the bytes waiting to be written to one client; a client
	// that reads slower than it is sent to is disconnected past it (slow
	// consumer). 0 means 4 MiB.
	MaxOutbound int
	// MaxLinkOutbound caps the bytes waiting to be written to a proxy link;
	// past it, chats that need the link are refused with an error until the
	// proxy catches up (backpressure, not a disconnect). 0 means 64 MiB.
	MaxLinkOutbound int
	// MaxHoldBytes caps, per destination server, the bytes of chats held
	// while no proxy link reaches that server; past it chats are refused
	// with an error. 0 means 8 MiB; negative disables holding (refuse at
	// once).
	MaxHoldBytes int
	// MaxHoldAge is how long a chat may be held before its sender gets an
	// error instead; 0 means 5s.
	MaxHoldAge time.Duration
	// MaxInflight caps concurrent Redis operations (logins, cache misses,
	// logouts) of the whole server; a request over the cap is answered with
	// an error. 0 means 4096.
	MaxInflight int
	// MaxConns caps the client connections; one more is answered with an
	// error and closed at once. 0 means: derived when Start has opened the
	// listeners, as RLIMIT_NOFILE minus the descriptors then in use minus a
	// headroom (for Redis reconnects, proxy links and connections accepted
	// before they can be refused). It must stay below the open-file limit:
	// gnet stops the whole engine when accept fails with EMFILE.
	MaxConns int
	// IdleTimeout closes a client connection that has sent nothing (a ping
	// is enough) for this long. 0 means no idle timeout.
	IdleTimeout time.Duration
	// RateLimit caps the requests per second of one connection (a token
	// bucket of RateBurst requests); requests over it get an error and are
	// not served. 0 means no limit.
	RateLimit float64
	// RateBurst is the bucket size; 0 means max(1, RateLimit).
	RateBurst int
	// RedisTimeout bounds one Redis operation; 0 means 2s.
	RedisTimeout time.Duration
	// AuthSecret, when set, makes login require a "token" minted for the
	// name with this secret (see package auth). nil means no authentication.
	AuthSecret []byte
	// PeerSecret, when set, is required in the hello of every link.
	PeerSecret string
	// LinkTimeout closes a link that has sent nothing (not even a heartbeat)
	// for this long; 0 means 5s.
	LinkTimeout time.Duration
	// Heartbeat is how often the server announces itself in Redis; 0 means 1s.
	// The announcement lives for three periods.
	Heartbeat time.Duration
	// Logger receives the server's logs; nil means slog.Default().
	Logger *slog.Logger
}

func (o *Options) setDefaults() error {
	if !codec.ValidServerID(o.ID) {
		return fmt.Errorf("server: invalid id %q: want 1 to 64 letters, digits, '-', '_' or '.'", o.ID)
	}
	if o.Router == nil {
		return errors.New("server: Options.Router is required")
	}
	if o.Listen == "" {
		o.Listen = ":9501"
	}
	if o.PeerListen == "" {
		o.PeerListen = "127.0.0.1:9601"
	}
	if o.Loops < 0 || o.Loops > 256 {
		return fmt.Errorf("server: loops %d out of range 0..256", o.Loops)
	}
	if o.MaxLine == 0 {
		o.MaxLine = codec.DefaultMaxLine
	}
	if o.MaxLine < 64 || o.MaxLine > codec.MaxClientLine {
		return fmt.Errorf("server: max-line %d out of range 64..%d", o.MaxLine, codec.MaxClientLine)
	}
	if o.MaxLinkOutbound == 0 {
		o.MaxLinkOutbound = 64 << 20
	}
	if o.MaxPending == 0 {
		o.MaxPending = 1 << 20
	}
	if o.MaxOutbound == 0 {
		o.MaxOutbound = 4 << 20
	}
	switch {
	case o.MaxHoldBytes == 0:
		o.MaxHoldBytes = 8 << 20
	case o.MaxHoldBytes < 0:
		o.MaxHoldBytes = 0
	}
	if o.MaxHoldAge == 0 {
		o.MaxHoldAge = 5 * time.Second
	}
	if o.MaxInflight == 0 {
		o.MaxInflight = 4096
	}
	if o.MaxConns < 0 || o.IdleTimeout < 0 || o.RateLimit < 0 || o.RateBurst < 0 {
		return errors.New("server: max-conns, idle-timeout, rate-limit and rate-burst must not be negative")
	}
	if o.RateBurst == 0 {
		o.RateBurst = max(1, int(o.RateLimit))
	}
	if o.RedisTimeout == 0 {
		o.RedisTimeout = 2 * time.Second
	}
	if o.LinkTimeout == 0 {
		o.LinkTimeout = 5 * time.Second
	}
	if o.Heartbeat == 0 {
		o.Heartbeat = time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return nil
}
