package route

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// Offline mailboxes: one Redis list per user (MailboxKey), oldest first,
// each entry "<ts ms> <delivery JSON>". Everything that touches a mailbox
// is a script over the user's route and mailbox keys (one hash slot), so
// "is the user online?" and "append" are one atomic step.
//
// Who removes entries, and when:
//   - the recipient's drain (ReadMailbox, then RemoveMailbox once the chats
//     were written to the connection): only while the user is online, and
//     only one session at a time (a new login waits for the kick of the
//     older session to finish);
//   - retention (entries older than the TTL): StoreChat and Sweep trim
//     only while the user has no live route, so they never race a drain;
//     ReadMailbox trims at the start of a drain. Every trimmed entry is
//     counted in the results so the caller can count and log it.

// ErrBadEntry is wrapped by errors about a mailbox entry this package did
// not write.
var ErrBadEntry = errors.New("malformed mailbox entry")

// maxTrim bounds the entries one script call removes for retention.
const maxTrim = 1000

// StoreOutcome is what StoreChats did with one chat.
type StoreOutcome int

const (
	// Stored: appended to the mailbox.
	Stored StoreOutcome = iota
	// Online: not stored, the user has a live route (StoreResult.Route).
	Online
	// Full: not stored, the mailbox holds Max entries.
	Full
)

// StoreReq is one chat for StoreChats.
type StoreReq struct {
	Name string
	// Line is the recipient's delivery line (JSON, no newline) and TS its
	// receive time (unix ms), which retention is measured from.
	Line []byte
	TS   int64
	// Here, when set, is a server id whose routes count as offline: the
	// server storing the chat knows the user has no session there (a route
	// naming it is stale, or a login there will read the mailbox after
	// this store). "" means every route counts.
	Here string
	// Requeue stores beyond Max, and trims nothing: the chat was already
	// handed to a session that closed (or was kicked) before its client got
	// it, and goes back where it would have waited. The route is checked as
	// for any store (Here applies): if the user is online elsewhere, the
	// answer is Online.
	Requeue bool
}

// StoreResult is the outcome of one StoreReq.
type StoreResult struct {
	Outcome StoreOutcome
	// Route is, for Online, where the user is; for Stored, the route the
	// store counted as offline because it named StoreReq.Here (zero when
	// the user had none): that server may hold a live session that should
	// be told to read its mailbox.
	Route   Route
	Expired int // entries dropped by retention in the same step
	Err     error
}

// storeScript: KEYS route, mbox; ARGV here ("<id> " or ""), entry, max,
// ttl ms, cutoff ms, requeue ("1"). Returns {0, expired, route} stored,
// {1, route} online, {2, expired} full; route is the route the store found
// and counted as offline ("" when none).
var storeScript = newScript(`
local requeue = ARGV[6] == "1"
local expired = 0
local r = redis.call("GET", KEYS[1])
if r and (ARGV[1] == "" or string.sub(r, 1, #ARGV[1]) ~= ARGV[1]) then return {1, r} end
if not requeue then
  local cutoff = tonumber(ARGV[5])
  while expired < ` + strconv.Itoa(maxTrim) + ` do
    local head = redis.call("LINDEX", KEYS[2], 0)
    if not head then break end
    local ts = tonumber(string.match(head, "^(%d+) "))
    if ts == nil or ts >= cutoff then break end
    redis.call("LPOP", KEYS[2])
    expired = expired + 1
  end
  if redis.call("LLEN", KEYS[2]) >= tonumber(ARGV[3]) then return {2, expired} end
end
redis.call("RPUSH", KEYS[2], ARGV[2])
redis.call("PEXPIRE", KEYS[2], ARGV[4])
return {0, expired, r or ""}`)

// readScript: KEYS mbox; ARGV n, cutoff ms. Trims expired entries at the
// head, then returns {expired, entry...} (at most n entries).
var readScript = newScript(`
local cutoff = tonumber(ARGV[2])
local expired = 0
while expired < ` + strconv.Itoa(maxTrim) + ` do
  local head = redis.call("LINDEX", KEYS[1], 0)
  if not head then break end
  local ts = tonumber(string.match(head, "^(%d+) "))
  if ts == nil or ts >= cutoff then break end
  redis.call("LPOP", KEYS[1])
  expired = expired + 1
end
local out = redis.call("LRANGE", KEYS[1], 0, tonumber(ARGV[1]) - 1)
table.insert(out, 1, expired)
return out`)

