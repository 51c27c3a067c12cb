package faults

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redispool/redispool/internal/redistest"
)

// naiveConn is a deliberately careless RESP2 client, the kind of redis.Conn a
// user's Dial may return. It has the scredis defect built in: when a read
// times out (or fails in any other way) it returns the error but
//
//   - keeps the socket open and every byte already read, including the first
//     half of a reply;
//   - forgets that replies are still owed: its count of pending replies drops
//     to zero before it reads them;
//   - keeps Err() nil, so a pool that trusts Err() reuses it.
//
// The next command on it then reads the late reply to the command that timed
// out: key B's value handed to the request for key A.
//
// It implements redis.Conn and redis.ConnWithTimeout, so a pool can give it a
// deadline per command. Like redigo's conns, it allows one goroutine that
// writes (Send, Flush) and one that reads (Receive) at once, as AutoPipeline's
// shared conns use it, and Close from any goroutine (redispool closes a conn
// from another goroutine when a context ends mid-read).
type naiveConn struct {
	nc           net.Conn
	readTimeout  time.Duration // for Do and Receive; 0: none
	writeTimeout time.Duration
	wbuf         []byte // commands sent but not flushed
	rbuf         []byte // bytes read but not yet parsed into a reply, from roff on
	roff         int
	// pending and broken are shared by the writer and the reader.
	pending atomic.Int64
	broken  atomic.Bool // a read or write failed; the defect is to carry on
	closed  atomic.Bool
	stats   *naiveStats
}

var (
	_ redis.Conn            = (*naiveConn)(nil)
	_ redis.ConnWithTimeout = (*naiveConn)(nil)
)

// naiveStats counts the naive conns a dialer opened and closed, and the
// commands sent on a naive conn after a read or write on it had failed: a
// pool that reuses such a conn hands its late replies to the next caller.
type naiveStats struct {
	opened, closed, reusedBroken atomic.Int64
}

// naiveDialer returns a Dial function for a pool that opens naive conns to
// addr, with readTimeout as the default deadline of Do and Receive.
func naiveDialer(addr string, readTimeout time.Duration, st *naiveStats) func() (redis.Conn, error) {
	return func() (redis.Conn, error) {
		nc, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return nil, err
		}
		st.opened.Add(1)
		return &naiveConn{nc: nc, readTimeout: readTimeout, writeTimeout: time.Second, stats: st}, nil
	}
}

// Err is the defect: nil even after a timeout left a reply on the socket.
func (c *naiveConn) Err() error {
	if c.closed.Load() {
		return net.ErrClosed
	}
	return nil
}

func (c *naiveConn) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	c.stats.closed.Add(1)
	return c.nc.Close()
}

func (c *naiveConn) Send(cmd string, args ...any) error {
	c.noteReuse()
	c.appendCommand(cmd, args)
	c.pending.Add(1)
	return nil
}

func (c *naiveConn) Flush() error {
	if len(c.wbuf) == 0 {
		return nil
	}
	if c.writeTimeout > 0 {
		c.nc.SetWriteDeadline(time.Now().Add(c.writeTimeout))
	}
	_, err := c.nc.Write(c.wbuf)
	c.wbuf = c.wbuf[:0]
	if err != nil {
		c.broken.Store(true)
	}
	return err
}

// noteReuse counts a command sent on a conn that already failed.
func (c *naiveConn) noteReuse() {
	if c.broken.Load() {
		c.stats.reusedBroken.Add(1)
	}
}

func (c *naiveConn) Do(cmd string, args ...any) (any, error) {
	return c.DoWithTimeout(c.readTimeout, cmd, args...)
}

// DoWithTimeout sends cmd (none when cmd is "") and reads the pending replies
// and its own, as redigo's Do does: with cmd "" it returns the pending
// replies as a slice, otherwise the last reply.
func (c *naiveConn) DoWithTimeout(timeout time.Duration, cmd string, args ...any) (any, error) {
	if cmd != "" {
		c.noteReuse()
		c.appendCommand(cmd, args)
	}
	if err := c.Flush(); err != nil {
		return nil, err
	}
	n := int(c.pending.Swap(0)) // the defect: owed replies are forgotten before they are read
	deadline := deadlineAfter(timeout)
	if cmd == "" {
		replies := make([]any, n)
		for i := range replies {
			r, err := c.readReply(deadline)
			if err != nil {
				return nil, err
			}
			replies[i] = r
		}
		return replies, nil
	}
	var reply any
	var rerr error
	for range n + 1 {
		r, err := c.readReply(deadline)
		if err != nil {
			return nil, err
		}
		if e, ok := r.(redis.Error); ok && rerr == nil {
			rerr = e
		}
		reply = r
	}
	return reply, rerr
}

