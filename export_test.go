package redispool

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// SetNowFunc replaces the pool's clock until the returned func is called.
// Set it before the pool's first use: the pool measures time from then.
func SetNowFunc(f func() time.Time) (restore func()) {
	old := nowFunc.Swap(&f)
	return func() { nowFunc.Store(old) }
}

// TestClock is a settable clock for SetNowFunc, shared by the package's
// internal and external tests.
type TestClock struct {
	mu  sync.Mutex
	now time.Time
}

// NewTestClock returns a TestClock set to a fixed date.
func NewTestClock() *TestClock {
	return &TestClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
}

// Now returns the clock's time.
func (c *TestClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock on by d.
func (c *TestClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// Backoff bounds, for tests that move the clock past a dial backoff.
const (
	BackoffBase = backoffBase
	BackoffCap  = backoffCap
)

// SetWatchPing changes how often the pool pings the sentinels it subscribes
// to, until the returned func is called.
func SetWatchPing(d time.Duration) (restore func()) {
	old := watchPingForTests.Swap(int64(d))
	return func() { watchPingForTests.Store(old) }
}

// LateContext is a context whose Err a test sets, with End, without closing
// Done, so that a waiter or a dial is granted a conn or a permit after its
// context ended: the order in which a real context's cancellation and a
// grant race.
type LateContext struct {
	context.Context
	done  chan struct{}
	err   atomic.Pointer[error]
	dones atomic.Int64
}

func NewLateContext() *LateContext {
	return &LateContext{Context: context.Background(), done: make(chan struct{})}
}

func (c *LateContext) Done() <-chan struct{} {
	c.dones.Add(1)
	return c.done
}

func (c *LateContext) Err() error {
	if e := c.err.Load(); e != nil {
		return *e
	}
	return nil
}

// End makes Err return err.
func (c *LateContext) End(err error) { c.err.Store(&err) }

// Dones is how many times Done was called: a select on it is about to block.
func (c *LateContext) Dones() int64 { return c.dones.Load() }
