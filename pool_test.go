package redispool_test

import (
	"context"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redispool/redispool"
)

func TestCleanConnIsReusedNotRedialed(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial}
	defer p.Close()
	for range 100 {
		c := p.Get()
		_, err := c.Do("SET", "k", "v")
		require.NoError(t, err)
		require.NoError(t, c.Close())
	}
	assert.EqualValues(t, 1, d.dials.Load())
	assert.Equal(t, 1, p.IdleCount())
	assert.Equal(t, 1, p.ActiveCount())
}

func TestIdleConnsAreReusedLongestIdleFirst(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial}
	defer p.Close()
	conns := getN(t, p, 2)
	conns[1].Close() // returned first
	conns[0].Close()
	c := p.Get()
	defer c.Close()
	c.Do("PING")
	assert.Contains(t, d.Conns()[1].Calls(), "DO PING")
	assert.NotContains(t, d.Conns()[0].Calls(), "DO PING")
}

func TestMaxIdleClosesConnsBeyondIt(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 4, MaxIdle: 1}
	defer p.Close()
	closeAll(getN(t, p, 3))
	assert.Equal(t, 1, p.IdleCount())
	assert.Equal(t, 1, p.ActiveCount())
	assert.EqualValues(t, 2, p.Stats().Discards.MaxIdle)
}

func TestIdleTimeoutClosesStaleConns(t *testing.T) {
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)()
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, IdleTimeout: time.Minute}
	defer p.Close()
	closeAll(getN(t, p, 2))

	clk.Advance(59 * time.Second)
	c := p.Get()
	require.NoError(t, c.Err())
	c.Close()
	assert.EqualValues(t, 2, d.dials.Load(), "conns idle for less than IdleTimeout are kept")

	clk.Advance(61 * time.Second)
	c = p.Get()
	require.NoError(t, c.Err())
	c.Close()
	assert.EqualValues(t, 3, d.dials.Load(), "a stale conn is never handed out")
	assert.EqualValues(t, 2, p.Stats().Discards.IdleTimeout)
	for _, fc := range d.Conns()[:2] {
		assert.True(t, fc.IsClosed())
	}
	assert.Equal(t, 1, p.ActiveCount())
}

func TestIdleTimeoutDefaultsToFourMinutes(t *testing.T) {
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)()
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial}
	defer p.Close()
	p.Get().Close()
	clk.Advance(redispool.DefaultIdleTimeout - time.Second)
	p.Get().Close()
	assert.EqualValues(t, 1, d.dials.Load())
	clk.Advance(redispool.DefaultIdleTimeout)
	p.Get().Close()
	assert.EqualValues(t, 2, d.dials.Load())
}

func TestMaxConnLifetimeClosesOldConns(t *testing.T) {
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)()
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxConnLifetime: time.Minute}
	defer p.Close()
	c := p.Get()
	clk.Advance(61 * time.Second)
	c.Close() // returned too old: closed, not kept idle
	assert.True(t, d.Conns()[0].IsClosed(), "given back older than MaxConnLifetime: closed")
	assert.Zero(t, p.IdleCount())
	assert.EqualValues(t, 1, p.Stats().Discards.Lifetime)
	c = p.Get()
	require.NoError(t, c.Err())
	c.Close()

	clk.Advance(30 * time.Second)
	p.Get().Close()
	assert.EqualValues(t, 2, d.dials.Load(), "younger than MaxConnLifetime: reused")
	clk.Advance(31 * time.Second)
	c = p.Get() // too old to hand out
	require.NoError(t, c.Err())
	c.Close()
	assert.True(t, d.Conns()[1].IsClosed())
	assert.EqualValues(t, 3, d.dials.Load())
	assert.EqualValues(t, 2, p.Stats().Discards.Lifetime)
}

