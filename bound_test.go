package redispool_test

// The bound: at most MaxActive connections exist, counting those being
// dialed; every permit and dial slot a Get takes comes back on every path;
// the configuration that sets the bound is checked; and Close wakes every
// waiter and leaves nothing open. This file also holds the fake conn and the
// helpers that the package's tests share.

import (
	"context"
	"errors"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/redispool/redispool"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// ---------------------------------------------------------------------------
// The fake conn and its dialer.

var (
	errRefused   = errors.New("fake: dial refused")
	errBroken    = errors.New("fake: connection broken")
	errClosed    = errors.New("fake: closed")
	errUnhealthy = errors.New("fake: health check failed")
)

// fakeConn is the tests' redis.ConnWithTimeout. It is safe for concurrent
// use, records what it is asked, and answers "OK" to every command but
// these: "" returns the replies pending; BREAK fails with errBroken and
// breaks the conn, as a network error does; SLOW n waits n µs, or until
// the conn is closed; WHOAMI returns the conn itself. A fakeDialer counts
// the conns it dials, and the STALE commands that reach them. Its options
// are set before it is used (fakeDialer.setup sets them on the conns it
// dials).
type fakeConn struct {
	// doErr, when set, is returned by the next Do or Receive, and breaks
	// the conn unless it is a redis.Error.
	doErr error
	// reply, when set, answers Do. It runs unlocked, so that a reply that
	// blocks lets Close proceed.
	reply func(cmd string, args []any) (any, error)

	d        *fakeDialer            // that dialed it, if any
	gone     chan struct{}          // closed by Close, when set
	panicIn  atomic.Pointer[string] // see panicsIn
	borrowed atomic.Bool            // a borrower holds it (see useConn)

	mu       sync.Mutex
	calls    []string        // "DO GET", "SEND SET", "FLUSH", "RECV", "CLOSE"
	timeouts []time.Duration // the read timeout of each Do or Receive given one
	pending  int
	err      error // set by Close or by a failing call, as redigo's conn does
	closed   bool
}

// panicsIn makes method ("Close", "Err", "Flush" or "DoWithTimeout", which
// Do calls) panic with "<method> panics" from now on, or no method when it
// is empty. Close closes the conn before it panics.
func (c *fakeConn) panicsIn(method string) { c.panicIn.Store(&method) }

func (c *fakeConn) maybePanic(method string) {
	if m := c.panicIn.Load(); m != nil && *m == method {
		panic(method + " panics")
	}
}

// setErr sets the conn's Err, as redigo's conn does when it breaks.
func (c *fakeConn) setErr(err error) {
	c.mu.Lock()
	c.err = err
	c.mu.Unlock()
}

func (c *fakeConn) record(s string, timeout time.Duration) {
	c.calls = append(c.calls, s)
	if timeout >= 0 {
		c.timeouts = append(c.timeouts, timeout)
	}
	if c.d != nil && strings.HasSuffix(s, " STALE") {
		c.d.staleTouches.Add(1)
	}
}

// takeDoErr returns doErr once, breaking the conn unless it is a redis.Error.
func (c *fakeConn) takeDoErr() error {
	err := c.doErr
	if err == nil {
		return nil
	}
	c.doErr = nil
	if _, ok := err.(redis.Error); !ok {
		c.err = err
	}
	return err
}

func (c *fakeConn) Close() error {
	c.mu.Lock()
	c.calls = append(c.calls, "CLOSE")
	if !c.closed {
		c.closed = true
		if c.err == nil {
			c.err = errClosed
		}
		if c.gone != nil {
			close(c.gone)
		}
		if c.d != nil {
			c.d.open.Add(-1)
			c.d.closed.Add(1)
		}
	}
	c.mu.Unlock()
	c.maybePanic("Close")
	return nil
}

func (c *fakeConn) Err() error {
	c.maybePanic("Err")
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *fakeConn) Do(cmd string, args ...any) (any, error) {
	return c.DoWithTimeout(-1, cmd, args...)
}

func (c *fakeConn) DoWithTimeout(timeout time.Duration, cmd string, args ...any) (any, error) {
	c.maybePanic("DoWithTimeout")
	c.mu.Lock()
	c.record("DO "+cmd, timeout)
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	if cmd == "" && c.pending == 0 {
		c.mu.Unlock()
		return nil, nil
	}
	if err := c.takeDoErr(); err != nil {
		c.mu.Unlock()
		return nil, err
	}
	n := c.pending
	c.pending = 0
	reply, gone := c.reply, c.gone
	switch {
	case reply != nil:
		c.mu.Unlock()
		return reply(cmd, args)
	case cmd == "BREAK":
		c.err = errBroken
		c.mu.Unlock()
		return nil, errBroken
	}
	c.mu.Unlock()
	switch cmd {
	case "":
		return make([]any, n), nil
	case "WHOAMI":
		return c, nil
	case "SLOW":
		select {
		case <-time.After(time.Duration(args[0].(int)) * time.Microsecond):
			return "OK", nil
		case <-gone:
			return nil, errClosed
		}
	}
	return "OK", nil
}

func (c *fakeConn) Send(cmd string, args ...any) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.record("SEND "+cmd, -1)
	if c.err != nil {
		return c.err
	}
	c.pending++
	return nil
}

