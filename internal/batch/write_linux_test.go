package batch

import (
	"bytes"
	"testing"

	"golang.org/x/sys/unix"
)

// socketPair returns a non-blocking stream socket pair with a small send
// buffer on the first.
func socketPair(t *testing.T) (int, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	if err := unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_SNDBUF, 4096); err != nil {
		t.Fatal(err)
	}
	return fds[0], fds[1]
}

func readAll(t *testing.T, fd int) []byte {
	t.Helper()
	var out []byte
	b := make([]byte, 64<<10)
	for {
		n, err := unix.Read(fd, b)
		if n <= 0 || err != nil {
			return out
		}
		out = append(out, b[:n]...)
	}
}

// TestHandOver: the raw write takes what the socket takes; gnet's Write
// gets exactly the rest, and everything when gnet already holds bytes for
// the connection (order) or the write fails (gnet handles the error).
func TestHandOver(t *testing.T) {
	t.Run("AllTaken", func(t *testing.T) {
		a, b := socketPair(t)
		c := &fakeConn{fd: a}
		e := &Endpoint{C: c}
		e.handOver([]byte("hello\n"))
		if c.got.Len() != 0 {
			t.Fatalf("gnet got %q", c.got.Bytes())
		}
		if got := readAll(t, b); string(got) != "hello\n" {
			t.Fatalf("peer read %q", got)
		}
	})
	t.Run("ShortWrite", func(t *testing.T) {
		a, b := socketPair(t)
		c := &fakeConn{fd: a}
		e := &Endpoint{C: c}
		buf := bytes.Repeat([]byte("0123456789abcdef"), 1<<14) // 256 KiB: more than the socket takes
		e.handOver(buf)
		kernel := readAll(t, b)
		if len(kernel) == 0 || c.got.Len() == 0 {
			t.Fatalf("socket took %d bytes, gnet got %d: want a split", len(kernel), c.got.Len())
		}
		if !bytes.Equal(append(kernel, c.got.Bytes()...), buf) {
			t.Fatalf("socket's %d bytes then gnet's %d are not the buffer", len(kernel), c.got.Len())
		}
	})
	t.Run("GnetHoldsBytes", func(t *testing.T) {
		a, b := socketPair(t)
		c := &fakeConn{fd: a, queued: 10}
		e := &Endpoint{C: c}
		e.handOver([]byte("later\n"))
		if c.got.String() != "later\n" {
			t.Fatalf("gnet got %q", c.got.Bytes())
		}
		if got := readAll(t, b); len(got) != 0 {
			t.Fatalf("bytes overtook gnet's buffer: %q", got)
		}
	})
	t.Run("PeerGone", func(t *testing.T) {
		// EPIPE (and the SIGPIPE the kernel sends with it, which Go
		// ignores on descriptors other than 1 and 2): gnet gets it all and
		// closes the connection on its own write.
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fds[0])
		unix.Close(fds[1])
		c := &fakeConn{fd: fds[0]}
		e := &Endpoint{C: c}
		e.handOver([]byte("gone\n"))
		if c.got.String() != "gone\n" {
			t.Fatalf("gnet got %q", c.got.Bytes())
		}
	})
	t.Run("Error", func(t *testing.T) {
		c := &fakeConn{} // Fd -1: EBADF
		e := &Endpoint{C: c}
		e.handOver([]byte("x\n"))
		if c.got.String() != "x\n" {
			t.Fatalf("gnet got %q", c.got.Bytes())
		}
	})
}
