package route

import "strings"

// Redis key schema. This table is the only place the layout is declared;
// everything else builds keys through the functions below.
//
//	key (default prefix)    type             value                  written by
//	chat:route:<name>       string, no TTL   "<serverID> <token>"   Claim at login; removed by Release,
//	                                                                ReleaseAll (shutdown), ClearServer (crash)
//	chat:alive:<serverID>   string, PX ttl   "<peer address>"       Heartbeat, every second, TTL a few seconds
//
// <name> and <serverID> are used verbatim (no escaping): a name may contain any
// byte, but a server ID and a token may not contain whitespace, because the
// route value separates them with one space (see Route.Encode).
// The prefix ("chat:" by default, Options.Prefix) lets tests and several
// deployments share one Redis.
const (
	// DefaultPrefix is the key prefix used when Options.Prefix is empty.
	DefaultPrefix = "chat:"

	routeSegment = "route:"
	aliveSegment = "alive:"
)

// RouteKey returns the key holding name's route: prefix + "route:" + name.
func RouteKey(prefix, name string) string { return prefix + routeSegment + name }

// AliveKey returns the heartbeat key of serverID: prefix + "alive:" + serverID.
func AliveKey(prefix, serverID string) string { return prefix + aliveSegment + serverID }

// RoutePattern returns the SCAN MATCH pattern covering every route key under
// prefix. Glob metacharacters in prefix are escaped.
func RoutePattern(prefix string) string { return escapeGlob(prefix+routeSegment) + "*" }

// AlivePattern returns the SCAN MATCH pattern covering every heartbeat key
// under prefix. Glob metacharacters in prefix are escaped.
func AlivePattern(prefix string) string { return escapeGlob(prefix+aliveSegment) + "*" }

// escapeGlob backslash-escapes the characters special to Redis' stringmatch
// (*, ?, [, ], \) so a prefix matches literally.
func escapeGlob(s string) string {
	if !strings.ContainsAny(s, `*?[]\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
