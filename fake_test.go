package redispool_test

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/redispool/redispool"
)

// fakeConn is a redis.ConnWithTimeout that records what it is asked and
// answers from a script. It is safe for concurrent use.
type fakeConn struct {
	mu       sync.Mutex
	calls    []string        // "DO GET", "SEND SET", "FLUSH", "RECV", "CLOSE"
	timeouts []time.Duration // read timeout of each Do/Receive
	pending  int
	err      error // set by Close or by a failing call, as redigo's conn does
	closed   bool

	// doErr, when set, is returned (and made fatal unless a redis.Error) by the next Do.
	doErr error
	// reply answers Do and Receive; nil means "OK".
	reply func(cmd string, args []any) (any, error)
}

func (c *fakeConn) record(s string, timeout time.Duration, hasTimeout bool) {
	c.calls = append(c.calls, s)
	if hasTimeout {
		c.timeouts = append(c.timeouts, timeout)
	}
}

func (c *fakeConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, "CLOSE")
	if !c.closed {
		c.closed = true
		if c.err == nil {
			c.err = errors.New("fake: closed")
		}
	}
	return nil
}

func (c *fakeConn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *fakeConn) Do(cmd string, args ...any) (any, error) {
	return c.DoWithTimeout(-1, cmd, args...)
}

func (c *fakeConn) DoWithTimeout(timeout time.Duration, cmd string, args ...any) (any, error) {
	c.mu.Lock()
	unlock := c.mu.Unlock
	defer func() { unlock() }()
	c.record("DO "+cmd, timeout, timeout >= 0)
	if c.err != nil {
		return nil, c.err
	}
	if cmd == "" && c.pending == 0 {
		return nil, nil
	}
	if err := c.doErr; err != nil {
		c.doErr = nil
		if _, ok := err.(redis.Error); !ok {
			c.err = err
		}
		return nil, err
	}
	n := c.pending
	c.pending = 0
	if c.reply != nil {
		// Answer unlocked, so that a reply that blocks lets Close proceed.
		reply := c.reply
		c.mu.Unlock()
		unlock = func() {}
		return reply(cmd, args)
	}
	if cmd == "" {
		return make([]any, n), nil
	}
	return "OK", nil
}

func (c *fakeConn) Send(cmd string, args ...any) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.record("SEND "+cmd, 0, false)
	if c.err != nil {
		return c.err
	}
	c.pending++
	return nil
}

func (c *fakeConn) Flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.record("FLUSH", 0, false)
	return c.err
}

func (c *fakeConn) Receive() (any, error) { return c.ReceiveWithTimeout(-1) }

func (c *fakeConn) ReceiveWithTimeout(timeout time.Duration) (any, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.record("RECV", timeout, timeout >= 0)
	if c.err != nil {
		return nil, c.err
	}
	if err := c.doErr; err != nil {
		c.doErr = nil
		if _, ok := err.(redis.Error); !ok {
			c.err = err
		}
		return nil, err
	}
	if c.pending > 0 {
		c.pending--
	}
	return "OK", nil
}

// Calls returns a copy of the calls recorded so far.
func (c *fakeConn) Calls() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.calls...)
}

// Timeouts returns the read timeouts recorded so far.
func (c *fakeConn) Timeouts() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.timeouts...)
}

func (c *fakeConn) IsClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// fakeDialer hands out fakeConns and counts them.
type fakeDialer struct {
	mu    sync.Mutex
	conns []*fakeConn
	dials atomic.Int64
	err   error // returned by Dial while set
	// setup, when set, prepares each new conn.
	setup func(*fakeConn)
}

func (d *fakeDialer) Dial() (redis.Conn, error) {
	d.dials.Add(1)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.err != nil {
		return nil, d.err
	}
	c := &fakeConn{}
	if d.setup != nil {
		d.setup(c)
	}
	d.conns = append(d.conns, c)
	return c, nil
}

func (d *fakeDialer) SetErr(err error) {
	d.mu.Lock()
	d.err = err
	d.mu.Unlock()
}

func (d *fakeDialer) Conns() []*fakeConn {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]*fakeConn(nil), d.conns...)
}

// last returns the most recently dialed conn.
func (d *fakeDialer) last(t testing.TB) *fakeConn {
	t.Helper()
	cs := d.Conns()
	if len(cs) == 0 {
		t.Fatal("no connection was dialed")
	}
	return cs[len(cs)-1]
}

// clock is a settable clock for redispool.SetNowFunc.
type clock = redispool.TestClock

func newClock() *clock { return redispool.NewTestClock() }
