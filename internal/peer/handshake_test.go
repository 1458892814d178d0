package peer

import (
	"bytes"
	"errors"
	"testing"
)

func run(t *testing.T, ds, as []byte, d, a Identity) (dh, ah *Handshake, err error) {
	t.Helper()
	dh, first, err := NewDialer(ds, d)
	if err != nil {
		t.Fatal(err)
	}
	ah, err = NewAcceptor(as, a)
	if err != nil {
		t.Fatal(err)
	}
	answer, done, err := ah.Feed(bytes.TrimSuffix(first, []byte("\n")))
	if err != nil || done {
		return dh, ah, err
	}
	verify, done, err := dh.Feed(bytes.TrimSuffix(answer, []byte("\n")))
	if err != nil || !done {
		return dh, ah, err
	}
	_, done, err = ah.Feed(bytes.TrimSuffix(verify, []byte("\n")))
	if err == nil && !done {
		t.Fatal("acceptor not done after a good proof")
	}
	return dh, ah, err
}

func TestHandshake(t *testing.T) {
	d := Identity{Role: RoleProxy, ID: "p1", Epoch: 0}
	a := Identity{Role: RoleServer, ID: "s1", Epoch: 0x18a3}
	dh, ah, err := run(t, []byte("k"), []byte("k"), d, a)
	if err != nil || !dh.Done() || !ah.Done() {
		t.Fatalf("same secret: %v", err)
	}
	if dh.Remote() != a || ah.Remote() != d {
		t.Fatalf("remotes %+v %+v", dh.Remote(), ah.Remote())
	}
	if _, _, err := run(t, []byte("k"), []byte("other"), d, a); !errors.Is(err, ErrBadProof) {
		t.Fatalf("different secrets: %v, want ErrBadProof", err)
	}
}

// A proof seen on one connection is worthless on another (fresh nonces),
// and the acceptor's proof cannot be reflected as the dialer's.
func TestHandshakeNoReplayNoReflection(t *testing.T) {
	d := Identity{Role: RoleServer, ID: "s1", Epoch: 1}
	a := Identity{Role: RoleServer, ID: "s2", Epoch: 2}
	dh, first, _ := NewDialer([]byte("k"), d)
	ah, _ := NewAcceptor([]byte("k"), a)
	answer, _, _ := ah.Feed(bytes.TrimSuffix(first, []byte("\n")))
	verify, _, _ := dh.Feed(bytes.TrimSuffix(answer, []byte("\n")))

	// An attacker without the secret replays the old hello and proof.
	ah2, _ := NewAcceptor([]byte("k"), a)
	if _, _, err := ah2.Feed(bytes.TrimSuffix(first, []byte("\n"))); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ah2.Feed(bytes.TrimSuffix(verify, []byte("\n"))); !errors.Is(err, ErrBadProof) {
		t.Fatalf("replayed proof: %v", err)
	}
	// Reflect the acceptor's own proof back.
	ah3, _ := NewAcceptor([]byte("k"), a)
	ans3, _, _ := ah3.Feed(bytes.TrimSuffix(first, []byte("\n")))
	f := bytes.Fields(bytes.TrimSuffix(ans3, []byte("\n")))
	if _, _, err := ah3.Feed(append([]byte("V "), f[len(f)-1]...)); !errors.Is(err, ErrBadProof) {
		t.Fatalf("reflected proof: %v", err)
	}
	// The old forged hello without proof of the v1 protocol.
	ah4, _ := NewAcceptor([]byte("k"), a)
	if _, _, err := ah4.Feed([]byte("H proxy evil -")); !errors.Is(err, ErrBadHello) {
		t.Fatalf("v1 hello: %v", err)
	}
}

func FuzzHello(f *testing.F) {
	f.Add([]byte("H proxy p1 0 AAAAAAAAAAAAAAAAAAAAAA"))
	f.Add([]byte("H server s1 18a3 AAAAAAAAAAAAAAAAAAAAAA proof"))
	f.Add([]byte("V abc"))
	f.Fuzz(func(t *testing.T, line []byte) {
		ah, _ := NewAcceptor([]byte("k"), Identity{Role: RoleServer, ID: "s", Epoch: 1})
		out, done, err := ah.Feed(line)
		if done || (err == nil && len(out) == 0) {
			t.Fatalf("acceptor done=%v out=%q err=%v after one line %q", done, out, err, line)
		}
		dh, _, _ := NewDialer([]byte("k"), Identity{Role: RoleProxy, ID: "p", Epoch: 0})
		if _, done, err := dh.Feed(line); done || err == nil {
			t.Fatalf("dialer accepted %q without the secret", line)
		}
	})
}
