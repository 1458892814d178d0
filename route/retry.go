package route

import (
	"context"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

// Route writes that must not be lost to a node failure.
//
// Release, ReleaseAll and Reassert make one attempt per route in the call.
// A route whose attempt fails for a reason that may pass (the node is
// down, the cluster is failing over, the connection broke: see transient)
// is handed to the retry queue below, and the call reports it as done: the
// queue sends it again with backoff until Redis takes it. So a dead node
// costs a delay, not a leaked route.
//
// The queue holds at most one entry per route key, which carries what
// this process still wants of that key: the values to delete if the key
// still holds one of them (releases), then the value to write if the key
// is then empty (a re-assertion). Both run in one script, in that order,
// so the entry's outcome does not depend on how its parts were queued;
// running it twice is the same as running it once. A later Claim or
// Release of the name through this Store turns a queued re-assertion it
// makes obsolete into a release of that value, so a retry never
// resurrects a session that has ended, even one whose attempt was in
// flight.
//
// The queue is bounded (Options.RetryQueue keys); a route that finds it
// full is given up, counted in RetryStats.GivenUp. Close gives the queue
// up to Options.Timeout to drain and gives up the rest. A route given up
// names this process' server: the next start of that server (ClearServer),
// or SweepDeadServers once its heartbeat is long gone, removes it.

// DefaultRetryQueue is Options.RetryQueue's zero value.
const DefaultRetryQueue = 1 << 16

const (
	// maxQueuedReleases bounds the release values one key's entry keeps;
	// more (the same user logging in and out faster than Redis recovers)
	// gives up the oldest.
	maxQueuedReleases = 8
	retryMinDelay     = 100 * time.Millisecond
	retryMaxDelay     = 5 * time.Second
)

// fixScript: KEYS route; ARGV[1] value to write if the key ends up empty
// ("" none), ARGV[2..] values to delete. Returns 1 if it wrote.
var fixScript = newScript(`local v = redis.call("GET", KEYS[1])
for i = 2, #ARGV do
  if v == ARGV[i] then redis.call("DEL", KEYS[1]); v = false; break end
end
if ARGV[1] ~= "" and not v then redis.call("SET", KEYS[1], ARGV[1]); return 1 end
return 0`)

// RetryStats counts the route writes that needed the retry queue.
type RetryStats struct {
	// Pending is the number of route keys waiting in the queue now.
	Pending int
	// Queued counts routes handed to the queue after a failed attempt.
	Queued uint64
	// Retries counts attempts the queue made (each may cover many keys).
	Retries uint64
	// Recovered counts keys the queue brought to their wanted state.
	Recovered uint64
	// GivenUp counts routes dropped: the queue was full, or Close ran out
	// of time. Each is a route left for ClearServer or SweepDeadServers.
	GivenUp uint64
	// Failed counts keys dropped on a Redis error that retrying cannot
	// cure (e.g. the key holds another type).
	Failed uint64
}

type retryEntry struct {
	name     string
	releases []string
	reassert string
	attempts int
	due      time.Time
	gen      uint64 // bumped on every change, so a finished attempt knows if it is stale
}

type retryQueue struct {
	s   *Store
	max int

	mu      sync.Mutex
	entries map[string]*retryEntry // by route key
	gen     uint64
	n       atomic.Int64 // len(entries), read without the lock

	wake chan struct{}
	quit chan struct{} // closed by close
	done chan struct{} // closed when run returns

	queued, retries, recovered, givenUp, failed atomic.Uint64
}

func newRetryQueue(s *Store, max int) *retryQueue {
	return &retryQueue{
		s:       s,
		max:     max,
		entries: make(map[string]*retryEntry),
		wake:    make(chan struct{}, 1),
		quit:    make(chan struct{}),
		done:    make(chan struct{}),
	}
}

func (q *retryQueue) stats() RetryStats {
	return RetryStats{
		Pending:   int(q.n.Load()),
		Queued:    q.queued.Load(),
		Retries:   q.retries.Load(),
		Recovered: q.recovered.Load(),
		GivenUp:   q.givenUp.Load(),
		Failed:    q.failed.Load(),
	}
}

func (q *retryQueue) poke() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// entry returns key's entry, creating it; nil when the queue is full or
// closed. Called with q.mu held.
func (q *retryQueue) entry(key, name string) *retryEntry {
	if e := q.entries[key]; e != nil {
		return e
	}
	select {
	case <-q.quit:
		return nil
	default:
	}
	if len(q.entries) >= q.max {
		return nil
	}
	e := &retryEntry{name: name, due: time.Now()}
	q.entries[key] = e
	q.n.Store(int64(len(q.entries)))
	return e
}

func (q *retryQueue) touch(e *retryEntry) {
	q.gen++
	e.gen = q.gen
}

// addRelease queues the deletion of key if it holds value; false if the
// queue was full. It also drops a queued re-assertion of that value.
func (q *retryQueue) addRelease(key, name, value string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	e := q.entry(key, name)
	if e == nil {
		q.givenUp.Add(1)
		return false
	}
	q.queued.Add(1)
	if e.reassert == value {
		e.reassert = ""
	}
	for _, v := range e.releases {
		if v == value {
			q.touch(e)
			return true
		}
	}
	if len(e.releases) == maxQueuedReleases {
		e.releases = e.releases[1:]
		q.givenUp.Add(1)
	}
	e.releases = append(e.releases, value)
	q.touch(e)
	q.poke()
	return true
}

// addReassert queues writing value to key if the key is empty, after
// the releases already queued for it; false if the queue was full.
func (q *retryQueue) addReassert(key, name, value string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	e := q.entry(key, name)
	if e == nil {
		q.givenUp.Add(1)
		return false
	}
	q.queued.Add(1)
	e.reassert = value
	q.touch(e)
	q.poke()
	return true
}

// pending reports whether key has an entry; used to route a new
// re-assertion through the queue so that it runs after queued releases.
func (q *retryQueue) pending(key string) bool {
	if q.n.Load() == 0 {
		return false
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.entries[key] != nil
}

// supersede cancels key's queued re-assertion: of value, or any when
// value is "" (a new claim replaced whatever it would have restored). The
// re-assertion may be in flight in an attempt that cannot be recalled, so
// it is not just dropped: its value joins the releases, which the next
// attempt runs after the one in flight, deleting it if it landed.
func (q *retryQueue) supersede(key, value string) {
	if q.n.Load() == 0 {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	e := q.entries[key]
	if e == nil || e.reassert == "" || (value != "" && e.reassert != value) {
		return
	}
	v := e.reassert
	e.reassert = ""
	if !slices.Contains(e.releases, v) {
		e.releases = append(e.releases, v)
	}
	e.due = time.Now()
	q.touch(e)
	q.poke()
}

// backoff returns the delay before attempt number n+1 (n ≥ 1): doubling
// from 100ms to 5s, with ±20% jitter so that servers do not retry in step.
func backoff(n int) time.Duration {
	d := retryMinDelay << min(n-1, 10)
	d = min(d, retryMaxDelay)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

type retryJob struct {
	key  string
	gen  uint64
	exec rueidis.LuaExec
}

// due collects up to batchSize entries whose time has come (all of them
// when all is set) and returns them with the time of the next one.
func (q *retryQueue) due(now time.Time, all bool) ([]retryJob, time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	var jobs []retryJob
	var next time.Time
	for key, e := range q.entries {
		if !all && e.due.After(now) {
			if next.IsZero() || e.due.Before(next) {
				next = e.due
			}
			continue
		}
		if len(jobs) == batchSize {
			next = now
			continue
		}
		args := append([]string{e.reassert}, e.releases...)
		jobs = append(jobs, retryJob{key: key, gen: e.gen, exec: rueidis.LuaExec{Keys: []string{key}, Args: args}})
	}
	return jobs, next
}

// attempt runs jobs once and files the outcomes.
func (q *retryQueue) attempt(jobs []retryJob) {
	q.retries.Add(1)
	ctx, cancel := context.WithTimeout(context.Background(), q.s.timeout)
	res := fixScript.execMulti(ctx, q.s.client, jobExecs(jobs), true)
	cancel()
	now := time.Now()
	q.mu.Lock()
	defer q.mu.Unlock()
	for i, j := range jobs {
		e := q.entries[j.key]
		if e == nil {
			continue
		}
		err := res[i].Error()
		switch {
		case err != nil && !transient(err):
			q.failed.Add(1)
			delete(q.entries, j.key)
		case err == nil && e.gen != j.gen:
			// Changed while in flight: what was added is not done yet. Run
			// it again soon; what was done is harmless to redo.
			e.due = now
		case err == nil:
			q.recovered.Add(1)
			delete(q.entries, j.key)
		default:
			e.attempts++
			e.due = now.Add(backoff(e.attempts))
		}
	}
	q.n.Store(int64(len(q.entries)))
}

func jobExecs(jobs []retryJob) []rueidis.LuaExec {
	out := make([]rueidis.LuaExec, len(jobs))
	for i, j := range jobs {
		out[i] = j.exec
	}
	return out
}

// run is the queue's worker. After close it keeps trying everything left,
// without waiting for backoff, until the queue is empty or drain expires,
// then gives up the rest.
func (q *retryQueue) run() {
	defer close(q.done)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		jobs, next := q.due(time.Now(), false)
		if len(jobs) > 0 {
			q.attempt(jobs)
			continue
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = max(time.Until(next), time.Millisecond)
		}
		timer.Reset(wait)
		select {
		case <-q.wake:
		case <-timer.C:
		case <-q.quit:
			q.drain(q.s.timeout)
			return
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

func (q *retryQueue) drain(limit time.Duration) {
	deadline := time.Now().Add(limit)
	for attempt := 1; time.Now().Before(deadline); attempt++ {
		jobs, _ := q.due(time.Now(), true)
		if len(jobs) == 0 {
			return
		}
		q.attempt(jobs)
		if q.n.Load() > 0 {
			time.Sleep(min(backoff(attempt), time.Until(deadline))) // retry interval while Redis recovers
		}
	}
	q.mu.Lock()
	q.givenUp.Add(uint64(len(q.entries)))
	clear(q.entries)
	q.n.Store(0)
	q.mu.Unlock()
}

// close stops the worker after its drain and waits for it.
func (q *retryQueue) close() {
	close(q.quit)
	<-q.done
}
