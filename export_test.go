package redispool

// The seams through which the external tests reach the pool's internals:
// its clock, the counts its accounting rests on, the wait queue's lock, a
// dial slot, the generation of its connections, a borrowed conn's leak watch
// and socket, and the Sentinel's announcements and last query. A rework of
// the internals changes this file, not the tests.

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gomodule/redigo/redis"
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

// Accounting is a snapshot of what the pool holds, for checkAtRest: at
// rest, Permits + Idle + the conns held is MaxActive, Active is Idle plus
// the conns held, every dial slot is back, and nobody waits.
type Accounting struct {
	Waiters                          int // counted as waiting
	Queued                           int // in the wait queue
	MaxActive, Permits, Idle, Active int
	MaxDials, Slots                  int
	Probing                          bool // a dial is testing whether the server is back
}

// Accounting returns the pool's accounting; it counts as the pool's first
// use.
func (p *Pool) Accounting() Accounting {
	p.init()
	p.q.mu.Lock()
	queued := 0
	for w := p.q.list.head; w != nil; w = w.next {
		queued++
	}
	p.q.mu.Unlock()
	p.backoff.mu.Lock()
	probing := p.backoff.probing
	p.backoff.mu.Unlock()
	return Accounting{
		Waiters:   int(p.q.n.Load()),
		Queued:    queued,
		MaxActive: p.cfg.maxActive,
		Permits:   len(p.permits),
		Idle:      p.idleLen(),
		Active:    p.ActiveCount(),
		MaxDials:  p.cfg.maxDials,
		Slots:     len(p.slots),
		Probing:   probing,
	}
}

// LockQueue holds the wait queue's lock, so that no waiter is served, until
// unlock is called.
func (p *Pool) LockQueue() (unlock func()) {
	p.init()
	p.q.mu.Lock()
	return p.q.mu.Unlock
}

// HoldDialSlot takes a dial slot, as a dial in progress holds it, until
// release gives it back (to a caller waiting for one, if any).
func (p *Pool) HoldDialSlot() (release func()) {
	p.init()
	<-p.slots
	return p.releaseSlot
}

// Generation is raised each time the pool retires its connections.
func (p *Pool) Generation() uint64 { return p.gen.Load() }

// LeakWatched reports whether c, handed out by a Pool, is watched for
// LeakThreshold.
func LeakWatched(c redis.Conn) bool { return c.(*activeConn).pc.leak != nil }

// SocketDeadlines reports on the socket under c, a conn the pool dialed:
// the slack of its deadlines, zero when it is not wrapped to move them
// lazily, and whether its read deadline is known to be cleared.
func SocketDeadlines(c redis.Conn) (slack time.Duration, readCleared bool) {
	dc, ok := c.(*activeConn).pc.netConn.(*deadlineConn)
	if !ok {
		return 0, false
	}
	dc.mu.Lock()
	defer dc.mu.Unlock()
	return dc.slack, dc.read.known && dc.read.at.IsZero()
}

// PeekAfterIdle is how long a conn the pool dialed stays idle before Get
// peeks at its socket.
const PeekAfterIdle = peekAfterIdle

// Announce hands the Sentinel an announcement of a new master, as received
// on +switch-master from the sentinel at from. The Sentinel's Pool must have
// been used.
func (s *Sentinel) Announce(from, msg string) {
	s.mu.Lock()
	p := s.pool
	s.mu.Unlock()
	s.announced(p, from, msg)
}

// SetLastQuery makes the sentinels' last answer have come now, naming last
// (unless empty), or, when failed is not nil, their last query have failed
// now with it.
func (s *Sentinel) SetLastQuery(last string, failed error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if last != "" {
		s.last = last
	}
	s.lastQuery = time.Now()
	if failed != nil {
		s.failErr, s.failedAt = failed, time.Now()
	}
}
