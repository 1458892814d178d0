package server

import (
	"testing"
)

// A chat from another server for a name whose login is in flight here
// waits for that login: the login takes it into its queue before any
// other chat can reach the session; with no login left, it is handed back.
func TestRegistryParksChatsForLoginsInFlight(t *testing.T) {
	r := newRegistry()
	srv := &Server{opt: Options{MaxOutbound: 1 << 20}}
	in := &inStream{}
	mk := func(n int) *chat {
		return &chat{send: "alice", recv: "bob", ts: int64(n), in: in, seq: uint64(n), payload: []byte(`{"cmd":"chat"}`)}
	}

	// No login in flight: the store attempt runs.
	ran, parked := r.ifAbsent("bob", mk(1), func() {})
	if !ran || parked {
		t.Fatalf("no login in flight: ran=%v parked=%v, want the store attempt", ran, parked)
	}

	// Two logins in flight: chats park, in order; a chat without a stream
	// (a local sender's) is not parked.
	r.expect("bob")
	r.expect("bob")
	for n := 2; n <= 4; n++ {
		if ran, parked := r.ifAbsent("bob", mk(n), func() { t.Fatalf("chat %d stored while a login is in flight", n) }); ran || !parked {
			t.Fatalf("chat %d: ran=%v parked=%v, want parked", n, ran, parked)
		}
	}
	if ran, parked := r.ifAbsent("bob", nil, func() {}); !ran || parked {
		t.Fatalf("local chat: ran=%v parked=%v, want the store attempt", ran, parked)
	}

	// The first login registers: it takes the parked chats, in order.
	ss := &session{s: srv}
	ss.phase.Store(phaseWaitKick)
	_, ok, queued := r.putIfNewer(ss, &identity{name: "bob", token: "t1"})
	if !ok || len(queued) != 3 {
		t.Fatalf("putIfNewer: ok=%v queued=%d, want 3 queued", ok, len(queued))
	}
	for i, c := range queued {
		if c.seq != uint64(i+2) || ss.pending.chats[i].ts != int64(i+2) {
			t.Fatalf("queued %d: seq %d ts %d, want %d", i, c.seq, ss.pending.chats[i].ts, i+2)
		}
	}
	noStore := func(chats []*chat) []*chat {
		t.Fatalf("%d chats handed to store attempts", len(chats))
		return nil
	}
	if !r.expecting("bob") {
		t.Fatalf("a login of bob is still in flight, yet not expected")
	}
	r.unexpect("bob", noStore)
	// Registered: no parking, no store attempt (the session takes chats).
	if ran, parked := r.ifAbsent("bob", mk(5), func() {}); ran || parked {
		t.Fatalf("registered: ran=%v parked=%v", ran, parked)
	}
	r.unexpect("bob", noStore)
	if len(r.shards[hashName("bob")%registryShards].parked) != 0 || r.expecting("bob") || r.expected.Load() != 0 {
		t.Fatalf("parking kept after the last login was decided")
	}

	// A login that fails (nothing registers): its parked chats come back.
	r.expect("carol")
	c := &chat{send: "alice", recv: "carol", in: in, seq: 9}
	if _, parked := r.ifAbsent("carol", c, func() {}); !parked {
		t.Fatalf("not parked")
	}
	var stored []*chat
	busy := r.unexpect("carol", func(chats []*chat) []*chat {
		// Called with the shard held: no chat for carol can get past.
		stored = chats
		return chats[1:]
	})
	if len(stored) != 1 || stored[0] != c || len(busy) != 0 {
		t.Fatalf("store attempts for %v (returned %v), want the parked chat", stored, busy)
	}

	// A session that closed before registering refuses them: decided again.
	r.expect("dave")
	d := &chat{send: "alice", recv: "dave", in: in, seq: 10, payload: []byte(`{}`)}
	r.ifAbsent("dave", d, func() {})
	closed := &session{s: srv}
	closed.phase.Store(phaseClosed)
	if _, _, q := r.putIfNewer(closed, &identity{name: "dave", token: "t"}); len(q) != 0 {
		t.Fatalf("closed session took %d chats", len(q))
	}
	stored = nil
	r.unexpect("dave", func(chats []*chat) []*chat { stored = chats; return nil })
	if len(stored) != 1 || stored[0] != d {
		t.Fatalf("a closed session's parked chats: store attempts for %v, want the parked chat", stored)
	}
}
