package redispool_test

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/internal/redistest"
)

// subscribers counts the clients of a sentinel subscribed to a channel: on a
// sentinel, only the pool's watch is.
func subscribers(t *testing.T, s *redistest.Sentinel) int {
	list, err := redis.String(s.Do(t, "CLIENT", "LIST"), nil)
	require.NoError(t, err)
	n := 0
	for _, line := range strings.Split(list, "\n") {
		if strings.Contains(line, " sub=1 ") {
			n++
		}
	}
	return n
}

func TestASentinelThatHangsIsSubscribedToAgainOnceItRecovers(t *testing.T) {
	const ping = 100 * time.Millisecond
	defer redispool.SetWatchPing(ping)()
	master := redistest.Start(t)
	s := redistest.StartSentinels(t, "mymaster", master, 1, 5*time.Second)[0]

	rec := &recorder{}
	p := &redispool.Pool{
		Sentinel:    &redispool.Sentinel{Addrs: []string{s.Addr()}, MasterName: "mymaster"},
		DialTimeout: 300 * time.Millisecond,
		Logger:      slog.New(rec),
	}
	defer p.Close()
	c := p.Get()
	require.NoError(t, c.Err())
	c.Close()
	require.Eventually(t, func() bool { return subscribers(t, s) == 1 }, 5*time.Second, 10*time.Millisecond,
		"the pool subscribes to +switch-master on its first dial")

	// A sentinel with nothing to announce answers the pings: its
	// subscription is kept.
	time.Sleep(10 * ping)
	assert.Empty(t, rec.find("subscription to a sentinel failed"), "a quiet, healthy sentinel was given up")
	assert.Equal(t, 1, subscribers(t, s))

	// Hung, the sentinel keeps the connection open and sends nothing: only
	// the missing pong shows it.
	s.Stop(t)
	stopped := time.Now()
	require.Eventually(t, func() bool {
		for _, r := range rec.find("subscription to a sentinel failed") {
			if r["sentinel"] == s.Addr() && strings.Contains(r["error"], "timeout") {
				return true
			}
		}
		return false
	}, 5*time.Second, 10*time.Millisecond, "the subscription to a hung sentinel was not given up")
	noticed := time.Since(stopped)
	assert.Less(t, noticed, ping+300*time.Millisecond+time.Second, "noticed after a ping interval and the dial timeout")

	s.Cont(t)
	// The connections dialed while it hung are closed; a new one subscribes.
	require.Eventually(t, func() bool { return subscribers(t, s) == 1 }, 10*time.Second, 20*time.Millisecond,
		"the pool did not subscribe again after the sentinel recovered")
	t.Logf("a hung sentinel was noticed after %v", noticed.Round(time.Millisecond))
}

// A Sentinel serves the first Pool that uses it: another Pool given the same
// Sentinel, even once the first is closed, fails its first use with
// ErrInvalidConfig and writes nothing. A Pool whose configuration was
// rejected does not hold its Sentinel.
func TestASentinelServesOnePool(t *testing.T) {
	master := redistest.Start(t)
	s := redistest.StartSentinels(t, "mymaster", master, 1, 5*time.Second)[0]
	sentinel := &redispool.Sentinel{Addrs: []string{s.Addr()}, MasterName: "mymaster"}
	set := func(p *redispool.Pool, v string) error {
		c := p.Get()
		defer c.Close()
		_, err := c.Do("SET", "k", v)
		return err
	}

	rejected := &redispool.Pool{Sentinel: sentinel, Addr: master.Addr()}
	defer rejected.Close()
	require.ErrorIs(t, set(rejected, "rejected"), redispool.ErrInvalidConfig, "Sentinel together with Addr")

	first := &redispool.Pool{Sentinel: sentinel}
	defer first.Close()
	require.NoError(t, set(first, "first"), "the Sentinel of a pool whose configuration was rejected is free")

	second := &redispool.Pool{Sentinel: sentinel}
	defer second.Close()
	err := set(second, "second")
	require.ErrorIs(t, err, redispool.ErrInvalidConfig)
	assert.Contains(t, err.Error(), "Sentinel is already used by another Pool")

	first.Close()
	third := &redispool.Pool{Sentinel: sentinel}
	defer third.Close()
	require.ErrorIs(t, set(third, "third"), redispool.ErrInvalidConfig, "after the first pool is closed")

	v, err := redis.String(master.Do(t, "GET", "k"), nil)
	require.NoError(t, err)
	assert.Equal(t, "first", v, "only the first pool wrote")
}
