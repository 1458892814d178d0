package bench

import (
	"errors"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// epollRelay is StartRelay's relay: one event loop per GOMAXPROCS, each a
// locked OS thread blocking in epoll_wait(2) on its own SO_REUSEPORT
// listeners (the kernel spreads the connections) and the connections they
// accepted. Raw epoll rather than Go's net package: a goroutine per
// connection adds a netpoll wake-up, a goroutine switch and often a
// read(2) that finds nothing (EAGAIN) per burst, which is the runtime's
// cost, not the machine's (StartNetRelay is that variant, to compare). A
// loop writes a delivery to a recipient owned by another loop directly, in
// one write(2) under the recipient's mutex, as the kernel lets any thread
// write to any socket; only bytes the socket did not take wait for the
// owner's EPOLLOUT.
type epollRelay struct {
	hub   relayHub
	loops []*relayLoop
	wg    sync.WaitGroup
}

// relayLoop is one event loop. Only its goroutine touches conns, buf and
// out.
type relayLoop struct {
	r      *epollRelay
	epfd   int
	wakefd int   // eventfd: Close wakes the loop through it
	lns    []int // listener fds
	conns  map[int32]*relayConn
	buf    []byte // read buffer
	out    []byte // reply being built
	stop   atomic.Bool
	stats  relayStats
}

// relayConn is one client connection. The owner loop reads it; any loop
// may write to it, holding mu.
type relayConn struct {
	fd    int
	owner *relayLoop
	sess  relaySession // owner only
	in    []byte       // the start of a line not complete yet (owner only)

	mu      sync.Mutex
	closed  bool   // fd closed: never write to it again (the number may be reused)
	pending []byte // bytes the socket did not take yet; flushed on EPOLLOUT
}

// relayReadBuf is each loop's read buffer, and so the longest line.
const relayReadBuf = 64 << 10

// relayMaxPending bounds the bytes waiting for one slow recipient; past
// it the connection is shut down.
const relayMaxPending = 16 << 20

// StartRelay listens on every address (host:port, port 0 for a free one)
// with loops event loops over epoll (0 means GOMAXPROCS) and serves until
// Close.
func StartRelay(addrs []string, loops int) (*Relay, error) {
	if len(addrs) == 0 {
		return nil, errors.New("bench: relay: no address")
	}
	if loops <= 0 {
		loops = runtime.GOMAXPROCS(0)
	}
	er := &epollRelay{hub: relayHub{users: make(map[string]relaySender)}}
	r := &Relay{closeFn: er.close}
	for i := 0; i < loops; i++ {
		l, err := newRelayLoop(er)
		if err != nil {
			er.closeFds()
			return nil, err
		}
		er.loops = append(er.loops, l)
		r.stats = append(r.stats, &l.stats)
	}
	for _, a := range addrs {
		bound, err := er.listen(a)
		if err != nil {
			er.closeFds()
			return nil, err
		}
		r.addrs = append(r.addrs, bound)
	}
	for _, l := range er.loops {
		er.wg.Add(1)
		go l.run()
	}
	return r, nil
}

// close stops the loops, then closes every socket.
func (r *epollRelay) close() {
	one := []byte{1, 0, 0, 0, 0, 0, 0, 0}
	for _, l := range r.loops {
		l.stop.Store(true)
		_, _ = unix.Write(l.wakefd, one)
	}
	r.wg.Wait()
	r.closeFds()
}

func (r *epollRelay) closeFds() {
	for _, l := range r.loops {
		for _, c := range l.conns {
			c.mu.Lock()
			if !c.closed {
				c.closed = true
				unix.Close(c.fd)
			}
			c.mu.Unlock()
		}
		for _, fd := range l.lns {
			unix.Close(fd)
		}
		unix.Close(l.wakefd)
		unix.Close(l.epfd)
	}
}

func newRelayLoop(r *epollRelay) (*relayLoop, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("bench: relay: epoll_create: %w", err)
	}
	wfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(ep)
		return nil, fmt.Errorf("bench: relay: eventfd: %w", err)
	}
	l := &relayLoop{r: r, epfd: ep, wakefd: wfd, conns: make(map[int32]*relayConn),
		buf: make([]byte, relayReadBuf), out: make([]byte, 0, 1024)}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, wfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wfd)}); err != nil {
		unix.Close(ep)
		unix.Close(wfd)
		return nil, fmt.Errorf("bench: relay: epoll_ctl: %w", err)
	}
	return l, nil
}

