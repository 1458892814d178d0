package auth

import (
	"errors"
	"testing"
	"time"
)

func TestMintVerify(t *testing.T) {
	secret := []byte("s3cret")
	now := time.Unix(1_800_000_000, 0)
	tok := Mint(secret, "alice", now.Add(time.Hour))
	if err := Verify(secret, "alice", tok, now); err != nil {
		t.Fatalf("valid token: %v", err)
	}
	cases := []struct {
		name, token string
		secret      []byte
		at          time.Time
		want        error
	}{
		{"alice", "", secret, now, ErrMissing},
		{"bob", tok, secret, now, ErrInvalid},            // another name
		{"alice", tok, []byte("other"), now, ErrInvalid}, // another secret
		{"alice", tok, secret, now.Add(time.Hour), ErrExpired},
		{"alice", "garbage", secret, now, ErrInvalid},
		{"alice", "1.x", secret, now, ErrInvalid},
		{"alice", "9999999999" + tok[10:], secret, now, ErrInvalid}, // extended expiry
	}
	for _, c := range cases {
		if err := Verify(c.secret, c.name, c.token, c.at); !errors.Is(err, c.want) {
			t.Errorf("Verify(%q, %q) = %v, want %v", c.name, c.token, err, c.want)
		}
	}
}