func (c *fakeConn) Flush() error {
	c.maybePanic("Flush")
	c.mu.Lock()
	defer c.mu.Unlock()
	c.record("FLUSH", -1)
	return c.err
}

func (c *fakeConn) Receive() (any, error) { return c.ReceiveWithTimeout(-1) }

func (c *fakeConn) ReceiveWithTimeout(timeout time.Duration) (any, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.record("RECV", timeout)
	if c.err != nil {
		return nil, c.err
	}
	if err := c.takeDoErr(); err != nil {
		return nil, err
	}
	if c.pending > 0 {
		c.pending--
	}
	return "OK", nil
}

// Calls returns a copy of the calls recorded so far.
func (c *fakeConn) Calls() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.calls...)
}

// Timeouts returns the read timeouts recorded so far.
func (c *fakeConn) Timeouts() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.timeouts...)
}

func (c *fakeConn) IsClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// fmtCalls helps failure messages.
func fmtCalls(c *fakeConn) string { return strings.Join(c.Calls(), ", ") }

// fakeDialer dials fakeConns and counts them. Its options are set before
// its first Dial, but for faults and SetErr.
type fakeDialer struct {
	// setup, when set, prepares the n-th conn dialed (from 1).
	setup func(c *fakeConn, n int)
	// plain makes Dial return conns that implement redis.Conn alone, not
	// redis.ConnWithTimeout, as some hand-written Dials do.
	plain bool
	// faults, while set, makes one Dial in about seven slow, and a few in
	// a thousand fail, slowly or at once, or panic.
	faults atomic.Bool

	mu    sync.Mutex
	conns []*fakeConn
	err   error // returned by Dial while set

	dials, inDial    atomic.Int64 // Dial calls; those in progress
	made, open, peak atomic.Int64 // conns dialed; those not closed yet; the most open at once
	closed           atomic.Int64 // conns closed
	staleTouches     atomic.Int64 // STALE commands that reached a conn: only stale handles send them
}

func (d *fakeDialer) Dial() (redis.Conn, error) {
	d.dials.Add(1)
	d.inDial.Add(1)
	defer d.inDial.Add(-1)
	if d.faults.Load() {
		if err := dialFault(); err != nil {
			return nil, err
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.err != nil {
		return nil, d.err
	}
	c := &fakeConn{d: d, gone: make(chan struct{})}
	d.conns = append(d.conns, c)
	if d.setup != nil {
		d.setup(c, len(d.conns))
	}
	d.made.Add(1)
	if n := d.open.Add(1); n > d.peak.Load() {
		d.peak.Store(n) // under d.mu
	}
	if d.plain {
		return struct{ redis.Conn }{c}, nil
	}
	return c, nil
}

// dialFault is what a Dial with faults does before it dials: usually
// nothing, sometimes wait up to 2 ms, and now and then fail or panic.
func dialFault() error {
	switch r := rand.IntN(1000); {
	case r < 2:
		return errRefused
	case r < 4: // slow to fail: the caller may have given up
		time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
		return errRefused
	case r < 6:
		panic("fake: dial panicked")
	case r < 150:
		time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
	}
	return nil
}

// SetErr makes Dial fail with err, or no longer fail when err is nil.
func (d *fakeDialer) SetErr(err error) {
	d.mu.Lock()
	d.err = err
	d.mu.Unlock()
}

// Conns returns the conns dialed so far.
func (d *fakeDialer) Conns() []*fakeConn {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]*fakeConn(nil), d.conns...)
}

