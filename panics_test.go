package redispool_test

// User code that panics: Dial, TestOnBorrow, a conn's own Close, Err,
// Flush, Do or Receive (on a shared connection of AutoPipeline), a log
// handler, an error's Error method. The panic reaches the
// caller whose call ran that code, or goes no further when no caller does
// (a record logged on the pool's own goroutines); either way the pool loses
// no permit, dial slot or connection, and its goroutines keep running.

import (
	"bufio"
	"context"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/redispool/redispool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// ---------------------------------------------------------------------------
// Dial and TestOnBorrow.

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

// ---------------------------------------------------------------------------
// The conn's own methods.

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

// TestAConnWhoseMethodPanicsInCloseGivesItsPermitBack: Close calls the
// conn's own Err, Flush (to write what a borrower sent before discarding the
// conn) and DoWithTimeout (to read pending replies): should one panic, the
// conn is discarded and its permit given back before the panic reaches the
// caller: with MaxActive 1, the next Get gets a conn.
func TestAConnWhoseMethodPanicsInCloseGivesItsPermitBack(t *testing.T) {
	for _, tt := range []struct {
		method string
		borrow func(c redis.Conn) // what the borrower does before Close
	}{
		{"Err", func(redis.Conn) {}},
		{"Flush", func(c redis.Conn) { c.Send("SUBSCRIBE", "ch") }},
		{"DoWithTimeout", func(c redis.Conn) { c.Send("GET", "k") }},
	} {
		t.Run(tt.method, func(t *testing.T) {
			d := &fakeDialer{}
			p := &redispool.Pool{MaxActive: 1, WaitTimeout: 200 * time.Millisecond, Dial: d.Dial}
			defer p.Close()
			c, err := p.GetContext(context.Background())
			require.NoError(t, err)
			tt.borrow(c)
			d.last(t).panicsIn(tt.method)
			assert.PanicsWithValue(t, tt.method+" panics", func() { c.Close() })
			d.last(t).panicsIn("")

			assert.Zero(t, p.ActiveCount(), "the conn is discarded")
			assert.EqualValues(t, 1, p.Stats().Discards.Broken)
			c, err = p.GetContext(context.Background())
			require.NoError(t, err, "the permit came back")
			c.Close()
		})
	}
}

// TestAPanicOfTestOnBorrowInASlotMapRefreshIsDropped: a Cluster's slot
// map is refreshed on a goroutine of its own after a MOVED that disagrees
// with it. A TestOnBorrow that panics as the refresh borrows a node conn
// has no caller to reach there: the panic is dropped, the conn discarded,
// and the program goes on.
func TestAPanicOfTestOnBorrowInASlotMapRefreshIsDropped(t *testing.T) {
	addr, slotsAsked := oneNodeCluster(t, func(_ int64, own string) string { return own })
	var panicking atomic.Bool
	var panicked atomic.Int64
	p := &redispool.Pool{
		Cluster: &redispool.Cluster{StartupNodes: []string{addr}},
		TestOnBorrow: func(redis.Conn, time.Time) error {
			if panicking.Load() {
				panicked.Add(1)
				panic("TestOnBorrow panics")
			}
			return nil
		},
	}
	defer p.Close()
	// Two idle node conns: one for the borrower, one for the refresh.
	c1, c2 := p.Get(), p.Get()
	for _, c := range []redis.Conn{c1, c2} {
		_, err := c.Do("PING")
		require.NoError(t, err)
	}
	c1.Close()
	c2.Close()

	c := p.Get()
	defer c.Close()
	require.NoError(t, c.Send("GET", "k"))
	require.NoError(t, c.Flush())
	panicking.Store(true)
	_, err := c.Receive() // a MOVED read by Receive: the refresh runs in the background
	require.ErrorContains(t, err, "MOVED")
	require.Eventually(t, func() bool { return panicked.Load() >= 1 }, 5*time.Second, time.Millisecond,
		"the refresh borrowed a node conn")
	require.Eventually(t, func() bool { return p.Stats().Discards.HealthCheck >= 1 }, 5*time.Second, time.Millisecond,
		"the conn whose TestOnBorrow panicked is discarded")
	assert.GreaterOrEqual(t, slotsAsked.Load(), int64(1))
}

// TestASharedConnWhoseReceivePanicsFailsItsCommands: with AutoPipeline,
// the replies of a batch written on a shared connection are read by the
// pipe's own goroutine. Should the conn's Receive panic there, every
// command of the batch fails with an error that carries the panic, none
// waits forever, and the pipe's connection is discarded with its permit
// given back.
func TestASharedConnWhoseReceivePanicsFailsItsCommands(t *testing.T) {
	d := &fakeDialer{setup: func(c *fakeConn, n int) {
		if n == 1 {
			c.panicsIn("ReceiveWithTimeout")
		}
	}}
	p := &redispool.Pool{MaxActive: 2, WaitTimeout: time.Second, Dial: d.Dial, AutoPipeline: true}
	defer p.Close()
	const borrowers = 4
	errs := make(chan error, borrowers)
	for range borrowers {
		go func() {
			c := p.Get()
			defer c.Close()
			_, err := c.Do("GET", "k")
			errs <- err
		}()
	}
	for range borrowers {
		select {
		case err := <-errs:
			if err != nil {
				assert.ErrorContains(t, err, "ReceiveWithTimeout panics")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a command on the shared conn whose Receive panicked never returned")
		}
	}
	require.Eventually(t, func() bool { return p.ActiveCount() == 0 }, 5*time.Second, time.Millisecond,
		"the pipe's conn is discarded and its permit given back")
	assert.EqualValues(t, 1, p.Stats().Discards.Broken)

	c := p.Get()
	defer c.Close()
	reply, err := c.Do("GET", "k")
	require.NoError(t, err, "a new shared conn serves the next command")
	assert.Equal(t, "OK", reply)
}

// TestAWaiterThatDiscardsAConnWhoseClosePanicsKeepsNoPermit checks the
// permit of a conn handed to a queued waiter that may not reuse it: the
// waiter closes it and keeps the permit to dial with, unless the conn's Close
// panics, when the panic leaves Get before the dial and the permit comes
// back: with MaxActive 1, the next Get gets a conn.
func TestAWaiterThatDiscardsAConnWhoseClosePanicsKeepsNoPermit(t *testing.T) {
	d := &fakeDialer{setup: func(c *fakeConn, n int) {
		if n == 1 {
			c.panicsIn("Close")
		}
	}}
	var failHealth atomic.Bool
	p := &redispool.Pool{MaxActive: 1, WaitTimeout: 300 * time.Millisecond, Dial: d.Dial,
		TestOnBorrow: func(redis.Conn, time.Time) error {
			if failHealth.Load() {
				return errUnhealthy
			}
			return nil
		},
	}
	defer p.Close()
	held, err := p.GetContext(context.Background()) // dialed: no health check
	require.NoError(t, err)
	failHealth.Store(true)

	waiter := queueGet(t, p, context.Background())
	held.Close() // to the waiter, whose health check fails: it closes the conn, which panics
	r := awaitGet(t, waiter, 5*time.Second)
	r.close()
	require.Equal(t, "Close panics", r.panicked, "the conn's panic reaches the waiter")
	assert.Zero(t, p.ActiveCount())

	c, err := p.GetContext(context.Background())
	require.NoError(t, err, "the permit of the conn whose Close panicked came back (MaxActive 1, nothing open)")
	c.Close()
	checkAtRest(t, p, 0)
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
	slow := goGet(p, context.Background()) // permit 2: the slow dial
	require.Eventually(t, func() bool { return dials.Load() == 2 }, 5*time.Second, time.Millisecond)

	ctx := newGatedErrContext()
	slotWaiter := goGet(p, ctx) // permit 3, waits for the slot
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
	r := awaitGet(t, slotWaiter, 5*time.Second, "the slot waiter never returned")
	r.close()
	assert.Equal(t, "Close panics", r.panicked, "the conn's panic reaches the caller (err %v)", r.err)

	close(release)
	r = awaitGet(t, slow, 5*time.Second, "the slow Get never returned")
	require.NoError(t, r.err)
	r.c.Close()
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

// TestShrinkWhoseCloseOfAnIdleConnPanicsKeepsTheGetsConn checks the
// conn a Get is about to hand out when that Get, reusing it, shrinks the
// pool (once per IdleTimeout) and the Close of a surplus idle conn panics:
// the panic reaches the caller, as everywhere else, but the conn the Get
// had taken goes back to the pool with its permit: with MaxActive 2, the
// pool hands out 2 conns at once again.
func TestShrinkWhoseCloseOfAnIdleConnPanicsKeepsTheGetsConn(t *testing.T) {
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)()
	d := &fakeDialer{setup: func(c *fakeConn, n int) {
		if n == 2 {
			c.panicsIn("Close")
		}
	}}
	p := &redispool.Pool{MaxActive: 2, IdleTimeout: time.Minute, WaitTimeout: -1, Dial: d.Dial}
	defer func() {
		defer func() { recover() }() // the conn whose Close panics may still be idle
		p.Close()
	}()
	ctx := context.Background()
	a, err := p.GetContext(ctx)
	require.NoError(t, err)
	b, err := p.GetContext(ctx) // its Close panics
	require.NoError(t, err)
	a.Close() // the hot slot
	b.Close() // the idle channel

	// t=30s: both handed out again, so that neither reaches IdleTimeout.
	clk.Advance(30 * time.Second)
	a, err = p.GetContext(ctx)
	require.NoError(t, err)
	b, err = p.GetContext(ctx)
	require.NoError(t, err)
	a.Close()
	b.Close()
	// t=61s: the first shrink; the Gets so far left idleLow at 0, so it
	// closes nothing and starts a new period.
	clk.Advance(31 * time.Second)
	c, err := p.GetContext(ctx) // a, from the hot slot
	require.NoError(t, err)
	c.Close()
	// t=100s: a Get leaves b idle: one idle conn no Get needed this period.
	clk.Advance(39 * time.Second)
	c, err = p.GetContext(ctx)
	require.NoError(t, err)
	c.Close()
	// t=122s: the next Get shrinks the pool, closing b, whose Close panics.
	clk.Advance(22 * time.Second)
	assert.PanicsWithValue(t, "Close panics", func() { p.GetContext(ctx) })

	assert.Equal(t, 1, p.IdleCount(), "the conn the panicking Get had taken went back to the pool")
	held := make([]redis.Conn, 0, 2)
	for range 2 {
		c, err := p.GetContext(ctx)
		require.NoError(t, err, "MaxActive 2, nothing held: a permit was lost")
		held = append(held, c)
	}
	closeAll(held)
	checkAtRest(t, p, 0)
}

// TestPoolCloseClosesEveryIdleConnEvenIfOneClosePanics checks that Close
// closes every idle conn when one's Close panics: the panic reaches the
// caller once the others are closed too, since a second Close returns at
// once.
func TestPoolCloseClosesEveryIdleConnEvenIfOneClosePanics(t *testing.T) {
	d := &fakeDialer{setup: func(c *fakeConn, n int) {
		if n == 1 {
			c.panicsIn("Close")
		}
	}}
	p := &redispool.Pool{MaxActive: 2, Dial: d.Dial}
	a, err := p.GetContext(context.Background())
	require.NoError(t, err)
	b, err := p.GetContext(context.Background())
	require.NoError(t, err)
	a.Close() // the hot slot, drained first
	b.Close() // the idle channel
	require.Equal(t, 2, p.IdleCount())

	assert.PanicsWithValue(t, "Close panics", func() { p.Close() }, "the conn's panic reaches the caller")
	p.Close() // idempotent
	assert.Zero(t, p.IdleCount(), "idle conns left in a closed pool")
	assert.Zero(t, d.open.Load(), "conns left open after Close")
	assert.Zero(t, p.ActiveCount())
}

// ---------------------------------------------------------------------------
// The log handler and errors.

// TestALogHandlerPanicWhileAWaiterDiscardsItsGrantLosesNoPermit: a waiter
// granted an idle conn that turns out too old closes it, logs the discard,
// and keeps the permit to dial. A handler that panics on that record does
// not take the permit with it: with MaxActive 1, the pool still hands out a
// conn.
func TestALogHandlerPanicWhileAWaiterDiscardsItsGrantLosesNoPermit(t *testing.T) {
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)()
	d := &fakeDialer{}
	h := panicking("connection discarded")
	p := &redispool.Pool{MaxActive: 1, IdleTimeout: time.Minute, WaitTimeout: 5 * time.Second, Dial: d.Dial, Logger: slog.New(h)}
	defer p.Close()
	ctx := context.Background()

	held, err := p.GetContext(ctx)
	require.NoError(t, err)
	waiter := queueGet(t, p, ctx)

	clk.Advance(2 * time.Minute) // the conn held is past IdleTimeout when the waiter gets it
	h.armed.Store(true)
	held.Close() // handed to the waiter, which discards it (idle timeout)
	o := awaitGet(t, waiter, 5*time.Second)
	select {
	case <-h.panicked:
	default:
		t.Fatal("the handler was not called for the discard")
	}
	if o.panicked == nil {
		require.NoError(t, o.err, "the waiter dials a new conn")
		o.c.Close()
	}

	checkAtRest(t, p, 0)
	ctx2, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	c, err := p.GetContext(ctx2)
	require.NoError(t, err, "MaxActive 1, nothing held: a permit was lost to the log handler's panic")
	c.Close()
}

// TestALogHandlerPanicOnAnExhaustedWaitForADialSlotLosesNoPermit: a Get
// that holds a permit and waits for a dial slot logs "pool exhausted" when
// its WaitTimeout passes. A handler that panics there must not take the
// permit with it.
func TestALogHandlerPanicOnAnExhaustedWaitForADialSlotLosesNoPermit(t *testing.T) {
	addr, accepted, release := startGatedServer(t)
	h := panicking("pool exhausted")
	p := &redispool.Pool{Addr: addr, MaxActive: 2, MaxConcurrentDials: 1, WaitTimeout: 100 * time.Millisecond,
		DialOptions: []redis.DialOption{redis.DialClientName("x")}, Logger: slog.New(h)}
	defer p.Close()
	ctx := context.Background()

	// The first Get dials and waits for the server: the pool's own dials are
	// bounded by DialTimeout, not WaitTimeout.
	first := goGet(p, ctx)
	select {
	case <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("the first dial did not reach the server")
	}
	h.armed.Store(true)
	second := goGet(p, ctx) // a permit, no dial slot: waits, then exhausted
	o := awaitGet(t, second, 5*time.Second)
	select {
	case <-h.panicked:
	default:
		t.Fatalf("the handler was not called for the exhausted wait (Get returned %v)", o.err)
	}
	if o.panicked == nil {
		require.ErrorIs(t, o.err, redispool.ErrPoolExhausted)
	}

	close(release)
	o = awaitGet(t, first, 5*time.Second)
	require.Nil(t, o.panicked)
	require.NoError(t, o.err)
	checkAtRest(t, p, 1)
	o.c.Close()
	checkAtRest(t, p, 0)
}

// TestALogHandlerPanicOnAnExhaustedWaitForAUserDialLosesNoConn: a Get
// whose Dial outlasts WaitTimeout gives up, logging "pool exhausted"; the
// dial goes on and must hand its conn to the pool. A handler that panics
// as the Get gives up must not leave the dial's conn, and its permit,
// waiting for a caller that is gone.
func TestALogHandlerPanicOnAnExhaustedWaitForAUserDialLosesNoConn(t *testing.T) {
	d := &fakeDialer{}
	release := make(chan struct{})
	inDial := make(chan struct{}, 1)
	h := panicking("pool exhausted")
	p := &redispool.Pool{MaxActive: 1, WaitTimeout: 50 * time.Millisecond, Logger: slog.New(h), Dial: func() (redis.Conn, error) {
		inDial <- struct{}{}
		<-release
		return d.Dial()
	}}
	defer p.Close()
	h.armed.Store(true)
	o := awaitGet(t, goGet(p, context.Background()), 5*time.Second)
	<-inDial
	select {
	case <-h.panicked:
	default:
		t.Fatalf("the handler was not called for the exhausted wait (Get returned %v)", o.err)
	}
	close(release)
	require.Eventually(t, func() bool { return p.IdleCount() == 1 }, 5*time.Second, time.Millisecond,
		"the dial's conn never reached the idle set")
	checkAtRest(t, p, 0)
}

// TestALogHandlerPanicInALeakReportDoesNotEndTheProgram: leak reports are
// written on a timer's goroutine, where a panic cannot reach any caller
// and would end the program.
func TestALogHandlerPanicInALeakReportDoesNotEndTheProgram(t *testing.T) {
	d := &fakeDialer{}
	h := panicking("LeakThreshold")
	h.armed.Store(true)
	p := &redispool.Pool{Dial: d.Dial, LeakThreshold: 10 * time.Millisecond, Logger: slog.New(h)}
	defer p.Close()
	c, err := p.GetContext(context.Background())
	require.NoError(t, err)
	select {
	case <-h.panicked:
	case <-time.After(5 * time.Second):
		t.Fatal("no leak report")
	}
	c.Close()
	p.Close()
	assert.EqualValues(t, 1, p.Stats().LeakCount)
}

// TestASentinelRecordWhoseHandlerPanicsIsLostAlone checks the Logger's
// promise for the records about the sentinels: a handler that panics on the
// failed subscription, which is logged on the pool's own goroutine, loses
// that record only. The goroutine keeps retrying, and Get keeps working.
func TestASentinelRecordWhoseHandlerPanicsIsLostAlone(t *testing.T) {
	const failed = "subscription to a sentinel failed"
	master := startRoleServer(t, "master")
	sen := startAnsweringSentinel(t, master.addr)
	sen.refuseSubscribe.Store(true)
	h := panicking(failed)
	h.armed.Store(true)
	p := &redispool.Pool{
		Sentinel: &redispool.Sentinel{Addrs: []string{sen.addr}, MasterName: "mymaster"},
		Logger:   slog.New(h),
	}
	defer p.Close()

	c := p.Get()
	require.NoError(t, c.Err())
	require.NoError(t, c.Close())
	select {
	case <-h.panicked:
	case <-time.After(5 * time.Second):
		t.Fatal("the failed subscription was not logged within 5s")
	}
	// The first retry comes within watchBackoffBase.
	require.Eventually(t, func() bool { return h.count(failed) >= 2 }, 5*time.Second, 10*time.Millisecond,
		"the subscription was not retried after the handler panicked")

	c = p.Get()
	require.NoError(t, c.Err())
	_, err := c.Do("SET", "k", "v")
	require.NoError(t, err)
	require.NoError(t, c.Close())
}

// TestATypedNilDialErrorDoesNotEndTheProgram: a Dial that returns a typed
// nil error fails the Get, and the pool's log record of it, written on the
// dial's own goroutine, does not call the panicking Error method directly,
// which would end the program.
func TestATypedNilDialErrorDoesNotEndTheProgram(t *testing.T) {
	rec := &recorder{}
	p := &redispool.Pool{Logger: slog.New(rec), Dial: func() (redis.Conn, error) {
		var err *nilPointerError
		return nil, err
	}}
	defer p.Close()
	_, err := p.GetContext(context.Background())
	require.True(t, err != nil, "the Get fails") // testify takes a typed nil for nil
	require.Len(t, rec.find("redispool: dial failed"), 1)
}

// ---------------------------------------------------------------------------
// Helpers.

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

// startGatedServer starts a server whose connections answer their first
// command only once release is closed, and +OK to every command. accepted
// receives a value for each connection accepted.
func startGatedServer(t *testing.T) (addr string, accepted <-chan struct{}, release chan struct{}) {
	acc, release := make(chan struct{}, 16), make(chan struct{})
	addr = serveLoopback(t, func(c net.Conn) {
		acc <- struct{}{}
		if _, err := readCommand(bufio.NewReader(c)); err != nil {
			return
		}
		<-release
		c.Write([]byte("+OK\r\n"))
		answerOK(c)
	})
	t.Cleanup(func() { // before serveLoopback's, which waits for the connections
		select {
		case <-release:
		default:
			close(release)
		}
	})
	return addr, acc, release
}

// nilPointerError is an error whose Error method dereferences its receiver:
// a typed nil of it is a non-nil error that panics when printed.
type nilPointerError struct{ msg string }

func (e *nilPointerError) Error() string { return e.msg }