func TestFailedHealthCheckClosesTheConnAndDialsAnother(t *testing.T) {
	d := &fakeDialer{}
	var lastUsed time.Time
	fail := true
	p := &redispool.Pool{
		Dial:      d.Dial,
		MaxActive: 1,
		TestOnBorrow: func(c redis.Conn, t time.Time) error {
			lastUsed = t
			if fail {
				return errors.New("unhealthy")
			}
			return nil
		},
	}
	defer p.Close()
	before := time.Now()
	p.Get().Close()
	c := p.Get()
	require.NoError(t, c.Err())
	c.Close()
	assert.False(t, lastUsed.Before(before), "TestOnBorrow gets the time the conn was last handed out")
	assert.True(t, d.Conns()[0].IsClosed())
	assert.EqualValues(t, 2, d.dials.Load())
	assert.EqualValues(t, 1, p.Stats().Discards.HealthCheck)

	fail = false
	c = p.Get()
	c.Close()
	assert.EqualValues(t, 2, d.dials.Load())
}

func TestTestOnBorrowContextGetsTheCallersContext(t *testing.T) {
	d := &fakeDialer{}
	type key struct{}
	var got any
	p := &redispool.Pool{Dial: d.Dial, TestOnBorrowContext: func(ctx context.Context, c redis.Conn, _ time.Time) error {
		got = ctx.Value(key{})
		return nil
	}}
	defer p.Close()
	p.Get().Close()
	c, err := p.GetContext(context.WithValue(context.Background(), key{}, "v"))
	require.NoError(t, err)
	c.Close()
	assert.Equal(t, "v", got)
}

func TestPanicInTestOnBorrowReturnsTheTokenAndClosesTheConn(t *testing.T) {
	d := &fakeDialer{}
	panicking := true
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: -1,
		TestOnBorrow: func(redis.Conn, time.Time) error {
			if panicking {
				panic("boom")
			}
			return nil
		}}
	defer p.Close()
	p.Get().Close()
	func() {
		defer func() { assert.Equal(t, "boom", recover()) }()
		p.Get()
	}()
	assert.True(t, d.Conns()[0].IsClosed())
	assert.Equal(t, 0, p.ActiveCount())
	panicking = false
	c, err := p.GetContext(context.Background())
	require.NoError(t, err, "the token was given back")
	c.Close()
}

func TestDialPanicReturnsTheTokenAndPanicsInTheCaller(t *testing.T) {
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)()
	panicking := true
	d := &fakeDialer{}
	p := &redispool.Pool{MaxActive: 1, WaitTimeout: -1, Dial: func() (redis.Conn, error) {
		if panicking {
			panic("dial boom")
		}
		return d.Dial()
	}}
	defer p.Close()
	func() {
		defer func() { assert.Equal(t, "dial boom", recover()) }()
		p.Get()
	}()
	assert.Equal(t, 0, p.ActiveCount())
	panicking = false
	_, err := p.GetContext(context.Background())
	require.Error(t, err, "a panicked dial counts as a failed one: fail fast")
	require.NotErrorIs(t, err, redis.ErrPoolExhausted)
	clk.Advance(redispool.BackoffCap)
	c, err := p.GetContext(context.Background())
	require.NoError(t, err, "the panicked dial gave its permit back (MaxActive is 1)")
	c.Close()
}

func TestDialReturningNilConnIsAnError(t *testing.T) {
	p := &redispool.Pool{Dial: func() (redis.Conn, error) { return nil, nil }}
	defer p.Close()
	_, err := p.GetContext(context.Background())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "nil connection")
	assert.Equal(t, 0, p.ActiveCount())
}

func TestWhileDialsFailCallersGetTheLastDialErrorAtOnce(t *testing.T) {
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)()
	d := &fakeDialer{}
	dialErr := errors.New("connection refused")
	d.SetErr(dialErr)
	p := &redispool.Pool{Dial: d.Dial}
	defer p.Close()

	_, err := p.GetContext(context.Background())
	require.Equal(t, dialErr, err)
	for range 100 {
		_, err := p.GetContext(context.Background())
		require.ErrorIs(t, err, dialErr)
		require.ErrorIs(t, err, redispool.ErrDialBackoff)
	}
	assert.EqualValues(t, 1, d.dials.Load(), "no dial during the backoff")
	assert.EqualValues(t, 100, p.Stats().FastFailCount)

	// Each failure doubles the backoff, up to its cap.
	for i := 2; i <= 10; i++ {
		clk.Advance(redispool.BackoffCap)
		_, err := p.GetContext(context.Background())
		require.Equal(t, dialErr, err)
		require.EqualValues(t, i, d.dials.Load(), "one probe per backoff period")
		_, err = p.GetContext(context.Background())
		require.ErrorIs(t, err, dialErr)
		require.EqualValues(t, i, d.dials.Load())
	}

	// One success resets the backoff.
	d.SetErr(nil)
	clk.Advance(redispool.BackoffCap)
	conns := getN(t, p, 3)
	closeAll(conns)
	assert.EqualValues(t, 13, d.dials.Load())
	assert.Equal(t, 3, p.ActiveCount())
}

