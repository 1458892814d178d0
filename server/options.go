package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/relaychat/relaychat/codec"
	"github.com/relaychat/relaychat/route"
)

// Router is what the server needs from the routing store. *route.Store
// implements it; every method but CachedLookup may block on the network and
// is therefore only ever called off the event loops.
type Router interface {
	// CachedLookup answers from memory only and never blocks.
	CachedLookup(name string) (r route.Route, ok, hit bool)
	Lookup(ctx context.Context, name string) (r route.Route, ok bool, err error)
	// Warm loads the routes of names into the table CachedLookup reads.
	Warm(ctx context.Context, names []string)
	FreshLookup(ctx context.Context, name string) (r route.Route, ok bool, err error)
	Claim(ctx context.Context, name string, r route.Route) (prev route.Route, hadPrev bool, err error)
	Release(ctx context.Context, name string, r route.Route) (bool, error)
	ReleaseAll(ctx context.Context, routes map[string]route.Route) (int, error)
	ClearServer(ctx context.Context, serverID string) (int, error)
	Reassert(ctx context.Context, routes map[string]route.Route) (int, error)
	// Drops counts lost Redis connections; a change means Redis may have
	// restarted and lost this server's routes.
	Drops() uint64

	AcquireID(ctx context.Context, serverID, epoch, peerAddr string, ttl, wait time.Duration) error
	Heartbeat(ctx context.Context, serverID, epoch string, beat uint64, peerAddr string, ttl time.Duration) error
	ReleaseID(ctx context.Context, serverID, epoch string) error
	Servers(ctx context.Context) (map[string]route.ServerInfo, error)
	ClusterSecret(ctx context.Context) (string, error)
	AssertClusterSecret(ctx context.Context, v string) (string, error)
	Ping(ctx context.Context) error

	StoreChats(ctx context.Context, reqs []route.StoreReq, max int, ttl time.Duration) ([]route.StoreResult, error)
	ReadMailbox(ctx context.Context, name string, n int, ttl time.Duration) ([]route.MailEntry, int, error)
	RemoveMailbox(ctx context.Context, name string, read []route.MailEntry) (bool, error)
	SweepMailboxes(ctx context.Context, ttl time.Duration) (int, error)
	// SweepDeadServers deletes routes naming servers whose heartbeat has
	// been gone for grace (a server killed for good leaves no stale
	// routes behind it).
	SweepDeadServers(ctx context.Context, grace time.Duration) (int, error)
	// RetryStats reports the queue of route writes retried after Redis
	// errors.
	RetryStats() route.RetryStats
}

var _ Router = (*route.Store)(nil)

// Topologies.
const (
	TopologyProxy = "proxy"
	TopologyMesh  = "mesh"
)

