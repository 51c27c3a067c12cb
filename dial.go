package redispool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gomodule/redigo/redis"
)

// Dial backoff while the server refuses connections: the first retry waits
// about backoffBase, each failure doubles the wait up to backoffCap, and the
// wait is jittered down by up to half so that pools do not retry in step.
const (
	backoffBase = 10 * time.Millisecond
	backoffCap  = 500 * time.Millisecond
)

// tcpKeepAlive is the keep-alive period of connections the pool dials, as
// redigo's dialer sets it.
const tcpKeepAlive = 5 * time.Minute

// backoff paces dials while the server refuses them: after a failed dial,
// one caller at a time probes the server, once the backoff has passed; the
// others fail at once with the last dial error.
type backoff struct {
	mu      sync.Mutex    // protects the fields below; never held across network I/O
	err     error         // the last dial error, nil once a dial succeeds
	fails   int           // consecutive dial failures
	next    time.Duration // no dial before this (see Pool.clock) while err is set
	probing bool          // a dial is testing whether the server is back
}

// allow reports whether a dial may begin at now, and fails it while the
// pool backs off.
func (b *backoff) allow(now time.Duration) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == nil {
		return nil
	}
	if b.probing || now < b.next {
		return fmt.Errorf("%w: next dial in %v, after %d failed dials: %w", ErrDialBackoff,
			max(b.next-now, 0).Round(time.Millisecond), b.fails, b.err)
	}
	b.probing = true
	return nil
}

// succeeded ends the backoff.
func (b *backoff) succeeded() {
	b.mu.Lock()
	b.err, b.fails, b.probing = nil, 0, false
	b.mu.Unlock()
}

// ended ends a probe whose outcome says nothing of the server.
func (b *backoff) ended() {
	b.mu.Lock()
	b.probing = false
	b.mu.Unlock()
}

// failed records a refused dial at now and returns how long the pool now
// backs off and the count of consecutive failures.
func (b *backoff) failed(err error, now time.Duration) (time.Duration, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.probing = false
	b.fails++
	d := backoffCap
	if b.fails < 16 {
		d = min(backoffCap, backoffBase<<(b.fails-1))
	}
	d -= rand.N(d/2 + 1)
	b.err, b.next = err, now+d
	return d, b.fails
}

// dialCall is a dial in progress, which its caller may give up on: state
// says who takes the connection. The dialing goroutine sets pc, err and
// panicked, then moves state from dialPending to dialDelivered, or finds
// dialAbandoned there and gives the connection to the pool itself.
type dialCall struct {
	done     chan struct{} // closed once delivered
	state    atomic.Int32
	pc       *poolConn
	err      error
	panicked *userPanic
}

const (
	dialPending int32 = iota
	dialDelivered
	dialAbandoned
)

// dial dials a connection with the caller's ticket, which passes to the
// dial: the dial gives the permit and slot back on every path. The caller
// waits for it until ctx ends or the pool closes, and for a dial that
// DialTimeout does not bound (a Dial of the user's, or DialTimeout
// disabled) until *deadline. A dial given up on goes on, and serves a
// later Get.
func (p *Pool) dial(ctx context.Context, deadline *time.Time) (*poolConn, error) {
	if p.closed.Load() {
		// Granted a ticket as the pool closed: no dial may begin after
		// Close has returned.
		p.releaseTicket()
		return nil, ErrPoolClosed
	}
	if err := p.backoff.allow(p.clock()); err != nil {
		p.stats.fastFails.Add(1)
		p.releaseTicket()
		return nil, err
	}
	call := &dialCall{done: make(chan struct{})}
	p.active.Add(1)
	go p.runDial(context.WithoutCancel(ctx), call)

	var timeout <-chan time.Time
	if p.cfg.waitTimeout >= 0 && (p.cfg.userDial || p.cfg.dialTimeout == 0) {
		if deadline.IsZero() {
			*deadline = time.Now().Add(p.cfg.waitTimeout)
		}
		// Not a pooled timer: in a program whose go.mod says go 1.22 or
		// older, a stopped timer's channel may still hold a tick.
		timer := time.NewTimer(time.Until(*deadline))
		defer timer.Stop()
		timeout = timer.C
	}
	select {
	case <-call.done:
		return p.dialed(ctx, call)
	case <-ctx.Done():
		return nil, p.abandon(call, ctx.Err())
	case <-p.done:
		return nil, p.abandon(call, ErrPoolClosed)
	case <-timeout:
		return nil, p.abandon(call, p.exhausted(fmt.Sprintf("a dial did not finish within this Get's WaitTimeout (%v)", p.cfg.waitTimeout)))
	}
}

