package server_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/relaychat/relaychat/codec"
	"github.com/relaychat/relaychat/internal/peer"
	"github.com/relaychat/relaychat/internal/testenv"
	"github.com/relaychat/relaychat/route"
	"github.com/relaychat/relaychat/server"
)

// fakeProxy links to a server's peer port like a proxy (completing the
// authenticated hello with secret) and announces reach.
type fakeProxy struct {
	c     *testenv.Client
	epoch uint64 // the server's, from its hello
}

func dialFakeProxy(t *testing.T, srv *server.Server, secret string, reach ...codec.Reach) *fakeProxy {
	t.Helper()
	c := testenv.Dial(t, srv.PeerAddr())
	hs, first, err := peer.NewDialer([]byte(secret), peer.Identity{Role: peer.RoleProxy, ID: "fake"})
	if err != nil {
		t.Fatal(err)
	}
	c.SendRaw(t, first)
	out, done, err := hs.Feed([]byte(c.ReadLine(t, wait)))
	if err != nil || !done {
		t.Fatalf("hello: done=%v err=%v", done, err)
	}
	c.SendRaw(t, out)
	c.SendRaw(t, codec.AppendReach(nil, reach))
	return &fakeProxy{c: c, epoch: hs.Remote().Epoch}
}

// next returns the next line that is not a ping (pings are answered).
func (p *fakeProxy) next(t *testing.T) string {
	t.Helper()
	for {
		l := p.c.ReadLine(t, wait)
		if l != "P" {
			return l
		}
		p.c.Send(t, "Q")
	}
}

func (p *fakeProxy) frame(t *testing.T, kind byte, src string, stream, seq uint64, hops int, send, recv string, id, payload string) {
	t.Helper()
	f := codec.Frame{Kind: kind, Dst: []byte("s2"), DstEpoch: p.epoch, Src: []byte(src), Stream: stream, Seq: seq, Hops: hops,
		Send: []byte(send), Recv: []byte(recv), Payload: []byte(payload)}
	if id != "" {
		f.ID = []byte(id)
	}
	p.c.SendRaw(t, codec.AppendFrame(nil, &f))
}

