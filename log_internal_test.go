package redispool_test

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/redispool/redispool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestEachLogKindHasItsOwnRateLimit checks "each kind at most once per
// second" (Pool.Logger) across kinds: a discard must not use up the second
// of a failed dial, an exhausted wait or a leak report. Discard kinds were
// numbered from 0 and overlapped the other three.
func TestEachLogKindHasItsOwnRateLimit(t *testing.T) {
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)() // time stands still: all within one logInterval

	t.Run("a state discard swallows the first failed dial", func(t *testing.T) {
		rec := &recorder{}
		var refuse atomic.Bool
		d := &fakeDialer{}
		p := &redispool.Pool{MaxActive: 2, Logger: slog.New(rec), Dial: func() (redis.Conn, error) {
			if refuse.Load() {
				return nil, errRefused
			}
			return d.Dial()
		}}
		defer p.Close()
		c, err := p.GetContext(context.Background())
		require.NoError(t, err)
		c.Do("SUBSCRIBE", "ch")
		c.Close() // discarded: state
		require.Equal(t, 1, rec.count("connection discarded"))

		refuse.Store(true)
		_, err = p.GetContext(context.Background())
		require.ErrorIs(t, err, errRefused)
		assert.Equal(t, 1, rec.count("dial failed"), "the first failed dial was not logged")
	})

	t.Run("an idle timeout discard swallows the first exhausted wait", func(t *testing.T) {
		rec := &recorder{}
		d := &fakeDialer{}
		p := &redispool.Pool{MaxActive: 1, WaitTimeout: -1, IdleTimeout: 10 * time.Millisecond, Logger: slog.New(rec), Dial: d.Dial}
		defer p.Close()
		c, err := p.GetContext(context.Background())
		require.NoError(t, err)
		c.Close()
		clk.Advance(20 * time.Millisecond)
		held, err := p.GetContext(context.Background()) // the idle one is discarded: idle timeout
		require.NoError(t, err)
		defer held.Close()
		require.Equal(t, 1, rec.count("connection discarded"))

		_, err = p.GetContext(context.Background())
		require.ErrorIs(t, err, redispool.ErrPoolExhausted)
		assert.Equal(t, 1, rec.count("pool exhausted"), "the first exhausted wait was not logged")
	})

	t.Run("a lifetime discard swallows the first leak report", func(t *testing.T) {
		rec := &recorder{}
		d := &fakeDialer{}
		p := &redispool.Pool{MaxActive: 1, MaxConnLifetime: 10 * time.Millisecond, LeakThreshold: 10 * time.Millisecond,
			Logger: slog.New(rec), Dial: d.Dial}
		defer p.Close()
		c, err := p.GetContext(context.Background())
		require.NoError(t, err)
		c.Close()
		clk.Advance(20 * time.Millisecond)
		held, err := p.GetContext(context.Background()) // the idle one is discarded: lifetime
		require.NoError(t, err)
		defer held.Close()
		require.Equal(t, 1, rec.count("connection discarded"))

		require.Eventually(t, func() bool { return p.Stats().LeakCount == 1 }, 5*time.Second, time.Millisecond)
		assert.Equal(t, 1, rec.count("held longer than LeakThreshold"), "the first leak was counted but not reported")
	})
}
