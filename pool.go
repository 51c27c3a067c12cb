package redispool

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gomodule/redigo/redis"
)

// nowFunc, when set by tests, replaces the clock so that they move time
// instead of sleeping. It is atomic because goroutines a test leaves behind
// (a dial it gave up on) may still read it when the next test sets it.
var nowFunc atomic.Pointer[func() time.Time]

// peekAfterIdle is how long a connection the pool dialed must have been idle
// before Get peeks at its socket for a close or unasked-for bytes. Busy
// connections skip the system call; a stale one fails its first command and
// is discarded anyway.
const peekAfterIdle = 100 * time.Millisecond

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
	// connections that implement redis.ConnWithTimeout, as redigo's do; one
	// that implements redis.ConnWithContext gets the caller's context in
	// its DoContext and ReceiveContext (docs/timeouts.md).
	Dial func() (redis.Conn, error)

	// DialContext creates and configures a connection. The context is not
	// cancelled when the caller of Get gives up, so that a finished dial can
	// serve the next caller; it carries the caller's values.
	DialContext func(ctx context.Context) (redis.Conn, error)

	// TestOnBorrow, when set, checks an idle connection before Get hands it
	// out; lastUsed is when it was last handed out. On error the connection
	// is closed and Get tries another, until WaitTimeout has passed.
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

	// Addr is the server's "host:port", the path of a Unix socket when it
	// starts with "/", or a URL, redis://[user:password@]host[:port][/db]
	// (rediss:// for TLS), read as redigo's DialURL reads it: the host
	// defaults to localhost, the port to 6379, the database to 0, and a
	// user name without a password is the password. A URL gives only the
	// address, credentials, database and TLS: the pool's timeouts, dial
	// limits and DialOptions still apply, and a query (?) is an error. A
	// URL's user or password together with Username or Password, or its
	// database together with a nonzero DB, is an error. Errors and log
	// records never show what comes before an "@" in Addr, with or without
	// a scheme. When empty, the pool dials DefaultAddr. It must be empty
	// when Dial or DialContext is set.
	Addr string

	// Sentinel, when set, finds the master through Redis Sentinel instead of
	// dialing Addr, which must then be empty, as must Dial and DialContext.
	// See Sentinel for how the pool follows a failover. When nil, the pool
	// dials Addr or calls Dial.
	Sentinel *Sentinel

	// Cluster, when set, serves a Redis Cluster (see Cluster), with Addr,
	// Dial, DialContext and Sentinel unset and DB zero. When nil, one server.
	Cluster *Cluster

	// Username and Password authenticate connections the pool dials (AUTH).
	// When empty, no AUTH is sent, unless Addr is a URL that has them.
	Username, Password string

	// DB is the database selected on connections the pool dials. When zero,
	// database 0, or the database of a URL in Addr. Close puts a connection
	// a borrower left in another database back in DB. With Dial or
	// DialContext, set DB to the database your Dial selects; when DB is
	// zero, such a connection is closed instead.
	DB int

	// DialOptions are passed to redis.DialContext when the pool dials Addr,
	// after the pool's own options (timeouts, Username, Password), for
	// example redis.DialUseTLS(true) or redis.DialClientName("app"). When
	// nil, only the pool's own are used. The database is DB's: a
	// redis.DialDatabase here has no effect.
	DialOptions []redis.DialOption

	// DialTimeout bounds a dial of Addr as a whole: connecting, the TLS
	// handshake, AUTH and SELECT (or a PING when neither is sent: a dial
	// succeeds only once the server has answered), and with Sentinel the
	// query to the sentinels and the master's ROLE check.
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
	// returns or ctx ends. It also bounds TestOnBorrow: once it has passed,
	// a Get whose health check failed tries no further idle connection, so
	// a Get takes at most WaitTimeout plus one check (with WaitTimeout
	// negative, the default WaitTimeout plus one check). A Get that gives up
	// returns an error matching ErrPoolExhausted and redis.ErrPoolExhausted.
	WaitTimeout time.Duration

	// MaxConcurrentDials is the most dials in progress at once. When zero, 8
	// (at most MaxActive). While the server refuses connections (refused,
	// reset, or an error reply such as maxclients') the pool dials one at a
	// time, backing off up to half a second, and fails other callers at once
	// with the last dial error. A dial that timed out does not back off. A
	// caller waiting for a dial slot takes a connection given back meanwhile
	// instead.
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

	// AutoPipeline, when set, writes the commands that leave no state on a
	// connection, from all borrowers, together on a few shared connections;
	// a borrower's first other command gets it a connection of its own for
	// the rest of the borrow. See docs/autopipeline.md. When false, off.
	AutoPipeline bool
	readOnly     bool // a Cluster's node pool: each dial sends READONLY (set by Cluster.node)

	// Set once by init, read-only after.
	initOnce sync.Once
	epoch    time.Time // the pool's clock reads the time since epoch
	cfg      config
	cfgErr   error

	// The bound: every connection that may exist is a permit in its
	// channel, an idle connection, on its way to a waiter, being dialed or
	// checked out: MaxActive = permits + idle + granted + dialing + out. A
	// dial takes a permit and one of MaxConcurrentDials slots, together a
	// ticket; a connection that is closed gives its permit back.
	permits chan struct{} // one per connection that may still be dialed
	slots   chan struct{} // one per dial that may still begin
	idle    idleSet
	q       waitQueue     // callers waiting for a connection or a ticket (see wait.go)
	backoff backoff       // paces dials while the server refuses them (see dial.go)
	done    chan struct{} // closed by Close
	closed  atomic.Bool   // set once by Close, before done is closed

	gen     atomic.Uint64 // raised by Retire: older connections are not reused
	cut     atomic.Uint64 // connections older than this generation fail their next call (see Retire)
	active  atomic.Int64  // connections open or being dialed
	stats   counters
	limiter logLimiter
	auto    autoPipes // the shared connections, with AutoPipeline
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
	used    time.Duration         // when last handed out, or dialed
	// unconfirmed is set on a connection from a Dial of the user's until a
	// call reads from it (see Pool.confirmDial); protected by mu.
	unconfirmed bool

	// The borrower's bookkeeping, kept here so that the conn handed out is
	// two words; once its Close ran, every call on it fails without
	// touching this (see activeConn.word).
	// mu protects leak and borrowState, and is never held across network
	// I/O. GetContext and Close set leak without it: the pool has pc alone.
	mu   sync.Mutex
	leak *leakWatch // the borrow's, when LeakThreshold is on
	borrowState
}

