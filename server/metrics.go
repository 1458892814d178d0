package server

import "github.com/relaychat/relaychat/internal/metrics"

// hists are the latency histograms; nil (not monitored) is fine: Observe
// on a nil histogram does nothing.
type hists struct {
	store, claim, drain *metrics.Histogram
}

// RegisterMetrics exports the server's counters and state on reg: the
// contract's series, one series per counter of Stats, the links and what
// each stream holds, and the latency histograms. Counters are read when
// scraped; the hot path only adds to atomics. Call it before Start.
func (s *Server) RegisterMetrics(reg *metrics.Registry) error {
	ops, err := reg.NewHistogramVec(metrics.RedisOpHistogram())
	if err != nil {
		return err
	}
	drain, err := reg.NewHistogram(metrics.MailboxDrainHistogram())
	if err != nil {
		return err
	}
	s.hist = hists{store: ops.With("store"), claim: ops.With("claim"), drain: drain}
	st := &s.stats
	descs := metrics.ServerDescs()
	extra := st.counters()
	for _, c := range extra {
		d := metrics.Desc{Name: "relaychat_" + c.name + "_total", Kind: metrics.Counter, Help: c.help}
		if c.gauge {
			d = metrics.Desc{Name: "relaychat_" + c.name, Kind: metrics.Gauge, Help: c.help}
		}
		if d.Name == metrics.LoginsName || d.Name == metrics.KicksName {
			continue // in ServerDescs already
		}
		descs = append(descs, d)
	}
	descs = append(descs, retryDescs...)
	return reg.Register(descs, func(e *metrics.Emitter) {
		e.Emit(metrics.ConnectionsName, float64(st.Connections.Load()))
		e.Emit(metrics.SessionsName, float64(st.Sessions.Load()))
		e.Emit(metrics.ChatsReceivedName, float64(st.ChatsReceived.Load()))
		e.Emit(metrics.ChatsDeliveredName, float64(st.Delivered()))
		e.Emit(metrics.ChatsStoredName, float64(st.Stored.Load()))
		for reason, n := range st.ChatErrors() {
			e.Emit(metrics.ChatErrorsName, float64(n), reason)
		}
		for _, lk := range s.Links() {
			e.Emit(metrics.LinksName, 1, lk.Peer, lk.Kind)
		}
		for dst, ss := range s.Unacked() {
			e.Emit(metrics.StreamUnackedChatsName, float64(ss.Frames), dst)
			e.Emit(metrics.StreamUnackedBytesName, float64(ss.Bytes), dst)
			e.Emit(metrics.StreamResentName, float64(ss.Resent), dst)
		}
		e.Emit(metrics.MailboxDroppedName, float64(st.MailboxExpired.Load()), "ttl")
		rs := s.opt.Router.RetryStats()
		e.Emit(retryDescs[0].Name, float64(rs.Pending))
		e.Emit(retryDescs[1].Name, float64(rs.Queued))
		e.Emit(retryDescs[2].Name, float64(rs.Retries))
		e.Emit(retryDescs[3].Name, float64(rs.Recovered))
		e.Emit(retryDescs[4].Name, float64(rs.GivenUp))
		e.Emit(retryDescs[5].Name, float64(rs.Failed))
		e.Emit(metrics.RedisErrorsName, float64(st.RedisErrors.Load()))
		e.Emit(metrics.SlowConsumersName, float64(st.SlowConsumers.Load()))
		e.Emit(metrics.KicksName, float64(st.Kicks.Load()))
		e.Emit(metrics.LoginsName, float64(st.Logins.Load()))
		for _, c := range extra {
			name := "relaychat_" + c.name + "_total"
			if c.gauge {
				name = "relaychat_" + c.name
			}
			if name == metrics.LoginsName || name == metrics.KicksName {
				continue
			}
			e.Emit(name, float64(c.v.Load()))
		}
	})
}

// retryDescs are the series of the route retry queue (route.RetryStats),
// in the order RegisterMetrics emits them.
var retryDescs = []metrics.Desc{
	{Name: "relaychat_redis_retry_pending", Kind: metrics.Gauge, Help: "Route writes (releases, re-assertions) waiting to be retried after a Redis error."},
	{Name: "relaychat_redis_retry_queued_total", Kind: metrics.Counter, Help: "Route writes handed to the retry queue after a failed attempt."},
	{Name: "relaychat_redis_retries_total", Kind: metrics.Counter, Help: "Attempts the retry queue made (each may cover many routes)."},
	{Name: "relaychat_redis_retry_recovered_total", Kind: metrics.Counter, Help: "Route writes the retry queue completed."},
	{Name: "relaychat_redis_retry_given_up_total", Kind: metrics.Counter, Help: "Route writes given up (queue full, or shutdown out of time): left for the next start or the dead-server sweep."},
	{Name: "relaychat_redis_retry_failed_total", Kind: metrics.Counter, Help: "Route writes dropped on a Redis error retrying cannot cure."},
}
