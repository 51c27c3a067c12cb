package redispool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gomodule/redigo/redis"
)

// ErrPoolClosed is returned by Get, GetContext and every method of the conn Get
// returns once the Pool has been closed, including to callers that were waiting
// for a connection when Close was called.
var ErrPoolClosed = errors.New("redispool: pool is closed")

// ErrPoolExhausted is wrapped by the error returned by Get and GetContext when
// WaitTimeout passed before a connection, a dial slot or a Dial of the user's
// became available (at once when WaitTimeout is negative). It wraps redigo's
// redis.ErrPoolExhausted, so code written for redis.Pool that checks
// errors.Is(err, redis.ErrPoolExhausted) keeps working.
var ErrPoolExhausted = fmt.Errorf("redispool: connection pool exhausted: %w", redis.ErrPoolExhausted)

// ErrConnClosed is returned by every method but Close of a conn from Get after
// that conn has been closed. The pooled connection behind it is not touched.
var ErrConnClosed = errors.New("redispool: use of closed connection")

// ErrConnRetired is returned by the methods of a conn from a Pool with
// Sentinel set once the pool has moved to a new master: the conn reaches the
// old one. Close it and get another. Close returns it when it closed a conn
// retired while in use with replies left unread (see Pool.Retire).
var ErrConnRetired = errors.New("redispool: connection retired after a failover; get a new one")

// ErrDialBackoff is wrapped, together with the last dial error, by the error
// Get and GetContext return at once, without dialing, while dials fail and the
// pool backs off (see MaxConcurrentDials). errors.Is finds both.
var ErrDialBackoff = errors.New("redispool: not dialing while dials fail")

// errNilConn is the dial error for a Dial that returned neither a connection
// nor an error.
var errNilConn = errors.New("redispool: Dial returned a nil connection and no error")

// errNilPool is returned by the methods of a nil *Pool.
var errNilPool = errors.New("redispool: method called on a nil *Pool")

// errNilContext is returned by GetContext, DoContext and ReceiveContext when
// given a nil context.
var errNilContext = errors.New("redispool: nil Context; pass context.Background() for none")

// nowFunc, when set by tests, replaces the clock so that they move time
// instead of sleeping. It is atomic because goroutines a test leaves behind
// (a dial it gave up on) may still read it when the next test sets it.
var nowFunc atomic.Pointer[func() time.Time]

// Dial backoff while the server refuses connections: the first retry waits
// about backoffBase, each failure doubles the wait up to backoffCap, and the
// wait is jittered down by up to half so that pools do not retry in step.
const (
	backoffBase = 10 * time.Millisecond
	backoffCap  = 500 * time.Millisecond
)

// peekAfterIdle is how long a connection the pool dialed must have been idle
// before Get peeks at its socket for a close or unasked-for bytes. Busy
// connections skip the system call; a stale one fails its first command and
// is discarded anyway.
const peekAfterIdle = 100 * time.Millisecond

// tcpKeepAlive is the keep-alive period of connections the pool dials, as
// redigo's dialer sets it.
const tcpKeepAlive = 5 * time.Minute

// ConnPool is what application code needs from a pool of Redis connections.
// Both *Pool and redigo's *redis.Pool satisfy it, so code that accepts a
// ConnPool works with either and can be tested with a fake.
type ConnPool interface {
	Get() redis.Conn
	GetContext(ctx context.Context) (redis.Conn, error)
	Close() error
}

var (
	_ ConnPool = (*Pool)(nil)
	_ ConnPool = (*redis.Pool)(nil)
)

