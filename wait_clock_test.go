package redispool

import (
	"context"
	"sync"
	"sync/atomic"
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
	require.Eventually(t, func() bool { return p.q.n.Load() == 1 }, 5*time.Second, time.Millisecond,
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

// TestAGetThatTakesAConnDuringItsSlotWaitStampsItWhenTaken: a Get that
// waits for a dial slot, and takes a connection given back meanwhile, stamps
// it with the moment it took it, not when its wait began.
func TestAGetThatTakesAConnDuringItsSlotWaitStampsItWhenTaken(t *testing.T) {
	release := make(chan struct{})
	tr := &stressTracker{}
	var dials atomic.Int64
	var mu sync.Mutex
	var lastUsed []time.Time
	p := &Pool{MaxActive: 3, MaxConcurrentDials: 1, WaitTimeout: 5 * time.Second,
		Dial: func() (redis.Conn, error) {
			if dials.Add(1) == 3 {
				<-release // slow: holds the only dial slot
			}
			return tr.Dial()
		},
		TestOnBorrow: func(_ redis.Conn, t time.Time) error {
			mu.Lock()
			lastUsed = append(lastUsed, t)
			mu.Unlock()
			return nil
		}}
	slowDone := make(chan error, 1)
	defer func() {
		close(release)
		select {
		case <-slowDone:
		case <-time.After(5 * time.Second):
			t.Error("the Get with the slow dial never returned")
		}
		p.Close()
	}()

	a := p.Get() // given back after Retire: closed, its permit goes to the waiter
	require.NoError(t, a.Err())
	p.Retire()
	x := p.Get() // of the new generation: given back to the slot waiter
	require.NoError(t, x.Err())
	go func() {
		c, err := p.GetContext(context.Background())
		if err == nil {
			c.Close()
		}
		slowDone <- err
	}()
	require.Eventually(t, func() bool { return dials.Load() == 3 }, 5*time.Second, time.Millisecond)

	got := make(chan redis.Conn, 1)
	go func() { got <- p.Get() }()
	require.Eventually(t, func() bool { return p.q.n.Load() == 1 }, 5*time.Second, time.Millisecond,
		"the fourth Get did not queue")
	require.NoError(t, a.Close()) // a permit is free now, the dial slot is not
	time.Sleep(10 * time.Millisecond)
	require.EqualValues(t, 1, p.q.n.Load(), "the Get with a permit free but no dial slot still waits")
	back := time.Now() // well after the wait began
	require.NoError(t, x.Close())
	var w redis.Conn
	select {
	case w = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("the slot waiter did not take the connection given back")
	}
	require.NoError(t, w.Err())
	require.NoError(t, w.Close())

	c := p.Get() // takes it idle: TestOnBorrow sees the slot waiter's stamp
	require.NoError(t, c.Err())
	require.NoError(t, c.Close())
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, lastUsed, 2, "TestOnBorrow runs for the slot waiter's connection and the idle one")
	assert.False(t, lastUsed[1].Before(back),
		"the slot waiter's connection was stamped %v before it was given back", back.Sub(lastUsed[1]))
}