func TestBackoffGrowsFromBaseToCap(t *testing.T) {
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)()
	d := &fakeDialer{}
	d.SetErr(errors.New("refused"))
	p := &redispool.Pool{Dial: d.Dial}
	defer p.Close()
	p.Get() // first failure: backoff in [base/2, base]
	clk.Advance(redispool.BackoffBase/2 - time.Millisecond)
	p.Get()
	assert.EqualValues(t, 1, d.dials.Load(), "no retry before half the base backoff")
	clk.Advance(redispool.BackoffBase/2 + time.Millisecond)
	p.Get()
	assert.EqualValues(t, 2, d.dials.Load(), "a retry by the base backoff")

	// After the k-th failure in a row the backoff is base<<(k-1), less up to
	// half of it in jitter, up to the cap: no retry before half of it, one
	// by all of it.
	for k := 3; k <= 10; k++ {
		b := min(redispool.BackoffBase<<(k-2), redispool.BackoffCap) // after failure k-1
		clk.Advance(b/2 - time.Millisecond)
		p.Get()
		require.EqualValues(t, k-1, d.dials.Load(), "no retry before half of %v", b)
		clk.Advance(b/2 + time.Millisecond)
		p.Get()
		require.EqualValues(t, k, d.dials.Load(), "a retry by %v", b)
	}
}

func TestOnlyOneProbeDialsWhileTheServerIsDown(t *testing.T) {
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)()
	release := make(chan struct{})
	var dials sync.WaitGroup
	dialErr := errors.New("refused")
	var n int
	var mu sync.Mutex
	p := &redispool.Pool{Dial: func() (redis.Conn, error) {
		mu.Lock()
		n++
		first := n == 1
		mu.Unlock()
		if !first {
			<-release
		}
		return nil, dialErr
	}}
	defer p.Close()
	p.Get()
	clk.Advance(redispool.BackoffCap)
	dials.Add(1)
	go func() { defer dials.Done(); p.Get() }() // the probe, blocked in Dial
	require.Eventually(t, func() bool { return p.Stats().DialCount == 2 }, 5*time.Second, time.Millisecond)
	for range 50 {
		_, err := p.GetContext(context.Background())
		require.ErrorIs(t, err, dialErr)
	}
	close(release)
	dials.Wait()
	assert.EqualValues(t, 2, p.Stats().DialCount)
}

func TestADialTheCallerGaveUpOnServesTheNextCaller(t *testing.T) {
	d := &fakeDialer{}
	release := make(chan struct{})
	entered := make(chan struct{})
	p := &redispool.Pool{MaxActive: 1, WaitTimeout: 5 * time.Second, Dial: func() (redis.Conn, error) {
		close(entered)
		<-release
		return d.Dial()
	}}
	defer p.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { <-entered; cancel() }() // the caller gives up during the dial
	start := time.Now()
	_, err := p.GetContext(ctx)
	assert.Equal(t, context.Canceled, err)
	assert.Less(t, time.Since(start), 2*time.Second, "the caller does not wait for the dial")
	assert.Equal(t, 1, p.ActiveCount(), "the dial in progress counts against MaxActive")

	got := make(chan redis.Conn, 1)
	go func() { got <- p.Get() }()
	close(release)
	c := <-got
	require.NoError(t, c.Err())
	c.Close()
	assert.EqualValues(t, 1, d.dials.Load(), "the abandoned dial's conn was handed on")
	assert.Equal(t, 1, p.ActiveCount())
}

