package redispool_test

// The wait: a Get that finds no idle connection and no dial ticket waits in
// one queue, first come first served, for a connection given back or a
// ticket to dial, until its WaitTimeout (counted once, from its first wait,
// across all its waits) or its context ends, and then returns
// redis.ErrPoolExhausted or ctx.Err() itself. A connection or ticket granted
// to a caller that gave up goes back to the pool.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/internal/redistest"
)

// ---------------------------------------------------------------------------
// The queue.

func TestGetWaitsForAConnToBeReturned(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: 5 * time.Second}
	defer p.Close()
	held := p.Get()
	got := queueGet(t, p, context.Background())
	// The waiter must still be waiting while the conn is held.
	select {
	case r := <-got:
		t.Fatalf("Get returned %v while the only conn was held", r.err)
	default:
	}
	held.Close()
	r := awaitGet(t, got, 5*time.Second, "waiter not woken by Close of the held conn")
	require.NoError(t, r.err)
	r.close()
	assert.EqualValues(t, 1, d.dials.Load(), "the waiter reuses the returned conn")
}

func TestWaitersAreServedFirstComeFirstServed(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: 10 * time.Second}
	defer p.Close()
	held := p.Get()
	const n = 8
	order := make(chan int, n)
	for i := range n {
		waiter := queueGet(t, p, context.Background())
		go func() {
			r := <-waiter
			assert.NoError(t, r.err)
			order <- i // before Close hands the conn to the next waiter
			r.close()
		}()
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
		waiter := queueGet(t, p, context.Background())
		go func() {
			r := <-waiter
			assert.NoError(t, r.err, name)
			order <- name
			r.close()
		}()
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
		got := goGet(p, context.Background())
		for range i % 64 { // move the Close across the caller's steps
			runtime.Gosched()
		}
		held.Close()
		r := awaitGet(t, got, 2*time.Second, "round", i, "the caller missed the conn given back as it queued")
		require.NoError(t, r.err)
		r.close()
	}
	assert.EqualValues(t, 1, d.dials.Load())
}

// TestADialSlotWaiterTakesAConnGivenBack: a Get that finds a permit but
// every dial slot taken (by a slow dial) waits, and takes a conn given back
// meanwhile rather than fail at its WaitTimeout, as happens while dials are
// slow to be accepted.
func TestADialSlotWaiterTakesAConnGivenBack(t *testing.T) {
	// MaxIdle 1 leaves the idle set no room but the hot slot.
	for _, maxIdle := range []int{0, 1} {
		t.Run(fmt.Sprintf("MaxIdle %d", maxIdle), func(t *testing.T) {
			release := make(chan struct{})
			d := &fakeDialer{}
			var dials atomic.Int64
			p := &redispool.Pool{MaxActive: 3, MaxIdle: maxIdle, MaxConcurrentDials: 1, WaitTimeout: time.Second, Dial: func() (redis.Conn, error) {
				if dials.Add(1) == 2 {
					<-release // the second dial is slow, and holds the only slot
				}
				return d.Dial()
			}}
			ctx := context.Background()
			held, err := p.GetContext(ctx)
			require.NoError(t, err)
			slow := goGet(p, ctx) // dials, slowly: holds the slot
			defer func() {
				close(release)
				awaitGet(t, slow, 5*time.Second).close()
				p.Close()
			}()
			require.Eventually(t, func() bool { return dials.Load() == 2 }, 5*time.Second, time.Millisecond)

			got := goGet(p, ctx)
			require.Eventually(t, func() bool { return p.Accounting().Waiters == 1 }, 5*time.Second, time.Millisecond,
				"the third Get queues: a permit is free, the dial slot is not")
			held.Close() // idle now: the Get waiting for a slot could use it
			r := awaitGet(t, got, 5*time.Second)
			r.close()
			assert.NoError(t, r.err, "a conn was idle for the whole wait, yet the Get failed")
		})
	}
}

