package proxy

import "github.com/relaychat/relaychat/internal/metrics"

// RegisterMetrics exports the proxy's counters and link states on reg
// (read when scraped).
func (p *Proxy) RegisterMetrics(reg *metrics.Registry) error {
	st := &p.stats
	descs := append(metrics.ProxyDescs(),
		metrics.Desc{Name: "relaychat_proxy_bad_frames_total", Kind: metrics.Counter, Help: "Lines from servers that did not parse."},
		metrics.Desc{Name: "relaychat_proxy_lost_bytes_total", Kind: metrics.Counter, Help: "Relayed bytes whose destination link closed before they were written (their senders resend them)."},
		metrics.Desc{Name: "relaychat_proxy_link_ups_total", Kind: metrics.Counter, Help: "Links that came up (hello done)."},
		metrics.Desc{Name: "relaychat_proxy_link_downs_total", Kind: metrics.Counter, Help: "Links that went down."},
		metrics.Desc{Name: "relaychat_proxy_link_auth_failures_total", Kind: metrics.Counter, Help: "Servers whose hello proof did not match the secret."},
		metrics.Desc{Name: "relaychat_proxy_servers", Kind: metrics.Gauge, Help: "Servers this proxy knows of (static or discovered)."},
	)
	return reg.Register(descs, func(e *metrics.Emitter) {
		e.Emit(metrics.ProxyLinksName, float64(st.LinksUp.Load()))
		e.Emit(metrics.ProxyFramesName, float64(st.Relayed.Load()))
		e.Emit(metrics.ProxyDroppedFramesName, float64(st.DropUnreachable.Load()), "unreachable")
		e.Emit(metrics.ProxyDroppedFramesName, float64(st.DropCongested.Load()), "congested")
		e.Emit(metrics.ProxyDroppedFramesName, float64(st.DropForeign.Load()), "foreign")
		for id, up := range p.LinkStates() {
			v := 0.0
			if up {
				v = 1
			}
			e.Emit(metrics.LinksName, v, id, "server")
		}
		e.Emit("relaychat_proxy_bad_frames_total", float64(st.BadFrames.Load()))
		e.Emit("relaychat_proxy_lost_bytes_total", float64(st.LostBytes.Load()))
		e.Emit("relaychat_proxy_link_ups_total", float64(st.LinkUps.Load()))
		e.Emit("relaychat_proxy_link_downs_total", float64(st.LinkDowns.Load()))
		e.Emit("relaychat_proxy_link_auth_failures_total", float64(st.LinkAuthFailures.Load()))
		e.Emit("relaychat_proxy_servers", float64(st.ServersKnown.Load()))
	})
}