// removeScript: KEYS mbox; ARGV n, first entry. Removes the first n
// entries only if the head is still the entry the drain read first.
var removeScript = newScript(`
if redis.call("LINDEX", KEYS[1], 0) ~= ARGV[2] then return 0 end
redis.call("LTRIM", KEYS[1], tonumber(ARGV[1]), -1)
return 1`)

// sweepScript: KEYS route, mbox; ARGV cutoff ms. Trims expired entries of
// an offline user's mailbox; -1 when the user is online.
var sweepScript = newScript(`
if redis.call("EXISTS", KEYS[1]) == 1 then return -1 end
local cutoff = tonumber(ARGV[1])
local expired = 0
while expired < ` + strconv.Itoa(maxTrim) + ` do
  local head = redis.call("LINDEX", KEYS[2], 0)
  if not head then break end
  local ts = tonumber(string.match(head, "^(%d+) "))
  if ts == nil or ts >= cutoff then break end
  redis.call("LPOP", KEYS[2])
  expired = expired + 1
end
return expired`)

func mailEntry(ts int64, line []byte) string {
	b := make([]byte, 0, 20+len(line))
	b = strconv.AppendInt(b, ts, 10)
	b = append(b, ' ')
	b = append(b, line...)
	return string(b)
}

// MailEntry is one stored chat.
type MailEntry struct {
	TS   int64
	Line string // the delivery JSON, no newline
	raw  string
}

func parseEntry(v string) (MailEntry, error) {
	ts, line, ok := strings.Cut(v, " ")
	n, err := strconv.ParseInt(ts, 10, 64)
	if !ok || err != nil || line == "" {
		return MailEntry{}, fmt.Errorf("route: %w %.40q", ErrBadEntry, v)
	}
	return MailEntry{TS: n, Line: line, raw: v}, nil
}

// StoreChats stores each chat in its recipient's mailbox in one pipelined
// round trip (Options.Timeout when ctx has no deadline), in order: two
// chats for one user are stored in the order given. max is the mailbox
// bound (ignored by requeues) and ttl the retention. Each chat goes to the
// master of its recipient's slot, so a node that cannot be reached (or a
// transport error) fails only the chats it serves: their results carry
// the error, which may or may not have been applied, and err is the first
// such error; the other results stand. A per-chat Redis error fails only
// that chat's result.
func (s *Store) StoreChats(ctx context.Context, reqs []StoreReq, max int, ttl time.Duration) ([]StoreResult, error) {
	out := make([]StoreResult, len(reqs))
	if len(reqs) == 0 {
		return out, nil
	}
	execs := make([]rueidis.LuaExec, len(reqs))
	cutoff := strconv.FormatInt(time.Now().Add(-ttl).UnixMilli(), 10)
	maxs, ttls := strconv.Itoa(max), strconv.FormatInt(ttl.Milliseconds(), 10)
	for i, r := range reqs {
		here, req := "", "0"
		if r.Here != "" {
			here = r.Here + " "
		}
		if r.Requeue {
			req = "1"
		}
		execs[i] = rueidis.LuaExec{
			Keys: []string{RouteKey(s.prefix, r.Name), MailboxKey(s.prefix, r.Name)},
			Args: []string{here, mailEntry(r.TS, r.Line), maxs, ttls, cutoff, req},
		}
	}
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	var firstErr error
	for i, res := range storeScript.execMulti(ctx, s.client, execs, false) {
		if err := res.NonRedisError(); err != nil {
			out[i].Err = fmt.Errorf("route: store chat for %q: %w", reqs[i].Name, err)
			if firstErr == nil {
				firstErr = fmt.Errorf("route: store chats: %w", err)
			}
			continue
		}
		arr, err := res.ToArray()
		if err != nil || len(arr) < 2 {
			out[i].Err = fmt.Errorf("route: store chat for %q: %v", reqs[i].Name, err)
			continue
		}
		code, _ := arr[0].AsInt64()
		switch code {
		case 1:
			v, _ := arr[1].ToString()
			r, perr := parse(v)
			if perr != nil {
				out[i].Err = fmt.Errorf("route: store chat for %q: %w", reqs[i].Name, perr)
				continue
			}
			out[i] = StoreResult{Outcome: Online, Route: r}
		default:
			n, _ := arr[1].AsInt64()
			out[i] = StoreResult{Outcome: Stored, Expired: int(n)}
			if code == 2 {
				out[i].Outcome = Full
			} else if len(arr) > 2 {
				if v, _ := arr[2].ToString(); v != "" {
					out[i].Route, _ = parse(v)
				}
			}
		}
	}
	return out, firstErr
}