// TestAGetThatWaitedStampsItsConnWhenTheWaitEnded checks the time a
// connection handed out after a wait is stamped with, which TestOnBorrow
// is given as lastUsed and IdleTimeout counts from: the moment the wait
// ended, read once for both the wait's duration and the stamp. A stamp from
// before the connection came back would make it look idle longer than it
// was.
func TestAGetThatWaitedStampsItsConnWhenTheWaitEnded(t *testing.T) {
	var mu sync.Mutex
	var lastUsed []time.Time
	d := &fakeDialer{}
	p := &redispool.Pool{
		MaxActive: 1,
		Dial:      d.Dial,
		TestOnBorrow: func(_ redis.Conn, t time.Time) error {
			mu.Lock()
			lastUsed = append(lastUsed, t)
			mu.Unlock()
			return nil
		},
	}
	defer p.Close()

	a := p.Get()
	require.NoError(t, a.Err())
	got := queueGet(t, p, context.Background())
	back := time.Now() // after the wait began: a stamp from its start is earlier
	require.NoError(t, a.Close())
	b := awaitGet(t, got, 5*time.Second)
	require.NoError(t, b.err, "the waiting Get did not get the connection given back")
	require.NoError(t, b.c.Close())

	c := p.Get() // takes it idle: TestOnBorrow sees b's stamp
	require.NoError(t, c.Err())
	require.NoError(t, c.Close())
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, lastUsed, 2, "TestOnBorrow runs for the waiter's connection and the idle one")
	assert.False(t, lastUsed[1].Before(back),
		"the waiter's connection was stamped %v before it was given back", back.Sub(lastUsed[1]))
	assert.False(t, lastUsed[1].After(time.Now()))
}

// TestAGetThatTakesAConnDuringItsSlotWaitStampsItWhenTaken: a Get that
// waits for a dial slot, and takes a connection given back meanwhile, stamps
// it with the moment it took it, not when its wait began.
func TestAGetThatTakesAConnDuringItsSlotWaitStampsItWhenTaken(t *testing.T) {
	release := make(chan struct{})
	d := &fakeDialer{}
	var dials atomic.Int64
	var mu sync.Mutex
	var lastUsed []time.Time
	p := &redispool.Pool{MaxActive: 3, MaxConcurrentDials: 1, WaitTimeout: 5 * time.Second,
		Dial: func() (redis.Conn, error) {
			if dials.Add(1) == 3 {
				<-release // slow: holds the only dial slot
			}
			return d.Dial()
		},
		TestOnBorrow: func(_ redis.Conn, t time.Time) error {
			mu.Lock()
			lastUsed = append(lastUsed, t)
			mu.Unlock()
			return nil
		}}
	a := p.Get() // given back after Retire: closed, its permit goes to the waiter
	require.NoError(t, a.Err())
	p.Retire()
	x := p.Get() // of the new generation: given back to the slot waiter
	require.NoError(t, x.Err())
	slow := goGet(p, context.Background())
	defer func() {
		close(release)
		awaitGet(t, slow, 5*time.Second).close()
		p.Close()
	}()
	require.Eventually(t, func() bool { return dials.Load() == 3 }, 5*time.Second, time.Millisecond)

	got := goGet(p, context.Background())
	require.Eventually(t, func() bool { return p.Accounting().Waiters == 1 }, 5*time.Second, time.Millisecond,
		"the fourth Get did not queue")
	require.NoError(t, a.Close()) // a permit is free now, the dial slot is not
	time.Sleep(10 * time.Millisecond)
	require.EqualValues(t, 1, p.Accounting().Waiters, "the Get with a permit free but no dial slot still waits")
	back := time.Now() // well after the wait began
	require.NoError(t, x.Close())
	w := awaitGet(t, got, 5*time.Second)
	require.NoError(t, w.err, "the slot waiter did not take the connection given back")
	require.NoError(t, w.c.Close())

	c := p.Get() // takes it idle: TestOnBorrow sees the slot waiter's stamp
	require.NoError(t, c.Err())
	require.NoError(t, c.Close())
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, lastUsed, 2, "TestOnBorrow runs for the slot waiter's connection and the idle one")
	assert.False(t, lastUsed[1].Before(back),
		"the slot waiter's connection was stamped %v before it was given back", back.Sub(lastUsed[1]))
}

// ---------------------------------------------------------------------------
// The wait statistics.

