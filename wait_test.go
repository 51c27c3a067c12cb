package redispool_test

import (
	"context"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redispool/redispool"
)

// startWaiter starts a Get that must wait, and returns once the pool counts
// it as waiting.
func startWaiter(t *testing.T, p *redispool.Pool, ctx context.Context, got func(err error)) {
	t.Helper()
	before := p.Stats().WaitCount
	go func() {
		c, err := p.GetContext(ctx)
		got(err)
		if err == nil {
			c.Close()
		}
	}()
	require.Eventually(t, func() bool { return p.Stats().WaitCount == before+1 }, 5*time.Second, time.Millisecond)
}

func TestWaitersAreServedFirstComeFirstServed(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: 10 * time.Second}
	defer p.Close()
	held := p.Get()
	const n = 8
	order := make(chan int, n)
	for i := range n {
		startWaiter(t, p, context.Background(), func(err error) {
			assert.NoError(t, err)
			order <- i // before Close hands the conn to the next waiter
		})
	}
	held.Close()
	for want := range n {
		select {
		case got := <-order:
			require.Equal(t, want, got, "waiter %d was served out of turn", got)
		case <-time.After(5 * time.Second):
			t.Fatalf("waiter %d never served", want)
		}
	}
	assert.EqualValues(t, 1, d.dials.Load(), "every waiter reused the one conn")
}

func TestAWaiterWhoseContextEndsLeavesTheQueue(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: 10 * time.Second}
	defer p.Close()
	held := p.Get()

	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	startWaiter(t, p, ctx, func(err error) { first <- err })
	second := make(chan error, 1)
	startWaiter(t, p, context.Background(), func(err error) { second <- err })

	cancel()
	select {
	case err := <-first:
		assert.Equal(t, context.Canceled, err)
	case <-time.After(5 * time.Second):
		t.Fatal("cancelled waiter still waiting")
	}
	held.Close() // must reach the second waiter, not the one that left
	select {
	case err := <-second:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("the conn given back went to a waiter that had left")
	}
	require.Eventually(t, func() bool { return p.IdleCount() == 1 }, 5*time.Second, time.Millisecond)
	assert.Equal(t, 1, p.ActiveCount())
	assert.EqualValues(t, 1, d.dials.Load())
}

func TestEachWaiterGivesUpAfterItsOwnWaitTimeout(t *testing.T) {
	const wait = 600 * time.Millisecond
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: wait}
	defer p.Close()
	held := p.Get()
	defer held.Close()

	type result struct {
		err     error
		elapsed time.Duration
	}
	results := make([]chan result, 3)
	for i := range results {
		results[i] = make(chan result, 1)
		start := time.Now()
		startWaiter(t, p, context.Background(), func(err error) {
			results[i] <- result{err, time.Since(start)}
		})
		time.Sleep(wait / 3) // staggered: one timer serves deadlines apart
	}
	for i, ch := range results {
		select {
		case r := <-ch:
			assert.ErrorIs(t, r.err, redispool.ErrPoolExhausted, "waiter %d", i)
			assert.GreaterOrEqual(t, r.elapsed, wait, "waiter %d gave up early", i)
			assert.Less(t, r.elapsed, wait+250*time.Millisecond, "waiter %d gave up late", i)
		case <-time.After(5 * time.Second):
			t.Fatalf("waiter %d never gave up", i)
		}
	}
	assert.EqualValues(t, 3, p.Stats().WaitTimeoutCount)

	// The timer is set again for waiters who come after the queue emptied.
	start := time.Now()
	_, err := p.GetContext(context.Background())
	assert.ErrorIs(t, err, redispool.ErrPoolExhausted)
	assert.GreaterOrEqual(t, time.Since(start), wait)
}

func TestAConnGrantedAfterTheContextEndedGoesBackToThePool(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: 10 * time.Second}
	defer p.Close()
	held := p.Get()

	ctx := redispool.NewLateContext()
	errEnded := errors.New("caller gave up")
	got := make(chan error, 1)
	startWaiter(t, p, ctx, func(err error) { got <- err })
	ctx.End(errEnded)
	held.Close()
	select {
	case err := <-got:
		assert.Equal(t, errEnded, err, "a caller that gave up gets its context's error, not a conn")
	case <-time.After(5 * time.Second):
		t.Fatal("waiter not woken")
	}
	assert.Equal(t, 1, p.IdleCount(), "the conn went back to the idle set")
	assert.Equal(t, 1, p.ActiveCount())
	c := p.Get()
	require.NoError(t, c.Err())
	c.Close()
	assert.EqualValues(t, 1, d.dials.Load())
}

