package batch

import (
	"syscall"
	"unsafe"
)

// handOver gives buf to the connection. When gnet holds nothing for it,
// buf is first offered to the socket with a raw write(2), which the Go
// scheduler is not told of: the socket is non-blocking, so the call never
// blocks, and the loop's thread keeps its processor instead of going
// through entersyscall/exitsyscall, where sysmon may hand the processor
// to another thread meanwhile (a context switch and a futex wake-up each
// time it does). What the socket does not take, and any error, goes to
// gnet's Write as before: it buffers the rest and waits for writability,
// or closes the connection on an error.
func (e *Endpoint) handOver(buf []byte) {
	if len(buf) > 0 && e.C.OutboundBuffered() == 0 {
		n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(e.C.Fd()), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)))
		if errno == 0 {
			if int(n) == len(buf) {
				return
			}
			buf = buf[n:]
		}
	}
	_, _ = e.C.Write(buf) // gnet copies what the socket does not take at once
}
