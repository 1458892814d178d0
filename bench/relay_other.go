//go:build !linux

package bench

import "errors"

// StartRelay fails: the epoll relay needs Linux (StartNetRelay does not).
func StartRelay([]string, int) (*Relay, error) {
	return nil, errors.New("bench: the epoll relay needs Linux")
}
