package metrics

// Names of the relaychat_* metrics the binaries export: the contract's
// (shared/CONTRACT.md, "Monitoring") and the operations set. They are
// declared once here so that the binaries, the alert rules and the Grafana
// dashboard in deploy/ agree; deploy's tests fail when a rule or a panel
// names a metric that is not in this list. Extend, never rename: the
// names are part of the monitoring contract.
const (
	// Both roles.
	ReadyName = "relaychat_ready" // gauge 1/0; see Options.ReadyMetric
	LinksName = "relaychat_links" // gauge 1/0 per link {peer,kind}

	// Message server.
	ConnectionsName         = "relaychat_connections"
	SessionsName            = "relaychat_sessions"
	ChatsReceivedName       = "relaychat_chats_received_total"
	ChatsDeliveredName      = "relaychat_chats_delivered_total"
	ChatsStoredName         = "relaychat_chats_stored_total"
	ChatErrorsName          = "relaychat_chat_errors_total"
	StreamUnackedChatsName  = "relaychat_stream_unacked_chats"
	StreamUnackedBytesName  = "relaychat_stream_unacked_bytes"
	StreamResentName        = "relaychat_stream_resent_total"
	MailboxDroppedName      = "relaychat_mailbox_dropped_total"
	MailboxDrainSecondsName = "relaychat_mailbox_drain_seconds"
	RedisOpSecondsName      = "relaychat_redis_op_seconds"
	RedisErrorsName         = "relaychat_redis_errors_total"
	SlowConsumersName       = "relaychat_slow_consumers_total"
	KicksName               = "relaychat_kicks_total"
	LoginsName              = "relaychat_logins_total"

	// Forwarding proxy.
	ProxyLinksName         = "relaychat_proxy_links"
	ProxyFramesName        = "relaychat_proxy_frames_total"
	ProxyDroppedFramesName = "relaychat_proxy_dropped_frames_total"
)

// linksDesc is shared by both roles.
var linksDesc = Desc{Name: LinksName, Kind: Gauge, Labels: []string{"peer", "kind"},
	Help: "1 while the link to peer is up, else 0; kind is the peer's role (proxy or server)."}

// ServerDescs returns the descriptors of the counters and gauges a message
// server exports (relaychat_ready is exported by the Server through
// Options.ReadyMetric; the histograms are RedisOpHistogram and
// MailboxDrainHistogram). Each call returns a fresh slice.
func ServerDescs() []Desc {
	return []Desc{
		{Name: ConnectionsName, Kind: Gauge, Help: "Open client connections, TCP and WebSocket."},
		{Name: SessionsName, Kind: Gauge, Help: "Logged-in sessions."},
		{Name: ChatsReceivedName, Kind: Counter, Help: "Chats accepted from clients (acked, or would be acked had they carried an id)."},
		{Name: ChatsDeliveredName, Kind: Counter, Help: "Chats written to a local recipient, live or from the mailbox."},
		{Name: ChatsStoredName, Kind: Counter, Help: "Chats stored in an offline recipient's mailbox."},
		{Name: ChatErrorsName, Kind: Counter, Labels: []string{"reason"}, Help: "Chats answered with an error, by reason."},
		linksDesc,
		{Name: StreamUnackedChatsName, Kind: Gauge, Labels: []string{"dst"}, Help: "Chats sent towards server dst and not yet acknowledged by it (held)."},
		{Name: StreamUnackedBytesName, Kind: Gauge, Labels: []string{"dst"}, Help: "Bytes of chats sent towards server dst and not yet acknowledged by it (held)."},
		{Name: StreamResentName, Kind: Counter, Labels: []string{"dst"}, Help: "Chats sent again towards server dst after a link was lost."},
		{Name: MailboxDroppedName, Kind: Counter, Labels: []string{"reason"}, Help: "Stored chats dropped from mailboxes by retention, by reason."},
		{Name: RedisErrorsName, Kind: Counter, Help: "Redis operations that failed or timed out."},
		{Name: SlowConsumersName, Kind: Counter, Help: "Clients disconnected for not reading fast enough."},
		{Name: KicksName, Kind: Counter, Help: "Sessions replaced by a newer login of the same name."},
		{Name: LoginsName, Kind: Counter, Help: "Successful logins."},
	}
}

// ProxyDescs returns the descriptors of the counters and gauges a
// forwarding proxy exports. Each call returns a fresh slice.
func ProxyDescs() []Desc {
	return []Desc{
		{Name: ProxyLinksName, Kind: Gauge, Help: "Links to message servers that are up."},
		{Name: ProxyFramesName, Kind: Counter, Help: "Frames relayed to their destination server."},
		{Name: ProxyDroppedFramesName, Kind: Counter, Labels: []string{"reason"}, Help: "Frames not relayed, by reason."},
		linksDesc,
	}
}

// RedisOpHistogram describes relaychat_redis_op_seconds{op}.
func RedisOpHistogram() HistogramDesc {
	return HistogramDesc{Name: RedisOpSecondsName, Labels: []string{"op"},
		Help: "Latency of Redis operations (round trips that left the process), by operation."}
}

// MailboxDrainHistogram describes relaychat_mailbox_drain_seconds.
func MailboxDrainHistogram() HistogramDesc {
	return HistogramDesc{Name: MailboxDrainSecondsName,
		Help:    "Time from a login to its mailbox having been written out.",
		Buckets: []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}}
}

// CatalogNames returns every relaychat_* family name declared above, and
// the histograms among them (whose series carry _bucket, _sum and _count).
func CatalogNames() (names []string, histograms []string) {
	for _, d := range append(ServerDescs(), ProxyDescs()...) {
		names = append(names, d.Name)
	}
	histograms = []string{RedisOpSecondsName, MailboxDrainSecondsName}
	names = append(names, ReadyName)
	names = append(names, histograms...)
	return dedup(names), histograms
}

func dedup(in []string) []string {
	seen := make(map[string]bool, len(in))
	out := in[:0]
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
