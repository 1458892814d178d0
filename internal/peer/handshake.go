// Package peer is the link layer shared by message servers and proxies:
// the authenticated hello, liveness (pings and silence timeouts, the
// pre-hello deadline, a cap on unauthenticated connections) and dialing
// with a timeout and capped backoff. It knows nothing of gnet: roles feed
// it lines and hand it dialed connections.
//
// The hello proves knowledge of the cluster secret without sending it: each
// side sends a fresh nonce, and each proves itself with an HMAC-SHA256 of
// the whole exchange under the secret, labelled with its side, so a proof
// can be neither replayed on another connection nor reflected back.
//
//	dialer   -> H <role> <id> <epoch> <nonce>
//	acceptor -> H <role> <id> <epoch> <nonce> <acceptor proof>
//	dialer   -> V <dialer proof>
//
// The acceptor trusts the link only after the dialer's proof, the dialer
// only after the acceptor's; nothing else may be sent or believed before.
package peer

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"

	"github.com/relaychat/relaychat/codec"
)

// Roles.
const (
	RoleServer = "server"
	RoleProxy  = "proxy"
)

// Errors of the hello.
var (
	ErrBadHello  = errors.New("peer: malformed hello")
	ErrBadProof  = errors.New("peer: hello proof does not match the secret")
	ErrNoSecret  = errors.New("peer: empty secret")
	ErrHelloDone = errors.New("peer: hello already finished")
)

// Identity is who one end of a link is.
type Identity struct {
	Role  string // RoleServer or RoleProxy
	ID    string // codec.ValidServerID
	Epoch uint64 // the run of the process (0 for proxies that don't care)
}

func (id Identity) valid() bool {
	return (id.Role == RoleServer || id.Role == RoleProxy) && codec.ValidServerID(id.ID)
}

const nonceLen = 16

// Handshake is one side of a hello. Not safe for concurrent use: it lives
// on the link's event loop.
type Handshake struct {
	secret   []byte
	self     Identity
	dialer   bool
	nonce    [nonceLen]byte
	helloD   []byte // the dialer's hello line, as sent
	helloA   []byte // the acceptor's hello line, without its proof
	remote   Identity
	finished bool
}

// NewDialer starts the dialing side and returns it with the first line to
// send.
func NewDialer(secret []byte, self Identity) (*Handshake, []byte, error) {
	h, err := newHandshake(secret, self, true)
	if err != nil {
		return nil, nil, err
	}
	h.helloD = appendHello(nil, self, h.nonce[:])
	return h, append(append([]byte(nil), h.helloD...), '\n'), nil
}

// NewAcceptor starts the accepting side; it sends nothing until the
// dialer's hello arrives.
func NewAcceptor(secret []byte, self Identity) (*Handshake, error) {
	return newHandshake(secret, self, false)
}

func newHandshake(secret []byte, self Identity, dialer bool) (*Handshake, error) {
	if len(secret) == 0 {
		return nil, ErrNoSecret
	}
	if !self.valid() {
		return nil, fmt.Errorf("peer: invalid identity %+v", self)
	}
	h := &Handshake{secret: secret, self: self, dialer: dialer}
	if _, err := rand.Read(h.nonce[:]); err != nil {
		return nil, err
	}
	return h, nil
}

// Done reports whether the hello finished and the remote end proved it
// knows the secret.
func (h *Handshake) Done() bool { return h.finished }

// Remote is the authenticated identity of the other end, valid once Done.
func (h *Handshake) Remote() Identity { return h.remote }

// Feed takes one line from the other end (without "\n") and returns what to
// send back, if anything. An error means: close the link, trust nothing.
// done turns true once the other end is authenticated; the dialer's out
// then holds its proof, which must still be sent.
func (h *Handshake) Feed(line []byte) (out []byte, done bool, err error) {
	if h.finished {
		return nil, true, ErrHelloDone
	}
	if h.dialer {
		return h.feedDialer(line)
	}
	return h.feedAcceptor(line)
}

func (h *Handshake) feedAcceptor(line []byte) ([]byte, bool, error) {
	if h.helloD == nil {
		remote, _, proof, err := parseHello(line)
		if err != nil || proof != nil {
			return nil, false, ErrBadHello
		}
		h.remote = remote
		h.helloD = append([]byte(nil), line...)
		h.helloA = appendHello(nil, h.self, h.nonce[:])
		out := append([]byte(nil), h.helloA...)
		out = append(out, ' ')
		out = append(out, h.proof("acceptor")...)
		return append(out, '\n'), false, nil
	}
	if len(line) < 3 || line[0] != codec.KindVerify || line[1] != ' ' {
		return nil, false, ErrBadHello
	}
	if !hmac.Equal(line[2:], h.proof("dialer")) {
		return nil, false, ErrBadProof
	}
	h.finished = true
	return nil, true, nil
}

func (h *Handshake) feedDialer(line []byte) ([]byte, bool, error) {
	remote, body, proof, err := parseHello(line)
	if err != nil || proof == nil {
		return nil, false, ErrBadHello
	}
	h.remote = remote
	h.helloA = append([]byte(nil), body...)
	if !hmac.Equal(proof, h.proof("acceptor")) {
		return nil, false, ErrBadProof
	}
	h.finished = true
	out := []byte{codec.KindVerify, ' '}
	out = append(out, h.proof("dialer")...)
	return append(out, '\n'), true, nil
}

// proof is base64url(HMAC-SHA256(secret, label | dialer hello | acceptor hello)).
func (h *Handshake) proof(side string) []byte {
	m := hmac.New(sha256.New, h.secret)
	m.Write([]byte("relaychat link v2 " + side + "\n"))
	m.Write(h.helloD)
	m.Write([]byte{'\n'})
	m.Write(h.helloA)
	sum := m.Sum(nil)
	out := make([]byte, base64.RawURLEncoding.EncodedLen(len(sum)))
	base64.RawURLEncoding.Encode(out, sum)
	return out
}

func appendHello(dst []byte, id Identity, nonce []byte) []byte {
	dst = append(dst, codec.KindHello, ' ')
	dst = append(dst, id.Role...)
	dst = append(dst, ' ')
	dst = append(dst, id.ID...)
	dst = append(dst, ' ')
	dst = strconv.AppendUint(dst, id.Epoch, 16)
	dst = append(dst, ' ')
	enc := make([]byte, base64.RawURLEncoding.EncodedLen(len(nonce)))
	base64.RawURLEncoding.Encode(enc, nonce)
	return append(dst, enc...)
}

// parseHello splits "H role id epoch nonce [proof]"; body is the line
// without the proof.
func parseHello(line []byte) (id Identity, body, proof []byte, err error) {
	if len(line) < 2 || line[0] != codec.KindHello || line[1] != ' ' || len(line) > 512 {
		return Identity{}, nil, nil, ErrBadHello
	}
	f := bytes.Split(line[2:], []byte{' '})
	if len(f) != 4 && len(f) != 5 {
		return Identity{}, nil, nil, ErrBadHello
	}
	epoch, perr := strconv.ParseUint(string(f[2]), 16, 64)
	nonce, nerr := base64.RawURLEncoding.DecodeString(string(f[3]))
	id = Identity{Role: string(f[0]), ID: string(f[1]), Epoch: epoch}
	if perr != nil || nerr != nil || len(nonce) != nonceLen || !id.valid() || len(f[2]) == 0 || f[2][0] == '+' {
		return Identity{}, nil, nil, ErrBadHello
	}
	body = line
	if len(f) == 5 {
		proof = f[4]
		body = line[:len(line)-len(proof)-1]
	}
	return id, body, proof, nil
}