// Pool is a bounded pool of Redis connections. It has the exported fields of
// redigo's redis.Pool, with the same names and types, so that code written for
// redis.Pool compiles after changing the type name, and it adds fields for
// dialing and timeouts.
//
// The zero value is ready to use: it dials localhost:6379 with timeouts, keeps
// at most 10 x GOMAXPROCS connections and waits a bounded time for one. The
// fields are read once, on first use (any method, Stats and IdleCount
// included), and must not change after that. A Pool must not be copied after
// first use.
type Pool struct {
	// Dial creates and configures a connection. When Dial and DialContext are
	// both nil, the pool dials Addr itself. When both are set, DialContext is
	// used. The connection returned must not be in a special state (subscribed,
	// in a transaction, ...). The pool applies ReadTimeout to each command on
	// connections that implement redis.ConnWithTimeout, as redigo's do.
	Dial func() (redis.Conn, error)

	// DialContext creates and configures a connection. The context is not
	// cancelled when the caller of Get gives up, so that a finished dial can
	// serve the next caller; it carries the caller's values.
	DialContext func(ctx context.Context) (redis.Conn, error)

	// TestOnBorrow, when set, checks an idle connection before Get hands it
	// out; lastUsed is when it was last handed out. On error the connection
	// is closed and Get tries another.
	TestOnBorrow func(c redis.Conn, lastUsed time.Time) error

	// TestOnBorrowContext is TestOnBorrow with the context given to GetContext.
	// When both are set, both run.
	TestOnBorrowContext func(ctx context.Context, c redis.Conn, lastUsed time.Time) error

	// MaxIdle is the most idle connections kept. When zero, up to MaxActive are
	// kept, so that a steady load reuses its connections instead of dialing.
	// A MaxIdle above MaxActive is lowered to MaxActive.
	MaxIdle int

	// MaxActive is the most connections open at once, counting those being
	// dialed, at most 65536. When zero, it is 10 x GOMAXPROCS, or MaxIdle if
	// that is larger. Unlike redis.Pool, zero never means unlimited.
	MaxActive int

	// IdleTimeout closes connections that stayed idle this long, when Get
	// comes to them. When zero, it is DefaultIdleTimeout (4 minutes). Keep it
	// below the server's and any proxy's idle timeout. Idle time counts from
	// when a connection was last handed out, so one held longer than
	// IdleTimeout is closed rather than handed out again. Get takes first the
	// connection in a one-place hot slot, which Close fills when it is empty
	// (a caller alone reuses one connection), then the others, longest idle
	// first. So that a trickle of Gets does not keep a burst's connections
	// open for ever, once per IdleTimeout the pool also closes as many idle
	// connections as no Get needed in that time.
	IdleTimeout time.Duration

	// Wait is accepted for compatibility with redis.Pool and has no effect:
	// Get waits for a connection for at most WaitTimeout, and not at all
	// when WaitTimeout is negative.
	Wait bool

	// MaxConnLifetime closes connections older than this: Close closes them
	// instead of keeping them idle, and Get instead of handing them out. When
	// zero, connections are not closed for their age.
	MaxConnLifetime time.Duration

	// Addr is the server's "host:port", or the path of a Unix socket when it
	// starts with "/". When empty, the pool dials DefaultAddr. It must be empty
	// when Dial or DialContext is set.
	Addr string

	// Sentinel, when set, finds the master through Redis Sentinel instead of
	// dialing Addr, which must then be empty, as must Dial and DialContext.
	// See Sentinel for how the pool follows a failover. When nil, the pool
	// dials Addr or calls Dial.
	Sentinel *Sentinel

	// Username and Password authenticate connections the pool dials (AUTH).
	// When empty, no AUTH is sent.
	Username, Password string

	// DB is the database selected on connections the pool dials. When zero,
	// database 0. With Dial or DialContext, set DB to the database your Dial
	// selects, so that a borrower who SELECTs it again keeps the connection.
	DB int

	// DialOptions are passed to redis.DialContext when the pool dials Addr,
	// after the pool's own options (timeouts, Username, Password), for
	// example redis.DialUseTLS(true) or redis.DialClientName("app"). When
	// nil, only the pool's own are used. The database is DB's: a
	// redis.DialDatabase here has no effect.
	DialOptions []redis.DialOption

	// DialTimeout bounds a dial of Addr as a whole: connecting, the TLS
	// handshake, AUTH and SELECT, and with Sentinel the query to the
	// sentinels and the master's ROLE check.
	// When zero, DefaultDialTimeout (5s); negative disables it (redigo's own
	// 10s bound on a TLS handshake then applies). It must be zero when Dial
	// or DialContext is set: bound your own dial.
	DialTimeout time.Duration

	// ReadTimeout bounds the wait for each reply. A blocking command such as
	// BLPOP gets ReadTimeout plus its own timeout, and none when its own is
	// zero; so does Receive on a subscribed connection. When zero,
	// DefaultReadTimeout (3s); negative disables it. A command that times out
	// costs its connection, which is closed, never reused. On connections
	// the pool dials, a read times out never early and at most a slack
	// late: 1/64 of the shorter of ReadTimeout and WriteTimeout, and at
	// most 5ms. The socket keeps a deadline already set when it is no
	// earlier than asked and at most the slack later; otherwise the new one
	// is set the slack later than asked.
	ReadTimeout time.Duration

	// WriteTimeout bounds each write. When zero, it equals ReadTimeout;
	// negative disables it. It applies to connections the pool dials, with
	// the slack described under ReadTimeout, and must be zero when Dial or
	// DialContext is set: set your conn's own (redis.DialWriteTimeout).
	WriteTimeout time.Duration

	// WaitTimeout bounds a Get's waits, all together, counted from the first:
	// for a connection when MaxActive are in use, for a dial slot, and for a
	// Dial of the user's to finish (a dial given up on goes on and serves a
	// later Get; the pool's own dials are bounded by DialTimeout instead).
	// When zero, ReadTimeout plus one second (4s when ReadTimeout is
	// disabled). Negative means do not wait for a connection or a dial slot,
	// fail at once; a Dial of the user's is still waited for, until it
	// returns or ctx ends. A Get that gives up returns an error matching
	// ErrPoolExhausted and redis.ErrPoolExhausted.
	WaitTimeout time.Duration

	// MaxConcurrentDials is the most dials in progress at once. When zero, 8
	// (at most MaxActive). While the server refuses connections the pool dials
	// one at a time, backing off up to half a second, and fails other callers
	// at once with the last dial error. A caller waiting for a dial slot
	// takes a connection given back meanwhile instead.
	MaxConcurrentDials int

	// Logger, when set, is told about discarded connections and their reason
	// (Debug for idle timeout, lifetime, MaxIdle and pool closed; Warn for the
	// others), failed dials and exhausted waits, each kind (each discard
	// reason is one) at most once per second with the count of records left
	// out; and, with Sentinel and not rate-limited, about a new master
	// announced or named by the sentinels after an announcement that did not
	// fit, an announcement not followed (all Info), and a failed subscription
	// to a sentinel (Debug, at most one per retry of that subscription). When
	// nil, none of these is logged (leak reports still are: see
	// LeakThreshold). Should the handler panic on any of these records, the
	// record is lost and the panic goes no further, so that the pool loses
	// no permit or connection and its own goroutines keep running.
	Logger *slog.Logger

	// LeakThreshold, when positive, counts a connection held longer than this
	// in PoolStats.LeakCount and reports it with the stack of the code that
	// borrowed it, to Logger (or slog.Default() when Logger is nil); reports
	// are limited to one per second for the pool, the others only counted.
	// It costs a stack capture and a timer per Get. When zero, off.
	LeakThreshold time.Duration

	// Set once by init, read-only after.
	initOnce  sync.Once
	epoch     time.Time // the pool's clock reads the time since epoch
	epochMono time.Time // the real clock's epoch, for waits (see monotonic)
	// oneClock is set when epoch is epochMono, as it is unless a test moved
	// the clock: clock and monotonic then read the same, and a Get that
	// waited reuses the reading that ended its wait (see unusable).
	oneClock bool
	cfg      config
	cfgErr   error
	// The bound: every connection that may exist is a token in one of two
	// channels, in the hot slot, on its way to a waiter, or checked out:
	// MaxActive = permits + idle + hot + granted + checked out. A dial takes
	// a permit; a connection that is closed gives one back.
	permits chan struct{}  // one per connection that may still be dialed
	idle    chan *poolConn // idle connections but the hot one, longest idle first
	// hot holds an idle connection that Get takes before those in idle. put
	// fills it when it is empty, so a caller alone reuses one connection
	// with an atomic swap each way instead of two channel operations.
	hot    atomic.Pointer[poolConn]
	dials  chan struct{} // one token per dial in progress
	done   chan struct{} // closed by Close
	closed atomic.Bool   // set once by Close, before done is closed

	// Callers waiting for a token (see wait.go).
	wmu        sync.Mutex  // protects waitq and timerArmed
	waitq      waitList    // first come first served
	timerArmed bool        // waitTimer is set for the first waiter's deadline
	waitTimer  *time.Timer // calls expireWaiters

	mu         sync.Mutex    // protects the fields below; never held across network I/O
	dialErr    error         // the last dial error, nil once a dial succeeds
	dialFails  int           // consecutive dial failures
	nextDial   time.Duration // no dial before this (see clock) while dialErr is set
	probing    bool          // a dial is testing whether the server is back
	redigoPool *redis.Pool   // made by RedigoPool
	limiter    logLimiter

	// Atomic, read without mu.
	gen     atomic.Uint64 // raised by Retire: older connections are not reused
	active  atomic.Int64
	waiters atomic.Int64 // callers in waitq
	// slotWaiters counts callers holding a permit that wait for a dial
	// slot: they take a connection given back meanwhile, and put wakes one
	// through slotWake (see waitDialSlot).
	slotWaiters atomic.Int64
	slotWake    chan struct{}
	idleLow     atomic.Int64 // fewest idle connections a Get left since shrinkAt was set
	shrinkAt    atomic.Int64 // a time.Duration (see clock): when shrink next runs

	waitCount   atomic.Int64
	waitNanos   atomic.Int64
	dialCount   atomic.Int64
	dialErrors  atomic.Int64
	fastFails   atomic.Int64
	waitTimeout atomic.Int64
	leaks       atomic.Int64
	discards    [numDiscardReasons]atomic.Int64
}

