package server

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/relaychat/relaychat/codec"
	"github.com/relaychat/relaychat/internal/batch"
)

// Reliable streams, receiving side.
//
// For each stream another server sends this one, inStream remembers the
// highest sequence number accepted. A frame is accepted only if it is the
// next one: a frame seen before (a resend) is dropped, one after a gap
// (frames lost with a dead path) is dropped until the resend brings the
// gap, and a skip line moves the start forward. Frames of one stream are
// decided one at a time (proc), whichever link they arrive on, so a pair's
// chats keep their order even while two paths deliver at once.
//
// A frame is settled when its fate is sealed: written to a session's
// output, queued for a session receiving its mailbox, stored, put on
// another stream, or answered with an error frame. Some fates are decided
// off the loop (a store in Redis); the acknowledgement covers every frame
// up to the first one still undecided, and is sent once per read batch
// per stream, not once per frame.

type inKey struct {
	src    string
	stream uint64
}

type inStreams struct {
	s  *Server
	mu sync.Mutex
	m  map[inKey]*inStream
}

func newInStreams(s *Server) *inStreams {
	return &inStreams{s: s, m: make(map[inKey]*inStream)}
}

func (is *inStreams) get(src []byte, stream uint64) *inStream {
	is.mu.Lock()
	defer is.mu.Unlock()
	st := is.m[inKey{string(src), stream}]
	if st == nil {
		st = &inStream{s: is.s, key: inKey{string(src), stream}}
		is.m[st.key] = st
	}
	st.lastSeen.Store(time.Now().UnixNano())
	return st
}

// inStreamIdle is how long a silent stream's state is kept: its sender
// restarted (a new stream) or has not sent for that long.
const inStreamIdle = 10 * time.Minute

func (is *inStreams) sweep(now time.Time) {
	is.mu.Lock()
	defer is.mu.Unlock()
	cutoff := now.Add(-inStreamIdle).UnixNano()
	for k, st := range is.m {
		if st.lastSeen.Load() < cutoff && st.idle() {
			st.swept.Store(true)
			delete(is.m, k)
		}
	}
}

// all returns every stream (for Shutdown's final acknowledgements).
func (is *inStreams) all() []*inStream {
	is.mu.Lock()
	defer is.mu.Unlock()
	out := make([]*inStream, 0, len(is.m))
	for _, st := range is.m {
		out = append(out, st)
	}
	return out
}

type inStream struct {
	s        *Server
	key      inKey
	lastSeen atomic.Int64
	swept    atomic.Bool // removed from inStreams: a link's cached pointer must not be used
	// proc serialises deciding this stream's frames.
	proc sync.Mutex

	mu        sync.Mutex
	delivered uint64   // highest seq accepted
	undecided []uint64 // accepted seqs whose fate is not sealed yet, ascending
	acked     uint64   // highest seq acknowledged
	via       *link    // the link frames last came on (acks go back on it)
}

// accept admits seq if it is the next frame. It returns false for a
// duplicate (dup) or a frame after a gap.
func (st *inStream) accept(seq uint64, via *link) (ok, dup bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.via = via
	switch {
	case seq <= st.delivered:
		return false, true
	case seq != st.delivered+1:
		return false, false
	}
	st.delivered = seq
	st.undecided = append(st.undecided, seq)
	return true, false
}

// skip moves the stream's start to seq: frames before it will not come.
func (st *inStream) skip(seq uint64, via *link) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.via = via
	if seq > 0 && seq-1 > st.delivered {
		st.delivered = seq - 1
	}
}

// settle seals seq's fate. Off the loop (l == nil) it also sends the
// acknowledgement if this moved it.
func (st *inStream) settle(seq uint64) {
	st.mu.Lock()
	for i, v := range st.undecided {
		if v == seq {
			st.undecided = append(st.undecided[:i], st.undecided[i+1:]...)
			break
		}
	}
	st.mu.Unlock()
}

// settledUpTo returns the highest seq such that every frame up to it is
// settled.
func (st *inStream) settledUpTo() uint64 {
	if len(st.undecided) > 0 {
		return st.undecided[0] - 1
	}
	return st.delivered
}

func (st *inStream) idle() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.undecided) == 0
}

