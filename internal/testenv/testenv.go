// Package testenv starts real processes for end-to-end tests: a private
// redis-server, the repo's binaries, and raw TCP line clients.
//
// Every helper must be called from the test goroutine: they report failures
// with t.Fatal. Their background goroutines never touch t; they hand data to
// the test goroutine over channels or under a mutex.
package testenv

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
)

// FreePort returns a loopback TCP port that was free a moment ago (it
// listens on 127.0.0.1:0, reads the port and closes). Another process may
// take it before the caller binds it; Redis retries with a new port when that
// happens.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: free port: %v", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		t.Fatalf("testenv: free port: %v", err)
	}
	return port
}

// moduleRoot returns the nearest directory at or above the working directory
// (the package under test) that holds go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}
