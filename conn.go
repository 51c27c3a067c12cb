package redispool

import (
	"context"
	"errors"
	"os"
	"sync/atomic"
	"time"

	"github.com/gomodule/redigo/redis"
)

var (
	_ redis.ConnWithTimeout = (*activeConn)(nil)
	_ redis.ConnWithContext = (*activeConn)(nil)
	_ redis.ConnWithTimeout = errorConn{}
	_ redis.ConnWithContext = errorConn{}
)

// errTimeoutNotSupported is returned by DoWithTimeout and ReceiveWithTimeout
// when the connection from Dial implements neither redis.ConnWithTimeout nor
// redis.ConnWithContext.
var errTimeoutNotSupported = errors.New("redispool: connection from Dial supports neither ConnWithTimeout nor ConnWithContext")

// ErrConcurrentUse is returned by a call on a conn from Get that overlaps
// another call on it, from another goroutine, in a way redigo does not
// allow: two calls that write (Send, Flush, Do) or two that read (Receive,
// Do) at once. One goroutine may write while another reads, as with
// PubSubConn. The call returns without touching the connection, and the conn
// is broken: every later call fails with ErrConcurrentUse, and Close
// discards the connection.
var ErrConcurrentUse = errors.New("redispool: conn used by two goroutines at once")

// activeConn is the conn Get hands out. It passes commands to the pooled
// connection and keeps, in the pooled connection's borrowState, what Close
// needs to decide whether the connection is clean: its state, the replies
// still pending and the first error that was not a redis.Error.
//
// As with redigo's connections, one goroutine may Send and Flush while another
// Receives. A call claims the conn in word (see claim): while the borrow has
// sent and read only commands with no effect, that one compare-and-swap is
// all its bookkeeping; otherwise it takes pc.mu (see lock), never held across
// I/O. Calls that overlap otherwise break the connection (see
// ErrConcurrentUse).
type activeConn struct {
	pc *poolConn
	// word is the borrow's calls in progress (the uses bits), wordLocked,
	// wordFull, wordClosed and wordUnconfirmed, and from bit pendingShift on
	// the number of replies pending. Its zero value is a borrow that has done nothing.
	word atomic.Uint64
}

// The bits of activeConn.word above the uses of the calls in progress.
const (
	// wordLocked: a holder of pc.mu has the bookkeeping; no call claims the
	// conn in word meanwhile.
	wordLocked uint64 = 1 << 2
	// wordFull: the bookkeeping holds more than the count of pending
	// replies (see poolConn.fullLocked): every call takes pc.mu.
	wordFull uint64 = 1 << 3
	// wordClosed: Close ran, and every later call fails with ErrConnClosed.
	wordClosed uint64 = 1 << 4
	// wordUnconfirmed: the connection, from a Dial of the user's, has had
	// no reply yet (see poolConn.confirmLocked): a call takes pc.mu to
	// confirm it, but a Close has nothing to record for it.
	wordUnconfirmed uint64 = 1 << 5

	wordUses     = uint64(reads | writes)
	pendingShift = 8
	pendingOne   = 1 << pendingShift
)

// claim claims the conn for a call that does u, and moves the count of
// pending replies for it, when the borrow's bookkeeping is that count alone
// and no call in progress does what u does: Send (add true) adds a reply,
// Receive takes one (there must be one), Do reads them all, Flush reads
// none. Otherwise, or when the connection is retired, it claims nothing:
// the call takes pc.mu (see lock).
func (ac *activeConn) claim(u uses, add bool) bool {
	for {
		w := ac.word.Load()
		if w&(wordLocked|wordFull|wordClosed|wordUnconfirmed|uint64(u)) != 0 || ac.pc.retired() {
			return false
		}
		next := w | uint64(u)
		switch {
		case add:
			next += pendingOne
		case u == reads|writes:
			next &= pendingOne - 1
		case u == reads:
			if w < pendingOne {
				return false
			}
			next -= pendingOne
		}
		if ac.word.CompareAndSwap(w, next) {
			return true
		}
	}
}