func (c *naiveConn) Receive() (any, error) {
	return c.ReceiveWithTimeout(c.readTimeout)
}

func (c *naiveConn) ReceiveWithTimeout(timeout time.Duration) (any, error) {
	c.noteReuse()
	if c.pending.Add(-1) < 0 {
		c.pending.Add(1) // forgotten even if the read below fails
	}
	r, err := c.readReply(deadlineAfter(timeout))
	if err != nil {
		return nil, err
	}
	if e, ok := r.(redis.Error); ok {
		return nil, e
	}
	return r, nil
}

func deadlineAfter(d time.Duration) time.Time {
	if d <= 0 {
		return time.Time{}
	}
	return time.Now().Add(d)
}

// appendCommand writes cmd and args as a RESP array of bulk strings.
func (c *naiveConn) appendCommand(cmd string, args []any) {
	c.wbuf = append(c.wbuf, '*')
	c.wbuf = strconv.AppendInt(c.wbuf, int64(1+len(args)), 10)
	c.wbuf = append(c.wbuf, "\r\n"...)
	c.appendBulk([]byte(cmd))
	for _, a := range args {
		switch a := a.(type) {
		case string:
			c.appendBulk([]byte(a))
		case []byte:
			c.appendBulk(a)
		case int:
			c.appendBulk(strconv.AppendInt(nil, int64(a), 10))
		case int64:
			c.appendBulk(strconv.AppendInt(nil, a, 10))
		default:
			c.appendBulk(fmt.Append(nil, a))
		}
	}
}

func (c *naiveConn) appendBulk(b []byte) {
	c.wbuf = append(c.wbuf, '$')
	c.wbuf = strconv.AppendInt(c.wbuf, int64(len(b)), 10)
	c.wbuf = append(c.wbuf, "\r\n"...)
	c.wbuf = append(c.wbuf, b...)
	c.wbuf = append(c.wbuf, "\r\n"...)
}

// readReply parses one reply from the bytes already read, reading more until
// it is complete. On a read error, what was read stays in rbuf: the next
// call starts from the middle of the reply that was late.
func (c *naiveConn) readReply(deadline time.Time) (any, error) {
	for {
		v, n, err := parseReply(c.rbuf[c.roff:])
		if err != nil {
			return nil, err
		}
		if n > 0 {
			c.roff += n
			if c.roff == len(c.rbuf) {
				c.rbuf, c.roff = c.rbuf[:0], 0
			}
			return v, nil
		}
		if c.roff > 0 {
			c.rbuf = c.rbuf[:copy(c.rbuf, c.rbuf[c.roff:])]
			c.roff = 0
		}
		if cap(c.rbuf)-len(c.rbuf) < 4096 {
			c.rbuf = append(make([]byte, 0, 2*cap(c.rbuf)+4096), c.rbuf...)
		}
		c.nc.SetReadDeadline(deadline)
		m, err := c.nc.Read(c.rbuf[len(c.rbuf):cap(c.rbuf)])
		c.rbuf = c.rbuf[:len(c.rbuf)+m]
		if err != nil && m == 0 {
			c.broken.Store(true) // but the socket and the bytes read are kept
			return nil, err
		}
	}
}

var errProtocol = errors.New("naive: protocol error")

