package route

import (
	"hash/fnv"
	"strconv"
	"strings"
)

// Redis key schema. This table is the only place the layout is declared;
// everything else builds keys through the functions below.
//
//	key (default prefix)     type            value                              written by
//	chat:route:{<name>}      string, no TTL  "<serverID> <token>"               Claim at login; removed by Release,
//	                                                                            ReleaseAll (shutdown), ClearServer (crash)
//	chat:mbox:{<name>}       list, PX ttl    "<ts ms> <delivery JSON>" each     StoreChat / Requeue; read and trimmed
//	                                                                            by the recipient's drain at login
//	chat:alive:<serverID>    string, PX ttl  "<epoch> <beat> <peer address>"    AcquireID, then Heartbeat every period
//	chat:secret              string, no TTL  cluster link secret (hex)          ClusterSecret, SET NX once
//
// {<name>} is a Redis Cluster hash tag: a user's route and mailbox hash to
// the same slot, so one script can read the route and write the mailbox
// atomically. Nothing else needs two keys at once: heartbeats and the
// secret carry no tag and spread over the slots like the users do, and
// SweepDeadServers reads routes and heartbeats in separate steps, in an
// order that makes that safe (sweep.go). On a standalone or
// sentinel-managed Redis the braces are just part of the key. A name that contains '{' or '}' would break the tag (a name
// starting with '}' gives an empty tag), so such names are tagged with a
// hash instead: chat:route:{#<16 hex digits>}<name>.
//
// The prefix ("chat:" by default, Options.Prefix) lets tests and several
// deployments share one Redis. A prefix that itself contains a hash tag
// pins every key to one slot (don't, on a cluster).
const (
	// DefaultPrefix is the key prefix used when Options.Prefix is empty.
	DefaultPrefix = "chat:"

	routeSegment  = "route:"
	mboxSegment   = "mbox:"
	aliveSegment  = "alive:"
	secretSegment = "secret"
)

// userKey returns prefix+segment+ the hash-tagged name.
func userKey(prefix, segment, name string) string {
	if !strings.ContainsAny(name, "{}") {
		return prefix + segment + "{" + name + "}"
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(name))
	var b [16]byte
	hex := strconv.AppendUint(b[:0], h.Sum64(), 16)
	return prefix + segment + "{#" + strings.Repeat("0", 16-len(hex)) + string(hex) + "}" + name
}

// nameOfUserKey inverts userKey for keys under prefix+segment; ok is false
// for any other key.
func nameOfUserKey(prefix, segment, key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, prefix+segment)
	if !ok || len(rest) < 2 || rest[0] != '{' {
		return "", false
	}
	if rest[1] == '#' {
		i := strings.IndexByte(rest, '}')
		if i < 0 {
			return "", false
		}
		return rest[i+1:], true
	}
	if rest[len(rest)-1] != '}' {
		return "", false
	}
	return rest[1 : len(rest)-1], true
}

// RouteKey returns the key holding name's route.
func RouteKey(prefix, name string) string { return userKey(prefix, routeSegment, name) }

// MailboxKey returns the key holding name's offline mailbox.
func MailboxKey(prefix, name string) string { return userKey(prefix, mboxSegment, name) }

// AliveKey returns the heartbeat key of serverID: prefix + "alive:" + serverID.
func AliveKey(prefix, serverID string) string { return prefix + aliveSegment + serverID }

// SecretKey returns the key of the cluster's link secret.
func SecretKey(prefix string) string { return prefix + secretSegment }

// RoutePattern returns the SCAN MATCH pattern covering every route key under
// prefix. Glob metacharacters in prefix are escaped.
func RoutePattern(prefix string) string { return escapeGlob(prefix+routeSegment) + "*" }

// MailboxPattern returns the SCAN MATCH pattern covering every mailbox key.
func MailboxPattern(prefix string) string { return escapeGlob(prefix+mboxSegment) + "*" }

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
