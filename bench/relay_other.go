//go:build !linux

package bench

import "errors"

// Relay is the floor relay; it needs Linux (epoll).
type Relay struct{}

// StartRelay fails: the relay needs Linux.
func StartRelay([]string, int) (*Relay, error) {
	return nil, errors.New("bench: the relay needs Linux")
}

// Addrs returns nothing.
func (r *Relay) Addrs() []string { return nil }

// Stats returns zeros.
func (r *Relay) Stats() (delivered, refused int64) { return 0, 0 }

// Close does nothing.
func (r *Relay) Close() error { return nil }