// ReadMailbox returns up to n of name's stored chats, oldest first, after
// dropping those older than ttl (counted in expired). An entry this package
// did not write comes back with an empty Line (the caller counts and skips
// it); RemoveMailbox takes it with the rest.
func (s *Store) ReadMailbox(ctx context.Context, name string, n int, ttl time.Duration) (entries []MailEntry, expired int, err error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	cutoff := strconv.FormatInt(time.Now().Add(-ttl).UnixMilli(), 10)
	arr, err := readScript.exec(ctx, s.client, []string{MailboxKey(s.prefix, name)}, []string{strconv.Itoa(n), cutoff}).ToArray()
	if err != nil {
		return nil, 0, fmt.Errorf("route: read mailbox %q: %w", name, err)
	}
	if len(arr) == 0 {
		return nil, 0, fmt.Errorf("route: read mailbox %q: empty reply", name)
	}
	e, _ := arr[0].AsInt64()
	expired = int(e)
	for _, m := range arr[1:] {
		v, err := m.ToString()
		if err != nil {
			return nil, expired, fmt.Errorf("route: read mailbox %q: %w", name, err)
		}
		me, perr := parseEntry(v)
		if perr != nil {
			me = MailEntry{raw: v} // Line "" marks it unreadable
		}
		entries = append(entries, me)
	}
	return entries, expired, nil
}

// RemoveMailbox deletes the first len(read) entries of name's mailbox once
// they were delivered, provided the mailbox still starts with read[0] (it
// reports false otherwise and removes nothing).
func (s *Store) RemoveMailbox(ctx context.Context, name string, read []MailEntry) (bool, error) {
	if len(read) == 0 {
		return true, nil
	}
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	n, err := removeScript.exec(ctx, s.client, []string{MailboxKey(s.prefix, name)}, []string{strconv.Itoa(len(read)), read[0].raw}).AsInt64()
	if err != nil {
		return false, fmt.Errorf("route: remove from mailbox %q: %w", name, err)
	}
	return n == 1, nil
}

// MailboxLen returns the number of chats stored for name.
func (s *Store) MailboxLen(ctx context.Context, name string) (int, error) {
	ctx, cancel := s.withTimeout(ctx)
	defer cancel()
	n, err := s.client.Do(ctx, s.client.B().Llen().Key(MailboxKey(s.prefix, name)).Build()).AsInt64()
	if err != nil {
		return 0, fmt.Errorf("route: mailbox length %q: %w", name, err)
	}
	return int(n), nil
}

// SweepMailboxes trims, in every offline user's mailbox, the chats older
// than ttl, and returns how many it dropped. Mailbox keys expire ttl after
// their last write, so this must run more often than ttl for every drop to
// be counted. Options.Timeout applies per round trip.
func (s *Store) SweepMailboxes(ctx context.Context, ttl time.Duration) (int, error) {
	cutoff := strconv.FormatInt(time.Now().Add(-ttl).UnixMilli(), 10)
	dropped := 0
	err := s.scan(ctx, MailboxPattern(s.prefix), func(keys []string) error {
		execs := make([]rueidis.LuaExec, 0, len(keys))
		for _, k := range keys {
			name, ok := nameOfUserKey(s.prefix, mboxSegment, k)
			if !ok {
				continue
			}
			execs = append(execs, rueidis.LuaExec{Keys: []string{RouteKey(s.prefix, name), k}, Args: []string{cutoff}})
		}
		if len(execs) == 0 {
			return nil
		}
		bctx, cancel := s.withTimeout(ctx)
		defer cancel()
		for _, res := range sweepScript.execMulti(bctx, s.client, execs, true) {
			if err := res.NonRedisError(); err != nil {
				return fmt.Errorf("route: sweep mailboxes: %w", err)
			}
			if n, err := res.AsInt64(); err == nil && n > 0 {
				dropped += int(n)
			}
		}
		return nil
	})
	return dropped, err
}