// WaitCount and WaitDuration count, as redigo's do, the waits that ended
// with a connection, once they ended; WaitingCount counts the Gets waiting.
func TestWaitCountCountsAWaitWhenItEndsWithAConn(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: 5 * time.Second}
	defer p.Close()
	held := p.Get()
	start := time.Now()
	got := queueGet(t, p, context.Background())
	s := p.Stats()
	assert.Equal(t, 1, s.WaitingCount)
	assert.Zero(t, s.WaitCount, "a wait is counted when it ends")
	assert.Zero(t, s.WaitDuration)

	require.NoError(t, held.Close())
	r := <-got
	require.NoError(t, r.err)
	waited := time.Since(start)
	require.NoError(t, r.c.Close())
	s = p.Stats()
	assert.Zero(t, s.WaitingCount)
	assert.EqualValues(t, 1, s.WaitCount)
	assert.Positive(t, s.WaitDuration)
	assert.LessOrEqual(t, s.WaitDuration, waited)
	assert.Zero(t, s.FailedWaitCount)
	assert.Zero(t, s.FailedWaitDuration)
}

// A wait that ends without a connection, for any reason, counts in
// FailedWaitCount and FailedWaitDuration, never in WaitCount.
func TestAFailedWaitCountsApartFromWaitCount(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(p *redispool.Pool, cancel context.CancelFunc)
		want error
	}{
		{"WaitTimeout", func(*redispool.Pool, context.CancelFunc) {}, redis.ErrPoolExhausted},
		{"context", func(_ *redispool.Pool, cancel context.CancelFunc) { cancel() }, context.Canceled},
		{"pool closed", func(p *redispool.Pool, _ context.CancelFunc) { p.Close() }, redispool.ErrPoolClosed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &fakeDialer{}
			p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: 100 * time.Millisecond}
			if tc.want != redis.ErrPoolExhausted {
				p.WaitTimeout = 5 * time.Second
			}
			defer p.Close()
			held := p.Get()
			defer held.Close()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			got := queueGet(t, p, ctx)
			tc.end(p, cancel)
			r := <-got
			require.ErrorIs(t, r.err, tc.want)
			s := p.Stats()
			assert.EqualValues(t, 1, s.FailedWaitCount)
			assert.Positive(t, s.FailedWaitDuration)
			assert.Zero(t, s.WaitCount)
			assert.Zero(t, s.WaitDuration)
			assert.Zero(t, s.WaitingCount)
		})
	}
}

// ---------------------------------------------------------------------------
// WaitTimeout.

func TestGetGivesUpAfterWaitTimeoutWithPoolExhausted(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: 50 * time.Millisecond}
	defer p.Close()
	held := p.Get()
	defer held.Close()

	start := time.Now()
	c := p.Get() // Get without a context must give up too
	elapsed := time.Since(start)
	err := c.Err()
	require.Error(t, err)
	assert.ErrorIs(t, err, redis.ErrPoolExhausted)
	assert.GreaterOrEqual(t, elapsed, 50*time.Millisecond)
	assert.Less(t, elapsed, 5*time.Second)
	_, err = c.Do("GET", "k")
	assert.ErrorIs(t, err, redis.ErrPoolExhausted, "every method of the failed conn returns the error")
	assert.NoError(t, c.Close())

	s := p.Stats()
	assert.EqualValues(t, 1, s.WaitTimeoutCount)
	assert.EqualValues(t, 1, s.FailedWaitCount)
	assert.GreaterOrEqual(t, s.FailedWaitDuration, 50*time.Millisecond)
	assert.Zero(t, s.WaitCount, "a wait that ends without a connection is not in WaitCount")
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

func TestZeroWaitTimeoutIsReadTimeoutPlusOneSecond(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, ReadTimeout: 10 * time.Millisecond}
	defer p.Close()
	held := p.Get()
	defer held.Close()

	start := time.Now()
	_, err := p.GetContext(context.Background())
	elapsed := time.Since(start)
	assert.ErrorIs(t, err, redis.ErrPoolExhausted)
	assert.GreaterOrEqual(t, elapsed, 1010*time.Millisecond)
	assert.Less(t, elapsed, 3*time.Second)
}

func TestNegativeWaitTimeoutFailsAtOnce(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: -1}
	defer p.Close()
	held := p.Get()
	defer held.Close()
	start := time.Now()
	_, err := p.GetContext(context.Background())
	assert.ErrorIs(t, err, redis.ErrPoolExhausted)
	assert.Less(t, time.Since(start), 100*time.Millisecond)
}