// poolConn is a connection owned by the pool, idle or checked out.
type poolConn struct {
	p       *Pool
	c       redis.Conn
	cwt     redis.ConnWithTimeout // c, when it implements it
	netConn net.Conn              // c's socket, when the pool dialed it: a deadlineConn when its timeouts are on
	addr    string                // the address the pool dialed, if it did
	gen     uint64                // the pool's generation when the dial began
	created time.Duration         // see clock
	t       time.Duration         // when last handed out, or dialed

	// The borrower's bookkeeping, kept here so that the conn handed out is
	// two words. Close raises seq, under mu: a conn handed out carries the
	// seq it was handed out with, and once its Close ran every call on it
	// fails without touching this.
	// mu protects seq, leak and borrowState, and is never held across network
	// I/O. GetContext reads seq and sets leak without it: the pool has pc
	// alone then, and a stale handle only reads seq.
	mu   sync.Mutex
	seq  uint64
	leak *leakWatch // the borrow's, when LeakThreshold is on
	borrowState
}

// DiscardReason says why the pool closed a connection.
type DiscardReason int

// The reasons a connection is discarded, counted in PoolStats.Discards.
const (
	// DiscardBroken: a call failed with an error other than a redis.Error
	// (timeout, EOF, protocol error, cancelled context) or with a reply after
	// which the server closes the connection ("max number of clients
	// reached", "Protocol error"), the conn's Err was set, replies could not
	// be read in time, or it was in use when closed.
	DiscardBroken DiscardReason = iota
	// DiscardState: it was left in a state the next caller must not inherit
	// (subscribed, MONITOR, CLIENT REPLY OFF, another database, READONLY, ...).
	DiscardState
	// DiscardIdleTimeout: it stayed idle longer than IdleTimeout, or the pool
	// shrank: once per IdleTimeout, a Get that reuses an idle connection
	// closes as many idle ones as no Get needed in that time.
	DiscardIdleTimeout
	// DiscardLifetime: it was older than MaxConnLifetime.
	DiscardLifetime
	// DiscardMaxIdle: MaxIdle connections were already idle.
	DiscardMaxIdle
	// DiscardHealthCheck: TestOnBorrow or TestOnBorrowContext failed.
	DiscardHealthCheck
	// DiscardPoolClosed: the pool was closed.
	DiscardPoolClosed
	// DiscardRetired: it was dialed before a call to Retire, or before a
	// READONLY reply showed that the server it reaches is now a replica.
	DiscardRetired
	numDiscardReasons
)

var discardNames = [numDiscardReasons]string{"broken", "state", "idle_timeout", "lifetime", "max_idle", "health_check", "pool_closed", "retired"}

// String returns the reason in snake case, as used in metric labels.
func (r DiscardReason) String() string {
	if r < 0 || r >= numDiscardReasons {
		return fmt.Sprintf("DiscardReason(%d)", int(r))
	}
	return discardNames[r]
}

// PoolStats are a pool's counters. The first four fields are those of
// redigo's redis.PoolStats.
type PoolStats struct {
	// ActiveCount is the number of connections open, idle, in use or being dialed.
	ActiveCount int
	// IdleCount is the number of idle connections.
	IdleCount int
	// WaitCount is the number of Gets that had to wait for a connection.
	WaitCount int64
	// WaitDuration is the total time those Gets waited.
	WaitDuration time.Duration

	// DialCount is the number of dials started.
	DialCount int64
	// DialErrorCount is the number of dials that failed.
	DialErrorCount int64
	// FastFailCount is the number of Gets refused at once with the last dial
	// error because the server was refusing connections.
	FastFailCount int64
	// WaitTimeoutCount is the number of Gets that failed with ErrPoolExhausted.
	WaitTimeoutCount int64
	// LeakCount is the number of connections held longer than LeakThreshold.
	LeakCount int64
	// Discards counts the connections closed by the pool, by reason.
	Discards DiscardStats
}

// DiscardStats counts closed connections by DiscardReason.
type DiscardStats struct {
	Broken, State, IdleTimeout, Lifetime, MaxIdle, HealthCheck, PoolClosed, Retired int64
}

