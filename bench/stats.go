package bench

import (
	"fmt"
	"math"
	"sort"
	"sync"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
)

// Latency histograms record microseconds from 1 µs to 10 minutes with three
// significant digits; slower values are recorded as the maximum.
const (
	histMin    = 1
	histMax    = 600_000_000
	histDigits = 3
)

func newHist() *hdr.Histogram { return hdr.New(histMin, histMax, histDigits) }

// newCoarseHist is for the per-second and ping histograms: two significant
// digits (1% resolution) in 25 KiB instead of 170 KiB. It merges into a
// newHist histogram and back.
func newCoarseHist() *hdr.Histogram { return hdr.New(histMin, histMax, 2) }

func record(h *hdr.Histogram, us int64) {
	if us < histMin {
		us = histMin
	} else if us > histMax {
		us = histMax
	}
	_ = h.RecordValue(us)
}

// encodeHist returns h in the HdrHistogram V2 compressed base64 form, the
// form histograms travel in between processes and sit in the JSON report.
func encodeHist(h *hdr.Histogram) string {
	if h == nil {
		return ""
	}
	b, err := h.Encode(hdr.V2CompressedEncodingCookieBase)
	if err != nil {
		return ""
	}
	return string(b)
}

// decodeHist is the inverse of encodeHist; "" decodes to an empty histogram.
func decodeHist(s string) (*hdr.Histogram, error) {
	if s == "" {
		return newHist(), nil
	}
	h, err := hdr.Decode([]byte(s))
	if err != nil {
		return nil, fmt.Errorf("bench: decode histogram: %w", err)
	}
	return h, nil
}

// mergeEncoded merges the encoded histogram s into dst.
func mergeEncoded(dst *hdr.Histogram, s string) error {
	if s == "" {
		return nil
	}
	h, err := decodeHist(s)
	if err != nil {
		return err
	}
	dst.Merge(h)
	return nil
}

// Percentiles summarises a latency histogram; values are microseconds.
// A zero Count means nothing was recorded and every value is 0.
type Percentiles struct {
	Count int64   `json:"count"`
	Min   int64   `json:"min_us"`
	Mean  float64 `json:"mean_us"`
	P50   int64   `json:"p50_us"`
	P90   int64   `json:"p90_us"`
	P99   int64   `json:"p99_us"`
	P999  int64   `json:"p999_us"`
	Max   int64   `json:"max_us"`
}

func percentilesOf(h *hdr.Histogram) Percentiles {
	if h == nil || h.TotalCount() == 0 {
		return Percentiles{}
	}
	return Percentiles{
		Count: h.TotalCount(),
		Min:   h.Min(),
		Mean:  h.Mean(),
		P50:   h.ValueAtQuantile(50),
		P90:   h.ValueAtQuantile(90),
		P99:   h.ValueAtQuantile(99),
		P999:  h.ValueAtQuantile(99.9),
		Max:   h.Max(),
	}
}

// DistPoint is one point of a latency distribution: the latency at or below
// which Percentile percent of the messages were delivered.
type DistPoint struct {
	Percentile float64 `json:"percentile"`
	Micros     int64   `json:"us"`
}

// distribution samples h at percentiles spaced evenly on the usual HDR
// "nines" axis (0, 90, 99, 99.9, ...), up to the resolution the count
// supports.
func distribution(h *hdr.Histogram) []DistPoint {
	if h == nil || h.TotalCount() == 0 {
		return nil
	}
	var pts []DistPoint
	const perDecade = 10
	for i := 0; i <= 6*perDecade; i++ {
		nines := float64(i) / perDecade
		p := 100 * (1 - math.Pow(10, -nines))
		if i > 0 && 1/(1-p/100) > float64(h.TotalCount()) {
			break
		}
		pts = append(pts, DistPoint{Percentile: p, Micros: h.ValueAtQuantile(p)})
	}
	pts = append(pts, DistPoint{Percentile: 100, Micros: h.Max()})
	return pts
}