// TestHugeTimeoutsDoNotOverflow checks that durations near the largest a
// time.Duration holds count as very long: with ReadTimeout math.MaxInt64, the
// default WaitTimeout (ReadTimeout + 1s) still waits, and BLPOP's read
// timeout (ReadTimeout plus its own) is about as long, not a deadline
// already past.
func TestHugeTimeoutsDoNotOverflow(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, ReadTimeout: math.MaxInt64}
	defer p.Close()
	held := p.Get()
	require.NoError(t, held.Err())
	closeOnceAGetWaits(p, held) // given back to the Get below
	c, err := p.GetContext(context.Background())
	require.NoError(t, err, "the default WaitTimeout, ReadTimeout + 1s, waits for the conn given back")
	_, err = c.Do("BLPOP", "k", 1)
	require.NoError(t, err)
	_, err = c.Do("GET", "k")
	require.NoError(t, err)
	timeouts := d.last(t).Timeouts()
	require.Len(t, timeouts, 2)
	for _, to := range timeouts {
		assert.Greater(t, to, 70*365*24*time.Hour, "a read timeout of about 73 years: %v", timeouts)
	}
	assert.Greater(t, timeouts[0], timeouts[1], "BLPOP's own second on top of ReadTimeout")
	c.Close()

	for _, w := range []time.Duration{math.MaxInt64, math.MaxInt64 - 1} {
		p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: w, IdleTimeout: math.MaxInt64, MaxConnLifetime: math.MaxInt64}
		held := p.Get()
		require.NoError(t, held.Err())
		closeOnceAGetWaits(p, held)
		c, err := p.GetContext(context.Background())
		require.NoError(t, err, "WaitTimeout %v", w)
		c.Close()
		p.Close()
	}
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
		waiter := queueGet(t, p, context.Background())
		go func() {
			r := <-waiter
			results[i] <- result{r.err, time.Since(start)}
		}()
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

	start := time.Now()
	got := queueGet(t, p, context.Background())
	time.Sleep(wait * 6 / 10)
	first.setErr(errBroken) // Close discards it
	held.Close()

	r := awaitGet(t, got, 5*time.Second)
	took := time.Since(start)
	r.close()
	require.ErrorIs(t, r.err, redispool.ErrPoolExhausted)
	assert.Less(t, took, wait*14/10, "a Get that waited for a conn, then for its dial, with WaitTimeout %v", wait)
	assert.EqualValues(t, 2, dials.Load())
}

// TestWaitsForAConnAndADialSlotShareWaitTimeout: a Get that queues
// for a conn, is granted a permit near the end of its WaitTimeout and then
// finds every dial slot taken (by a hung dial given up on) gives up at its
// WaitTimeout, not a WaitTimeout later: a Get's waits share WaitTimeout
// (TestWaitTimeoutBoundsAGetAsAWhole covers the wait for a Dial, this one
// the wait for a dial slot).
func TestWaitsForAConnAndADialSlotShareWaitTimeout(t *testing.T) {
	const wait = 2 * time.Second
	release := make(chan struct{})
	d := &fakeDialer{}
	var dials atomic.Int64
	p := &redispool.Pool{MaxActive: 2, MaxConcurrentDials: 1, WaitTimeout: wait, Dial: func() (redis.Conn, error) {
		if dials.Add(1) >= 2 {
			<-release // every dial but the first hangs
		}
		return d.Dial()
	}}
	defer func() {
		close(release)
		require.Eventually(t, func() bool { return d.inDial.Load() == 0 }, 5*time.Second, time.Millisecond)
		p.Close()
	}()
	held, err := p.GetContext(context.Background())
	require.NoError(t, err)
	// A Get whose dial hangs gives up; the dial keeps the slot and a permit.
	_, err = p.GetContext(context.Background())
	require.ErrorIs(t, err, redispool.ErrPoolExhausted)

	// Halfway through the Get's WaitTimeout, once it queued, the conn
	// breaks and its permit comes back, but no dial slot: the Get still
	// gives up at WaitTimeout, not later.
	start := time.Now()
	got := queueGet(t, p, context.Background())
	time.Sleep(wait / 2)
	held.Do("BREAK")
	held.Close()
	r := awaitGet(t, got, 5*time.Second)
	elapsed := time.Since(start)
	r.close()
	assert.ErrorIs(t, r.err, redispool.ErrPoolExhausted)
	assert.Less(t, elapsed, wait+wait/4, "Get returned after %v with WaitTimeout %v", elapsed, wait)
}

