package server

import "sync/atomic"

// Stats are the server's counters, safe to read at any time. Every message
// the server does not deliver is counted in one of them.
type Stats struct {
	Connections       atomic.Int64 // client connections open
	Logins            atomic.Int64
	Kicks             atomic.Int64 // sessions replaced by a newer login
	DeliveredLocal    atomic.Int64 // chats delivered to a session on this server
	Forwarded         atomic.Int64 // chats handed to the forwarding tier
	DeliveredFromLink atomic.Int64 // chats from a link delivered to a local session
	Bounced           atomic.Int64 // chats from a link whose recipient had left, bounced to the sender
	Errors            atomic.Int64 // error lines sent to clients
	CacheMisses       atomic.Int64 // route lookups that had to go to Redis
	RedisErrors       atomic.Int64
	Busy              atomic.Int64 // requests refused because MaxInflight Redis operations were running
	LinkCongested     atomic.Int64 // chats refused because the link's backlog was over MaxLinkOutbound
	KickUndelivered   atomic.Int64 // kicks of an older session elsewhere that could not be sent or kept
	SlowConsumers     atomic.Int64 // clients disconnected for not reading
	LineTooLong       atomic.Int64
	PendingOverflow   atomic.Int64 // clients disconnected for queueing too much behind a Redis wait
	DroppedNoSender   atomic.Int64 // bounced errors whose sender had already gone
	DroppedBadFrame   atomic.Int64 // link lines that did not parse or were not for this server
	LinkAuthFailures  atomic.Int64 // links refused for a bad hello or secret
	LostToClosed      atomic.Int64 // batches of output for a client that closed before they were written
	LinkLost          atomic.Int64 // batches of frames for a link that closed before they were written
	Rerouted          atomic.Int64 // chats sent on after a fresh lookup found their recipient elsewhere
	RerouteOverflow   atomic.Int64 // chats bounced because the re-route queue was full
	Held              atomic.Int64 // chats held because no link reached their server
	HeldSent          atomic.Int64 // held chats sent once a link reached their server
	HoldExpired       atomic.Int64 // held chats whose sender got an error after MaxHoldAge
	HoldOverflow      atomic.Int64 // chats refused: their server's hold queue was full, or holding is off and no link is up
	AuthFailures      atomic.Int64 // logins refused for a missing, invalid or expired token
	ReleaseOverflow   atomic.Int64 // route deletions not queued (queue full); cleared at the next start
	Refused           atomic.Int64 // connections refused at MaxConns
	IdleClosed        atomic.Int64 // connections closed by IdleTimeout
	RateLimited       atomic.Int64 // requests refused by RateLimit
	LinksUp           atomic.Int64
}

// Snapshot returns the counters by name.
func (s *Stats) Snapshot() map[string]int64 {
	return map[string]int64{
		"connections":         s.Connections.Load(),
		"logins":              s.Logins.Load(),
		"kicks":               s.Kicks.Load(),
		"delivered_local":     s.DeliveredLocal.Load(),
		"forwarded":           s.Forwarded.Load(),
		"delivered_from_link": s.DeliveredFromLink.Load(),
		"bounced":             s.Bounced.Load(),
		"errors":              s.Errors.Load(),
		"cache_misses":        s.CacheMisses.Load(),
		"redis_errors":        s.RedisErrors.Load(),
		"busy":                s.Busy.Load(),
		"link_congested":      s.LinkCongested.Load(),
		"kick_undelivered":    s.KickUndelivered.Load(),
		"slow_consumers":      s.SlowConsumers.Load(),
		"line_too_long":       s.LineTooLong.Load(),
		"pending_overflow":    s.PendingOverflow.Load(),
		"dropped_no_sender":   s.DroppedNoSender.Load(),
		"dropped_bad_frame":   s.DroppedBadFrame.Load(),
		"link_auth_failures":  s.LinkAuthFailures.Load(),
		"lost_to_closed":      s.LostToClosed.Load(),
		"link_lost":           s.LinkLost.Load(),
		"rerouted":            s.Rerouted.Load(),
		"reroute_overflow":    s.RerouteOverflow.Load(),
		"held":                s.Held.Load(),
		"held_sent":           s.HeldSent.Load(),
		"hold_expired":        s.HoldExpired.Load(),
		"hold_overflow":       s.HoldOverflow.Load(),
		"auth_failures":       s.AuthFailures.Load(),
		"release_overflow":    s.ReleaseOverflow.Load(),
		"refused":             s.Refused.Load(),
		"idle_closed":         s.IdleClosed.Load(),
		"rate_limited":        s.RateLimited.Load(),
		"links_up":            s.LinksUp.Load(),
	}
}