// init fixes the configuration on first use.
func (p *Pool) init() error {
	p.initOnce.Do(func() {
		p.epoch = wallNow()
		p.q.timer = time.AfterFunc(time.Hour, p.expireWaiters)
		p.q.timer.Stop()
		p.cfg, p.cfgErr = p.buildConfig()
		if p.cfgErr == nil && p.Sentinel != nil {
			p.cfgErr = p.Sentinel.watch(p) // the one Pool it serves
		} else if p.cfgErr == nil {
			p.cfgErr = p.Cluster.serve(p)
		}
		n := p.cfg.maxActive
		if p.cfgErr != nil {
			n = 0
		}
		p.permits = tokens(n)
		p.slots = tokens(p.cfg.maxDials)
		// MaxIdle idle connections: one in the hot slot, the rest in a channel.
		p.idle.init(min(p.cfg.maxIdle, n), p.cfg.idleTimeout)
		p.done = make(chan struct{})
	})
	return p.cfgErr
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
	if p.Cluster != nil {
		return p.Cluster.get(ctx, p)
	}
	if p.AutoPipeline {
		return p.getAuto(ctx)
	}
	pc, err := p.get(ctx)
	if err != nil {
		repanic(err)
		return errorConn{err}, err
	}
	if p.LeakThreshold > 0 {
		pc.leak = p.watchLeak()
	}
	return newActiveConn(pc), nil
}

// get hands out an idle connection, or dials one with a ticket: idle
// connections first, then a ticket, then a wait for either.
func (p *Pool) get(ctx context.Context) (*poolConn, error) {
	if err := p.init(); err != nil {
		return nil, err
	}
	var deadline time.Time // when the Get stops waiting; set by its first wait
	checksEnd := p.checksEnd()
	for {
		pc, err := p.acquire(ctx, &deadline)
		if err != nil {
			return nil, err
		}
		if pc != nil {
			if pc, err = p.vet(ctx, pc, checksEnd); pc != nil || err != nil {
				return pc, err
			}
			// vet closed the idle connections it found and holds the
			// permit of one: with a slot, a ticket. A Get granted a
			// connection after a wait so keeps its turn.
			if !p.takeSlot() {
				p.releasePermit()
				continue
			}
		}
		return p.dial(ctx, &deadline)
	}
}