// TestADialSlotWaiterWhoseTakenConnIsUnusableKeepsItsWaitTimeout: a Get
// that waits for a dial slot and takes a conn given back meanwhile, which
// then fails its check, waits again within the WaitTimeout it had, not a
// fresh one: WaitTimeout bounds a Get's waits all together.
func TestADialSlotWaiterWhoseTakenConnIsUnusableKeepsItsWaitTimeout(t *testing.T) {
	const wait = time.Second
	release := make(chan struct{})
	d := &fakeDialer{}
	var dials atomic.Int64
	var tobFail atomic.Bool
	p := &redispool.Pool{MaxActive: 3, MaxConcurrentDials: 1, WaitTimeout: wait,
		Dial: func() (redis.Conn, error) {
			if dials.Add(1) == 2 {
				<-release // the second dial is slow, and holds the only slot
			}
			return d.Dial()
		},
		TestOnBorrow: func(redis.Conn, time.Time) error {
			if tobFail.Load() {
				return errUnhealthy
			}
			return nil
		}}
	held, err := p.GetContext(context.Background())
	require.NoError(t, err)
	slow := goGet(p, context.Background())
	defer func() {
		close(release)
		awaitGet(t, slow, 5*time.Second).close()
		p.Close()
	}()
	require.Eventually(t, func() bool { return dials.Load() == 2 }, 5*time.Second, time.Millisecond)

	start := time.Now()
	got := goGet(p, context.Background())
	require.Eventually(t, func() bool { return p.Accounting().Waiters == 1 }, 5*time.Second, time.Millisecond,
		"the Get queues: a permit is free, the dial slot is not")
	time.Sleep(wait / 2)
	tobFail.Store(true)
	held.Close() // the waiter takes it; it fails its check
	r := awaitGet(t, got, 5*time.Second)
	elapsed := time.Since(start)
	r.close()
	require.ErrorIs(t, r.err, redispool.ErrPoolExhausted)
	assert.Less(t, elapsed, wait+wait/4, "the Get waited %v with WaitTimeout %v", elapsed, wait)
}

func TestAGetWaitingForAHungDialGivesUpAfterWaitTimeoutAndOnClose(t *testing.T) {
	release := make(chan struct{})
	var dialsStarted, dialsEnded atomic.Int32
	defer func() {
		// The two dials given up on end before the test does.
		close(release)
		require.Eventually(t, func() bool { return dialsEnded.Load() == 2 }, 5*time.Second, time.Millisecond)
	}()
	d := &fakeDialer{}
	p := &redispool.Pool{MaxActive: 2, WaitTimeout: 100 * time.Millisecond, Dial: func() (redis.Conn, error) {
		dialsStarted.Add(1)
		defer dialsEnded.Add(1)
		<-release
		return d.Dial()
	}}
	defer p.Close() // the conn of the dial given up on is closed when it arrives
	start := time.Now()
	_, err := p.GetContext(context.Background())
	assert.ErrorIs(t, err, redis.ErrPoolExhausted)
	assert.Less(t, time.Since(start), 2*time.Second, "bounded by WaitTimeout")

	p2 := &redispool.Pool{MaxActive: 1, WaitTimeout: time.Hour, Dial: func() (redis.Conn, error) {
		dialsStarted.Add(1)
		defer dialsEnded.Add(1)
		<-release
		return d.Dial()
	}}
	got := goGet(p2, context.Background())
	// The dial is under way (a dial decided as Close runs may not begin).
	require.Eventually(t, func() bool { return dialsStarted.Load() == 2 }, 5*time.Second, time.Millisecond)
	p2.Close()
	r := awaitGet(t, got, 5*time.Second, "Close did not wake a caller waiting for a dial")
	assert.Equal(t, redispool.ErrPoolClosed, r.err)
}

// TestWaitTimeoutBoundsAGetWhoseHealthChecksFail: a Get whose TestOnBorrow
// fails on idle conn after idle conn (the server is stopped) gives up once
// WaitTimeout has passed, within at most one more check, instead of
// checking every idle conn in turn.
func TestWaitTimeoutBoundsAGetWhoseHealthChecksFail(t *testing.T) {
	srv := redistest.Start(t)
	const (
		idle        = 8
		readTimeout = 200 * time.Millisecond
		waitTimeout = 300 * time.Millisecond
	)
	p := &redispool.Pool{
		Addr: srv.Addr(), MaxActive: idle, ReadTimeout: readTimeout, WaitTimeout: waitTimeout,
		TestOnBorrow: func(c redis.Conn, _ time.Time) error {
			_, err := c.Do("PING")
			return err
		},
	}
	defer p.Close()
	conns := make([]redis.Conn, idle)
	for i := range conns {
		conns[i] = p.Get()
		require.NoError(t, conns[i].Err())
	}
	for _, c := range conns {
		c.Close()
	}
	require.Equal(t, idle, p.IdleCount())

	srv.Stop(t)
	defer srv.Cont(t)
	start := time.Now()
	c, err := p.GetContext(context.Background())
	elapsed := time.Since(start)
	c.Close()
	require.ErrorIs(t, err, redis.ErrPoolExhausted)
	t.Logf("the Get gave up after %v and %d failed checks", elapsed, p.Stats().Discards.HealthCheck)
	assert.Less(t, elapsed, waitTimeout+readTimeout+150*time.Millisecond,
		"at most WaitTimeout plus one check; checking all %d idle conns takes %v", idle, idle*readTimeout)
	assert.Less(t, p.Stats().Discards.HealthCheck, int64(idle))
}

