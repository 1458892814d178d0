// Package auth mints and verifies login tokens: HMAC-SHA256 signatures over
// a user name and an expiry time, so that a server started with a secret
// accepts a login only from whoever holds a token for that name.
//
// A token is "<expiry, unix seconds>.<base64url HMAC-SHA256(secret,
// name + "\n" + expiry)>"; it contains no spaces and no JSON-special
// characters.
package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"strconv"
	"strings"
	"time"

	"github.com/relaychat/relaychat/codec"
)

// Errors returned by Verify; their texts are shown to clients (they live in
// codec's one list of client-visible errors).
const (
	ErrMissing = codec.ErrTokenMissing
	ErrInvalid = codec.ErrTokenInvalid
	ErrExpired = codec.ErrTokenExpired
)

// Mint returns a token for name that expires at expires.
func Mint(secret []byte, name string, expires time.Time) string {
	exp := strconv.FormatInt(expires.Unix(), 10)
	return exp + "." + sign(secret, name, exp)
}

func sign(secret []byte, name, exp string) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(name))
	m.Write([]byte{'\n'})
	m.Write([]byte(exp))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// Verify checks that token was minted with secret for name and has not
// expired at now. The signature is compared in constant time.
func Verify(secret []byte, name, token string, now time.Time) error {
	if token == "" {
		return ErrMissing
	}
	exp, sig, ok := strings.Cut(token, ".")
	if !ok {
		return ErrInvalid
	}
	unix, err := strconv.ParseInt(exp, 10, 64)
	if err != nil {
		return ErrInvalid
	}
	if !hmac.Equal([]byte(sig), []byte(sign(secret, name, exp))) {
		return ErrInvalid
	}
	if now.Unix() >= unix {
		return ErrExpired
	}
	return nil
}