// Counters are the event counts of one process of the bench (or, merged,
// of the whole run). Messages count chats. Delivered counts first receipts
// of a (pair, seq), so it includes the Reordered ones and excludes the
// Duplicated copies. "Measured" counts chats stamped inside the measured
// window (after warmup, before sending stopped); DeliveredInWindow counts
// deliveries that arrived inside it, the basis of the delivered rate.
type Counters struct {
	Sent              int64 `json:"sent"`
	SentCross         int64 `json:"sent_cross"`
	SentMeasured      int64 `json:"sent_measured"`
	Delivered         int64 `json:"delivered"`
	DeliveredMeasured int64 `json:"delivered_measured"`
	DeliveredInWindow int64 `json:"delivered_in_window"`
	Duplicated        int64 `json:"duplicated"`
	Reordered         int64 `json:"reordered"`
	Misrouted         int64 `json:"misrouted"` // delivered to a client that is not the pair's recipient
	Foreign           int64 `json:"foreign"`   // lines the bench did not expect (not from this run, unknown cmd)
	Rejected          int64 `json:"rejected"`  // error replies after login: each rejects one chat
	Errors            int64 `json:"errors"`    // deliveries with a wrong "send" field
	Acked             int64 `json:"acked"`     // ack replies (only with Ack)
	Unsent            int64 `json:"unsent"`    // chats whose write was cut when sending stopped: rolled back, not lost
	PingsSent         int64 `json:"pings_sent"`
	Pongs             int64 `json:"pongs"`
	Disconnects       int64 `json:"disconnects"` // connections lost during the run (not at its end)
	Kicked            int64 `json:"kicked"`
	ConnectErrors     int64 `json:"connect_errors"` // clients that failed to connect or log in
}

func (c *Counters) add(o *Counters) {
	c.Sent += o.Sent
	c.SentCross += o.SentCross
	c.SentMeasured += o.SentMeasured
	c.Delivered += o.Delivered
	c.DeliveredMeasured += o.DeliveredMeasured
	c.DeliveredInWindow += o.DeliveredInWindow
	c.Duplicated += o.Duplicated
	c.Reordered += o.Reordered
	c.Misrouted += o.Misrouted
	c.Foreign += o.Foreign
	c.Rejected += o.Rejected
	c.Errors += o.Errors
	c.Acked += o.Acked
	c.Unsent += o.Unsent
	c.PingsSent += o.PingsSent
	c.Pongs += o.Pongs
	c.Disconnects += o.Disconnects
	c.Kicked += o.Kicked
	c.ConnectErrors += o.ConnectErrors
}

// shard is one lock-striped slice of the engine's statistics. Goroutines
// pick a shard by client index, so a shard's lock is rarely contended.
type shard struct {
	mu   sync.Mutex
	c    Counters
	lat  *hdr.Histogram // latency of messages sent in the measured window
	ival *hdr.Histogram // latency of every delivery since the last snapshot
	ping *hdr.Histogram // ping round trips
	_    [64]byte       // keep neighbouring shards' locks off one cache line
}

func newShards(n int) []shard {
	s := make([]shard, n)
	for i := range s {
		s[i].lat = newHist()
		s[i].ival = newCoarseHist()
		s[i].ping = newCoarseHist()
	}
	return s
}

// reasons counts events by a short human-readable reason, bounded so a
// misbehaving server cannot grow it without end.
type reasons struct {
	mu sync.Mutex
	m  map[string]int64
}

const maxReasons = 64

func (r *reasons) add(reason string, n int64) {
	if len(reason) > 160 {
		reason = reason[:160] + "..."
	}
	r.mu.Lock()
	if r.m == nil {
		r.m = make(map[string]int64)
	}
	if _, ok := r.m[reason]; !ok && len(r.m) >= maxReasons {
		reason = "(other reasons)"
	}
	r.m[reason] += n
	r.mu.Unlock()
}

func (r *reasons) snapshot() map[string]int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.m) == 0 {
		return nil
	}
	out := make(map[string]int64, len(r.m))
	for k, v := range r.m {
		out[k] = v
	}
	return out
}

func mergeReasons(dst map[string]int64, src map[string]int64) map[string]int64 {
	if len(src) == 0 {
		return dst
	}
	if dst == nil {
		dst = make(map[string]int64, len(src))
	}
	for k, v := range src {
		dst[k] += v
	}
	return dst
}

// sortedReasons returns the reasons, most frequent first.
func sortedReasons(m map[string]int64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if m[keys[i]] != m[keys[j]] {
			return m[keys[i]] > m[keys[j]]
		}
		return keys[i] < keys[j]
	})
	return keys
}
