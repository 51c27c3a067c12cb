package redispool_test

// What the pool owns comes back whatever fails: a permit, the idle set, a
// connection its caller no longer wants.

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/redispool/redispool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestAWaiterThatDiscardsAConnWhoseClosePanicsKeepsNoPermit checks the
// permit of a conn handed to a queued waiter that may not reuse it: the
// waiter closes it and keeps the permit to dial with, unless the conn's Close
// panics, when the panic leaves Get before the dial and the permit must come
// back (with MaxActive 1, every later Get failed with ErrPoolExhausted).
func TestAWaiterThatDiscardsAConnWhoseClosePanicsKeepsNoPermit(t *testing.T) {
	d := &fakeDialer{setup: func(c *fakeConn, n int) {
		if n == 1 {
			c.panicsIn("Close")
		}
	}}
	var failHealth atomic.Bool
	p := &redispool.Pool{MaxActive: 1, WaitTimeout: 300 * time.Millisecond, Dial: d.Dial,
		TestOnBorrow: func(redis.Conn, time.Time) error {
			if failHealth.Load() {
				return errUnhealthy
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
	require.Eventually(t, func() bool { return p.Stats().WaitCount == 1 }, 5*time.Second, 50*time.Microsecond)
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
	d := &fakeDialer{setup: func(c *fakeConn, n int) {
		if n == 1 {
			c.panicsIn("Close")
		}
	}}
	p := &redispool.Pool{MaxActive: 2, Dial: d.Dial}
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
	assert.Zero(t, d.open.Load(), "conns left open after Close")
	assert.Zero(t, p.ActiveCount())
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
			d := &fakeDialer{}
			p := &redispool.Pool{MaxActive: 1, WaitTimeout: 200 * time.Millisecond, Dial: d.Dial}
			defer p.Close()
			c, err := p.GetContext(context.Background())
			require.NoError(t, err)
			tt.borrow(c)
			d.last(t).panicsIn(tt.method)
			assert.PanicsWithValue(t, tt.method+" panics", func() { c.Close() })
			d.last(t).panicsIn("")

			assert.Zero(t, p.ActiveCount(), "the conn is discarded")
			assert.EqualValues(t, 1, p.Stats().Discards.Broken)
			c, err = p.GetContext(context.Background())
			require.NoError(t, err, "the permit came back")
			c.Close()
		})
	}
}