// ---------------------------------------------------------------------------
// Contexts.

func TestGetContextReturnsTheCallersOwnContextErrorUnwrapped(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: 10 * time.Second}
	defer p.Close()
	held := p.Get()
	defer held.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	c, err := p.GetContext(ctx)
	assert.Equal(t, context.DeadlineExceeded, err) // identity, not just errors.Is
	require.NotNil(t, c)
	assert.Equal(t, context.DeadlineExceeded, c.Err())

	ctx2, cancel2 := context.WithCancel(context.Background())
	cancel2()
	_, err = p.GetContext(ctx2)
	assert.Equal(t, context.Canceled, err)
}

// TestNilContextIsAnError checks that a nil context gets an error naming it,
// not a panic in the pool.
func TestNilContextIsAnError(t *testing.T) {
	var nilCtx context.Context
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial}
	defer p.Close()
	c, err := p.GetContext(nilCtx)
	require.ErrorContains(t, err, "nil Context")
	assert.ErrorContains(t, c.Err(), "nil Context")

	c = p.Get()
	defer c.Close()
	_, err = redis.DoContext(c, nilCtx, "GET", "k")
	assert.ErrorContains(t, err, "nil Context")
	_, err = redis.ReceiveContext(c, nilCtx)
	assert.ErrorContains(t, err, "nil Context")
	_, err = c.Do("GET", "k")
	assert.NoError(t, err, "nothing was sent: the conn is still good")
	assert.Empty(t, p.Stats().Discards.Total())
}

func TestCancelledGetContextNeverGetsAConnEvenWhenOneIsFree(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1}
	defer p.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for range 100 {
		_, err := p.GetContext(ctx)
		require.Equal(t, context.Canceled, err)
	}
	assert.Equal(t, 0, p.ActiveCount())
	c, err := p.GetContext(context.Background())
	require.NoError(t, err, "the token came back every time")
	c.Close()
}

func TestAWaiterWhoseContextEndsLeavesTheQueue(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: 10 * time.Second}
	defer p.Close()
	held := p.Get()

	ctx, cancel := context.WithCancel(context.Background())
	first := queueGet(t, p, ctx)
	second := queueGet(t, p, context.Background())

	cancel()
	r := awaitGet(t, first, 5*time.Second, "cancelled waiter still waiting")
	assert.Equal(t, context.Canceled, r.err)
	held.Close() // must reach the second waiter, not the one that left
	r = awaitGet(t, second, 5*time.Second, "the conn given back went to a waiter that had left")
	require.NoError(t, r.err)
	r.close()
	require.Eventually(t, func() bool { return p.IdleCount() == 1 }, 5*time.Second, time.Millisecond)
	assert.Equal(t, 1, p.ActiveCount())
	assert.EqualValues(t, 1, d.dials.Load())
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
	got := queueGet(t, p, ctx)
	ctx.End(errEnded) // before WaitTimeout ends the wait
	r := awaitGet(t, got, 5*time.Second, "waiter never gave up")
	assert.Equal(t, errEnded, r.err)
	assert.Zero(t, p.Stats().WaitTimeoutCount, "a caller that gave up first is not counted as exhausted")
}