// dialed returns what a dial delivered to its caller.
func (p *Pool) dialed(ctx context.Context, call *dialCall) (*poolConn, error) {
	switch {
	case call.panicked != nil:
		return nil, call.panicked
	case call.err != nil:
		return nil, call.err
	}
	if err := ctx.Err(); err != nil {
		// ctx ended as the dial finished: as with a waiter's grant (see
		// granted), a caller that gave up must not get a connection. It
		// serves the next one.
		if perr := p.put(call.pc); perr != nil {
			return nil, perr
		}
		return nil, err
	}
	return call.pc, nil
}

// abandon gives up on a dial, which then gives its connection to the pool;
// should it have delivered it already, the caller gives it.
func (p *Pool) abandon(call *dialCall, err error) error {
	if call.state.CompareAndSwap(dialPending, dialAbandoned) || call.pc == nil {
		return err
	}
	if perr := p.put(call.pc); perr != nil {
		return perr
	}
	return err
}

// runDial dials on its own goroutine, so that a caller who gives up returns at
// once and the finished connection still serves the pool. It owns the
// ticket: the slot goes back when the dial ends, the permit when it failed.
func (p *Pool) runDial(ctx context.Context, call *dialCall) {
	gen := p.gen.Load()
	var c redis.Conn
	var netConn net.Conn
	var addr string
	var err error
	if p.closed.Load() {
		// Close ran since the dial was decided: no dial begins after it.
		err = ErrPoolClosed
		p.backoff.ended()
	} else {
		p.stats.dials.Add(1)
		if perr := guard(func() { c, netConn, addr, err = p.dialConn(ctx, &gen) }); perr != nil {
			call.panicked, err = perr.(*userPanic), perr
		} else if err == nil && c == nil {
			err = errNilConn
		}
		if err != nil || !p.cfg.userDial {
			p.recordDial(err)
		} else {
			p.backoff.ended() // the first reply tells (see confirmDial)
		}
	}
	p.releaseSlot()

	if err != nil {
		call.err = err
		p.active.Add(-1)
		p.releasePermit()
	} else {
		now := p.clock()
		cwt, _ := c.(redis.ConnWithTimeout)
		if cwt != nil && !p.cfg.userDial {
			cwt = ownConn{cwt}
		}
		call.pc = &poolConn{p: p, c: c, cwt: cwt, netConn: netConn, addr: addr, gen: gen, created: now, used: now,
			unconfirmed: p.cfg.userDial}
		call.pc.db = p.cfg.db
	}
	if call.state.CompareAndSwap(dialPending, dialDelivered) {
		close(call.done)
		return
	}
	if call.pc != nil {
		_ = p.put(call.pc) // abandoned: a panic of a conn's Close has no caller to reach
	}
}

// confirmDial records the outcome of a Dial of the user's once the first
// reply on its connection, or the lack of one, tells it (see recordDial).
// A Dial of the user's sends nothing, so a server at maxclients, or a port
// that speaks only TLS, accepts its connection and refuses or closes it
// at the first command: that dial failed, and the pool backs off. A reply
// ends the backoff; a timeout says nothing of the dial.
func (p *Pool) confirmDial(err error) {
	rerr, replied := err.(redis.Error)
	switch {
	case err == nil, replied && !closesConn(rerr):
		p.backoff.succeeded()
	case replied, closedByServer(err):
		p.recordDial(err)
	}
}

// recordDial updates the backoff with a dial's outcome. A dial that
// timed out counts as failed but does not back off: it has waited already,
// and MaxConcurrentDials bounds how many such dials run at once, so they
// cannot storm the server; backing off would only delay the first dial
// after a stalled server resumes.
func (p *Pool) recordDial(err error) {
	if err == nil {
		p.backoff.succeeded()
		return
	}
	p.stats.dialErrors.Add(1)
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		p.backoff.ended()
		p.log(logDialError, slog.LevelWarn, "redispool: dial failed", slog.String("error", errText(err)))
		return
	}
	d, fails := p.backoff.failed(err, p.clock())
	p.log(logDialError, slog.LevelWarn, "redispool: dial failed", slog.String("error", errText(err)),
		slog.Int("consecutive_failures", fails), slog.Duration("next_dial_in", d))
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
	c, netConn, err := p.dialAddr(ctx, addr)
	if err != nil {
		if p.Sentinel != nil {
			p.failover(addr)
		}
		return nil, nil, "", err
	}
	return c, netConn, addr, nil
}

// dialAddr dials addr with the pool's options, and returns the connection
// once the server has answered, with its socket unless DialOptions
// replaced the pool's dialer.
func (p *Pool) dialAddr(ctx context.Context, addr string) (redis.Conn, net.Conn, error) {
	var netConn net.Conn
	network := "tcp"
	if strings.HasPrefix(addr, "/") {
		network = "unix"
	}
	c, err := redis.DialContext(ctx, network, addr, p.dialOptions(&netConn)...)
	if err != nil {
		return nil, nil, err
	}
	switch {
	case p.cfg.db != 0:
		if _, err = converse(ctx, c, "SELECT", p.cfg.db); err != nil {
			err = fmt.Errorf("redispool: SELECT %d on %s: %w", p.cfg.db, addr, err)
		}
	case p.Sentinel == nil && !p.readOnly && p.cfg.password == "":
		err = checkAnswers(ctx, c, addr)
	}
	switch {
	case err != nil:
	case p.Sentinel != nil:
		err = checkRole(ctx, c, addr)
	case p.readOnly:
		_, err = converse(ctx, c, "READONLY")
	}
	if err == nil && netConn != nil {
		err = netConn.SetDeadline(time.Time{})
	}
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, netConn, nil
}

