package redispool_test

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redispool/redispool"
)

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
