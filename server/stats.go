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
	Refused          atomic.Int64 // connections refused at MaxConns
	IdleClosed       atomic.Int64 // connections closed by IdleTimeout
	RateLimited      atomic.Int64 // requests refused by RateLimit
	LinksUp          atomic.Int64 // authenticated links (gauge)

	chatErrors [len(chatErrorReasons)]atomic.Int64
}

// chatErrorReasons are the errors a chat can end in, in the order of the
// per-reason counters (relaychat_chat_errors_total{reason}).
var chatErrorReasons = [...]codec.ProtoError{
	codec.ErrOffline, codec.ErrMailboxFull, codec.ErrNoForwarding, codec.ErrCongested,
	codec.ErrUnconfirmed, codec.ErrMoving, codec.ErrRoutingDown, codec.ErrBusy,
	codec.ErrShuttingDown, codec.ErrNotLoggedIn, codec.ErrSendMismatch, codec.ErrRateLimited,
}

var chatErrorIndex = func() map[codec.ProtoError]int {
	m := make(map[codec.ProtoError]int, len(chatErrorReasons))
	for i, r := range chatErrorReasons {
		m[r] = i
	}
	return m
}()

// countChatError counts a chat that ended in err.
func (s *Stats) countChatError(err codec.ProtoError) {
	if i, ok := chatErrorIndex[err]; ok {
		s.chatErrors[i].Add(1)
	}
}

// ChatErrors returns the chats that ended in an error, by reason.
func (s *Stats) ChatErrors() map[string]int64 {
	out := make(map[string]int64, len(chatErrorReasons))
	for i, r := range chatErrorReasons {
		out[string(r)] = s.chatErrors[i].Load()
	}
	return out
}

// Delivered returns the chats written to local recipients, live or stored.
func (s *Stats) Delivered() int64 { return s.DeliveredLive.Load() + s.DeliveredStored.Load() }

// Snapshot returns the counters by name.
func (s *Stats) Snapshot() map[string]int64 {
	m := map[string]int64{
		"connections":        s.Connections.Load(),
		"sessions":           s.Sessions.Load(),
		"logins":             s.Logins.Load(),
		"kicks":              s.Kicks.Load(),
		"chats_received":     s.ChatsReceived.Load(),
		"delivered_live":     s.DeliveredLive.Load(),
		"delivered_stored":   s.DeliveredStored.Load(),
		"stored":             s.Stored.Load(),
		"requeued":           s.Requeued.Load(),
		"lost_at_close":      s.LostAtClose.Load(),
		"forwarded":          s.Forwarded.Load(),
		"from_streams":       s.FromStreams.Load(),
		"mailbox_expired":    s.MailboxExpired.Load(),
		"mailbox_bad":        s.MailboxBad.Load(),
		"stream_dup":         s.StreamDup.Load(),
		"stream_gap":         s.StreamGap.Load(),
		"stream_stale":       s.StreamStale.Load(),
		"stream_foreign":     s.StreamForeign.Load(),
		"stream_resent":      s.StreamResent.Load(),
		"stream_unconfirmed": s.StreamUnconfirmed.Load(),
		"stream_expired":     s.StreamExpired.Load(),
		"stream_full":        s.StreamFull.Load(),
		"errors":             s.Errors.Load(),
		"cache_misses":       s.CacheMisses.Load(),
		"redis_errors":       s.RedisErrors.Load(),
		"busy":               s.Busy.Load(),
		"kick_undelivered":   s.KickUndelivered.Load(),
		"kick_timeouts":      s.KickTimeouts.Load(),
		"slow_consumers":     s.SlowConsumers.Load(),
		"line_too_long":      s.LineTooLong.Load(),
		"pending_overflow":   s.PendingOverflow.Load(),
		"dropped_no_sender":  s.DroppedNoSender.Load(),
		"dropped_bad_frame":  s.DroppedBadFrame.Load(),
		"link_auth_failures": s.LinkAuthFailures.Load(),
		"peer_refused":       s.PeerRefused.Load(),
		"auth_failures":      s.AuthFailures.Load(),
		"release_overflow":   s.ReleaseOverflow.Load(),
		"refused":            s.Refused.Load(),
		"idle_closed":        s.IdleClosed.Load(),
		"rate_limited":       s.RateLimited.Load(),
		"links_up":           s.LinksUp.Load(),
	}
	return m
}
