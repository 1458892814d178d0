package peer

import "sync/atomic"

// Gate caps the connections that have not finished their hello, so that
// unauthenticated connections cannot use up the process's descriptors or
// memory: each holds a slot from open until its hello succeeds or it
// closes.
type Gate struct {
	max  int64
	held atomic.Int64
}

// NewGate returns a gate of max slots (at least 1).
func NewGate(n int) *Gate { return &Gate{max: int64(max(1, n))} }

// Enter takes a slot; false means the gate is full and the connection
// should be closed at once.
func (g *Gate) Enter() bool {
	if g.held.Add(1) > g.max {
		g.held.Add(-1)
		return false
	}
	return true
}

// Leave gives a slot back; call it exactly once per successful Enter.
func (g *Gate) Leave() { g.held.Add(-1) }

// Held returns the slots in use.
func (g *Gate) Held() int64 { return g.held.Load() }