func TestAPermitGrantedAfterTheContextEndedGoesBackToThePool(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: 10 * time.Second}
	defer p.Close()
	held := p.Get()

	ctx := redispool.NewLateContext()
	got := make(chan error, 1)
	startWaiter(t, p, ctx, func(err error) { got <- err })
	ctx.End(context.Canceled)
	p.Retire()
	held.Close() // closed, not kept: its permit goes to the waiter
	select {
	case err := <-got:
		assert.Equal(t, context.Canceled, err)
	case <-time.After(5 * time.Second):
		t.Fatal("waiter not woken")
	}
	assert.Equal(t, 0, p.ActiveCount(), "the waiter did not dial")
	c := p.Get()
	require.NoError(t, c.Err(), "the permit came back")
	c.Close()
	assert.EqualValues(t, 2, d.dials.Load())
}

func TestAConnGivenBackAsACallerQueuesReachesIt(t *testing.T) {
	// Close may see no waiter and make the conn idle just as a caller that
	// found nothing idle queues: the caller must still get it, not wait for
	// the next Close, which never comes here.
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: 10 * time.Second}
	defer p.Close()
	for i := range 20000 {
		held := p.Get()
		require.NoError(t, held.Err())
		got := make(chan error, 1)
		go func() {
			c, err := p.GetContext(context.Background())
			if err == nil {
				c.Close()
			}
			got <- err
		}()
		for range i % 64 { // move the Close across the caller's steps
			runtime.Gosched()
		}
		held.Close()
		select {
		case err := <-got:
			require.NoError(t, err)
		case <-time.After(2 * time.Second):
			t.Fatalf("round %d: the caller missed the conn given back as it queued", i)
		}
	}
	assert.EqualValues(t, 1, d.dials.Load())
}

func TestAWaiterWhoseConnMayNotBeReusedKeepsItsTurn(t *testing.T) {
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)()
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, IdleTimeout: time.Minute, WaitTimeout: 10 * time.Second}
	defer p.Close()
	held := p.Get()
	require.NoError(t, held.Err())
	order := make(chan string, 2)
	for _, name := range []string{"first", "second"} {
		startWaiter(t, p, context.Background(), func(err error) {
			assert.NoError(t, err, name)
			order <- name
		})
	}
	clk.Advance(2 * time.Minute) // held past IdleTimeout: closed, not handed out
	held.Close()
	for _, want := range []string{"first", "second"} {
		select {
		case got := <-order:
			require.Equal(t, want, got, "the first waiter lost its turn when the conn it was given was closed")
		case <-time.After(5 * time.Second):
			t.Fatalf("%s waiter never served", want)
		}
	}
	assert.EqualValues(t, 2, d.dials.Load(), "the first waiter dialed a new conn with the closed one's permit")
	assert.EqualValues(t, 1, p.Stats().Discards.IdleTimeout)
	assert.LessOrEqual(t, p.ActiveCount(), 1)
}

func TestAWaiterWhoseContextEndedBeforeItsWaitTimeoutGetsTheContextError(t *testing.T) {
	d := &fakeDialer{}
	// The late context is noticed when WaitTimeout ends the wait; it must
	// have ended by then, whatever the machine's load.
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: time.Second}
	defer p.Close()
	held := p.Get()
	defer held.Close()

	ctx := redispool.NewLateContext()
	errEnded := errors.New("caller gave up")
	got := make(chan error, 1)
	startWaiter(t, p, ctx, func(err error) { got <- err })
	ctx.End(errEnded) // before WaitTimeout ends the wait
	select {
	case err := <-got:
		assert.Equal(t, errEnded, err)
	case <-time.After(5 * time.Second):
		t.Fatal("waiter never gave up")
	}
	assert.Zero(t, p.Stats().WaitTimeoutCount, "a caller that gave up first is not counted as exhausted")
}

