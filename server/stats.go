package server

import (
	"sync/atomic"

	"github.com/relaychat/relaychat/codec"
)

// Stats are the server's counters, plain atomics safe to read at any time
// (the hot path only adds; monitoring reads them when scraped). Every chat
// the server does not deliver is counted in one of them.
type Stats struct {
	Connections atomic.Int64 // client connections open (gauge)
	Sessions    atomic.Int64 // logged-in sessions (gauge)
	Logins      atomic.Int64
	Kicks       atomic.Int64 // sessions replaced by a newer login

	ChatsReceived   atomic.Int64 // chats accepted from clients (acked, or would be with an id)
	DeliveredLive   atomic.Int64 // chats written to a local recipient as they came
	DeliveredStored atomic.Int64 // stored chats written to their recipient at login
	Stored          atomic.Int64 // chats stored in an offline recipient's mailbox
	Requeued        atomic.Int64 // chats a closing or kicked session had not received, put back in its mailbox
	LostAtClose     atomic.Int64 // such chats that could not be put back (mailbox off, or Redis failing): counted and logged
	Forwarded       atomic.Int64 // chats put on a stream to another server
	FromStreams     atomic.Int64 // data frames accepted from other servers' streams
	MailboxExpired  atomic.Int64 // stored chats dropped by retention (-mailbox-ttl)
	MailboxBad      atomic.Int64 // mailbox entries that did not parse, skipped

	StreamDup         atomic.Int64 // frames received twice (a resend), dropped
	StreamGap         atomic.Int64 // frames received after a gap, dropped until the resend
	StreamStale       atomic.Int64 // frames for an earlier run of this server, dropped
	StreamForeign     atomic.Int64 // frames from a source the link may not speak for, dropped
	StreamResent      atomic.Int64 // bytes resent over a new path
	StreamUnconfirmed atomic.Int64 // chats sent but never acknowledged: their senders got an error
	StreamExpired     atomic.Int64 // chats never sent within -hold-age: stored or refused instead
	StreamFull        atomic.Int64 // chats refused: the stream to their server was at -hold-bytes
	StreamPaused      atomic.Int64 // clients paused because their chat found its stream over the flow-control window

	Errors           atomic.Int64 // error lines sent to clients
	CacheMisses      atomic.Int64 // route lookups that had to go to Redis
	RedisErrors      atomic.Int64
	Busy             atomic.Int64 // requests refused: MaxInflight Redis operations running, or the Redis queue full
	KickUndelivered  atomic.Int64 // kicks that could not be sent or kept
	KickTimeouts     atomic.Int64 // logins that stopped waiting for the replaced session
	SlowConsumers    atomic.Int64 // clients disconnected for not reading
	LineTooLong      atomic.Int64
	PendingOverflow  atomic.Int64 // clients disconnected for queueing too much behind a Redis wait
	DroppedNoSender  atomic.Int64 // errors for a sender that had already gone
	DroppedBadFrame  atomic.Int64 // link lines that did not parse or were not for this server
	LinkAuthFailures atomic.Int64 // links refused for a bad hello or proof
	PeerRefused      atomic.Int64 // peer connections refused at MaxPeerPending
	AuthFailures     atomic.Int64 // logins refused for a missing, invalid or expired token
	ReleaseOverflow  atomic.Int64 // route deletions not queued (queue full); cleared at the next start
	RoutesSwept      atomic.Int64 // routes of dead servers deleted by the sweep
	Refused          atomic.Int64 // connections refused at MaxConns
	IdleClosed       atomic.Int64 // connections closed by IdleTimeout
	RateLimited      atomic.Int64 // requests refused by RateLimit
	LinksUp          atomic.Int64 // authenticated links (gauge)

	chatErrors [len(chatErrorReasons)]atomic.Int64
}

// chatErrorReasons are the errors a chat can end in, in the order of the
// per-reason counters, with the label value monitoring shows for each
// (relaychat_chat_errors_total{reason}).
var chatErrorReasons = [...]struct {
	err codec.ProtoError
	key string
}{
	{codec.ErrOffline, "recipient_offline"},
	{codec.ErrMailboxFull, "mailbox_full"},
	{codec.ErrNoForwarding, "forwarding_unavailable"},
	{codec.ErrCongested, "forwarding_congested"},
	{codec.ErrUnconfirmed, "unconfirmed"},
	{codec.ErrMoving, "recipient_moving"},
	{codec.ErrRoutingDown, "routing_store_unavailable"},
	{codec.ErrBusy, "server_busy"},
	{codec.ErrShuttingDown, "shutting_down"},
	{codec.ErrNotLoggedIn, "not_logged_in"},
	{codec.ErrSendMismatch, "send_mismatch"},
	{codec.ErrRateLimited, "rate_limited"},
}

var chatErrorIndex = func() map[codec.ProtoError]int {
	m := make(map[codec.ProtoError]int, len(chatErrorReasons))
	for i, r := range chatErrorReasons {
		m[r.err] = i
	}
	return m
}()

// countChatError counts a chat that ended in err.
func (s *Stats) countChatError(err codec.ProtoError) {
	if i, ok := chatErrorIndex[err]; ok {
		s.chatErrors[i].Add(1)
	}
}