// acquire takes an idle connection, or a ticket (and returns nil), waiting
// for either when there is none.
func (p *Pool) acquire(ctx context.Context, deadline *time.Time) (*poolConn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if p.closed.Load() {
		return nil, ErrPoolClosed
	}
	if pc := p.idle.take(); pc != nil {
		return pc, nil
	}
	if p.takeTicket() {
		return nil, nil
	}
	return p.wait(ctx, deadline)
}

// vet returns pc, or the next idle connection, that may be reused, closing
// those that may not. When it closed one and found no other, it returns
// neither a connection nor an error, and the caller holds the permit of
// the last one closed. Once checksEnd has passed, a failed health check
// ends the Get.
func (p *Pool) vet(ctx context.Context, pc *poolConn, checksEnd time.Time) (*poolConn, error) {
	for {
		reason, err := p.reuse(ctx, pc)
		switch {
		case reason < 0 && err != nil:
			return nil, err
		case reason < 0:
			return pc, nil
		case err != nil:
			p.releasePermit()
			return nil, err
		case reason == DiscardHealthCheck && time.Now().After(checksEnd):
			p.releasePermit()
			return nil, p.exhausted(fmt.Sprintf("idle connections failed TestOnBorrow until this Get's WaitTimeout (%v) passed", p.checksBudget()))
		}
		if pc = p.idle.take(); pc == nil {
			return nil, nil
		}
		p.releasePermit()
	}
}

// reuse readies an idle connection to be handed out, or closes it and
// says why: the caller then holds its permit. An error is ctx's, or a
// panic of the user's code.
func (p *Pool) reuse(ctx context.Context, pc *poolConn) (DiscardReason, error) {
	now := p.clock()
	reason := p.stale(pc, now)
	checks := p.TestOnBorrow != nil || p.TestOnBorrowContext != nil
	if reason < 0 && checks {
		if err := guard(func() { reason = p.healthy(ctx, pc) }); err != nil {
			return DiscardHealthCheck, either(err, p.closeConn(pc, DiscardHealthCheck, nil))
		}
	}
	if reason >= 0 {
		return reason, p.closeConn(pc, reason, nil)
	}
	pc.used = now
	if err := p.shrink(now); err != nil {
		return reason, either(err, p.put(pc))
	}
	if checks {
		// The check may take a round trip: a caller that gave up meanwhile
		// must not get the connection.
		if err := ctx.Err(); err != nil {
			return reason, either(p.put(pc), err)
		}
	}
	return reason, nil
}

// stale reports why an idle connection may not be handed out at now, or -1.
func (p *Pool) stale(pc *poolConn, now time.Duration) DiscardReason {
	switch {
	case now-pc.used >= p.cfg.idleTimeout:
		return DiscardIdleTimeout
	case pc.gen != p.gen.Load():
		return DiscardRetired
	case p.cfg.maxLifetime > 0 && now-pc.created >= p.cfg.maxLifetime:
		return DiscardLifetime
	case pc.netConn != nil && now-pc.used >= peekAfterIdle && peek(pc.netConn) != nil:
		// Closed by the server, or holding bytes nobody asked for.
		return DiscardBroken
	}
	return -1
}

// healthy runs TestOnBorrow and TestOnBorrowContext.
func (p *Pool) healthy(ctx context.Context, pc *poolConn) DiscardReason {
	lastUsed := p.epoch.Add(pc.used)
	if (p.TestOnBorrow == nil || p.TestOnBorrow(pc.c, lastUsed) == nil) &&
		(p.TestOnBorrowContext == nil || p.TestOnBorrowContext(ctx, pc.c, lastUsed) == nil) {
		return -1
	}
	return DiscardHealthCheck
}

// shrink closes, once per IdleTimeout, as many idle connections as stayed
// unused through the whole period (see idleSet), longest idle first.
func (p *Pool) shrink(now time.Duration) error {
	n := p.idle.due(now)
	var first error
	for ; n > 0; n-- {
		pc := p.idle.takeOldest()
		if pc == nil {
			break
		}
		if err := p.discard(pc, DiscardIdleTimeout, nil); first == nil {
			first = err
		}
	}
	return first
}

// checksEnd is when a Get whose health checks keep failing stops trying
// more idle connections (see checksBudget).
func (p *Pool) checksEnd() time.Time {
	if p.TestOnBorrow == nil && p.TestOnBorrowContext == nil {
		return time.Time{}
	}
	return time.Now().Add(p.checksBudget())
}