func TestADialSlotGrantedAfterTheContextEndedGoesBack(t *testing.T) {
	d := &fakeDialer{}
	release := make(chan struct{})
	var first atomic.Bool
	p := &redispool.Pool{MaxActive: 3, MaxConcurrentDials: 1, WaitTimeout: 5 * time.Second, Dial: func() (redis.Conn, error) {
		if first.CompareAndSwap(false, true) {
			<-release // the first dial holds the only dial slot
		}
		return d.Dial()
	}}
	defer p.Close()
	held := make(chan redis.Conn, 1)
	go func() { held <- p.Get() }()
	require.Eventually(t, func() bool { return p.Stats().DialCount == 1 }, 5*time.Second, time.Millisecond)

	ctx := redispool.NewLateContext()
	errEnded := errors.New("caller gave up")
	got := make(chan error, 1)
	go func() {
		_, err := p.GetContext(ctx)
		got <- err
	}()
	// Waiting for the dial slot: the select on ctx.Done is the only call.
	require.Eventually(t, func() bool { return ctx.Dones() > 0 }, 5*time.Second, time.Millisecond)
	ctx.End(errEnded)
	close(release) // the slot goes to the caller that gave up
	select {
	case err := <-got:
		assert.Equal(t, errEnded, err)
	case <-time.After(5 * time.Second):
		t.Fatal("the caller waiting for a dial slot was not woken")
	}
	c := <-held
	require.NoError(t, c.Err())
	defer c.Close()

	start := time.Now()
	c2, err := p.GetContext(context.Background())
	require.NoError(t, err, "the dial slot and the permit came back")
	c2.Close()
	assert.Less(t, time.Since(start), time.Second)
	assert.EqualValues(t, 2, p.Stats().DialCount, "the caller that gave up did not dial")
}

// TestWaitTimeoutBoundsAGetAsAWhole checks that WaitTimeout bounds a Get's
// waits together: a caller that queued for a connection, got a permit as
// the connection was discarded, and then waits for its own hung Dial gives
// up WaitTimeout after it began to wait, not WaitTimeout after each wait.
func TestWaitTimeoutBoundsAGetAsAWhole(t *testing.T) {
	const wait = time.Second
	hung := make(chan struct{})
	defer close(hung)
	var dials atomic.Int32
	first := &fakeConn{}
	p := &redispool.Pool{
		Dial: func() (redis.Conn, error) {
			if dials.Add(1) == 1 {
				return first, nil
			}
			<-hung
			return nil, errors.New("fake: gave up")
		},
		MaxActive:   1,
		WaitTimeout: wait,
	}
	defer p.Close()
	held := p.Get()
	require.NoError(t, held.Err())

	got := make(chan error, 1)
	start := time.Now()
	go func() {
		c := p.Get()
		got <- c.Err()
		c.Close()
	}()
	require.Eventually(t, func() bool { return p.Stats().WaitCount == 1 }, 5*time.Second, time.Millisecond)
	time.Sleep(wait * 6 / 10)
	first.setErr(errBroken) // Close discards it
	held.Close()

	err := <-got
	took := time.Since(start)
	require.ErrorIs(t, err, redispool.ErrPoolExhausted)
	assert.Less(t, took, wait*14/10, "a Get that waited for a conn, then for its dial, with WaitTimeout %v", wait)
	assert.EqualValues(t, 2, dials.Load())
}

// TestExhaustedIsRedigosErrorItself: code written for redis.Pool compares
// the error with ==, which only the sentinel itself matches; what the Get
// waited for is in the log record instead.
func TestExhaustedIsRedigosErrorItself(t *testing.T) {
	d := &fakeDialer{}
	for _, wait := range []time.Duration{-1, 10 * time.Millisecond} {
		p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: wait}
		held := p.Get()
		require.NoError(t, held.Err())
		c, err := p.GetContext(context.Background())
		assert.True(t, err == redis.ErrPoolExhausted, "WaitTimeout %v: got %v", wait, err)
		assert.True(t, c.Err() == redis.ErrPoolExhausted, "WaitTimeout %v: the conn's error is %v", wait, c.Err())
		held.Close()
		p.Close()
	}
}