// Total is the number of connections discarded for any reason.
func (d DiscardStats) Total() int64 {
	return d.Broken + d.State + d.IdleTimeout + d.Lifetime + d.MaxIdle + d.HealthCheck + d.PoolClosed + d.Retired
}

// init fixes the configuration on first use.
func (p *Pool) init() error {
	p.initOnce.Do(func() {
		p.epochMono = time.Now()
		p.epoch, p.oneClock = p.epochMono, true
		if f := nowFunc.Load(); f != nil {
			p.epoch, p.oneClock = (*f)(), false
		}
		p.waitTimer = time.AfterFunc(time.Hour, p.expireWaiters)
		p.waitTimer.Stop()
		p.cfg, p.cfgErr = p.buildConfig()
		n := p.cfg.maxActive
		if p.cfgErr != nil {
			n = 0
		}
		p.permits = make(chan struct{}, n)
		for range n {
			p.permits <- struct{}{}
		}
		// MaxIdle idle connections: one in the hot slot, the rest here.
		p.idle = make(chan *poolConn, max(min(p.cfg.maxIdle, n)-1, 0))
		p.slotWake = make(chan struct{}, 1)
		p.idleLow.Store(math.MaxInt64)
		p.shrinkAt.Store(int64(p.cfg.idleTimeout))
		p.dials = make(chan struct{}, p.cfg.maxDials)
		for range p.cfg.maxDials {
			p.dials <- struct{}{}
		}
		p.done = make(chan struct{})
		if p.cfgErr == nil && p.Sentinel != nil {
			p.Sentinel.watch(p)
		}
	})
	return p.cfgErr
}

// clock returns the time since the pool's epoch. It reads only the monotonic
// clock, which costs about half of time.Now, and the pool reads it once per
// Get and Close.
func (p *Pool) clock() time.Duration {
	if f := nowFunc.Load(); f != nil {
		return (*f)().Sub(p.epoch)
	}
	return time.Since(p.epoch)
}

func wallNow() time.Time {
	if f := nowFunc.Load(); f != nil {
		return (*f)()
	}
	return time.Now()
}

// Get returns a connection from the pool, dialing one if none is idle and
// fewer than MaxActive are open. It never returns nil: on failure it returns a
// conn whose methods all return the error. The caller must Close the conn.
func (p *Pool) Get() redis.Conn {
	c, _ := p.GetContext(context.Background())
	return c
}

// GetContext is Get with a context that bounds the wait for a connection, as
// WaitTimeout does; whichever ends first ends the wait. When ctx ends first,
// its error is returned as it is. The context does not affect the returned
// connection. On error the returned conn is not nil and returns the error from
// its methods.
func (p *Pool) GetContext(ctx context.Context) (redis.Conn, error) {
	if p == nil {
		return errorConn{errNilPool}, errNilPool
	}
	if ctx == nil {
		return errorConn{errNilContext}, errNilContext
	}
	pc, err := p.get(ctx)
	if err != nil {
		return errorConn{err}, err
	}
	// pc is ours alone: the last borrower's Close wrote pc.seq before the
	// pool had it back, and stale handles only read it.
	ac := &activeConn{pc: pc, seq: pc.seq}
	if p.LeakThreshold > 0 {
		pc.leak = p.watchLeak()
	}
	return ac, nil
}

