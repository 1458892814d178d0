package bench

import "sort"

// recvKind classifies one received sequence number of a sender-recipient
// pair.
type recvKind uint8

const (
	recvInOrder  recvKind = iota // the next expected seq
	recvAfterGap                 // beyond the next expected: the seqs between are missing (so far)
	recvLate                     // a missing seq that arrived after a higher one: reordered
	recvDup                      // a seq already received: duplicated
	recvInvalid                  // seq 0, which the bench never sends
)

// unique reports whether the arrival is the first of its seq.
func (k recvKind) unique() bool { return k <= recvLate }

// seqRange is an inclusive range of sequence numbers.
type seqRange struct{ lo, hi uint32 }

// recvPair is the receiving side's state for one sender-recipient pair. Only
// the recipient's reader goroutine touches it while the run is going on.
// In the normal case (in-order delivery) it is one integer; gaps are kept
// only while seqs are missing, as sorted disjoint ranges, so the bench can
// tell a late (reordered) message from a duplicate exactly.
type recvPair struct {
	max  uint32     // highest seq received; 0 = none
	gaps []seqRange // seqs below max not received yet, sorted
}

// receive records seq q and says what kind of arrival it was.
func (p *recvPair) receive(q uint32) recvKind {
	switch {
	case q == 0:
		return recvInvalid
	case q == p.max+1:
		p.max = q
		return recvInOrder
	case q > p.max:
		p.gaps = append(p.gaps, seqRange{p.max + 1, q - 1})
		p.max = q
		return recvAfterGap
	}
	i := sort.Search(len(p.gaps), func(i int) bool { return p.gaps[i].hi >= q })
	if i == len(p.gaps) || p.gaps[i].lo > q {
		return recvDup
	}
	g := p.gaps[i]
	switch {
	case g.lo == g.hi:
		p.gaps = append(p.gaps[:i], p.gaps[i+1:]...)
	case q == g.lo:
		p.gaps[i].lo++
	case q == g.hi:
		p.gaps[i].hi--
	default:
		p.gaps = append(p.gaps, seqRange{})
		copy(p.gaps[i+2:], p.gaps[i+1:])
		p.gaps[i] = seqRange{g.lo, q - 1}
		p.gaps[i+1] = seqRange{q + 1, g.hi}
	}
	if len(p.gaps) == 0 {
		p.gaps = nil
	}
	return recvLate
}

// received is the number of distinct seqs received.
func (p *recvPair) received() int64 {
	n := int64(p.max)
	for _, g := range p.gaps {
		n -= int64(g.hi-g.lo) + 1
	}
	return n
}

// missing is the number of seqs in 1..sent that were not received.
func (p *recvPair) missing(sent uint32) int64 {
	if sent <= p.max {
		return int64(p.max) - p.received()
	}
	return int64(p.max) - p.received() + int64(sent-p.max)
}
