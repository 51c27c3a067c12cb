package redispool_test

// Review of the wait queue and the Get / put / Close / Stats paths.

import (
	"context"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/redispool/redispool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestShrinkWhoseCloseOfAnIdleConnPanicsKeepsTheGetsConn checks the
// conn a Get is about to hand out when that Get, reusing it, shrinks the
// pool (once per IdleTimeout) and the Close of a surplus idle conn panics:
// the panic reaches the caller, as everywhere else, but the conn the Get
// had taken must go back to the pool, not vanish with its permit (with
// MaxActive 2, the pool could then never again hand out 2 conns).
func TestShrinkWhoseCloseOfAnIdleConnPanicsKeepsTheGetsConn(t *testing.T) {
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)()
	d := &fakeDialer{setup: func(c *fakeConn, n int) {
		if n == 2 {
			c.panicsIn("Close")
		}
	}}
	p := &redispool.Pool{MaxActive: 2, IdleTimeout: time.Minute, WaitTimeout: -1, Dial: d.Dial}
	defer func() {
		defer func() { recover() }() // the panicky conn may still be idle
		p.Close()
	}()
	ctx := context.Background()
	a, err := p.GetContext(ctx)
	require.NoError(t, err)
	b, err := p.GetContext(ctx) // its Close panics
	require.NoError(t, err)
	a.Close() // the hot slot
	b.Close() // the idle channel

	// t=30s: both handed out again, so that neither reaches IdleTimeout.
	clk.Advance(30 * time.Second)
	a, err = p.GetContext(ctx)
	require.NoError(t, err)
	b, err = p.GetContext(ctx)
	require.NoError(t, err)
	a.Close()
	b.Close()
	// t=61s: the first shrink; the Gets so far left idleLow at 0, so it
	// closes nothing and starts a new period.
	clk.Advance(31 * time.Second)
	c, err := p.GetContext(ctx) // a, from the hot slot
	require.NoError(t, err)
	c.Close()
	// t=100s: a Get leaves b idle: one idle conn no Get needed this period.
	clk.Advance(39 * time.Second)
	c, err = p.GetContext(ctx)
	require.NoError(t, err)
	c.Close()
	// t=122s: the next Get shrinks the pool, closing b, whose Close panics.
	clk.Advance(22 * time.Second)
	assert.PanicsWithValue(t, "Close panics", func() { p.GetContext(ctx) })

	assert.Equal(t, 1, p.IdleCount(), "the conn the panicking Get had taken went back to the pool")
	held := make([]redis.Conn, 0, 2)
	for range 2 {
		c, err := p.GetContext(ctx)
		require.NoError(t, err, "MaxActive 2, nothing held: a permit was lost")
		held = append(held, c)
	}
	closeAll(held)
	checkAtRest(t, p, 0)
}

// TestAConnGoneFromActiveCountIsCountedAsDiscarded: whoever sees
// ActiveCount drop finds the discard counted, so that dialed = discarded +
// active holds for a monitor, also while the permit is on its way to a
// waiter (which the test holds back by holding the queue's lock).
func TestAConnGoneFromActiveCountIsCountedAsDiscarded(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: 5 * time.Second}
	defer p.Close()
	held, err := p.GetContext(context.Background())
	require.NoError(t, err)
	waiter := queueGet(t, p, context.Background())
	held.Do("BREAK") // Close discards it, and its permit goes to the waiter

	unlock := p.LockQueue()
	closed := make(chan struct{})
	go func() { held.Close(); close(closed) }()
	dropped := assert.Eventually(t, func() bool { return p.ActiveCount() == 0 }, 5*time.Second, 50*time.Microsecond,
		"the closed conn leaves ActiveCount")
	// Read while the waiter cannot be served: once it is, it dials.
	s, dialed, open := p.Stats(), d.made.Load(), d.open.Load()
	unlock()
	require.True(t, dropped)
	assert.Zero(t, open, "the conn is closed")
	assert.Equal(t, dialed, s.Discards.Total()+int64(s.ActiveCount),
		"dialed %d != discarded %d + active %d", dialed, s.Discards.Total(), s.ActiveCount)

	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close never returned")
	}
	r := awaitGet(t, waiter, 5*time.Second, "the waiter was never served")
	require.NoError(t, r.err)
	r.close()
	require.Equal(t, 1, p.IdleCount())
	checkAtRest(t, p, 0)
}
