package server

import (
	"context"
	"sync"
	"time"

	"github.com/relaychat/relaychat/internal/fifo"
	"github.com/relaychat/relaychat/route"
)

// redisQueue is the one ordered queue of the routing-store work that
// decides chats' fates off the loops: store attempts, requeues of chats a
// closing session had not received, mailbox reads and removals, route
// releases that must follow a requeue, and kick-done notices that must
// follow those. One worker runs it in order, pipelining consecutive store
// attempts in one round trip, so for any one user what was queued first
// happens first in Redis.
//
// Bounded: a full queue refuses new work (the caller answers "server busy"
// or counts the loss); nothing blocks a loop.
type redisQueue struct {
	s    *Server
	q    *fifo.Queue[rjob]
	idle chan struct{} // signalled when the queue runs empty (for Shutdown)
	mu   sync.Mutex
	busy int // jobs queued or running
}

type rjob struct {
	store route.StoreReq
	done  func(route.StoreResult) // set for a store attempt
	fn    func(ctx context.Context)
}

// redisQueueLen bounds the jobs waiting; storeBatch how many store
// attempts share one round trip.
const (
	redisQueueLen = 1 << 16
	storeBatch    = 256
)

func newRedisQueue(s *Server) *redisQueue {
	return &redisQueue{s: s, q: fifo.New[rjob](redisQueueLen), idle: make(chan struct{}, 1)}
}

// store queues a store attempt; done runs on the worker. false: queue full.
func (q *redisQueue) store(req route.StoreReq, done func(route.StoreResult)) bool {
	return q.put(rjob{store: req, done: done})
}

// call queues fn; it runs on the worker with a context bounded by the
// Redis timeout. false: queue full.
func (q *redisQueue) call(fn func(ctx context.Context)) bool {
	return q.put(rjob{fn: fn})
}

func (q *redisQueue) put(j rjob) bool {
	q.mu.Lock()
	q.busy++
	q.mu.Unlock()
	if q.q.Put(j) {
		return true
	}
	q.finished(1)
	return false
}

func (q *redisQueue) finished(n int) {
	q.mu.Lock()
	q.busy -= n
	empty := q.busy == 0
	q.mu.Unlock()
	if empty {
		select {
		case q.idle <- struct{}{}:
		default:
		}
	}
}

// pending returns the jobs queued or running.
func (q *redisQueue) pending() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.busy
}

// waitIdle waits until the queue is empty or ctx ends.
func (q *redisQueue) waitIdle(ctx context.Context) bool {
	for q.pending() > 0 {
		select {
		case <-q.idle:
		case <-ctx.Done():
			return q.pending() == 0
		case <-time.After(10 * time.Millisecond): // poll interval; idle may have fired earlier
		}
	}
	return true
}

// take waits for the next job; false once quit is closed and nothing is
// queued.
func (q *redisQueue) take(j *rjob, quit <-chan struct{}) bool {
	for {
		if v, ok := q.q.Get(); ok {
			*j = v
			return true
		}
		select {
		case <-q.q.Ready():
		case <-quit:
			v, ok := q.q.Get()
			*j = v
			return ok
		}
	}
}

// run is the worker; it stops when quit is closed, after what is queued
// then has run.
func (q *redisQueue) run(quit <-chan struct{}) {
	defer q.s.bg.Done()
	var next *rjob
	for {
		var j rjob
		if next != nil {
			j, next = *next, nil
		} else if !q.take(&j, quit) {
			return
		}
		if j.done == nil {
			ctx, cancel := context.WithTimeout(context.Background(), q.s.opt.RedisTimeout)
			j.fn(ctx)
			cancel()
			q.finished(1)
			continue
		}
		jobs := []rjob{j}
	gather:
		for len(jobs) < storeBatch {
			j2, ok := q.q.Get()
			if !ok {
				break gather
			}
			if j2.done == nil {
				next = &j2
				break gather
			}
			jobs = append(jobs, j2)
		}
		reqs := make([]route.StoreReq, len(jobs))
		for i := range jobs {
			reqs[i] = jobs[i].store
		}
		ctx, cancel := context.WithTimeout(context.Background(), q.s.opt.RedisTimeout)
		start := time.Now()
		res, err := q.s.opt.Router.StoreChats(ctx, reqs, q.s.opt.MailboxMax, q.s.opt.MailboxTTL)
		q.s.hist.store.Since(start)
		cancel()
		if err != nil {
			q.s.stats.RedisErrors.Add(1)
			q.s.log.Warn("routing store failed a batch of mailbox writes", "chats", len(jobs), "err", err)
		}
		if err == nil {
			// Recipients found online elsewhere: load their routes into the
			// route table (one round trip for the batch) before their chats
			// go, so the next chats to them are decided on the loop and
			// keep flowing through a Redis outage.
			var online []string
			for i, r := range res {
				if r.Err == nil && r.Outcome == route.Online && r.Route.Server != q.s.opt.ID {
					online = append(online, reqs[i].Name)
				}
			}
			if len(online) > 0 {
				ctx, cancel := context.WithTimeout(context.Background(), q.s.opt.RedisTimeout)
				q.s.opt.Router.Warm(ctx, online)
				cancel()
			}
		}
		for i := range jobs {
			jobs[i].done(res[i])
		}
		q.finished(len(jobs))
	}
}