// newActiveConn is the conn for a borrow of pc, just taken from the pool
// and so ours alone: handles of earlier borrows fail on their own word.
func newActiveConn(pc *poolConn) *activeConn {
	ac := &activeConn{pc: pc}
	if bits := pc.wordBitsLocked(); bits != 0 {
		ac.word.Store(bits)
	}
	return ac
}

// lock locks the borrow's bookkeeping, if Close has not run: it takes
// pc.mu, sets wordLocked, and moves the count of pending replies from word
// to pc.pending. unlock moves it back.
func (ac *activeConn) lock() (*poolConn, error) {
	pc := ac.pc
	pc.mu.Lock()
	var w uint64
	for {
		// Only a holder of pc.mu sets wordLocked: the loop only waits for
		// a claim or the end of a call that changed word meanwhile.
		w = ac.word.Load()
		if ac.word.CompareAndSwap(w, w|wordLocked) {
			break
		}
	}
	if w&wordClosed != 0 {
		ac.word.And(^wordLocked)
		pc.mu.Unlock()
		return nil, ErrConnClosed
	}
	pc.pending = int(w >> pendingShift)
	return pc, nil
}

// unlock unlocks the bookkeeping locked by lock.
func (ac *activeConn) unlock() {
	pc := ac.pc
	keep := uint64(pc.pending)<<pendingShift | pc.wordBitsLocked()
	for {
		w := ac.word.Load()
		if ac.word.CompareAndSwap(w, w&(wordUses|wordClosed)|keep) {
			break
		}
	}
	pc.mu.Unlock()
}

// Do sends a command and returns its reply, after reading the replies of
// commands sent before it. The reply waits at most ReadTimeout, plus the
// command's own timeout for blocking commands.
func (ac *activeConn) Do(cmd string, args ...any) (any, error) {
	var c call
	if err := ac.start(&c, cmd, args, false); err != nil {
		return nil, err
	}
	reply, err := c.pc.do(c.timeout, cmd, args)
	ac.settle(&c, cmd, reply, err)
	ac.end(&c, arrayError(cmd, reply, err))
	return reply, err
}

// DoWithTimeout is Do with the read timeout given instead of the pool's.
func (ac *activeConn) DoWithTimeout(timeout time.Duration, cmd string, args ...any) (any, error) {
	if err := ac.timeoutsSupported(); err != nil {
		return nil, err
	}
	var c call
	if err := ac.start(&c, cmd, args, false); err != nil {
		return nil, err
	}
	reply, err := c.pc.doBounded(timeout, cmd, args)
	ac.settle(&c, cmd, reply, err)
	ac.end(&c, arrayError(cmd, reply, err))
	return reply, err
}

// timeoutsSupported fails, before anything is sent, a call that needs the
// pooled connection to bound a read, when it implements neither
// redis.ConnWithTimeout nor redis.ConnWithContext.
func (ac *activeConn) timeoutsSupported() error {
	if ac.pc.bounded() {
		return nil
	}
	if ac.word.Load()&wordClosed != 0 {
		return ErrConnClosed
	}
	return errTimeoutNotSupported
}

// contextDone reports ctx's error before a call, when ctx has ended or its
// deadline has passed: nothing is sent then, and the connection is untouched.
func contextDone(ctx context.Context) error {
	if ctx == nil {
		return errNilContext
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		return context.DeadlineExceeded
	}
	return nil
}

// DoContext is Do bounded also by ctx. When ctx ends before the reply is
// read, the connection is closed, which is the only way to stop a read in
// progress, and ctx's error is returned; a reply read in full as ctx ends is
// returned, and later calls on the conn fail with ctx's error.
func (ac *activeConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	if err := contextDone(ctx); err != nil {
		return nil, err
	}
	var c call
	if err := ac.start(&c, cmd, args, false); err != nil {
		return nil, err
	}
	reply, err := ac.withContext(ctx, c.timeout, func(timeout time.Duration) (any, error) {
		if cwc := ac.pc.userCtx(); cwc != nil {
			return ctxCall(context.WithoutCancel(ctx), timeout, func(ctx context.Context) (any, error) {
				return cwc.DoContext(ctx, cmd, args...)
			})
		}
		return ac.pc.do(timeout, cmd, args)
	})
	ac.settle(&c, cmd, reply, err)
	ac.end(&c, arrayError(cmd, reply, err))
	return reply, err
}