// get takes an idle connection, or a permit and dials a new one.
func (p *Pool) get(ctx context.Context) (*poolConn, error) {
	if err := p.init(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var waitEnd time.Duration // see waitLeft
	redial := false           // this caller holds a permit and dials
	for {
		var pc *poolConn
		waited := false
		now := time.Duration(-1) // the monotonic clock as a wait ended
		if !redial {
			if p.closed.Load() {
				return nil, ErrPoolClosed
			}
			if pc = p.takeHot(); pc != nil {
				p.noteIdleLeft(int64(len(p.idle)))
			} else {
				select {
				case pc = <-p.idle:
					p.noteIdleLeft(int64(len(p.idle)))
				default:
					p.noteIdleLeft(0)
					select {
					case <-p.permits:
					default:
						var err error
						if pc, now, err = p.wait(ctx, &waitEnd); err != nil {
							return nil, err
						}
						waited = true
					}
				}
			}
		}
		redial = false
		if pc == nil {
			now = -1 // a dial, or a wait for a dial slot, comes after
			var idle bool
			var err error
			if pc, idle, err = p.dial(ctx, &waitEnd); !idle {
				return pc, err
			}
			// Given back while this caller waited for a dial slot, which
			// gave its permit back: checked as any idle connection. Its
			// turn came: should the connection be unusable, it keeps that
			// permit and dials, rather than queueing again.
			waited = true
		}
		reason := p.unusable(ctx, pc, now)
		if reason < 0 {
			if p.TestOnBorrow != nil || p.TestOnBorrowContext != nil {
				// The check may take a round trip: a caller that gave up
				// meanwhile must not get the connection.
				if err := ctx.Err(); err != nil {
					p.put(pc)
					return nil, err
				}
			}
			return pc, nil
		}
		if waited {
			// This caller's turn came: it keeps the closed connection's
			// permit and dials, rather than queueing again behind later
			// callers.
			p.closeConn(pc, reason, nil, false)
			if err := ctx.Err(); err != nil {
				p.releasePermit()
				return nil, err
			}
			redial = true
			continue
		}
		p.discard(pc, reason)
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
}

// exhausted counts and logs a Get that gave up waiting, and returns its error.
func (p *Pool) exhausted(err error) error {
	p.waitTimeout.Add(1)
	p.log(logExhausted, slog.LevelWarn, "redispool: pool exhausted", slog.String("error", errText(err)))
	return err
}

// unusable reports why an idle connection may not be handed out, or -1 when
// it may, and then stamps it with the time it is handed out. mono is the
// monotonic clock read as this Get's wait ended, or negative: when the
// pool's clock is that clock, it is not read again.
func (p *Pool) unusable(ctx context.Context, pc *poolConn, mono time.Duration) DiscardReason {
	now := mono
	if mono < 0 || !p.oneClock || nowFunc.Load() != nil {
		now = p.clock()
	}
	reason := DiscardReason(-1)
	switch {
	case now-pc.t >= p.cfg.idleTimeout:
		reason = DiscardIdleTimeout
	case pc.gen != p.gen.Load():
		reason = DiscardRetired
	case p.cfg.maxLifetime > 0 && now-pc.created >= p.cfg.maxLifetime:
		reason = DiscardLifetime
	case pc.netConn != nil && now-pc.t >= peekAfterIdle && peek(pc.netConn) != nil:
		// Closed by the server, or holding bytes nobody asked for.
		reason = DiscardBroken
	case (p.TestOnBorrow != nil || p.TestOnBorrowContext != nil) && !p.healthy(ctx, pc):
		reason = DiscardHealthCheck
	}
	if reason >= 0 {
		return reason
	}
	pc.t = now
	if now >= time.Duration(p.shrinkAt.Load()) {
		p.shrink(pc, now)
	}
	return -1
}

// noteIdleLeft records how many idle connections a Get left: the fewest
// over a period are connections nobody needed in it.
func (p *Pool) noteIdleLeft(n int64) {
	if n < p.idleLow.Load() {
		p.idleLow.Store(n) // racy minimum: at worst one connection too many is closed
	}
}

// shrink closes, once per IdleTimeout, as many idle connections as stayed
// unused through the whole period. Idle connections are reused in turn, so a
// trickle of Gets would otherwise keep every one of them from ever reaching
// IdleTimeout, and the pool would never shrink after a burst. out is the
// connection the calling Get hands out: should an idle connection's Close
// panic, out goes back to the pool before the panic reaches the caller.
func (p *Pool) shrink(out *poolConn, now time.Duration) {
	at := p.shrinkAt.Load()
	if !p.shrinkAt.CompareAndSwap(at, int64(now+p.cfg.idleTimeout)) {
		return // another Get is doing it
	}
	defer func() {
		if r := recover(); r != nil {
			p.put(out)
			panic(r)
		}
	}()
	surplus := p.idleLow.Swap(math.MaxInt64)
	for ; surplus > 0; surplus-- {
		select {
		case pc := <-p.idle:
			p.discard(pc, DiscardIdleTimeout)
		default:
			return
		}
	}
}

// healthy runs TestOnBorrow and TestOnBorrowContext. A panic in them closes
// the connection, so that its permit is not lost, and goes on up to Get.
func (p *Pool) healthy(ctx context.Context, pc *poolConn) (ok bool) {
	done := false
	defer func() {
		if !done {
			p.discard(pc, DiscardHealthCheck)
		}
	}()
	lastUsed := p.epoch.Add(pc.t)
	ok = (p.TestOnBorrow == nil || p.TestOnBorrow(pc.c, lastUsed) == nil) &&
		(p.TestOnBorrowContext == nil || p.TestOnBorrowContext(ctx, pc.c, lastUsed) == nil)
	done = true
	return ok
}

// dialCall is a dial in progress. Its caller may give up on it; the dialing
// goroutine then hands the result to the pool.
type dialCall struct {
	done chan struct{} // closed when pc, err are set and the caller still waits
	gen  uint64        // the pool's generation when the dial began

	mu        sync.Mutex // protects the fields below
	finished  bool
	abandoned bool
	pc        *poolConn
	err       error
	panicked  any
}

// dial makes a new connection for a caller holding a permit, which it gives
// back on failure. A dial the caller gives up on goes on, and gives the
// pool its connection or the permit back when it ends. idle is set when,
// instead, the caller took a connection given back while it waited for a
// dial slot: its permit is given back then, and the connection is still to
// be checked.
func (p *Pool) dial(ctx context.Context, waitEnd *time.Duration) (_ *poolConn, idle bool, err error) {
	handedOff := false
	probe := false
	slotWait := false // in waitDialSlot, which may panic
	defer func() {
		if handedOff {
			return
		}
		if err != nil {
			p.releasePermit()
			return
		}
		if !slotWait {
			return
		}
		// The Close of a connection waitDialSlot took and gave back (its
		// caller gave up, or the pool closed) panicked: the permit and the
		// probe are still this caller's.
		if r := recover(); r != nil {
			if probe {
				p.endProbe()
			}
			p.releasePermit()
			panic(r)
		}
	}()
	if p.closed.Load() {
		// Granted a permit as the pool closed: no dial may begin after
		// Close has returned.
		return nil, false, ErrPoolClosed
	}
	probe, err = p.dialAllowed()
	if err != nil {
		return nil, false, err
	}
	select {
	case <-p.dials:
	default:
		slotWait = true
		pc, err := p.waitDialSlot(ctx, waitEnd)
		slotWait = false
		if pc != nil {
			if probe {
				p.endProbe()
			}
			p.releasePermit() // the connection has its own
			return pc, true, nil
		}
		if err != nil {
			if probe {
				p.endProbe()
			}
			return nil, false, err
		}
		if p.closed.Load() {
			// The pool closed while this caller waited for the slot.
			p.dials <- struct{}{}
			if probe {
				p.endProbe()
			}
			return nil, false, ErrPoolClosed
		}
		// The dials this caller waited for may have failed meanwhile: then
		// it fails fast too, instead of adding to a burst of failing dials.
		if !probe {
			if _, err = p.dialAllowed(); err != nil {
				p.dials <- struct{}{}
				return nil, false, err
			}
		}
	}
	call := &dialCall{done: make(chan struct{}), gen: p.gen.Load()}
	p.active.Add(1)
	p.dialCount.Add(1)
	go p.runDial(context.WithoutCancel(ctx), call)

	// The caller waits for the dial until ctx ends or the pool closes, and
	// for a dial that DialTimeout does not bound (a Dial of the user's, or
	// DialTimeout disabled) until WaitTimeout passes. A dial given up on goes
	// on, and serves a later Get.
	var timeout <-chan time.Time
	if p.cfg.waitTimeout >= 0 && (p.cfg.userDial || p.cfg.dialTimeout == 0) {
		// Not a pooled timer: in a program whose go.mod says go 1.22 or
		// older, a stopped timer's channel may still hold a tick.
		timer := time.NewTimer(p.waitLeft(waitEnd))
		defer timer.Stop()
		timeout = timer.C
	}
	var gaveUp error
	select {
	case <-call.done:
	case <-ctx.Done():
		gaveUp = ctx.Err()
	case <-p.done:
		gaveUp = ErrPoolClosed
	case <-timeout:
		gaveUp = p.exhausted(fmt.Errorf("%w: a dial did not finish within this Get's WaitTimeout (%v)", ErrPoolExhausted, p.cfg.waitTimeout))
	}
	if gaveUp != nil {
		handedOff = true
		call.mu.Lock()
		if !call.finished {
			call.abandoned = true
			call.mu.Unlock()
			return nil, false, gaveUp
		}
		call.mu.Unlock()
		// The dial finished as the caller gave up: pass its result on.
		p.handOff(call)
		return nil, false, gaveUp
	}
	if call.panicked != nil {
		p.active.Add(-1)
		p.releasePermit()
		handedOff = true
		panic(call.panicked)
	}
	if call.err != nil {
		p.active.Add(-1)
		return nil, false, call.err
	}
	if err := ctx.Err(); err != nil {
		// ctx ended as the dial finished: as with a waiter's grant (see
		// granted), a caller that gave up must not get a connection. It
		// serves the next one.
		handedOff = true
		p.put(call.pc)
		return nil, false, err
	}
	return call.pc, false, nil
}

// dialAllowed fails fast while the server refuses connections, letting one
// caller probe it once the backoff has passed. It reports whether the caller
// is that probe.
func (p *Pool) dialAllowed() (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.dialErr == nil {
		return false, nil
	}
	if now := p.clock(); p.probing || now < p.nextDial {
		p.fastFails.Add(1)
		return false, fmt.Errorf("%w: next dial in %v, after %d failed dials: %w", ErrDialBackoff,
			max(p.nextDial-now, 0).Round(time.Millisecond), p.dialFails, p.dialErr)
	}
	p.probing = true
	return true, nil
}

// endProbe releases the probe of a caller that never dialed.
func (p *Pool) endProbe() {
	p.mu.Lock()
	p.probing = false
	p.mu.Unlock()
}

// waitLeft is how long a Get may still wait: WaitTimeout bounds all its
// waits together (for a connection, a dial slot, a Dial of the user's),
// counted from the first. *end is when that is, on the monotonic clock,
// zero until the Get first waits.
func (p *Pool) waitLeft(end *time.Duration) time.Duration {
	now := p.monotonic()
	if *end == 0 {
		*end = now + p.cfg.waitTimeout
	}
	return *end - now
}

// waitDialSlot waits for one of the MaxConcurrentDials slots, within what is
// left of the Get's WaitTimeout. A connection given back meanwhile ends the
// wait too: the caller takes it rather than dial (see idled).
func (p *Pool) waitDialSlot(ctx context.Context, waitEnd *time.Duration) (*poolConn, error) {
	if p.cfg.waitTimeout < 0 {
		return nil, p.exhausted(fmt.Errorf("%w: %d dials are in progress and WaitTimeout is negative", ErrPoolExhausted, p.cfg.maxDials))
	}
	// Counted before the idle set is looked at, as put fills it before it
	// reads the count: either this caller finds the connection, or put
	// wakes it.
	p.slotWaiters.Add(1)
	defer p.slotWaiters.Add(-1)
	took := func(pc *poolConn) (*poolConn, error) {
		if p.closed.Load() {
			p.discard(pc, DiscardPoolClosed)
			return nil, ErrPoolClosed
		}
		if err := ctx.Err(); err != nil {
			p.put(pc)
			return nil, err
		}
		return pc, nil
	}
	timer := time.NewTimer(p.waitLeft(waitEnd))
	defer timer.Stop()
	for {
		if pc := p.takeHot(); pc != nil {
			return took(pc)
		}
		select {
		case <-p.dials:
			if err := ctx.Err(); err != nil {
				p.dials <- struct{}{}
				return nil, err
			}
			return nil, nil
		case pc := <-p.idle:
			return took(pc)
		case <-p.slotWake:
			// A connection came back: look again.
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-p.done:
			return nil, ErrPoolClosed
		case <-timer.C:
			return nil, p.exhausted(fmt.Errorf("%w: %d dials stayed in progress until this Get's WaitTimeout (%v) passed", ErrPoolExhausted, p.cfg.maxDials, p.cfg.waitTimeout))
		}
	}
}

// runDial dials on its own goroutine, so that a caller who gives up returns at
// once and the finished connection still serves the pool.
func (p *Pool) runDial(ctx context.Context, call *dialCall) {
	var c redis.Conn
	var netConn net.Conn
	var addr string
	var err error
	var panicked any
	gen := call.gen
	if p.closed.Load() {
		// Close ran since the dial was decided: no dial begins after it.
		err = ErrPoolClosed
		p.dialCount.Add(-1)
		p.endProbe()
	} else {
		func() {
			defer func() {
				if r := recover(); r != nil {
					panicked = r
					err = fmt.Errorf("redispool: Dial panicked: %v", r)
				}
			}()
			c, netConn, addr, err = p.dialConn(ctx, &gen)
			if err == nil && c == nil {
				err = errNilConn
			}
		}()
		p.recordDial(err)
	}
	p.dials <- struct{}{}

	var pc *poolConn
	if err == nil {
		cwt, _ := c.(redis.ConnWithTimeout)
		now := p.clock()
		pc = &poolConn{p: p, c: c, cwt: cwt, netConn: netConn, addr: addr, gen: gen, created: now, t: now}
		pc.db = p.cfg.db
	}
	call.mu.Lock()
	call.finished = true
	call.pc, call.err, call.panicked = pc, err, panicked
	abandoned := call.abandoned
	call.mu.Unlock()
	if abandoned {
		p.handOff(call)
		return
	}
	close(call.done)
}

// handOff gives the result of a dial whose caller gave up to the pool: the
// connection goes to the idle set for the next caller, or, when the dial
// failed, its permit goes back.
func (p *Pool) handOff(call *dialCall) {
	if call.err != nil {
		p.active.Add(-1)
		p.releasePermit()
		return
	}
	p.put(call.pc)
}

// dialConn calls the user's dial function or dials Addr or the master the
// sentinels name. When the pool dials, it also returns the address and the
// socket, unless DialOptions replaced the pool's dialer. With Sentinel, it
// sets *gen to the pool's generation when the master's address was read, so
// that a connection to a master announced after the dial began is kept.
func (p *Pool) dialConn(ctx context.Context, gen *uint64) (redis.Conn, net.Conn, string, error) {
	switch {
	case p.DialContext != nil:
		c, err := p.DialContext(ctx)
		return c, nil, "", err
	case p.Dial != nil:
		c, err := p.Dial()
		return c, nil, "", err
	}
	if p.cfg.dialTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.cfg.dialTimeout)
		defer cancel()
	}
	addr := p.cfg.addr
	if p.Sentinel != nil {
		var err error
		if addr, *gen, err = p.Sentinel.masterAddr(ctx, p, p.cfg.dialTimeout); err != nil {
			return nil, nil, "", err
		}
	}
	var netConn net.Conn
	opts := []redis.DialOption{
		dialSocket(p.cfg.dialTimeout, deadlineSlack(p.cfg.readTimeout, p.cfg.writeTimeout), &netConn),
		redis.DialReadTimeout(p.cfg.readTimeout),
		redis.DialWriteTimeout(p.cfg.writeTimeout),
		redis.DialUsername(p.Username),
		redis.DialPassword(p.Password),
	}
	if p.cfg.dialTimeout > 0 {
		// redigo's own bound on a TLS handshake is 10s, whatever DialTimeout.
		opts = append(opts, redis.DialTLSHandshakeTimeout(p.cfg.dialTimeout))
	}
	// DB last: the pool must know the database its connections start in,
	// to tell one a caller left in another.
	opts = append(append(opts, p.DialOptions...), redis.DialDatabase(p.DB))
	network := "tcp"
	if strings.HasPrefix(addr, "/") {
		network = "unix"
	}
	c, err := redis.DialContext(ctx, network, addr, opts...)
	if err == nil && p.Sentinel != nil {
		if err = checkRole(ctx, c, addr); err != nil {
			c.Close()
		}
	}
	if err == nil && netConn != nil {
		if err = netConn.SetDeadline(time.Time{}); err != nil {
			c.Close()
		}
	}
	if err != nil {
		if p.Sentinel != nil {
			p.failover(addr)
		}
		return nil, nil, "", err
	}
	return c, netConn, addr, nil
}

