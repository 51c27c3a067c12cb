package redispool_test

import (
	"context"
	"reflect"
	"testing"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redispool/redispool"
)

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