// listen binds one SO_REUSEPORT listener per loop on addr and returns the
// bound address (with port 0 resolved by the first bind).
func (r *epollRelay) listen(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("bench: relay: %w", err)
	}
	ip := net.ParseIP(host)
	if host == "" {
		ip = net.IPv4zero
	}
	if ip == nil || ip.To4() == nil {
		return "", fmt.Errorf("bench: relay: %q: need an IPv4 address", addr)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return "", fmt.Errorf("bench: relay: bad port in %q", addr)
	}
	sa := &unix.SockaddrInet4{Port: p}
	copy(sa.Addr[:], ip.To4())
	for i, l := range r.loops {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return "", fmt.Errorf("bench: relay: socket: %w", err)
		}
		l.lns = append(l.lns, fd)
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return "", fmt.Errorf("bench: relay: SO_REUSEPORT: %w", err)
		}
		if err := unix.Bind(fd, sa); err != nil {
			return "", fmt.Errorf("bench: relay: bind %s: %w", addr, err)
		}
		if err := unix.Listen(fd, 4096); err != nil {
			return "", fmt.Errorf("bench: relay: listen %s: %w", addr, err)
		}
		if i == 0 {
			got, err := unix.Getsockname(fd)
			if err != nil {
				return "", fmt.Errorf("bench: relay: %w", err)
			}
			sa.Port = got.(*unix.SockaddrInet4).Port
		}
		if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
			return "", fmt.Errorf("bench: relay: epoll_ctl: %w", err)
		}
	}
	return net.JoinHostPort(ip.String(), strconv.Itoa(sa.Port)), nil
}

// run is the loop: wait, then one read per ready connection.
func (l *relayLoop) run() {
	defer l.r.wg.Done()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	evs := make([]unix.EpollEvent, 256)
	for !l.stop.Load() {
		n, err := unix.EpollWait(l.epfd, evs, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		ts := time.Now().UnixMilli() // one clock read per wake-up, for every "ts"
		for i := 0; i < n; i++ {
			fd := evs[i].Fd
			if int(fd) == l.wakefd {
				continue
			}
			c := l.conns[fd]
			if c == nil {
				l.accept(int(fd))
				continue
			}
			if evs[i].Events&unix.EPOLLOUT != 0 {
				l.flush(c)
			}
			if evs[i].Events&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
				l.read(c, ts)
			}
		}
	}
}

// accept takes every connection waiting on listener fd.
func (l *relayLoop) accept(ln int) {
	for {
		fd, _, err := unix.Accept4(ln, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			return // EAGAIN, or EMFILE and the like: the client sees a refused or stalled connect
		}
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		c := &relayConn{fd: fd, owner: l}
		c.sess.self = c
		if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
			unix.Close(fd)
			continue
		}
		l.conns[int32(fd)] = c
	}
}

// read does one read(2) of c and handles every complete line.
func (l *relayLoop) read(c *relayConn, ts int64) {
	k := copy(l.buf, c.in)
	n, err := rawRead(c.fd, l.buf[k:])
	if err == unix.EAGAIN || err == unix.EINTR {
		return
	}
	if n <= 0 {
		l.drop(c)
		return
	}
	rest := splitLines(l.buf[:k+n], func(line []byte) {
		l.out = l.r.hub.handle(&c.sess, line, ts, l.out, &l.stats)
	})
	if len(rest) == len(l.buf) {
		c.send([]byte(`{"cmd":"error","error":"line too long"}` + "\n"))
		l.drop(c)
		return
	}
	c.in = append(c.in[:0], rest...)
}

// send writes b to c at once, or queues what the socket did not take.
// Any loop may call it; b is copied if kept.
func (c *relayConn) send(b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	if len(c.pending) == 0 {
		n, err := rawWrite(c.fd, b)
		if err != nil && err != unix.EAGAIN && err != unix.EINTR {
			return // the owner sees the error on its next read and closes
		}
		if n == len(b) {
			return
		}
		b = b[max(n, 0):]
		_ = unix.EpollCtl(c.owner.epfd, unix.EPOLL_CTL_MOD, c.fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT, Fd: int32(c.fd)})
	}
	if len(c.pending)+len(b) > relayMaxPending {
		_ = unix.Shutdown(c.fd, unix.SHUT_RDWR) // slow consumer: the owner closes it
		return
	}
	c.pending = append(c.pending, b...)
}

// flush writes c's pending bytes (owner loop, on EPOLLOUT).
func (l *relayLoop) flush(c *relayConn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || len(c.pending) == 0 {
		return
	}
	n, err := rawWrite(c.fd, c.pending)
	if err != nil && err != unix.EAGAIN && err != unix.EINTR {
		return
	}
	c.pending = c.pending[max(n, 0):]
	if len(c.pending) == 0 {
		c.pending = nil
		_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, c.fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(c.fd)})
	}
}

// drop closes c (owner loop) and forgets its login.
func (l *relayLoop) drop(c *relayConn) {
	l.r.hub.leave(&c.sess)
	delete(l.conns, int32(c.fd))
	c.mu.Lock()
	c.closed = true
	c.pending = nil
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, c.fd, nil)
	unix.Close(c.fd)
	c.mu.Unlock()
}

// rawRead and rawWrite are read(2) and write(2) on non-blocking sockets
// without telling the Go scheduler: they never block, so it need not hand
// the processor to another thread meanwhile.
func rawRead(fd int, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	n, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}

func rawWrite(fd int, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if e != 0 {
		return -1, e
	}
	return int(n), nil
}
