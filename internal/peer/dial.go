package peer

import (
	"net"
	"time"
)

// DialOptions configures Redial. Zero fields take the defaults stated.
type DialOptions struct {
	// Timeout bounds one connection attempt; 0 means 2s.
	Timeout time.Duration
	// BackoffMin and BackoffMax bound the exponential wait between failed
	// attempts; 0 means 50ms and 5s.
	BackoffMin, BackoffMax time.Duration
}

func (o *DialOptions) defaults() {
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Second
	}
	if o.BackoffMin <= 0 {
		o.BackoffMin = 50 * time.Millisecond
	}
	if o.BackoffMax <= 0 {
		o.BackoffMax = 5 * time.Second
	}
	if o.BackoffMax < o.BackoffMin {
		o.BackoffMax = o.BackoffMin
	}
}

// Redial keeps a connection to addr() up until stop is closed: it dials
// with a timeout, hands each connection to enroll (which takes ownership
// and returns a channel that yields, when that connection has ended,
// whether it ever completed its hello), and dials again, waiting a backoff
// that doubles after each failure up to BackoffMax and starts over after a
// connection that came up. onFail, if not nil, is told of every failed
// attempt (to log the first and every 20th). Redial returns when stop is
// closed; call it on its own goroutine.
func Redial(stop <-chan struct{}, addr func() string, o DialOptions, enroll func(net.Conn) (<-chan bool, error), onFail func(attempt int, addr string, err error)) {
	o.defaults()
	backoff := o.BackoffMin
	failures := 0
	for {
		a := addr()
		var err error
		var nc net.Conn
		if a == "" {
			err = errNoAddr
		} else {
			nc, err = net.DialTimeout("tcp", a, o.Timeout)
		}
		if err == nil {
			var ended <-chan bool
			if ended, err = enroll(nc); err == nil {
				failures = 0
				var up bool
				select {
				case up = <-ended:
				case <-stop:
					return
				}
				if up {
					backoff = o.BackoffMin
				}
				select {
				case <-stop:
					return
				default:
				}
				if up {
					continue
				}
			} else {
				_ = nc.Close()
			}
		}
		if err != nil {
			failures++
			if onFail != nil {
				onFail(failures, a, err)
			}
		}
		select {
		case <-stop:
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, o.BackoffMax)
	}
}

type dialError string

func (e dialError) Error() string { return string(e) }

const errNoAddr = dialError("peer: no address to dial")