func TestDialContextIsNotCancelledWhenTheCallerGivesUp(t *testing.T) {
	d := &fakeDialer{}
	type key struct{}
	dialCtx := make(chan context.Context, 1)
	entered := make(chan struct{})
	release := make(chan struct{})
	p := &redispool.Pool{DialContext: func(ctx context.Context) (redis.Conn, error) {
		dialCtx <- ctx
		close(entered)
		<-release
		return d.Dial()
	}}
	defer p.Close()
	ctx, cancel := context.WithCancel(context.WithValue(context.Background(), key{}, "v"))
	go func() { <-entered; cancel() }() // the caller gives up during the dial
	_, err := p.GetContext(ctx)
	assert.Equal(t, context.Canceled, err)
	dctx := <-dialCtx
	assert.NoError(t, dctx.Err(), "the dial goes on for the next caller")
	assert.Equal(t, "v", dctx.Value(key{}), "the dial keeps the caller's values")
	close(release)
	require.Eventually(t, func() bool { return p.IdleCount() == 1 }, 5*time.Second, time.Millisecond)
}

func TestDialContextTakesPrecedenceOverDial(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{
		Dial:        func() (redis.Conn, error) { return nil, errors.New("Dial used") },
		DialContext: func(context.Context) (redis.Conn, error) { return d.Dial() },
	}
	defer p.Close()
	c, err := p.GetContext(context.Background())
	require.NoError(t, err)
	c.Close()
}

func TestAtMostMaxConcurrentDialsRunAtOnce(t *testing.T) {
	d := &fakeDialer{}
	var mu sync.Mutex
	inDial, most := 0, 0
	release := make(chan struct{})
	p := &redispool.Pool{MaxActive: 20, MaxConcurrentDials: 3, WaitTimeout: 5 * time.Second, Dial: func() (redis.Conn, error) {
		mu.Lock()
		inDial++
		most = max(most, inDial)
		mu.Unlock()
		<-release
		mu.Lock()
		inDial--
		mu.Unlock()
		return d.Dial()
	}}
	defer p.Close()
	var wg sync.WaitGroup
	conns := make(chan redis.Conn, 10)
	for range 10 {
		wg.Add(1)
		go func() { defer wg.Done(); conns <- p.Get() }()
	}
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return inDial == 3
	}, 5*time.Second, time.Millisecond)
	assert.EqualValues(t, 3, p.Stats().DialCount, "the other callers wait for a dial slot")
	close(release)
	wg.Wait()
	close(conns)
	for c := range conns {
		assert.NoError(t, c.Err())
		c.Close()
	}
	assert.Equal(t, 3, most)
}

func TestNegativeTimeoutsDisableThem(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, ReadTimeout: -1}
	defer p.Close()
	c := p.Get()
	defer c.Close()
	_, err := c.Do("GET", "k")
	require.NoError(t, err)
	assert.Equal(t, []time.Duration{0}, d.last(t).Timeouts())
}

func TestStatsBeginWithRedigosFourFields(t *testing.T) {
	// Same names, types and order as redis.PoolStats.
	ours, theirs := reflect.TypeFor[redispool.PoolStats](), reflect.TypeFor[redis.PoolStats]()
	require.GreaterOrEqual(t, ours.NumField(), theirs.NumField())
	for i := range theirs.NumField() {
		assert.Equal(t, theirs.Field(i).Name, ours.Field(i).Name, "field %d", i)
		assert.Equal(t, theirs.Field(i).Type, ours.Field(i).Type, "field %d", i)
	}
	var s redispool.PoolStats
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial}
	defer p.Close()
	conns := getN(t, p, 3)
	conns[0].Close()
	s = p.Stats()
	assert.Equal(t, 3, s.ActiveCount)
	assert.Equal(t, 1, s.IdleCount)
	assert.EqualValues(t, 3, s.DialCount)
	closeAll(conns[1:])
}

func TestDiscardReasonNames(t *testing.T) {
	assert.Equal(t, "broken", redispool.DiscardBroken.String())
	assert.Equal(t, "pool_closed", redispool.DiscardPoolClosed.String())
	assert.Equal(t, "DiscardReason(99)", redispool.DiscardReason(99).String())
	s := redispool.DiscardStats{Broken: 1, State: 2, IdleTimeout: 3, Lifetime: 4, MaxIdle: 5, HealthCheck: 6, PoolClosed: 7, Retired: 8}
	assert.EqualValues(t, 36, s.Total())
}

