package redispool_test

// A Get waiting for a dial slot that takes a conn given back: its permit,
// its WaitTimeout and its turn.

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

// gatedErrContext is a context whose Err, once armed, blocks the first
// caller until the test lets it go, and from then on reports Canceled. Done
// never closes. It parks a Get at the exact place where it asks whether its
// caller gave up.
type gatedErrContext struct {
	context.Context
	armed   atomic.Bool
	ended   atomic.Bool
	entered chan struct{}
	release chan struct{}
}

func newGatedErrContext() *gatedErrContext {
	return &gatedErrContext{Context: context.Background(), entered: make(chan struct{}), release: make(chan struct{})}
}

func (c *gatedErrContext) Err() error {
	if c.armed.CompareAndSwap(true, false) {
		close(c.entered)
		<-c.release
		c.ended.Store(true)
	}
	if c.ended.Load() {
		return context.Canceled
	}
	return nil
}

// TestADialSlotWaiterWhoseGivenBackConnClosePanicsKeepsNoPermit: a Get
// waiting for a dial slot that is handed a conn as its caller gives up puts
// the conn back; should the pool discard it there (retired) and its Close
// panic, the panic reaches the caller and no permit is lost: the pool can
// hold MaxActive conns again.
func TestADialSlotWaiterWhoseGivenBackConnClosePanicsKeepsNoPermit(t *testing.T) {
	release := make(chan struct{})
	d := &fakeDialer{}
	var dials atomic.Int64
	p := &redispool.Pool{MaxActive: 3, MaxConcurrentDials: 1, WaitTimeout: 5 * time.Second,
		Dial: func() (redis.Conn, error) {
			c, err := d.Dial()
			switch dials.Add(1) {
			case 1:
				c.(*fakeConn).panicsIn("Close")
			case 2:
				<-release // slow: holds the only slot
			}
			return c, err
		}}
	slowDone := make(chan error, 1)
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
		p.Close()
	}()

	held, err := p.GetContext(context.Background()) // permit 1: Close panics
	require.NoError(t, err)
	go func() {
		c, err := p.GetContext(context.Background()) // permit 2: the slow dial
		if err == nil {
			c.Close()
		}
		slowDone <- err
	}()
	require.Eventually(t, func() bool { return dials.Load() == 2 }, 5*time.Second, time.Millisecond)

	ctx := newGatedErrContext()
	type outcome struct {
		err      error
		panicked any
	}
	sDone := make(chan outcome, 1)
	go func() {
		var o outcome
		defer func() {
			o.panicked = recover()
			sDone <- o
		}()
		var c redis.Conn
		c, o.err = p.GetContext(ctx) // permit 3, waits for the slot
		if o.err == nil {
			c.Close()
		}
	}()
	require.Eventually(t, func() bool { return p.Accounting().Waiters == 1 }, 5*time.Second, time.Millisecond,
		"the Get queues: a permit is free, the dial slot is not")

	ctx.armed.Store(true)
	held.Close() // the slot waiter takes it, and asks whether its caller gave up
	select {
	case <-ctx.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the slot waiter never took the conn given back")
	}
	p.Retire()         // the conn is now retired: put discards it, and its Close panics
	close(ctx.release) // the caller gave up
	var o outcome
	select {
	case o = <-sDone:
	case <-time.After(5 * time.Second):
		t.Fatal("the slot waiter never returned")
	}
	assert.Equal(t, "Close panics", o.panicked, "the conn's panic reaches the caller (err %v)", o.err)

	close(release)
	select {
	case err := <-slowDone:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("the slow Get never returned")
	}
	checkAtRest(t, p, 0)

	// And so MaxActive conns can be held at once again.
	var conns []redis.Conn
	defer func() { closeAll(conns) }()
	for range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c, err := p.GetContext(ctx)
		cancel()
		if !assert.NoError(t, err, "a permit was lost") {
			break
		}
		conns = append(conns, c)
	}
}
