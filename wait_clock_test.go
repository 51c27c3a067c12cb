package redispool

import (
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestAGetThatWaitedStampsItsConnWhenTheWaitEnded checks the time a
// connection handed out after a wait is stamped with, which TestOnBorrow
// is given as lastUsed and IdleTimeout counts from: the moment the wait
// ended, read once for both the wait's duration and the stamp. A stamp from
// before the connection came back would make it look idle longer than it
// was.
func TestAGetThatWaitedStampsItsConnWhenTheWaitEnded(t *testing.T) {
	var mu sync.Mutex
	var lastUsed []time.Time
	tr := &stressTracker{}
	p := &Pool{
		MaxActive: 1,
		Dial:      tr.Dial,
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
	got := make(chan redis.Conn, 1)
	go func() { got <- p.Get() }()
	require.Eventually(t, func() bool { return p.waiters.Load() == 1 }, 5*time.Second, time.Millisecond,
		"the second Get did not queue")
	back := time.Now() // after the wait began: a stamp from its start is earlier
	require.NoError(t, a.Close())
	var b redis.Conn
	select {
	case b = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting Get did not get the connection given back")
	}
	require.NoError(t, b.Err())
	require.NoError(t, b.Close())

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