// checksBudget bounds a Get's failed health checks: WaitTimeout, or when
// that is negative (no waiting for a connection), the default WaitTimeout.
func (p *Pool) checksBudget() time.Duration {
	switch {
	case p.cfg.waitTimeout >= 0:
		return p.cfg.waitTimeout
	case p.cfg.readTimeout > 0:
		return p.cfg.readTimeout + time.Second
	}
	return DefaultReadTimeout + time.Second
}

// exhausted counts and logs a Get that gave up waiting, with what it waited
// for, and returns ErrPoolExhausted.
func (p *Pool) exhausted(why string) error {
	p.stats.exhausted.Add(1)
	p.log(logExhausted, slog.LevelWarn, "redispool: pool exhausted", slog.String("waited_for", why))
	return ErrPoolExhausted
}

// put returns a clean connection to the idle set, unless the pool has enough
// idle ones, or was closed or retired its connections, or the connection
// outlived MaxConnLifetime. Idle time, and age again, are checked when a
// connection is handed out (see stale). Its error is a panic of the Close
// of a connection discarded.
func (p *Pool) put(pc *poolConn) error {
	switch {
	case p.closed.Load():
		return p.discard(pc, DiscardPoolClosed, nil)
	case pc.gen != p.gen.Load():
		return p.discard(pc, DiscardRetired, nil)
	case p.cfg.maxLifetime > 0 && p.clock()-pc.created >= p.cfg.maxLifetime:
		return p.discard(pc, DiscardLifetime, nil)
	case p.q.n.Load() > 0 && p.handToWaiter(pc):
		return nil
	case !p.idle.put(pc):
		return p.discard(pc, DiscardMaxIdle, nil)
	}
	p.serve() // a caller may have queued as this one came back
	if p.closed.Load() {
		// Close may have emptied the idle set before this one joined it:
		// then nobody else will, so empty it again.
		return p.drainIdle(DiscardPoolClosed)
	}
	return nil
}

// drainIdle discards every idle connection; the first panic of their Close
// is returned once all are closed.
func (p *Pool) drainIdle(reason DiscardReason) error {
	var first error
	for pc := p.idle.takeAny(); pc != nil; pc = p.idle.takeAny() {
		if err := p.discard(pc, reason, nil); first == nil {
			first = err
		}
	}
	return first
}

// discard closes a connection the pool owns, counts why (cause, if any,
// goes to the log) and gives its permit back. Its error is a panic of the
// conn's Close.
func (p *Pool) discard(pc *poolConn, reason DiscardReason, cause error) error {
	err := p.closeConn(pc, reason, cause)
	p.releasePermit()
	return err
}

// closeConn is discard but for the permit, which the caller then holds.
// The discard is counted before the connection leaves ActiveCount, so that
// whoever sees ActiveCount drop finds it counted.
func (p *Pool) closeConn(pc *poolConn, reason DiscardReason, cause error) error {
	err := guard(func() { pc.c.Close() })
	p.stats.discards[reason].Add(1)
	p.active.Add(-1)
	p.logDiscarded(reason, cause)
	return err
}

// Close closes the idle connections and makes every later Get, and those
// waiting, fail with ErrPoolClosed. Connections in use are closed when
// their holders close them, dials in progress when they finish. Close is
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
	p.Cluster.close()
	p.wakeAll()
	p.auto.close(p)
	repanic(p.drainIdle(DiscardPoolClosed))
	return nil
}

// Retire makes the pool stop using every connection open now: idle ones are
// closed at once (one returned at the same moment is closed when Get comes to
// it), those in use fail their next call with ErrConnRetired, as after a
// Sentinel failover, and are closed when returned. Their Close writes
// nothing more to them: commands sent and not flushed are dropped, and
// Close returns ErrConnRetired when replies were left unread. New
// connections are dialed as needed. Use it when the server behind the
// address changed, for example after a failover or a credentials rotation.
// The pool retires its connections by itself when one gets a READONLY
// reply; those in use then go on until returned, since the server refuses
// their writes by itself.
func (p *Pool) Retire() {
	if p == nil || p.init() != nil {
		return
	}
	g := p.gen.Add(1)
	for cut := p.cut.Load(); cut < g && !p.cut.CompareAndSwap(cut, g); cut = p.cut.Load() {
	}
	p.Cluster.retire()
	p.auto.close(p)
	repanic(p.drainIdle(DiscardRetired))
}
