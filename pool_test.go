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