// parseReply parses one RESP2 reply at the start of b. It returns n == 0
// when b does not hold a whole reply yet.
func parseReply(b []byte) (v any, n int, err error) {
	i := bytes.Index(b, []byte("\r\n"))
	if i < 0 {
		return nil, 0, nil
	}
	if i == 0 {
		return nil, 0, errProtocol
	}
	line, n := b[1:i], i+2
	switch b[0] {
	case '+':
		return string(line), n, nil
	case '-':
		return redis.Error(line), n, nil
	case ':':
		x, err := strconv.ParseInt(string(line), 10, 64)
		if err != nil {
			return nil, 0, errProtocol
		}
		return x, n, nil
	case '$':
		size, err := strconv.Atoi(string(line))
		switch {
		case err != nil || size < -1:
			return nil, 0, errProtocol
		case size == -1:
			return nil, n, nil
		case len(b) < n+size+2:
			return nil, 0, nil
		}
		return bytes.Clone(b[n : n+size]), n + size + 2, nil
	case '*':
		count, err := strconv.Atoi(string(line))
		switch {
		case err != nil || count < -1:
			return nil, 0, errProtocol
		case count == -1:
			return nil, n, nil
		}
		elems := make([]any, count)
		for k := range elems {
			e, m, err := parseReply(b[n:])
			if err != nil || m == 0 {
				return nil, 0, err
			}
			elems[k] = e
			n += m
		}
		return elems, n, nil
	}
	return nil, 0, errProtocol
}

// TestTheNaiveConnIsDangerousOnItsOwn shows the defect without any pool: a
// GET that times out while the server is frozen leaves its reply for the
// next GET, which returns another key's value with no error.
func TestTheNaiveConnIsDangerousOnItsOwn(t *testing.T) {
	checkLeaks(t)
	srv := redistest.Start(t)
	srv.Do(t, "MSET", "key:a", "value:a", "key:b", "value:b")
	var st naiveStats
	c, err := naiveDialer(srv.Addr(), 100*time.Millisecond, &st)()
	require.NoError(t, err)
	defer c.Close()

	// Its replies are redigo's: status, integer, bulk, nil, array, error.
	c.Send("SET", "n", 41)
	c.Send("INCR", "n")
	c.Send("GET", "missing")
	replies, err := redis.Values(c.Do(""))
	require.NoError(t, err)
	assert.Equal(t, []any{"OK", int64(42), nil}, replies)
	v, err := redis.Strings(c.Do("MGET", "key:a", "key:b"))
	require.NoError(t, err)
	assert.Equal(t, []string{"value:a", "value:b"}, v)
	_, err = c.Do("INCR", "key:a")
	var rerr redis.Error
	assert.ErrorAs(t, err, &rerr)

	srv.Stop(t)
	_, err = c.Do("GET", "key:a")
	require.ErrorIs(t, err, errDeadline)
	assert.NoError(t, c.Err(), "the defect: Err stays nil after a timeout")
	srv.Cont(t)

	got, err := redis.String(c.Do("GET", "key:b"))
	require.NoError(t, err)
	assert.Equal(t, "value:a", got, "GET key:b returned key:a's late reply")
	got, err = redis.String(c.Do("GET", "key:b"))
	require.NoError(t, err)
	assert.Equal(t, "value:b", got, "and every later command gets the reply before its own")
}

// TestTheNaiveConnKeepsHalfAReply checks that a reply cut by a timeout is kept
// half-read: bytes of the late reply surface in the next command's reply.
func TestTheNaiveConnKeepsHalfAReply(t *testing.T) {
	checkLeaks(t)
	srv, cli := net.Pipe()
	defer srv.Close()
	c := &naiveConn{nc: cli, readTimeout: 50 * time.Millisecond, writeTimeout: time.Second, stats: &naiveStats{}}
	defer c.Close()
	served := make(chan error, 1)
	go func() {
		// Read the two commands as they come, answering the first in two
		// halves with a pause between them longer than the read timeout.
		buf := make([]byte, 1024)
		if _, err := srv.Read(buf); err != nil {
			served <- err
			return
		}
		srv.Write([]byte("$7\r\nval"))
		time.Sleep(150 * time.Millisecond)
		if _, err := srv.Read(buf); err != nil {
			served <- err
			return
		}
		_, err := srv.Write([]byte("ue:a\r\n$7\r\nvalue:b\r\n"))
		served <- err
	}()
	_, err := c.Do("GET", "key:a")
	require.ErrorIs(t, err, errDeadline)
	got, err := redis.String(c.Do("GET", "key:b"))
	require.NoError(t, err)
	assert.Equal(t, "value:a", got)
	require.NoError(t, <-served)
}