// withContext runs f with its read timeout, timeout, shortened to ctx's
// deadline, and closes the connection if ctx is cancelled while f runs:
// closing is the only way to stop a read in progress.
func (ac *activeConn) withContext(ctx context.Context, timeout time.Duration, f func(time.Duration) (any, error)) (any, error) {
	timeout, dl, err := ctxTimeout(ctx, timeout)
	if err != nil {
		return nil, err
	}
	stop := func() bool { return true }
	if ctx.Done() != nil {
		pc := ac.pc
		stop = context.AfterFunc(ctx, func() { pc.c.Close() })
	}
	reply, err := f(timeout)
	if !stop() {
		return ac.cancelled(ctx.Err(), reply, err)
	}
	if _, replied := err.(redis.Error); err == nil || replied {
		return reply, err
	}
	if !dl.IsZero() && errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(dl) {
		// The read deadline was ctx's and has passed, though ctx's own
		// timer may not have fired yet: it will at once. (A write deadline
		// that passed earlier is the error it is.)
		<-ctx.Done()
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		return nil, ctxErr
	}
	return reply, err
}

// ctxTimeout is the read timeout of a call bounded by timeout and by ctx,
// and ctx's deadline when the timeout is ctx's (zero otherwise).
func ctxTimeout(ctx context.Context, timeout time.Duration) (time.Duration, time.Time, error) {
	if err := ctx.Err(); err != nil {
		return 0, time.Time{}, err
	}
	dl, ok := ctx.Deadline()
	if !ok {
		return timeout, time.Time{}, nil
	}
	left := time.Until(dl)
	switch {
	case left <= 0:
		return 0, time.Time{}, context.DeadlineExceeded
	case timeout != 0 && left >= timeout:
		return timeout, time.Time{}, nil
	}
	return left, dl, nil
}

// cancelled is the outcome of a call whose ctx ended with ctxErr, which
// closed the connection. A reply read in full before that is still the
// caller's: for BLPOP, the element has left the list. Either way the
// connection is gone: later calls fail, and Close discards it.
func (ac *activeConn) cancelled(ctxErr error, reply any, err error) (any, error) {
	if pc, lerr := ac.lock(); lerr == nil {
		if pc.err == nil {
			pc.err = ctxErr
		}
		ac.unlock()
	}
	if _, replied := err.(redis.Error); err == nil || replied {
		return reply, err
	}
	return nil, ctxErr
}

// Send queues a command; its reply is read by Receive, Do or Close.
func (ac *activeConn) Send(cmd string, args ...any) error {
	var c call
	if err := ac.start(&c, cmd, args, true); err != nil {
		return err
	}
	err := c.pc.c.Send(cmd, args...)
	ac.end(&c, err)
	return err
}

// Flush writes the queued commands.
func (ac *activeConn) Flush() error {
	var c call
	if err := ac.begin(&c, writes); err != nil {
		return err
	}
	err := c.pc.c.Flush()
	ac.end(&c, err)
	return err
}

// Receive reads one reply, waiting at most ReadTimeout (plus the timeouts of
// pending blocking commands). On a subscribed connection it waits for the next
// message without a deadline, as redigo's PubSubConn.Receive expects.
func (ac *activeConn) Receive() (any, error) {
	var c call
	if err := ac.begin(&c, reads); err != nil {
		return nil, err
	}
	reply, err := c.pc.receive(c.timeout)
	ac.end(&c, err)
	return reply, err
}

