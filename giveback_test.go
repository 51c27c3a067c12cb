package redispool

// What the pool owns comes back whatever fails: a permit, the idle set, a
// connection its caller no longer wants.

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// panickyCloseConn is a stressConn whose Close panics after closing it.
type panickyCloseConn struct{ *stressConn }

func (c panickyCloseConn) Close() error {
	c.stressConn.Close()
	panic("Close panics")
}

// TestAWaiterThatDiscardsAConnWhoseClosePanicsKeepsNoPermit checks the
// permit of a conn handed to a queued waiter that may not reuse it: the
// waiter closes it and keeps the permit to dial with, unless the conn's Close
// panics, when the panic leaves Get before the dial and the permit must come
// back (with MaxActive 1, every later Get failed with ErrPoolExhausted).
func TestAWaiterThatDiscardsAConnWhoseClosePanicsKeepsNoPermit(t *testing.T) {
	tr := &stressTracker{}
	var dials atomic.Int32
	var failHealth atomic.Bool
	p := &Pool{MaxActive: 1, WaitTimeout: 300 * time.Millisecond,
		Dial: func() (redis.Conn, error) {
			c, err := tr.Dial()
			if dials.Add(1) == 1 {
				return panickyCloseConn{c.(*stressConn)}, err
			}
			return c, err
		},
		TestOnBorrow: func(redis.Conn, time.Time) error {
			if failHealth.Load() {
				return errStressTOB
			}
			return nil
		},
	}
	defer p.Close()
	held, err := p.GetContext(context.Background()) // dialed: no health check
	require.NoError(t, err)
	failHealth.Store(true)

	panicked := make(chan any, 1)
	go func() {
		defer func() { panicked <- recover() }()
		c, err := p.GetContext(context.Background())
		if err == nil {
			c.Close()
		}
	}()
	require.Eventually(t, func() bool { return p.stats.waits.Load() == 1 }, 5*time.Second, 50*time.Microsecond)
	held.Close() // to the waiter, whose health check fails: it closes the conn, which panics
	select {
	case r := <-panicked:
		require.Equal(t, "Close panics", r, "the conn's panic reaches the waiter")
	case <-time.After(5 * time.Second):
		t.Fatal("the waiter never returned")
	}
	assert.Zero(t, p.ActiveCount())

	c, err := p.GetContext(context.Background())
	require.NoError(t, err, "the permit of the conn whose Close panicked came back (MaxActive 1, nothing open)")
	c.Close()
	checkAtRest(t, p, 0)
}

// TestPoolCloseClosesEveryIdleConnEvenIfOneClosePanics checks that Close
// closes every idle conn when one's Close panics: the panic reaches the
// caller, and a second Close, which returns at once, would leave the rest
// open in a closed pool for good.
func TestPoolCloseClosesEveryIdleConnEvenIfOneClosePanics(t *testing.T) {
	tr := &stressTracker{}
	var dials atomic.Int32
	p := &Pool{MaxActive: 2, Dial: func() (redis.Conn, error) {
		c, err := tr.Dial()
		if dials.Add(1) == 1 {
			return panickyCloseConn{c.(*stressConn)}, err
		}
		return c, err
	}}
	a, err := p.GetContext(context.Background())
	require.NoError(t, err)
	b, err := p.GetContext(context.Background())
	require.NoError(t, err)
	a.Close() // the hot slot, drained first
	b.Close() // the idle channel
	require.Equal(t, 2, p.IdleCount())

	assert.PanicsWithValue(t, "Close panics", func() { p.Close() }, "the conn's panic reaches the caller")
	p.Close() // idempotent
	assert.Zero(t, p.IdleCount(), "idle conns left in a closed pool")
	assert.Zero(t, tr.open.Load(), "conns left open after Close")
	assert.Zero(t, p.ActiveCount())
}

// panickyConn is a stressConn whose Err, Flush or DoWithTimeout panics once
// the method named in panicIn is set.
type panickyConn struct {
	*stressConn
	panicIn *atomic.Value // string: "Err", "Flush" or "DoWithTimeout"
}

func (c panickyConn) panics(method string) {
	if c.panicIn.Load() == method {
		panic(method + " panics")
	}
}

func (c panickyConn) Err() error { c.panics("Err"); return c.stressConn.Err() }
func (c panickyConn) Flush() error {
	c.panics("Flush")
	return c.stressConn.Flush()
}
func (c panickyConn) DoWithTimeout(d time.Duration, cmd string, args ...any) (any, error) {
	c.panics("DoWithTimeout")
	return c.stressConn.DoWithTimeout(d, cmd, args...)
}

// TestAConnWhoseMethodPanicsInCloseGivesItsPermitBack: Close calls the
// conn's own Err, Flush (to write what a borrower sent before discarding the
// conn) and DoWithTimeout (to read pending replies): should one panic, the
// conn is discarded and its permit given back before the panic reaches the
// caller. With MaxActive 1, every later Get failed with ErrPoolExhausted.
func TestAConnWhoseMethodPanicsInCloseGivesItsPermitBack(t *testing.T) {
	for _, tt := range []struct {
		method string
		borrow func(c redis.Conn) // what the borrower does before Close
	}{
		{"Err", func(redis.Conn) {}},
		{"Flush", func(c redis.Conn) { c.Send("SUBSCRIBE", "ch") }},
		{"DoWithTimeout", func(c redis.Conn) { c.Send("GET", "k") }},
	} {
		t.Run(tt.method, func(t *testing.T) {
			tr := &stressTracker{}
			var panicIn atomic.Value
			panicIn.Store("")
			p := &Pool{MaxActive: 1, WaitTimeout: 200 * time.Millisecond, Dial: func() (redis.Conn, error) {
				c, err := tr.Dial()
				if err != nil {
					return nil, err
				}
				return panickyConn{c.(*stressConn), &panicIn}, nil
			}}
			defer p.Close()
			c, err := p.GetContext(context.Background())
			require.NoError(t, err)
			tt.borrow(c)
			panicIn.Store(tt.method)
			assert.PanicsWithValue(t, tt.method+" panics", func() { c.Close() })
			panicIn.Store("")

			assert.Zero(t, p.ActiveCount(), "the conn is discarded")
			assert.EqualValues(t, 1, p.Stats().Discards.Broken)
			c, err = p.GetContext(context.Background())
			require.NoError(t, err, "the permit came back")
			c.Close()
		})
	}
}
