package redispool_test

// Review of the wait queue and the Get / put / Close / Stats paths.

import (
	"context"
	"testing"
	"time"

	"github.com/redispool/redispool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestAConnGoneFromActiveCountIsCountedAsDiscarded: whoever sees
// ActiveCount drop finds the discard counted, so that dialed = discarded +
// active holds for a monitor, also while the permit is on its way to a
// waiter (which the test holds back by holding the queue's lock).
func TestAConnGoneFromActiveCountIsCountedAsDiscarded(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: 5 * time.Second}
	defer p.Close()
	held, err := p.GetContext(context.Background())
	require.NoError(t, err)
	waiter := queueGet(t, p, context.Background())
	held.Do("BREAK") // Close discards it, and its permit goes to the waiter

	unlock := p.LockQueue()
	closed := make(chan struct{})
	go func() { held.Close(); close(closed) }()
	dropped := assert.Eventually(t, func() bool { return p.ActiveCount() == 0 }, 5*time.Second, 50*time.Microsecond,
		"the closed conn leaves ActiveCount")
	// Read while the waiter cannot be served: once it is, it dials.
	s, dialed, open := p.Stats(), d.made.Load(), d.open.Load()
	unlock()
	require.True(t, dropped)
	assert.Zero(t, open, "the conn is closed")
	assert.Equal(t, dialed, s.Discards.Total()+int64(s.ActiveCount),
		"dialed %d != discarded %d + active %d", dialed, s.Discards.Total(), s.ActiveCount)

	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close never returned")
	}
	r := awaitGet(t, waiter, 5*time.Second, "the waiter was never served")
	require.NoError(t, r.err)
	r.close()
	require.Equal(t, 1, p.IdleCount())
	checkAtRest(t, p, 0)
}