// last returns the most recently dialed conn.
func (d *fakeDialer) last(t testing.TB) *fakeConn {
	t.Helper()
	cs := d.Conns()
	if len(cs) == 0 {
		t.Fatal("no connection was dialed")
	}
	return cs[len(cs)-1]
}

// ---------------------------------------------------------------------------
// Helpers.

// getResult is what a Get ended with: a conn, an error, or a panic.
type getResult struct {
	c        redis.Conn
	err      error
	panicked any
}

// close closes the conn, if the Get got one.
func (r getResult) close() {
	if r.c != nil && r.err == nil {
		r.c.Close()
	}
}

// tryGet is p.GetContext(ctx), with a panic recovered into the result.
func tryGet(p *redispool.Pool, ctx context.Context) (r getResult) {
	defer func() { r.panicked = recover() }()
	r.c, r.err = p.GetContext(ctx)
	return r
}

// goGet runs tryGet on a goroutine of its own and returns the channel its
// result arrives on.
func goGet(p *redispool.Pool, ctx context.Context) <-chan getResult {
	ch := make(chan getResult, 1)
	go func() { ch <- tryGet(p, ctx) }()
	return ch
}

// queueGet is goGet that returns once the Get waits in p's queue, as
// counted in WaitCount.
func queueGet(t testing.TB, p *redispool.Pool, ctx context.Context) <-chan getResult {
	t.Helper()
	before := p.Stats().WaitCount
	ch := goGet(p, ctx)
	require.Eventually(t, func() bool { return p.Stats().WaitCount == before+1 }, 5*time.Second, 50*time.Microsecond,
		"the Get did not queue")
	return ch
}

// awaitGet receives a Get's result, and fails the test when it does not
// come within d.
func awaitGet(t testing.TB, ch <-chan getResult, d time.Duration) getResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(d):
		t.Fatalf("the Get did not return within %v", d)
		return getResult{}
	}
}

// getN borrows n conns and fails the test on any error.
func getN(t *testing.T, p *redispool.Pool, n int) []redis.Conn {
	t.Helper()
	conns := make([]redis.Conn, n)
	for i := range conns {
		c, err := p.GetContext(context.Background())
		require.NoError(t, err, "Get #%d", i)
		conns[i] = c
	}
	return conns
}

func closeAll(conns []redis.Conn) {
	for _, c := range conns {
		c.Close()
	}
}

func newClock() *redispool.TestClock { return redispool.NewTestClock() }

// checkAtRest checks the pool's accounting when no Get is in progress and
// held conns are checked out: every permit is in its channel, in an idle
// conn or in a held conn; nobody waits; every dial slot is back.
func checkAtRest(t *testing.T, p *redispool.Pool, held int) {
	t.Helper()
	a := p.Accounting()
	assert.Zero(t, a.Waiters, "waiters counted at rest")
	assert.Zero(t, a.Queued, "a waiter left in the queue")
	assert.Equal(t, a.MaxActive, a.Permits+a.Idle+held,
		"permits %d + idle %d + held %d != MaxActive", a.Permits, a.Idle, held)
	assert.Equal(t, a.Idle+held, a.Active, "ActiveCount at rest")
	assert.Equal(t, a.MaxDials, a.Slots, "dial slots lost")
	assert.False(t, a.Probing, "a probe left set")
}

// waitGroupWithin waits for wg, and fails the test with every goroutine's
// stack when it takes longer than d: a hang means a lost wake-up or a full
// permits channel.
func waitGroupWithin(t *testing.T, wg *sync.WaitGroup, d time.Duration, what string) {
	t.Helper()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		t.Fatalf("%s did not finish within %v:\n%s", what, d, buf)
	}
}