// ReceiveWithTimeout is Receive with the read timeout given.
func (ac *activeConn) ReceiveWithTimeout(timeout time.Duration) (any, error) {
	if err := ac.timeoutsSupported(); err != nil {
		return nil, err
	}
	var c call
	if err := ac.begin(&c, reads); err != nil {
		return nil, err
	}
	reply, err := c.pc.receiveBounded(timeout)
	ac.end(&c, err)
	return reply, err
}

// ReceiveContext is Receive bounded also by ctx, as DoContext is.
func (ac *activeConn) ReceiveContext(ctx context.Context) (any, error) {
	if err := contextDone(ctx); err != nil {
		return nil, err
	}
	var c call
	if err := ac.begin(&c, reads); err != nil {
		return nil, err
	}
	reply, err := ac.withContext(ctx, c.timeout, func(timeout time.Duration) (any, error) {
		if cwc := ac.pc.userCtx(); cwc != nil {
			return ctxCall(context.WithoutCancel(ctx), timeout, cwc.ReceiveContext)
		}
		return ac.pc.receive(timeout)
	})
	ac.end(&c, err)
	return reply, err
}

// Err returns a non-nil error when the conn is unusable: closed, broken by an
// earlier error, retired by a failover (ErrConnRetired), or reported unusable
// by the pooled connection.
func (ac *activeConn) Err() error {
	if ac.word.Load()&(wordFull|wordClosed) == 0 && !ac.pc.retired() {
		return ac.pc.c.Err() // no error kept (see claim)
	}
	pc, err := ac.lock()
	if err != nil {
		return err
	}
	err = pc.usableLocked()
	ac.unlock()
	if err != nil {
		return err
	}
	return pc.c.Err()
}

// Close returns the connection to the pool if it is provably clean, and closes
// it otherwise. Replies still pending are read first, within ReadTimeout and
// at most one second; an open MULTI is discarded, WATCH and READONLY undone,
// and a connection left in another database is put back in Pool.DB. A
// connection the pool retired (see Pool.Retire) is closed without writing
// anything more to it: commands sent and not yet written are dropped, and
// Close returns ErrConnRetired when any reply was still pending. Close is
// idempotent; every other method fails after it.
func (ac *activeConn) Close() error {
	st, touched, ok := ac.detach()
	if !ok {
		return nil // closed already
	}
	pc, p := ac.pc, ac.pc.p
	if pc.leak != nil {
		pc.leak.timer.Stop()
		pc.leak = nil // no pointer write (and GC barrier) when LeakThreshold is off
	}

	// From here the pool owns pc. The conn's own Err, Flush, Send and
	// DoWithTimeout are user code: should one panic, pc is discarded, so
	// that its permit is not lost, and the panic goes on to the caller.
	var v verdict
	if perr := guard(func() { v = p.release(pc, &st, touched) }); perr != nil {
		repanic(either(perr, p.discard(pc, DiscardBroken, perr)))
	}
	if v.reason < 0 {
		repanic(p.put(pc))
	} else {
		repanic(p.discard(pc, v.reason, v.cause))
	}
	return v.err
}

// detach ends the borrow: every later call on ac fails, and none touches
// pc. It returns the borrower's bookkeeping, unless the borrower left the
// connection as it found it (touched false), and ok false when Close ran
// already.
func (ac *activeConn) detach() (st borrowState, touched, ok bool) {
	if w := ac.word.Load(); w&^wordUnconfirmed == 0 && ac.word.CompareAndSwap(w, wordClosed) {
		return st, false, true // nothing pending, no call in progress, nothing kept
	}
	pc, err := ac.lock()
	if err != nil {
		return st, false, false
	}
	db := pc.p.cfg.db
	if ac.word.Or(wordClosed)&wordUses != 0 && pc.err == nil {
		pc.err = ErrConcurrentUse // a call still runs: its reply may come later
	}
	touched = !pc.untouched(db)
	if touched {
		st = pc.borrowState
		pc.borrowState = borrowState{db: db}
	}
	ac.word.And(^wordLocked) // closed: nothing more to keep in word
	pc.mu.Unlock()
	return st, touched, true
}

