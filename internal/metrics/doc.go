// Package metrics serves a process's monitoring over HTTP: /metrics in the
// Prometheus text format, /healthz (liveness) and /readyz (readiness).
//
// The hot path never calls into Prometheus. A process keeps its plain
// sync/atomic counters and describes them once with Desc values; at each
// scrape a Collect callback reads them and reports each series through an
// Emitter:
//
//	reg := metrics.NewRegistry() // go_* and process_* included
//	err := reg.Register([]metrics.Desc{
//		{Name: "relaychat_connections", Help: "Open client connections.", Kind: metrics.Gauge},
//		{Name: "relaychat_chat_errors_total", Help: "Chats refused, by reason.", Kind: metrics.Counter, Labels: []string{"reason"}},
//	}, func(e *metrics.Emitter) {
//		e.Emit("relaychat_connections", float64(st.Connections.Load()))
//		e.Emit("relaychat_chat_errors_total", float64(st.Busy.Load()), "busy")
//	})
//
// Latencies measured off the hot path (Redis round trips, mailbox drains)
// go into a Histogram, whose Observe allocates nothing and is a no-op on a
// nil *Histogram. New binds the address and serves; Shutdown stops it.
//
// The names the relaychat binaries export are declared in catalog.go; the
// tests in deploy/ check the Grafana dashboard and the alert rules against
// them.
package metrics
