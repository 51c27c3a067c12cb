//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package redispool

import (
	"errors"
	"io"
	"net"
	"syscall"
	"time"
)

var errUnexpectedRead = errors.New("redispool: unread data on an idle connection")

// peek looks at an idle socket without blocking or consuming anything: the
// server closed it (EOF or an error), or it holds bytes that no command asked
// for. Either way it must not be handed out.
func peek(c net.Conn) error {
	socket := c
	if dc, ok := c.(*deadlineConn); ok {
		socket = dc.Conn
	}
	sc, ok := socket.(syscall.Conn)
	if !ok {
		return nil
	}
	// The last command's read deadline is still set, and once it has passed
	// RawConn.Read fails before looking at the socket: clear it, through
	// the deadlineConn if there is one, which must know the deadline. The
	// next command sets its own.
	if err := c.SetReadDeadline(time.Time{}); err != nil {
		return err
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var result error
	var buf [1]byte
	err = rc.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case n > 0 && isTLSRecord(buf[0]):
			// Under TLS 1.3 the server's session tickets wait here until
			// the first read, which the TLS layer takes in: bytes of a TLS
			// record say nothing about replies. No RESP reply starts so.
			result = nil
		case n > 0:
			result = errUnexpectedRead
		case err == syscall.EAGAIN || err == syscall.EWOULDBLOCK:
			result = nil
		case err != nil:
			result = err
		default:
			result = io.EOF
		}
		return true
	})
	if err != nil {
		return err
	}
	return result
}

// isTLSRecord reports whether b begins a TLS record: change_cipher_spec,
// alert, handshake or application_data.
func isTLSRecord(b byte) bool {
	return b >= 0x14 && b <= 0x17
}
