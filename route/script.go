package route

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"strings"

	"github.com/redis/rueidis"
)

// script is a Lua script run on the master of its keys' slot only.
//
// rueidis' Lua.ExecMulti is not used: before a batch it SCRIPT LOADs on
// every node the client knows, replicas included, and fails the whole
// batch if any one of them does not answer (rueidis v1.0.79 lua.go), so
// one dead replica anywhere failed every batched release. execMulti
// instead sends EVALSHA for each call and re-sends only the calls refused
// with NOSCRIPT as EVAL (which also caches the script on that node).
type script struct {
	src string
	sha string
	lua *rueidis.Lua // for single calls: EVALSHA, then EVAL on NOSCRIPT
}

func newScript(src string) *script {
	sum := sha1.Sum([]byte(src))
	return &script{src: src, sha: hex.EncodeToString(sum[:]), lua: rueidis.NewLuaScript(src)}
}

// exec runs the script once on the master of keys' slot.
func (sc *script) exec(ctx context.Context, c rueidis.Client, keys, args []string) rueidis.RedisResult {
	return sc.lua.Exec(ctx, c, keys, args)
}

// execMulti runs the script once per exec, pipelined (rueidis groups the
// calls by node), and returns one result per exec. A node that cannot be
// reached fails only the calls for its slots.
//
// idempotent calls are sent as EVAL (the script's text each time) and
// marked retryable, so rueidis re-sends a call lost to a broken connection
// until ctx expires. They cannot use EVALSHA: a NOSCRIPT refusal needs a
// second round trip, and a dead node's retries use up ctx before it. The
// scripts sent this way are short.
//
// Other calls are sent as EVALSHA, and only those refused with NOSCRIPT
// (the node has not run the script since it started, e.g. it was just
// promoted) again as EVAL, which also caches the script there. Calls for
// one key run in the order given, except when such a refusal comes in the
// middle of a batch: the refused calls then run after the rest.
func (sc *script) execMulti(ctx context.Context, c rueidis.Client, execs []rueidis.LuaExec, idempotent bool) []rueidis.RedisResult {
	if len(execs) == 0 {
		return nil
	}
	cmds := make(rueidis.Commands, len(execs))
	if idempotent {
		for i, e := range execs {
			cmds[i] = c.B().Eval().Script(sc.src).Numkeys(int64(len(e.Keys))).Key(e.Keys...).Arg(e.Args...).Build().ToRetryable()
		}
		return c.DoMulti(ctx, cmds...)
	}
	for i, e := range execs {
		cmds[i] = c.B().Evalsha().Sha1(sc.sha).Numkeys(int64(len(e.Keys))).Key(e.Keys...).Arg(e.Args...).Build()
	}
	res := c.DoMulti(ctx, cmds...)
	var again []int
	for i, r := range res {
		if re, ok := rueidis.IsRedisErr(r.Error()); ok && re.IsNoScript() {
			again = append(again, i)
		}
	}
	if len(again) == 0 {
		return res
	}
	cmds = make(rueidis.Commands, len(again))
	for j, i := range again {
		e := execs[i]
		cmds[j] = c.B().Eval().Script(sc.src).Numkeys(int64(len(e.Keys))).Key(e.Keys...).Arg(e.Args...).Build()
	}
	for j, r := range c.DoMulti(ctx, cmds...) {
		res[again[j]] = r
	}
	return res
}

// transientPrefixes are the Redis error replies that say "not now" rather
// than "never": the slot is moving, the cluster or the node is not ready,
// or a failed-over master was asked to write.
var transientPrefixes = []string{"CLUSTERDOWN", "TRYAGAIN", "LOADING", "READONLY", "MASTERDOWN", "MOVED", "ASK", "NOREPLICAS", "BUSY", "NOSCRIPT"}

// transient reports whether a call that failed with err may succeed if
// sent again later: every transport error, timeout or cancellation, and
// the Redis replies in transientPrefixes. A Nil reply is not an error.
func transient(err error) bool {
	if err == nil || rueidis.IsRedisNil(err) {
		return false
	}
	re, ok := rueidis.IsRedisErr(err)
	if !ok {
		return true
	}
	msg := re.Error()
	for _, p := range transientPrefixes {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}