// userCtx returns the connection from a Dial of the user's as a
// redis.ConnWithContext, when it is one, or nil. DoContext and
// ReceiveContext pass it their caller's context, as tracing and metrics
// wrappers expect: its values, and its deadline or the pool's read timeout,
// whichever comes first. Not its cancellation, which closes the connection
// as on the pool's own (see withContext), so that a reply read in full as
// ctx ends still reaches the caller. The pool's own connections are read
// with deadlines instead, which costs no goroutine per call.
func (pc *poolConn) userCtx() redis.ConnWithContext {
	if !pc.p.cfg.userDial {
		return nil
	}
	cwc, _ := pc.c.(redis.ConnWithContext)
	return cwc
}

// do runs cmd with a read timeout of timeout (0 for none) through
// redis.ConnWithTimeout, or else as the caller asked, without a deadline,
// as redigo's pool does: a conn from a Dial of the user's gets Do for a Do.
func (pc *poolConn) do(timeout time.Duration, cmd string, args []any) (any, error) {
	if pc.cwt != nil {
		return pc.cwt.DoWithTimeout(timeout, cmd, args...)
	}
	return pc.c.Do(cmd, args...)
}

// doBounded is do for a caller that asked for the timeout (DoWithTimeout,
// Close's drain): a user's connection that implements only
// redis.ConnWithContext gets it as a context that ends after timeout.
func (pc *poolConn) doBounded(timeout time.Duration, cmd string, args []any) (any, error) {
	if cwc := pc.userCtx(); pc.cwt == nil && cwc != nil {
		return ctxCall(context.Background(), timeout, func(ctx context.Context) (any, error) {
			return cwc.DoContext(ctx, cmd, args...)
		})
	}
	return pc.do(timeout, cmd, args)
}

// receive is do for a Receive.
func (pc *poolConn) receive(timeout time.Duration) (any, error) {
	if pc.cwt != nil {
		return pc.cwt.ReceiveWithTimeout(timeout)
	}
	return pc.c.Receive()
}

// receiveBounded is doBounded for a ReceiveWithTimeout.
func (pc *poolConn) receiveBounded(timeout time.Duration) (any, error) {
	if cwc := pc.userCtx(); pc.cwt == nil && cwc != nil {
		return ctxCall(context.Background(), timeout, cwc.ReceiveContext)
	}
	return pc.receive(timeout)
}

// ctxCall runs f, a method of a user's redis.ConnWithContext, with ctx
// ending also after timeout (0 for no limit). When the timeout ends it and
// ctx has not, the error is os.ErrDeadlineExceeded, as from a read
// deadline: context.DeadlineExceeded would say that the caller's ctx ended.
func ctxCall(ctx context.Context, timeout time.Duration, f func(context.Context) (any, error)) (any, error) {
	if timeout == 0 {
		return f(ctx)
	}
	bounded, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	reply, err := f(bounded)
	if errors.Is(err, context.DeadlineExceeded) && bounded.Err() != nil && ctx.Err() == nil {
		err = os.ErrDeadlineExceeded
	}
	return reply, err
}

// errorConn is the conn Get returns on failure: every method returns err.
type errorConn struct{ err error }

func (ec errorConn) Do(string, ...any) (any, error) { return nil, ec.err }
func (ec errorConn) DoContext(context.Context, string, ...any) (any, error) {
	return nil, ec.err
}
func (ec errorConn) DoWithTimeout(time.Duration, string, ...any) (any, error) {
	return nil, ec.err
}
func (ec errorConn) Send(string, ...any) error                   { return ec.err }
func (ec errorConn) Err() error                                  { return ec.err }
func (ec errorConn) Close() error                                { return nil }
func (ec errorConn) Flush() error                                { return ec.err }
func (ec errorConn) Receive() (any, error)                       { return nil, ec.err }
func (ec errorConn) ReceiveContext(context.Context) (any, error) { return nil, ec.err }
func (ec errorConn) ReceiveWithTimeout(time.Duration) (any, error) {
	return nil, ec.err
}