// dialSocket is the option that dials the TCP or Unix socket of a dial
// bounded by ctx, and records it in *sock (see dialedSocket).
func dialSocket(timeout, slack time.Duration, sock *net.Conn) redis.DialOption {
	dialer := net.Dialer{Timeout: timeout, KeepAlive: tcpKeepAlive}
	return redis.DialContextFunc(func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dialer.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if c, err = dialedSocket(ctx, c, slack); err != nil {
			return nil, err
		}
		*sock = c
		return c, nil
	})
}

// dialedSocket prepares a socket just connected for the rest of a dial
// bounded by ctx. The TLS handshake does not watch ctx (redigo gives it 10 s
// of its own), so the socket carries ctx's deadline, exactly, which the
// caller clears once the dial is done. With a slack, the socket is then
// wrapped in a deadlineConn, which takes its deadlines for unknown.
func dialedSocket(ctx context.Context, c net.Conn, slack time.Duration) (net.Conn, error) {
	if dl, ok := ctx.Deadline(); ok {
		if err := c.SetDeadline(dl); err != nil {
			c.Close()
			return nil, err
		}
	}
	if slack > 0 {
		c = &deadlineConn{Conn: c, slack: slack}
	}
	return c, nil
}

// failover reacts to a sign that the server at addr is no longer the
// master: the sentinels will be asked again, and every connection dialed
// before is retired.
func (p *Pool) failover(addr string) {
	if p.Sentinel == nil {
		p.Retire()
		return
	}
	if p.Sentinel.forget(p, addr) {
		p.drainIdle(DiscardRetired)
	}
}

