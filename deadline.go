package redispool

import (
	"net"
	"sync"
	"time"
)

// maxDeadlineSlack bounds how late a deadline on a socket the pool dialed may
// be honoured (see deadlineConn).
const maxDeadlineSlack = 5 * time.Millisecond

// deadlineSlack is the slack of the deadlines of a pool's sockets: 1/64 of
// the shorter of its read and write timeouts, at most maxDeadlineSlack, and
// zero when neither is set.
func deadlineSlack(readTimeout, writeTimeout time.Duration) time.Duration {
	shortest := readTimeout
	if shortest == 0 || (writeTimeout > 0 && writeTimeout < shortest) {
		shortest = writeTimeout
	}
	return min(shortest/64, maxDeadlineSlack)
}

// deadlineConn is a socket the pool dialed, as redigo's conn sees it. redigo
// moves the write deadline before every command and the read deadline before
// every reply, and each move costs a lock and a timer update in the runtime's
// network poller: on a busy connection, a few percent of the CPU a command
// takes. deadlineConn keeps a deadline that is already later than the one
// asked for by no more than slack, and sets a new one slack later than
// asked. A deadline is therefore never earlier than asked and at most slack
// later, and a busy connection moves its deadlines about once per slack
// rather than twice per command. No deadline (the zero time) is set exactly.
type deadlineConn struct {
	net.Conn
	slack time.Duration

	mu          sync.Mutex
	read, write deadline // as set on the socket
}

// deadline is one of a socket's deadlines as last set, when known.
type deadline struct {
	at    time.Time
	known bool // false until set, and after setting it failed
}

// keeps reports whether d serves as the deadline t within slack.
func (d deadline) keeps(t time.Time, slack time.Duration) bool {
	switch {
	case !d.known:
		return false
	case t.IsZero() || d.at.IsZero():
		return t.IsZero() && d.at.IsZero()
	}
	return !d.at.Before(t) && d.at.Sub(t) <= slack
}

// later is t moved slack later, or no deadline for no deadline.
func (c *deadlineConn) later(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.Add(c.slack)
}

func (c *deadlineConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.read.keeps(t, c.slack) {
		return nil
	}
	at := c.later(t)
	err := c.Conn.SetReadDeadline(at)
	c.read = deadline{at: at, known: err == nil}
	return err
}

func (c *deadlineConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.write.keeps(t, c.slack) {
		return nil
	}
	at := c.later(t)
	err := c.Conn.SetWriteDeadline(at)
	c.write = deadline{at: at, known: err == nil}
	return err
}

func (c *deadlineConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.read.keeps(t, c.slack) && c.write.keeps(t, c.slack) {
		return nil
	}
	at := c.later(t)
	err := c.Conn.SetDeadline(at)
	c.read = deadline{at: at, known: err == nil}
	c.write = c.read
	return err
}
