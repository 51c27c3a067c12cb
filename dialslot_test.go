package redispool

// A Get waiting for a dial slot that takes a conn given back: its permit,
// its WaitTimeout and its turn.

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
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

// slotWaiterThatTakesAnUnusableConn runs a Get that the test recognises in a
// goroutine dump by this function's name.
func slotWaiterThatTakesAnUnusableConn(p *Pool, done chan<- error) {
	c, err := p.GetContext(context.Background())
	if err == nil {
		c.Close()
	}
	done <- err
}

// TestADialSlotWaiterWhoseTakenConnIsUnusableDoesNotQueueAgain: a Get that
// holds a permit and waits for a dial slot takes a conn given back meanwhile
// and gives its own permit back (9f0d21d). When that conn then fails its
// check (health check here; idle timeout, Retire or a peek the same way),
// the Get discarded it, giving its permit back too, and went round get's
// loop from the top: with both permits gone to other callers, it queued in
// wait() again, behind callers that came after it, with a fresh
// WaitTimeout. WaitTimeout bounds a Get's waits all together, and a caller
// whose turn came keeps the closed conn's permit and dials (the waited
// path): it must do so here too.
func TestADialSlotWaiterWhoseTakenConnIsUnusableDoesNotQueueAgain(t *testing.T) {
	release := make(chan struct{})
	tr := &stressTracker{}
	var dials atomic.Int64
	tobEntered := make(chan struct{})
	tobRelease := make(chan struct{})
	var tobGate atomic.Bool
	p := &Pool{MaxActive: 3, MaxConcurrentDials: 1, WaitTimeout: 5 * time.Second,
		Dial: func() (redis.Conn, error) {
			if dials.Add(1) == 2 {
				<-release // the second dial is slow, and holds the only slot
			}
			return tr.Dial()
		},
		TestOnBorrow: func(redis.Conn, time.Time) error {
			if tobGate.CompareAndSwap(true, false) {
				close(tobEntered)
				<-tobRelease
				return errStressTOB
			}
			return nil
		}}
	var others []chan error
	defer func() {
		close(release)
		for _, ch := range others {
			select {
			case <-ch:
			case <-time.After(5 * time.Second):
				t.Error("a Get never returned")
			}
		}
		p.Close()
	}()
	getAsync := func() chan error {
		ch := make(chan error, 1)
		go func() {
			c, err := p.GetContext(context.Background())
			if err == nil {
				c.Close()
			}
			ch <- err
		}()
		others = append(others, ch)
		return ch
	}
	slotWaiters := func() int { return goroutinesIn("(*Pool).waitDialSlot(", " [select") }

	held, err := p.GetContext(context.Background()) // permit 1
	require.NoError(t, err)
	getAsync() // permit 2: the slow dial, holding the slot
	require.Eventually(t, func() bool { return dials.Load() == 2 }, 5*time.Second, time.Millisecond)

	sDone := make(chan error, 1)
	others = append(others, sDone)
	go slotWaiterThatTakesAnUnusableConn(p, sDone) // permit 3, waits for the slot
	require.Eventually(t, func() bool { return slotWaiters() == 1 }, 5*time.Second, time.Millisecond)

	tobGate.Store(true)
	held.Close() // the slot waiter takes it, gives permit 3 back, checks it
	select {
	case <-tobEntered:
	case <-time.After(5 * time.Second):
		t.Fatal("the slot waiter never checked the conn given back")
	}
	// Meanwhile permit 3 goes to a new Get, which waits for the slot, and
	// one more Get queues for a permit.
	getAsync()
	require.Eventually(t, func() bool { return slotWaiters() == 1 }, 5*time.Second, time.Millisecond)
	before := p.Stats().WaitCount
	getAsync()
	require.Eventually(t, func() bool { return p.Stats().WaitCount == before+1 }, 5*time.Second, time.Millisecond)

	close(tobRelease) // the conn fails its check
	inSlotWait := func() bool {
		return goroutinesIn("slotWaiterThatTakesAnUnusableConn", "(*Pool).waitDialSlot(", " [select") == 1
	}
	requeued := func() bool {
		return goroutinesIn("slotWaiterThatTakesAnUnusableConn", "(*Pool).wait(") == 1
	}
	require.Eventually(t, func() bool { return inSlotWait() || requeued() }, 5*time.Second, time.Millisecond)
	assert.False(t, requeued(), "the slot waiter gave the failed conn's permit away and queued again with a fresh WaitTimeout")
	assert.True(t, inSlotWait(), "the slot waiter keeps the failed conn's permit and waits for the slot within its WaitTimeout")
}

// TestADialSlotWaiterWhoseGivenBackConnClosePanicsKeepsNoPermit: a Get
// waiting for a dial slot holds a permit. When it takes a conn given back
// but its caller gave up meanwhile, it puts the conn back (took); if the pool
// discards the conn there (retired, MaxIdle) and the conn's Close panics, the
// panic left dial before its deferred releasePermit could see an error: the
// Get's own permit was lost (and a probe's flag left set), so the pool could
// never again hold MaxActive conns. The same holds for the conn discarded
// because the pool closed.
func TestADialSlotWaiterWhoseGivenBackConnClosePanicsKeepsNoPermit(t *testing.T) {
	release := make(chan struct{})
	tr := &stressTracker{}
	var dials atomic.Int64
	p := &Pool{MaxActive: 3, MaxConcurrentDials: 1, WaitTimeout: 5 * time.Second,
		Dial: func() (redis.Conn, error) {
			c, err := tr.Dial()
			switch dials.Add(1) {
			case 1:
				return panickyCloseConn{c.(*stressConn)}, err
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
	require.Eventually(t, func() bool { return goroutinesIn("(*Pool).waitDialSlot(", " [select") == 1 }, 5*time.Second, time.Millisecond)

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