// Options configures a Server. The zero value of each field is documented.
type Options struct {
	// ID names this server in routes and link frames; required, see
	// codec.ValidServerID. It must be unique among live servers: Start
	// fails while another process renews this id's heartbeat.
	ID string
	// Listen is the client address; "" means ":9501".
	Listen string
	// PeerListen is where proxies and other servers connect; "" means
	// "127.0.0.1:9601". It should not be reachable by clients.
	PeerListen string
	// PeerAdvertise is the peer address other processes dial, announced in
	// the heartbeat; "" means the bound PeerListen address (set it when
	// that is a wildcard or not reachable from other hosts).
	PeerAdvertise string
	// WSListen, when set, also accepts WebSocket clients there (and serves
	// the chat page on GET /). "" means off.
	WSListen string
	// Topology is TopologyProxy ("" too): cross-server chats go through
	// proxies; or TopologyMesh: servers also link directly to each other.
	Topology string
	// Router is the routing store; required.
	Router Router
	// Multicore runs one event loop per core; false means one loop.
	Multicore bool
	// Loops, when > 0, sets the number of event loops and overrides Multicore.
	Loops int
	// MaxLine caps a request line in bytes; 0 means codec.DefaultMaxLine.
	MaxLine int
	// MaxPending caps the bytes a client may have queued behind one of its
	// requests that waits on Redis, and the bytes of its chats on their way
	// through Redis; past it the client is disconnected. 0 means 4 MiB.
	MaxPending int
	// MaxOutbound caps the bytes waiting to be written to one client, and
	// the chats waiting for its mailbox to drain; a client that reads slower
	// than it is sent to is disconnected past it (slow consumer) and the
	// chats it had not received go back to its mailbox. 0 means 4 MiB.
	MaxOutbound int
	// SendBuffer is the kernel send buffer of client sockets (SO_SNDBUF;
	// Linux doubles it). Output the kernel holds is not known to be
	// delivered until the client acknowledges it, so a close may have to
	// put back up to this much: smaller means less held in memory. 0 means
	// 64 KiB; negative leaves the kernel's own autotuning (up to 4 MiB).
	SendBuffer int
	// MaxLinkOutbound caps the bytes waiting to be written to one link;
	// streams stop writing into a link past it until it drains. 0 means
	// 64 MiB.
	MaxLinkOutbound int
	// MaxHoldBytes caps, per destination server, the bytes of chats sent
	// and not yet acknowledged (held while no link reaches it); past it new
	// chats for that server are refused with an error. 0 means 8 MiB;
	// negative means: hold nothing, refuse chats at once while no link
	// reaches their server (in flight, 8 MiB as for 0). While a link is
	// up, a client whose chat finds more than an eighth of it in flight
	// stops being read until half of that is acknowledged (flow control:
	// the receiving side sets the pace, nobody gets an error).
	MaxHoldBytes int
	// MaxHoldAge is how long a chat may wait unacknowledged; then it is
	// stored in the recipient's mailbox (never sent) or its sender gets an
	// error (sent, unconfirmed). 0 means 5s.
	MaxHoldAge time.Duration
	// ResendAfter is how long a stream waits for an acknowledgement before
	// it resends over another path, if there is one. 0 means 1s.
	ResendAfter time.Duration
	// MaxInflight caps concurrent Redis operations started by clients
	// (logins, lookups); a request over the cap is answered with an error.
	// 0 means 4096.
	MaxInflight int
	// MailboxMax is the most chats a user's mailbox holds; 0 means 1000,
	// negative turns the mailbox off (an offline recipient is then an
	// error, "recipient not online").
	MailboxMax int
	// MailboxTTL is how long a stored chat is kept; 0 means 168h.
	MailboxTTL time.Duration
	// KickWait bounds how long a new login waits for the session it
	// replaced to hand back its unsent chats before draining the mailbox;
	// 0 means 3s.
	KickWait time.Duration
	// KickFlush bounds how long a kicked session's queued output may take
	// to reach the kernel before it is closed anyway; 0 means 2s.
	KickFlush time.Duration
	// MaxConns caps the connections of every kind (clients and links); one
	// more client is answered with an error and closed at once. 0 means:
	// derived when Start has opened the listeners, as RLIMIT_NOFILE minus
	// the descriptors then in use minus a headroom. It must stay below the
	// open-file limit: gnet stops the whole engine when accept fails with
	// EMFILE.
	MaxConns int
	// MaxPeerPending caps the peer connections that have not finished their
	// hello; more are closed at once. 0 means 64.
	MaxPeerPending int
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
	// PeerSecret is the secret every link proves it knows. "" means the
	// cluster secret kept in the routing store (created on first use), so
	// that processes sharing a routing store link without configuration.
	PeerSecret string
	// LinkTimeout closes a link that has sent nothing for this long, or
	// that has not finished its hello in this time; 0 means 5s.
	LinkTimeout time.Duration
	// PingInterval is how often every link is pinged; 0 means 1s.
	PingInterval time.Duration
	// Heartbeat is how often the server announces itself in Redis; 0 means 1s.
	// The announcement lives for three periods.
	Heartbeat time.Duration
	// DeadServerGrace is how long a server's heartbeat must stay gone before
	// the live server with the smallest id deletes the routes naming it;
	// 0 means max(2m, 40 heartbeats). Routes are looked at every
	// min(30s, grace/4).
	DeadServerGrace time.Duration
	// DrainTimeout bounds each step of Shutdown that waits for chats to be
	// settled (acknowledged streams, flushed sessions); 0 means 2s.
	DrainTimeout time.Duration
	// Logger receives the server's logs; nil means slog.Default().
	Logger *slog.Logger

	noHold bool // MaxHoldBytes < 0
	// streamWindow is the bytes in flight on a stream past which senders
	// pushing into it are paused (MaxHoldBytes/8, at least 64 KiB).
	streamWindow int
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
	for _, a := range []string{o.Listen, o.PeerListen, o.WSListen, o.PeerAdvertise} {
		if a == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("server: address %q: %v", a, err)
		}
	}
	switch o.Topology {
	case "":
		o.Topology = TopologyProxy
	case TopologyProxy, TopologyMesh:
	default:
		return fmt.Errorf("server: topology %q: want %q or %q", o.Topology, TopologyProxy, TopologyMesh)
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
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	def(&o.MaxLinkOutbound, 64<<20)
	def(&o.MaxPending, 4<<20)
	def(&o.MaxOutbound, 4<<20)
	def(&o.MaxInflight, 4096)
	def(&o.MaxPeerPending, 64)
	def(&o.SendBuffer, 64<<10)
	switch {
	case o.MaxHoldBytes < 0:
		o.noHold = true
		o.MaxHoldBytes = 8 << 20
	case o.MaxHoldBytes == 0:
		o.MaxHoldBytes = 8 << 20
	case o.MaxHoldBytes < 64<<10:
		o.MaxHoldBytes = 64 << 10
	}
	o.streamWindow = max(o.MaxHoldBytes/8, 64<<10)
	switch {
	case o.MailboxMax == 0:
		o.MailboxMax = 1000
	case o.MailboxMax < 0:
		o.MailboxMax = 0 // off
	}
	defDur(&o.MaxHoldAge, 5*time.Second)
	defDur(&o.ResendAfter, time.Second)
	defDur(&o.MailboxTTL, 168*time.Hour)
	defDur(&o.KickWait, 3*time.Second)
	defDur(&o.KickFlush, 2*time.Second)
	defDur(&o.RedisTimeout, 2*time.Second)
	defDur(&o.LinkTimeout, 5*time.Second)
	defDur(&o.PingInterval, time.Second)
	defDur(&o.Heartbeat, time.Second)
	defDur(&o.DrainTimeout, 2*time.Second)
	defDur(&o.DeadServerGrace, max(2*time.Minute, 40*o.Heartbeat))
	if o.MaxConns < 0 || o.IdleTimeout < 0 || o.RateLimit < 0 || o.RateBurst < 0 || o.MailboxTTL < 0 || o.MaxHoldAge < 0 || o.DeadServerGrace < 0 {
		return errors.New("server: max-conns, idle-timeout, rate-limit, rate-burst, mailbox-ttl, hold-age and dead-server-grace must not be negative")
	}
	if o.RateBurst == 0 {
		o.RateBurst = max(1, int(o.RateLimit))
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return nil
}

// mailboxOn reports whether offline chats are stored.
func (o *Options) mailboxOn() bool { return o.MailboxMax > 0 }