func TestGetClosePathAllocatesAtMostOnce(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial}
	defer p.Close()
	p.Get().Close()
	ctx := context.Background()
	n := testing.AllocsPerRun(1000, func() {
		c, _ := p.GetContext(ctx)
		c.Close()
	})
	assert.LessOrEqual(t, n, 1.0, "allocations per Get+Close")
}

func TestCallersWaitingForADialSlotFailFastWhenTheDialsFail(t *testing.T) {
	release := make(chan struct{})
	dialErr := errors.New("connection refused")
	var mu sync.Mutex
	inDial := 0
	p := &redispool.Pool{MaxActive: 20, MaxConcurrentDials: 2, WaitTimeout: 5 * time.Second, Dial: func() (redis.Conn, error) {
		mu.Lock()
		inDial++
		mu.Unlock()
		<-release
		return nil, dialErr
	}}
	defer p.Close()
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := p.GetContext(context.Background())
			assert.ErrorIs(t, err, dialErr)
		}()
	}
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return inDial == 2
	}, 5*time.Second, time.Millisecond)
	close(release)
	wg.Wait()
	s := p.Stats()
	assert.EqualValues(t, 2, s.DialCount, "the waiting callers did not dial into a dead server")
	assert.EqualValues(t, 18, s.FastFailCount)
}

func TestATrickleOfGetsLetsThePoolShrinkAfterABurst(t *testing.T) {
	// Idle conns are reused in turn, so each is used every 10 s here and
	// none reaches IdleTimeout; the pool still closes what nobody needed.
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)()
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 10, IdleTimeout: time.Minute}
	defer p.Close()
	closeAll(getN(t, p, 10))
	for range 600 { // 10 minutes at one Get a second
		clk.Advance(time.Second)
		c := p.Get()
		require.NoError(t, c.Err())
		c.Close()
	}
	assert.LessOrEqual(t, p.ActiveCount(), 2)
	assert.GreaterOrEqual(t, p.Stats().Discards.IdleTimeout, int64(8))
	assert.EqualValues(t, 10, d.dials.Load(), "a trickle needs no new dials")
}

func TestASteadyLoadKeepsTheConnsItNeeds(t *testing.T) {
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)()
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 10, IdleTimeout: time.Minute}
	defer p.Close()
	for range 600 { // 4 conns in use at once, every second, for 10 minutes
		clk.Advance(time.Second)
		closeAll(getN(t, p, 4))
	}
	assert.Equal(t, 4, p.ActiveCount())
	assert.EqualValues(t, 4, d.dials.Load(), "no churn under a steady load")
}

func TestMaxIdleHoldsWhenCloseRacesGet(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 8, MaxIdle: 1, WaitTimeout: 5 * time.Second}
	defer p.Close()
	for round := range 5000 {
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 3 {
					p.Get().Close()
				}
			}()
		}
		wg.Wait()
		if n := p.IdleCount(); n > 1 {
			t.Fatalf("round %d: %d idle conns at rest, MaxIdle 1", round, n)
		}
	}
	assert.Equal(t, 1, p.ActiveCount())
}

// TestAConnWhoseClosePanicsGivesItsPermitBack checks that a conn whose own
// Close panics, as the pool discards it, still gives its permit back: the
// panic reaches the caller, and the pool can still open MaxActive conns.
func TestAConnWhoseClosePanicsGivesItsPermitBack(t *testing.T) {
	d := &fakeDialer{setup: func(c *fakeConn, n int) {
		if n == 1 {
			c.doErr = errBroken
			c.panicsIn("Close")
		}
	}}
	p := &redispool.Pool{MaxActive: 1, WaitTimeout: 100 * time.Millisecond, Dial: d.Dial}
	defer p.Close()
	c := p.Get()
	_, err := c.Do("GET", "k")
	require.Error(t, err)
	assert.PanicsWithValue(t, "Close panics", func() { c.Close() }, "the conn's panic reaches the caller")
	assert.Zero(t, p.ActiveCount())

	c = p.Get()
	require.NoError(t, c.Err(), "the permit of the conn whose Close panicked came back")
	c.Close()
}
