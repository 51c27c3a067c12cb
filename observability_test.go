package redispool_test

// The observability paths and the pool's edges: the Logger (and one whose
// handler panics), leak detection, Stats, RedigoPool, Retire and Close.

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

// TestLeakThresholdOffCostsNoTimer: with LeakThreshold zero, a Get sets
// up no leak watch.
func TestLeakThresholdOffCostsNoTimer(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial}
	defer p.Close()
	c, err := p.GetContext(context.Background())
	require.NoError(t, err)
	assert.False(t, redispool.LeakWatched(c), "no leak watch when LeakThreshold is zero")
	c.Close()
	assert.Zero(t, p.Stats().LeakCount)
}

// TestStatsFieldsMatchWhatHappened checks each counter of PoolStats
// against a scripted sequence of events.
func TestStatsFieldsMatchWhatHappened(t *testing.T) {
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)()
	d := &fakeDialer{}
	var refuse atomic.Bool
	p := &redispool.Pool{MaxActive: 2, MaxIdle: 1, IdleTimeout: time.Minute, WaitTimeout: 20 * time.Millisecond,
		Dial: func() (redis.Conn, error) {
			if refuse.Load() {
				return nil, errRefused
			}
			return d.Dial()
		}}
	defer p.Close()
	ctx := context.Background()
	assert.Equal(t, redispool.PoolStats{}, p.Stats(), "a new pool")

	a, err := p.GetContext(ctx)
	require.NoError(t, err)
	b, err := p.GetContext(ctx)
	require.NoError(t, err)
	s := p.Stats()
	assert.Equal(t, 2, s.ActiveCount)
	assert.Equal(t, 0, s.IdleCount)
	assert.EqualValues(t, 2, s.DialCount)

	_, err = p.GetContext(ctx) // waits, then exhausted
	require.ErrorIs(t, err, redispool.ErrPoolExhausted)
	s = p.Stats()
	assert.EqualValues(t, 1, s.WaitCount)
	assert.GreaterOrEqual(t, s.WaitDuration, 20*time.Millisecond)
	assert.EqualValues(t, 1, s.WaitTimeoutCount)

	a.Close() // the hot slot: counted as idle
	b.Close() // MaxIdle 1: discarded
	s = p.Stats()
	assert.Equal(t, 1, s.ActiveCount)
	assert.Equal(t, 1, s.IdleCount, "the hot slot counts as idle")
	assert.EqualValues(t, 1, s.Discards.MaxIdle)

	clk.Advance(2 * time.Minute)
	refuse.Store(true)
	_, err = p.GetContext(ctx) // the idle one times out; the dial fails
	require.ErrorIs(t, err, errRefused)
	_, err = p.GetContext(ctx) // fails fast
	require.ErrorIs(t, err, redispool.ErrDialBackoff)
	s = p.Stats()
	assert.Equal(t, 0, s.ActiveCount)
	assert.Equal(t, 0, s.IdleCount)
	assert.EqualValues(t, 3, s.DialCount)
	assert.EqualValues(t, 1, s.DialErrorCount)
	assert.EqualValues(t, 1, s.FastFailCount)
	assert.EqualValues(t, 1, s.Discards.IdleTimeout)
	assert.EqualValues(t, 2, s.Discards.Total())
	checkAtRest(t, p, 0)
}