// recordDial updates the backoff state with a dial's outcome.
func (p *Pool) recordDial(err error) {
	p.mu.Lock()
	p.probing = false
	if err == nil {
		p.dialErr, p.dialFails = nil, 0
		p.mu.Unlock()
		return
	}
	p.dialErrors.Add(1)
	p.dialFails++
	d := backoffCap
	if p.dialFails < 16 {
		d = min(backoffCap, backoffBase<<(p.dialFails-1))
	}
	d -= rand.N(d/2 + 1)
	p.dialErr = err
	p.nextDial = p.clock() + d
	fails := p.dialFails
	p.mu.Unlock()
	p.log(logDialError, slog.LevelWarn, "redispool: dial failed", slog.String("error", errText(err)),
		slog.Int("consecutive_failures", fails), slog.Duration("next_dial_in", d))
}

// put returns a clean connection to the idle set, unless the pool has enough
// idle ones, or was closed or retired its connections, or the connection
// outlived MaxConnLifetime. Idle time, and age again, are checked when a
// connection is handed out (see unusable).
func (p *Pool) put(pc *poolConn) {
	switch {
	case p.closed.Load():
		p.discard(pc, DiscardPoolClosed)
	case pc.gen != p.gen.Load():
		p.discard(pc, DiscardRetired)
	case p.cfg.maxLifetime > 0 && p.clock()-pc.created >= p.cfg.maxLifetime:
		p.discard(pc, DiscardLifetime)
	case p.waiters.Load() > 0 && p.handToWaiter(grant{pc: pc}):
	case p.hot.Load() == nil && p.hot.CompareAndSwap(nil, pc):
		p.idled()
	default:
		select {
		case p.idle <- pc: // room for MaxIdle-1, with the hot slot
			p.idled()
		default:
			p.discard(pc, DiscardMaxIdle)
		}
	}
}