// ChatErrors returns the chats that ended in an error, by reason key.
func (s *Stats) ChatErrors() map[string]int64 {
	out := make(map[string]int64, len(chatErrorReasons))
	for i, r := range chatErrorReasons {
		out[r.key] = s.chatErrors[i].Load()
	}
	return out
}

// Delivered returns the chats written to local recipients, live or stored.
func (s *Stats) Delivered() int64 { return s.DeliveredLive.Load() + s.DeliveredStored.Load() }

// counter is one of Stats' counters as monitoring sees it.
type counter struct {
	name  string // snake_case; the metric is relaychat_<name>_total (gauges: relaychat_<name>)
	help  string
	gauge bool
	v     *atomic.Int64
}

// counters lists every counter once, with its help text: the stopped log
// line and /metrics both come from it. The contract's series
// (connections, sessions, chats received/delivered/stored, chat errors by
// reason) are exported under their contract names by RegisterMetrics.
func (s *Stats) counters() []counter {
	return []counter{
		{"logins", "Successful logins.", false, &s.Logins},
		{"kicks", "Sessions replaced by a newer login of the same name.", false, &s.Kicks},
		{"delivered_live", "Chats written to a local recipient as they came.", false, &s.DeliveredLive},
		{"delivered_stored", "Stored chats written to their recipient from the mailbox.", false, &s.DeliveredStored},
		{"requeued", "Chats a closing or kicked session had not received, put back in its mailbox.", false, &s.Requeued},
		{"lost_at_close", "Chats a closing session had not received that could not be put back (mailbox off, or Redis failing).", false, &s.LostAtClose},
		{"forwarded", "Chats put on a stream to another server.", false, &s.Forwarded},
		{"from_streams", "Frames accepted in order from other servers' streams.", false, &s.FromStreams},
		{"mailbox_bad", "Mailbox entries that did not parse, skipped.", false, &s.MailboxBad},
		{"stream_dup", "Stream frames received twice (a resend), dropped.", false, &s.StreamDup},
		{"stream_gap", "Stream frames received after a gap, dropped until resent.", false, &s.StreamGap},
		{"stream_stale", "Stream frames addressed to an earlier run of this server, dropped.", false, &s.StreamStale},
		{"stream_foreign", "Stream frames in the name of a server the link does not reach, dropped.", false, &s.StreamForeign},
		{"stream_unconfirmed", "Chats sent to another server and never acknowledged: their senders were told.", false, &s.StreamUnconfirmed},
		{"stream_expired", "Chats not sent within -hold-age: stored or refused instead.", false, &s.StreamExpired},
		{"stream_full", "Chats refused because the stream to their server was at -hold-bytes.", false, &s.StreamFull},
		{"stream_paused", "Clients not read for a while: their chat found its stream over the flow-control window (an eighth of -hold-bytes in flight).", false, &s.StreamPaused},
		{"errors", "Error lines sent to clients.", false, &s.Errors},
		{"cache_misses", "Route lookups that went to Redis.", false, &s.CacheMisses},
		{"busy", "Requests refused: too many Redis operations in flight, or the Redis queue full.", false, &s.Busy},
		{"kick_undelivered", "Kicks that could not be sent or remembered.", false, &s.KickUndelivered},
		{"kick_timeouts", "Logins that stopped waiting for the session they replaced.", false, &s.KickTimeouts},
		{"line_too_long", "Connections closed for a line over -max-line.", false, &s.LineTooLong},
		{"pending_overflow", "Clients disconnected for sending too much while a request waited on Redis.", false, &s.PendingOverflow},
		{"dropped_no_sender", "Errors for a sender who had already gone.", false, &s.DroppedNoSender},
		{"dropped_bad_frame", "Link lines that did not parse or were not for this server.", false, &s.DroppedBadFrame},
		{"link_auth_failures", "Links refused for a bad hello or proof.", false, &s.LinkAuthFailures},
		{"peer_refused", "Peer connections refused: too many had not finished their hello.", false, &s.PeerRefused},
		{"auth_failures", "Logins refused for a missing, invalid or expired token.", false, &s.AuthFailures},
		{"release_overflow", "Route deletions not queued (queue full); cleared at the next start.", false, &s.ReleaseOverflow},
		{"routes_swept", "Routes of servers whose heartbeat stayed gone, deleted by the sweep.", false, &s.RoutesSwept},
		{"refused", "Connections refused at the connection cap.", false, &s.Refused},
		{"idle_closed", "Connections closed by -idle-timeout.", false, &s.IdleClosed},
		{"rate_limited", "Requests refused by -rate-limit.", false, &s.RateLimited},
		{"links_up", "Authenticated links (proxies and, in mesh mode, servers).", true, &s.LinksUp},
	}
}

// Snapshot returns the counters by name.
func (s *Stats) Snapshot() map[string]int64 {
	m := map[string]int64{
		"connections":     s.Connections.Load(),
		"sessions":        s.Sessions.Load(),
		"chats_received":  s.ChatsReceived.Load(),
		"stored":          s.Stored.Load(),
		"mailbox_expired": s.MailboxExpired.Load(),
		"stream_resent":   s.StreamResent.Load(),
		"redis_errors":    s.RedisErrors.Load(),
		"slow_consumers":  s.SlowConsumers.Load(),
	}
	for _, c := range s.counters() {
		m[c.name] = c.v.Load()
	}
	return m
}