// TestStreamReceiver drives s2's peer port as a proxy would: chats for a
// user who moved follow them (the store attempt answers where), chats for
// an offline user are stored, and the stream rules hold: in order only,
// resends dropped (and acknowledged again), gaps dropped, skips honoured,
// frames in another server's name or for an earlier run of s2 dropped,
// the hop limit answered with an error frame to the sender's server.
func TestStreamReceiver(t *testing.T) {
	rd := testenv.Redis(t)
	srv, st := startServer(t, rd.Addr, "sr:", "s2", false, nil)
	ctx := context.Background()
	secret, err := st.ClusterSecret(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p := dialFakeProxy(t, srv, secret, codec.Reach{ID: "s1", Epoch: 1}, codec.Reach{ID: "s3", Epoch: 3})
	if _, _, err := st.Claim(ctx, "bob", route.Route{Server: "s3", Token: "t"}); err != nil {
		t.Fatal(err)
	}
	// A current ts: retention measures a stored chat's age from it.
	payload := fmt.Sprintf(`{"cmd":"chat","send":"alice","recv":"bob","content":"hi","ts":%d}`, time.Now().UnixMilli())
	p.frame(t, codec.KindMsg, "s1", 5, 1, 0, "alice", "bob", `"x"`, payload)
	var skip, moved, ack string
	for skip == "" || moved == "" || ack == "" {
		switch l := p.next(t); l[0] {
		case 'S':
			skip = l
		case 'M':
			moved = l
		case 'A':
			ack = l
		default:
			t.Fatalf("unexpected line %q", l)
		}
	}
	var f codec.Frame
	if err := codec.ParseFrame([]byte(moved), &f); err != nil || string(f.Dst) != "s3" || f.DstEpoch != 3 || f.Hops != 1 ||
		string(f.Send) != "alice" || string(f.Recv) != "bob" || string(f.ID) != `"x"` || string(f.Payload) != payload || f.Seq != 1 {
		t.Fatalf("forwarded frame %q parsed as %+v, %v", moved, f, err)
	}
	if want := fmt.Sprintf("S s3 3 s2 %x 1", f.Stream); skip != want {
		t.Fatalf("skip %q, want %q", skip, want)
	}
	if ack != "A s1 0 s2 5 1" {
		t.Fatalf("ack %q", ack)
	}

	// Offline: stored, then acknowledged.
	p.frame(t, codec.KindMsg, "s1", 5, 2, 0, "alice", "nobody", "", strings.ReplaceAll(payload, "bob", "nobody"))
	if l := p.next(t); l != "A s1 0 s2 5 2" {
		t.Fatalf("after a stored chat: %q", l)
	}
	if n, _ := st.MailboxLen(ctx, "nobody"); n != 1 {
		t.Fatalf("nobody's mailbox holds %d", n)
	}
	// A resend is dropped and acknowledged again; a gap is dropped.
	p.frame(t, codec.KindMsg, "s1", 5, 2, 0, "alice", "nobody", "", strings.ReplaceAll(payload, "bob", "nobody"))
	if l := p.next(t); l != "A s1 0 s2 5 2" {
		t.Fatalf("after a resend: %q", l)
	}
	p.frame(t, codec.KindMsg, "s1", 5, 9, 0, "alice", "nobody", "", strings.ReplaceAll(payload, "bob", "nobody"))
	// A skip moves the start: frame 9 is then in order.
	p.c.SendRaw(t, codec.AppendSkipFrame(nil, "s2", p.epoch, "s1", 5, 9))
	p.frame(t, codec.KindMsg, "s1", 5, 9, 0, "alice", "nobody", "", strings.ReplaceAll(payload, "bob", "nobody"))
	for l := p.next(t); l != "A s1 0 s2 5 9"; l = p.next(t) {
		if l != "A s1 0 s2 5 8" { // the skip itself settles up to 8
			t.Fatalf("after a skip: %q", l)
		}
	}
	if n, _ := st.MailboxLen(ctx, "nobody"); n != 2 {
		t.Fatalf("nobody's mailbox holds %d, want 2 (the gap frame dropped, its resend stored)", n)
	}
	// In the name of a server the link does not reach; for an earlier run.
	p.frame(t, codec.KindMsg, "s9", 1, 1, 0, "alice", "nobody", "", payload)
	f2 := codec.Frame{Kind: codec.KindMsg, Dst: []byte("s2"), DstEpoch: p.epoch - 1, Src: []byte("s1"), Stream: 5, Seq: 10, Send: []byte("a"), Recv: []byte("nobody"), Payload: []byte(payload)}
	p.c.SendRaw(t, codec.AppendFrame(nil, &f2))
	// Past the hop limit: an error frame for the sender, on s2's stream to s1.
	p.frame(t, codec.KindMsg, "s1", 5, 10, 2, "alice", "bob", "7", payload)
	for {
		l := p.next(t)
		if l[0] == 'S' && strings.HasPrefix(l, "S s1 ") {
			continue
		}
		if l[0] == 'A' {
			continue
		}
		if err := codec.ParseFrame([]byte(l), &f); err != nil || f.Kind != codec.KindError || string(f.Dst) != "s1" || string(f.Recv) != "alice" ||
			string(f.Payload) != `{"cmd":"error","error":"recipient is moving between servers, try again","id":7}` {
			t.Fatalf("at the hop limit: %q", l)
		}
		break
	}
	stats := srv.Stats()
	if stats.StreamDup.Load() != 1 || stats.StreamGap.Load() != 1 || stats.StreamForeign.Load() != 1 || stats.StreamStale.Load() != 1 {
		t.Fatalf("dup %d gap %d foreign %d stale %d, want 1 each", stats.StreamDup.Load(), stats.StreamGap.Load(), stats.StreamForeign.Load(), stats.StreamStale.Load())
	}
}

// TestPeerAuth: without the secret nothing links: old-style hellos, wrong
// proofs and client lines on the peer port are closed and counted; a
// connection that says nothing is closed after the link timeout; past the
// cap of unfinished hellos, connections are refused at once.
func TestPeerAuth(t *testing.T) {
	rd := testenv.Redis(t)
	srv, _ := startServer(t, rd.Addr, "pa:", "s1", false, func(o *server.Options) {
		o.LinkTimeout = 300 * time.Millisecond
		o.MaxPeerPending = 3
	})
	for _, hello := range []string{"H proxy evil -", "H proxy x 0 AAAAAAAAAAAAAAAAAAAAAA", `{"cmd":"login","name":"router"}`} {
		cl := testenv.Dial(t, srv.PeerAddr())
		cl.Send(t, hello)
		lines := cl.ExpectClosed(t, wait)
		if hello == "H proxy x 0 AAAAAAAAAAAAAAAAAAAAAA" {
			// A well-formed hello is answered with the server's proof; the
			// missing (here: never sent) proof closes it at the timeout.
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "H server s1 ") {
				t.Fatalf("%q answered %q", hello, lines)
			}
			continue
		}
		if len(lines) != 0 {
			t.Fatalf("%q answered %q", hello, lines)
		}
	}
	// The wrong secret: the proof does not verify.
	hs, first, _ := peer.NewDialer([]byte("wrong"), peer.Identity{Role: peer.RoleProxy, ID: "x"})
	cl := testenv.Dial(t, srv.PeerAddr())
	cl.SendRaw(t, first)
	if _, _, err := hs.Feed([]byte(cl.ReadLine(t, wait))); err == nil {
		t.Fatal("the server's proof verified with the wrong secret")
	}
	cl.Send(t, "V forged")
	cl.ExpectClosed(t, wait)
	if n := srv.Stats().LinkAuthFailures.Load(); n < 3 {
		t.Fatalf("LinkAuthFailures = %d, want at least 3", n)
	}
	// Silent connections: three fill the gate, the fourth is refused.
	var silent []*testenv.Client
	for i := 0; i < 3; i++ {
		silent = append(silent, testenv.Dial(t, srv.PeerAddr()))
	}
	deadline := time.Now().Add(wait)
	for srv.Stats().PeerRefused.Load() == 0 {
		extra := testenv.Dial(t, srv.PeerAddr())
		extra.Close()
		if time.Now().After(deadline) {
			t.Fatal("a fourth unauthenticated connection was not refused")
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
	for _, c := range silent {
		c.ExpectClosed(t, wait)
	}
	if srv.Stats().LinksUp.Load() != 0 {
		t.Fatal("a link came up without the secret")
	}
}