// ackLine returns the acknowledgement to send, if it moved (or force: the
// sender resent what was acknowledged before, so the last ack was lost),
// and the link it goes back on.
func (st *inStream) ackLine(dst []byte, force bool) ([]byte, *link) {
	st.mu.Lock()
	defer st.mu.Unlock()
	upTo := st.settledUpTo()
	if upTo == 0 || (upTo <= st.acked && !force) {
		return dst, nil
	}
	st.acked = upTo
	return codec.AppendAckFrame(dst, st.key.src, 0, st.s.opt.ID, st.key.stream, upTo), st.via
}

// sendAck sends the acknowledgement from off the loops.
func (st *inStream) sendAck() {
	line, via := st.ackLine(nil, false)
	if line == nil {
		return
	}
	if via == nil || via.Closed() {
		if via = st.s.linkTo(st.key.src); via == nil {
			return // the sender will resend, and the resend brings a fresh ack
		}
	}
	batch.Send(&via.Endpoint, line, nil)
}

// receiveFrame handles one data or skip frame from link lk, on lk's loop.
// touched collects the streams whose acknowledgement may have moved.
func (s *Server) receiveFrame(l *batch.Loop, lk *link, f *codec.Frame, touched *[]*inStream) {
	// A link carries few streams, usually one at a time: remember the last
	// one, so the common case needs no map lookup (nor a key allocation).
	st := lk.lastIn
	if st == nil || st.key.stream != f.Stream || st.key.src != string(f.Src) || st.swept.Load() {
		st = s.in.get(f.Src, f.Stream)
		lk.lastIn = st
	} else {
		st.lastSeen.Store(time.Now().UnixNano())
	}
	if !containsStream(*touched, st) {
		*touched = append(*touched, st)
	}
	if f.Kind == codec.KindSkip {
		st.skip(f.Seq, lk)
		return
	}
	st.proc.Lock()
	defer st.proc.Unlock()
	ok, dup := st.accept(f.Seq, lk)
	if !ok {
		if dup {
			s.stats.StreamDup.Add(1)
			st.mu.Lock()
			st.acked = 0 // re-acknowledge: the sender did not hear the last one
			st.mu.Unlock()
		} else {
			s.stats.StreamGap.Add(1)
		}
		return
	}
	s.stats.FromStreams.Add(1)
	switch f.Kind {
	case codec.KindMsg:
		c := &chat{send: string(f.Send), recv: string(f.Recv), id: f.ID, hops: f.Hops, payload: f.Payload, in: st, seq: f.Seq, ts: tsOf(f.Payload)}
		s.deliver(l, c)
	case codec.KindError:
		s.errorFromStream(l, f)
		st.settle(f.Seq)
	case codec.KindKick:
		s.kickFromStream(f)
		st.settle(f.Seq)
	case codec.KindKicked:
		s.kickDone(string(f.Recv), string(f.Payload))
		st.settle(f.Seq)
	default:
		st.settle(f.Seq)
	}
}

func containsStream(list []*inStream, st *inStream) bool {
	for _, x := range list {
		if x == st {
			return true
		}
	}
	return false
}

// errorFromStream delivers an error another server returned for one of
// this server's senders.
func (s *Server) errorFromStream(l *batch.Loop, f *codec.Frame) {
	if ss := s.reg.get(string(f.Recv)); ss != nil && !ss.Closed() {
		out := l.Out(&ss.Endpoint)
		*out = append(append(*out, f.Payload...), '\n')
		s.stats.Errors.Add(1)
		return
	}
	s.stats.DroppedNoSender.Add(1)
	s.log.Info("error for a sender who has left, not delivered", "user", string(f.Recv))
}

// tsOf reads the "ts" of a delivery line (the receive time the mailbox
// keeps with a stored chat); 0 if absent.
func tsOf(line []byte) int64 {
	const key = `,"ts":`
	for i := len(line) - len(key) - 1; i >= 0; i-- {
		if line[i] == ',' && string(line[i:i+len(key)]) == key {
			var n int64
			for j := i + len(key); j < len(line) && line[j] >= '0' && line[j] <= '9'; j++ {
				n = n*10 + int64(line[j]-'0')
			}
			return n
		}
	}
	return 0
}