func TestAConnGrantedAfterTheContextEndedGoesBackToThePool(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: 10 * time.Second}
	defer p.Close()
	held := p.Get()

	ctx := redispool.NewLateContext()
	errEnded := errors.New("caller gave up")
	got := queueGet(t, p, ctx)
	ctx.End(errEnded)
	held.Close()
	r := awaitGet(t, got, 5*time.Second, "waiter not woken")
	assert.Equal(t, errEnded, r.err, "a caller that gave up gets its context's error, not a conn")
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
	got := queueGet(t, p, ctx)
	ctx.End(context.Canceled)
	p.Retire()
	held.Close() // closed, not kept: its permit goes to the waiter
	r := awaitGet(t, got, 5*time.Second, "waiter not woken")
	assert.Equal(t, context.Canceled, r.err)
	assert.Equal(t, 0, p.ActiveCount(), "the waiter did not dial")
	c := p.Get()
	require.NoError(t, c.Err(), "the permit came back")
	c.Close()
	assert.EqualValues(t, 2, d.dials.Load())
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
	held := goGet(p, context.Background())
	require.Eventually(t, func() bool { return p.Stats().DialCount == 1 }, 5*time.Second, time.Millisecond)

	ctx := redispool.NewLateContext()
	errEnded := errors.New("caller gave up")
	got := goGet(p, ctx)
	// Waiting for the dial slot: the select on ctx.Done is the only call.
	require.Eventually(t, func() bool { return ctx.Dones() > 0 }, 5*time.Second, time.Millisecond)
	ctx.End(errEnded)
	close(release) // the slot goes to the caller that gave up
	r := awaitGet(t, got, 5*time.Second, "the caller waiting for a dial slot was not woken")
	assert.Equal(t, errEnded, r.err)
	h := awaitGet(t, held, 5*time.Second)
	require.NoError(t, h.err)
	defer h.c.Close()

	start := time.Now()
	c2, err := p.GetContext(context.Background())
	require.NoError(t, err, "the dial slot and the permit came back")
	c2.Close()
	assert.Less(t, time.Since(start), time.Second)
	assert.EqualValues(t, 2, p.Stats().DialCount, "the caller that gave up did not dial")
}

// TestAGetContextWhoseContextEndsDuringTheHealthCheckGetsNoConn checks that
// a caller whose context ends while TestOnBorrowContext checks an idle conn
// (a PING, up to a ReadTimeout) gets ctx.Err(), not the conn, as at every
// other point where its context can end.
func TestAGetContextWhoseContextEndsDuringTheHealthCheckGetsNoConn(t *testing.T) {
	d := &fakeDialer{}
	var cancelDuringCheck atomic.Pointer[context.CancelFunc]
	p := &redispool.Pool{MaxActive: 2, WaitTimeout: time.Second, Dial: d.Dial,
		TestOnBorrowContext: func(ctx context.Context, c redis.Conn, _ time.Time) error {
			if f := cancelDuringCheck.Load(); f != nil {
				(*f)() // the caller gives up while the PING is on its way
			}
			_, err := c.Do("PING")
			return err
		},
	}
	defer p.Close()
	c, err := p.GetContext(context.Background())
	require.NoError(t, err)
	c.Close() // idle: the next Get runs the health check

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cancelDuringCheck.Store(&cancel)
	c, err = p.GetContext(ctx)
	if err == nil {
		c.Close()
	}
	assert.Equal(t, context.Canceled, err, "a caller whose context ended during the health check got a conn")
}

func TestAContextDeadlineDuringAStallReturnsTheContextsError(t *testing.T) {
	srv := redistest.Start(t)
	p := &redispool.Pool{Addr: srv.Addr(), ReadTimeout: time.Second}
	defer p.Close()
	closeAll(getN(t, p, 4))
	srv.Stop(t)
	defer srv.Cont(t)
	for i := range 40 {
		// Once the idle conns are spent, the Get dials, and the dial waits
		// for the stopped server's answer: the context ends that wait.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
		c, err := p.GetContext(ctx)
		if err == nil {
			_, err = redis.DoContext(c, ctx, "GET", "k")
		}
		cancel()
		c.Close()
		require.Equal(t, context.DeadlineExceeded, err, "call %d", i)
	}
}

// ---------------------------------------------------------------------------
// Helpers.

// closeOnceAGetWaits closes c, borrowed from p, once a Get waits on p (or
// after 5 s), so that the Get is handed c rather than finding it idle.
func closeOnceAGetWaits(p *redispool.Pool, c redis.Conn) {
	go func() {
		for end := time.Now().Add(5 * time.Second); p.Stats().WaitingCount == 0 && time.Now().Before(end); {
			time.Sleep(time.Millisecond)
		}
		c.Close()
	}()
}
