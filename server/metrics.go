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