// dialOptions are the options of a dial of Addr: the pool's, then
// DialOptions, then the database. *sock receives the socket.
func (p *Pool) dialOptions(sock *net.Conn) []redis.DialOption {
	opts := []redis.DialOption{
		dialSocket(p.cfg.dialTimeout, deadlineSlack(p.cfg.readTimeout, p.cfg.writeTimeout), sock),
		redis.DialReadTimeout(p.cfg.readTimeout),
		redis.DialWriteTimeout(p.cfg.writeTimeout),
		redis.DialUsername(p.cfg.username),
		redis.DialPassword(p.cfg.password),
	}
	if p.cfg.dialTimeout > 0 {
		// redigo's own bound on a TLS handshake is 10s, whatever DialTimeout.
		opts = append(opts, redis.DialTLSHandshakeTimeout(p.cfg.dialTimeout))
	}
	if p.cfg.tls {
		opts = append(opts, redis.DialUseTLS(true))
	}
	// Database 0 last, whatever DialOptions say: the pool selects its own
	// (see dialAddr), and must know the database its connections start in,
	// to tell one a caller left in another.
	return append(append(opts, p.DialOptions...), redis.DialDatabase(0))
}

// checkAnswers sends PING on a connection to which the dial sent nothing
// (no AUTH, SELECT or ROLE), so that a dial succeeds only once the server
// has answered. A server at maxclients, or a port that speaks only TLS,
// accepts the connection, then refuses or closes it: that is a failed dial,
// which backs off, not a connection to hand out and discard.
func checkAnswers(ctx context.Context, c redis.Conn, addr string) error {
	_, err := converse(ctx, c, "PING")
	if err == nil {
		return nil
	}
	if _, replied := err.(redis.Error); !replied && closedByServer(err) {
		return fmt.Errorf("redispool: %s closed the connection before answering PING; "+
			"if the server expects TLS, use a rediss:// Addr or redis.DialUseTLS(true): %w", addr, err)
	}
	return fmt.Errorf("redispool: PING on %s: %w", addr, err)
}

// converse sends a command of the pool's own on c, a connection it is
// dialing, or a node's or a sentinel's, and reads the reply on this
// goroutine, within what remains of ctx; ctx's end closes c under the
// read. redis.DoContext would read on a goroutine of redigo's own, where a
// reply redigo cannot hold (a length past any slice) panics out of reach
// and ends the program: here it is an error.
func converse(ctx context.Context, c redis.Conn, cmd string, args ...any) (reply any, err error) {
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	err = readSafely(func() error {
		reply, err = redis.DoWithTimeout(c, timeLeft(ctx), cmd, args...)
		return err
	})
	if err != nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return reply, err
}

// readSafely runs read and turns a panic of redigo's reader in it into an
// error: redigo panics on a reply it cannot hold, such as a bulk string
// longer than any slice.
func readSafely(read func() error) (err error) {
	defer unreadable(&err)
	return read()
}

// unreadable, deferred by a read, turns a panic of redigo's reader in it
// into the read's error.
func unreadable(err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("redispool: unreadable reply: %v", r)
	}
}

// ownConn is a connection the pool dialed, as the pool reads it: a reply
// redigo cannot hold is the read's error, which breaks the connection,
// rather than a panic in the caller. A connection from a Dial of the
// user's is read as it is: its panics are the user's code's.
type ownConn struct{ redis.ConnWithTimeout }

func (c ownConn) DoWithTimeout(timeout time.Duration, cmd string, args ...any) (_ any, err error) {
	defer unreadable(&err)
	return c.ConnWithTimeout.DoWithTimeout(timeout, cmd, args...)
}

func (c ownConn) ReceiveWithTimeout(timeout time.Duration) (_ any, err error) {
	defer unreadable(&err)
	return c.ConnWithTimeout.ReceiveWithTimeout(timeout)
}

// timeLeft is the time until ctx's deadline, at least a nanosecond, so
// that a timeout of 0 (none) is never passed on; 0 when ctx has none.
func timeLeft(ctx context.Context) time.Duration {
	dl, ok := ctx.Deadline()
	if !ok {
		return 0
	}
	return max(time.Until(dl), time.Nanosecond)
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
		p.gen.Add(1)
		p.drainIdle(DiscardRetired)
		return
	}
	if p.Sentinel.forget(p, addr) {
		p.drainIdle(DiscardRetired)
	}
}