// idled follows a connection made idle by put.
func (p *Pool) idled() {
	if p.waiters.Load() > 0 {
		p.serve() // a caller queued as this one came back
	}
	if p.slotWaiters.Load() > 0 {
		select {
		case p.slotWake <- struct{}{}: // see waitDialSlot
		default:
		}
	}
	// Close may have emptied the idle set before this one joined it: then
	// nobody else will, so empty it again.
	if p.closed.Load() {
		p.drainIdle(DiscardPoolClosed)
	}
}

// takeHot takes the connection in the hot slot, if there is one.
func (p *Pool) takeHot() *poolConn {
	if p.hot.Load() == nil {
		return nil // no atomic write when there is nothing to take
	}
	return p.hot.Swap(nil)
}

// drainIdle discards every idle connection, also when one's Close panics:
// the rest are closed before the panic goes on.
func (p *Pool) drainIdle(reason DiscardReason) {
	defer func() {
		if r := recover(); r != nil {
			p.drainIdle(reason)
			panic(r)
		}
	}()
	if pc := p.takeHot(); pc != nil {
		p.discard(pc, reason)
	}
	for {
		select {
		case pc := <-p.idle:
			p.discard(pc, reason)
		default:
			return
		}
	}
}

// discard closes a connection the pool owns and counts why.
func (p *Pool) discard(pc *poolConn, reason DiscardReason) {
	p.discardErr(pc, reason, nil)
}

// discardErr is discard with the error that broke the connection, for the log.
func (p *Pool) discardErr(pc *poolConn, reason DiscardReason, err error) {
	p.closeConn(pc, reason, err, true)
}

// closeConn closes a connection the pool owns, counts why, and gives its
// permit back when release is set; otherwise the caller keeps it, unless the
// conn's Close panics: the caller then cannot use the permit.
func (p *Pool) closeConn(pc *poolConn, reason DiscardReason, err error, release bool) {
	// The accounting holds even if the conn's Close panics, which then
	// reaches the caller. The discard is counted before the conn leaves
	// ActiveCount, so that whoever sees ActiveCount drop finds it counted.
	closed := false
	defer func() {
		p.discards[reason].Add(1)
		p.active.Add(-1)
		if release || !closed {
			p.releasePermit()
		}
		p.logDiscarded(reason, err)
	}()
	pc.c.Close()
	closed = true
}

// Stats returns the pool's counters.
func (p *Pool) Stats() PoolStats {
	if p == nil {
		return PoolStats{}
	}
	d := &p.discards
	return PoolStats{
		ActiveCount:      int(p.active.Load()),
		IdleCount:        p.idleLen(),
		WaitCount:        p.waitCount.Load(),
		WaitDuration:     time.Duration(p.waitNanos.Load()),
		DialCount:        p.dialCount.Load(),
		DialErrorCount:   p.dialErrors.Load(),
		FastFailCount:    p.fastFails.Load(),
		WaitTimeoutCount: p.waitTimeout.Load(),
		LeakCount:        p.leaks.Load(),
		Discards: DiscardStats{
			Broken:      d[DiscardBroken].Load(),
			State:       d[DiscardState].Load(),
			IdleTimeout: d[DiscardIdleTimeout].Load(),
			Lifetime:    d[DiscardLifetime].Load(),
			MaxIdle:     d[DiscardMaxIdle].Load(),
			HealthCheck: d[DiscardHealthCheck].Load(),
			PoolClosed:  d[DiscardPoolClosed].Load(),
			Retired:     d[DiscardRetired].Load(),
		},
	}
}

// ActiveCount returns the number of connections open, idle, in use or being dialed.
func (p *Pool) ActiveCount() int {
	if p == nil {
		return 0
	}
	return int(p.active.Load())
}

// IdleCount returns the number of idle connections.
func (p *Pool) IdleCount() int {
	if p == nil {
		return 0
	}
	return p.idleLen()
}

// idleLen is the number of idle connections. It counts as the pool's first
// use, and is zero when the configuration is invalid.
func (p *Pool) idleLen() int {
	if p.init() != nil {
		return 0
	}
	n := len(p.idle)
	if p.hot.Load() != nil {
		n++
	}
	return n
}

// Close closes the idle connections and makes every later Get fail with
// ErrPoolClosed; callers waiting in Get, for a connection or for a dial, are
// woken with ErrPoolClosed.
// Connections still in use are closed when their holders close them, and
// dials in progress close their connection when they finish. Close is
// idempotent and always returns nil.
func (p *Pool) Close() error {
	if p == nil {
		return nil
	}
	p.init() // a pool closed before first use still needs its channels
	if !p.closed.CompareAndSwap(false, true) {
		return nil
	}
	close(p.done)
	p.wakeAll()
	p.drainIdle(DiscardPoolClosed)
	return nil
}

// Retire makes the pool stop reusing every connection open now: idle ones are
// closed at once (one returned at the same moment is closed when Get comes to
// it), those in use when they are returned. With Sentinel, a connection in
// use also fails its next command with ErrConnRetired, as after a failover.
// The Close of a connection in use writes nothing more to it: commands sent
// and not flushed are dropped, and Close returns ErrConnRetired when replies
// were left unread. New connections are dialed as needed. Use it when the
// server behind the address changed, for example after a failover or a
// credentials rotation. The pool retires its connections by itself when one
// gets a READONLY reply.
func (p *Pool) Retire() {
	if p == nil || p.init() != nil {
		return
	}
	p.gen.Add(1)
	p.drainIdle(DiscardRetired)
}

// RedigoPool returns a *redis.Pool backed by p, for libraries that require
// that concrete type (boj/redistore, gin-contrib/sessions, gocraft/work). Its
// own limits are off (MaxIdle and MaxActive zero): p alone bounds the
// connections, bounds the waits and decides which connections to keep.
// Closing the returned pool does not close p. Every call returns the same
// *redis.Pool.
func (p *Pool) RedigoPool() *redis.Pool {
	if p == nil {
		return &redis.Pool{DialContext: func(context.Context) (redis.Conn, error) { return nil, errNilPool }}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.redigoPool == nil {
		p.redigoPool = &redis.Pool{DialContext: p.GetContext}
	}
	return p.redigoPool
}
