package redispool

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/redispool/redispool/internal/command"
)

var (
	_ redis.ConnWithTimeout = (*autoConn)(nil)
	_ redis.ConnWithContext = (*autoConn)(nil)
)

// autoConn is the conn Get hands out when AutoPipeline is set. Commands
// that leave no state on a connection go to a shared connection (a pipe),
// together with other borrowers' commands. The first command that would
// leave state or block, or that needs a deadline the shared connection
// cannot give, moves the borrower to a connection of its own (ded), an
// activeConn with all its rules, for the rest of the borrow. Replies still
// due from the shared connection are read first, so that the commands run
// in the order they were sent and their replies come back in that order.
//
// All of a borrower's shared commands go to one pipe, so that they run in
// order; it moves to another only once every reply from the first is in.
type autoConn struct {
	p *Pool

	mu      sync.Mutex  // protects the fields below; held across waits only to switch
	pp      *pipe       // the pipe its shared commands go to
	unsent  []*req      // sent with Send, not yet flushed
	pending []*req      // flushed, replies not yet read, in order
	ded     *activeConn // its own connection, once it needed one
	err     error       // the first error that broke the borrow
	closed  bool
	leak    *leakWatch
}

// getAuto is GetContext with AutoPipeline: no connection is taken until a
// command needs one.
func (p *Pool) getAuto(ctx context.Context) (redis.Conn, error) {
	err := p.init()
	switch {
	case err != nil:
	case ctx.Err() != nil:
		err = ctx.Err()
	case p.closed.Load():
		err = ErrPoolClosed
	}
	if err != nil {
		return errorConn{err}, err
	}
	a := &autoConn{p: p}
	if p.LeakThreshold > 0 {
		a.leak = p.watchLeak()
	}
	return a, nil
}

// sharable reports whether a command may go to a shared connection: it
// leaves no state and does not block, and timeout, when not negative (the
// pool's ReadTimeout), is one the shared connection's reads honour.
func (a *autoConn) sharable(cmd string, args []any, timeout time.Duration) bool {
	if cmd == "" || a.ded != nil {
		return false
	}
	if rt := a.p.cfg.readTimeout; timeout == 0 || (timeout > 0 && rt > 0 && timeout > rt) {
		return false
	}
	return command.Inert(cmd) || command.Classify(cmd, args).Effects == 0
}

func (a *autoConn) usableLocked() error {
	if a.closed {
		return ErrConnClosed
	}
	return a.err
}

// broke records err as the error that broke the borrow, and returns it.
func (a *autoConn) broke(err error) error {
	a.mu.Lock()
	if a.err == nil {
		a.err = err
	}
	a.mu.Unlock()
	return err
}

// flushLocked hands the commands sent with Send to the pipe. While the
// pipe holds maxOutstanding commands, it waits for room, or for ctx to end:
// then the commands fail with ctx's error.
func (a *autoConn) flushLocked(ctx context.Context) {
	if len(a.unsent) == 0 {
		return
	}
	rs := a.unsent
	a.unsent = nil
	a.pending = append(a.pending, rs...)
	a.submitLocked(ctx, rs)
}

// submitLocked queues rs on the borrower's pipe, or on a new one when that
// one closed, once the replies still due from it are in. When none takes
// them, they fail.
func (a *autoConn) submitLocked(ctx context.Context, rs []*req) {
	for tries := 0; tries < 3; tries++ {
		if a.pp == nil || !a.pp.open() {
			pp, err := a.nextPipeLocked(ctx, rs)
			if err != nil {
				finishUnsent(rs, err)
				return
			}
			a.pp = pp
		}
		ok, err := a.pp.submit(ctx, rs)
		if err != nil {
			finishUnsent(rs, err)
			return
		}
		if ok {
			return
		}
		a.pp = nil
	}
	finishUnsent(rs, errPipeGone)
}

// nextPipeLocked picks a pipe for rs once the replies due to the borrow
// before them are in: the pipe that closed reads each within ReadTimeout,
// or breaks, but ReadTimeout may be off, so ctx bounds the wait.
func (a *autoConn) nextPipeLocked(ctx context.Context, rs []*req) (*pipe, error) {
	for _, r := range a.pending[:len(a.pending)-len(rs)] {
		if err := await(ctx, nil, r); err != nil {
			return nil, err
		}
	}
	return a.p.auto.pick(a.p)
}

// roundTripLocked runs a command on the borrower's pipe by itself when the
// pipe is idle (see pipe.roundTrip); done is false when it did not run it.
func (a *autoConn) roundTripLocked(cmd string, args []any) (reply any, done bool, err error) {
	if a.pp == nil || !a.pp.open() {
		pp, err := a.p.auto.pick(a.p)
		if err != nil {
			return nil, false, nil // the queued path fails it
		}
		a.pp = pp
	}
	return a.pp.roundTrip(cmd, args)
}

// dedicatedLocked returns the borrower's own connection, taking one from
// the pool the first time, after every reply due from the shared one is in.
func (a *autoConn) dedicatedLocked(ctx context.Context) (*activeConn, error) {
	if a.ded != nil {
		return a.ded, nil
	}
	a.flushLocked(ctx)
	for _, r := range a.pending {
		if err := await(ctx, nil, r); err != nil {
			a.err = err
			return nil, err
		}
	}
	pc, err := a.p.get(ctx)
	if err != nil {
		a.err = err
		return nil, err
	}
	a.ded = newActiveConn(pc)
	return a.ded, nil
}

// await waits for r's reply, or for ctx to end or expire to fire.
func await(ctx context.Context, expire <-chan time.Time, r *req) error {
	select {
	case <-r.done:
		return nil
	default:
	}
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-expire:
		return os.ErrDeadlineExceeded
	}
}

// timer returns the channel of a timer for timeout, when positive, and its
// stop function.
func timer(timeout time.Duration) (<-chan time.Time, func() bool) {
	if timeout <= 0 {
		return nil, func() bool { return false }
	}
	t := time.NewTimer(timeout)
	return t.C, t.Stop
}

// replied reports whether err is no error or an error reply.
func replied(err error) bool {
	_, ok := err.(redis.Error)
	return err == nil || ok
}

// value is r's reply as redigo's Do returns it: an error reply is a
// redis.Error value.
func (r *req) value() any { return value(r.reply, r.err) }

// value is a reply and its error as redigo's Do returns the reply.
func value(reply any, err error) any {
	if e, ok := err.(redis.Error); ok {
		return e
	}
	return reply
}

// cloneArgs returns args as redigo's Send would write them now, for a
// command written later, on the pipe's goroutine: byte slices copied, the
// value of a redis.Argument taken and any other value redigo prints,
// printed. The caller may then change or reuse them at once, as after
// redigo's Send. RedisArg and String are the user's code: their panic
// comes back as the error (see guard).
func cloneArgs(args []any) (cp []any, err error) {
	cp = make([]any, len(args))
	err = guard(func() {
		for i, arg := range args {
			cp[i] = argValue(arg, true)
		}
	})
	return cp, err
}

// argValue is arg as redigo writes it (see redis.conn's writeArg), in a
// value that does not change.
func argValue(arg any, argument bool) any {
	switch arg := arg.(type) {
	case string, int, int64, float64, bool, nil:
		return arg
	case []byte:
		return append([]byte(nil), arg...)
	case redis.Argument:
		if argument {
			return argValue(arg.RedisArg(), false)
		}
	}
	return fmt.Sprint(arg)
}

// plain reports whether args hold only values that redigo writes without
// calling the user's code: while the caller waits for its Do, they do not
// change (a byte slice included, as with redigo's Do).
func plain(args []any) bool {
	for _, arg := range args {
		switch arg.(type) {
		case string, []byte, int, int64, float64, bool, nil:
		default:
			return false
		}
	}
	return true
}

// Do sends a command and returns its reply, after reading the replies of
// commands sent before it, as a conn of one's own does.
func (a *autoConn) Do(cmd string, args ...any) (any, error) {
	return a.do(context.Background(), -1, cmd, args, func(ac *activeConn) (any, error) {
		return ac.Do(cmd, args...)
	})
}

// DoWithTimeout is Do with the read timeout given. A timeout of zero or
// longer than ReadTimeout needs a connection of the borrower's own.
func (a *autoConn) DoWithTimeout(timeout time.Duration, cmd string, args ...any) (any, error) {
	return a.do(context.Background(), max(timeout, 0), cmd, args, func(ac *activeConn) (any, error) {
		return ac.DoWithTimeout(timeout, cmd, args...)
	})
}

// DoContext is Do bounded also by ctx. When ctx ends first, the command is
// not written if it was not yet, and its reply is read and dropped if it
// was; ctx's error is returned, and later calls on the conn fail with it.
func (a *autoConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	if err := contextDone(ctx); err != nil {
		return nil, err
	}
	return a.do(ctx, -1, cmd, args, func(ac *activeConn) (any, error) {
		return ac.DoContext(ctx, cmd, args...)
	})
}

// do runs a Do: on the shared connection when it may, else on the
// borrower's own with own.
func (a *autoConn) do(ctx context.Context, timeout time.Duration, cmd string, args []any, own func(*activeConn) (any, error)) (any, error) {
	a.mu.Lock()
	if err := a.usableLocked(); err != nil {
		a.mu.Unlock()
		return nil, err
	}
	if cmd == "" && a.ded == nil || a.sharable(cmd, args, timeout) {
		return a.doShared(ctx, timeout, cmd, args)
	}
	ded, err := a.dedicatedLocked(ctx)
	if err != nil {
		a.mu.Unlock()
		repanic(err)
		return nil, err
	}
	earlier := a.pending
	a.pending = nil
	a.mu.Unlock()
	if err := brokenReply(earlier); err != nil {
		return nil, a.broke(err)
	}
	reply, err := own(ded)
	return combine(cmd, earlier, reply, err)
}

// doShared is do on the shared connection; a.mu is held, and released.
func (a *autoConn) doShared(ctx context.Context, timeout time.Duration, cmd string, args []any) (any, error) {
	if cmd != "" {
		if reply, done, err := a.doOneLocked(ctx, timeout, cmd, args); done {
			return reply, err
		}
	}
	a.flushLocked(ctx)
	rs := a.pending
	a.pending = nil
	a.mu.Unlock()
	if len(rs) == 0 {
		return nil, nil // Do(""), nothing pending
	}
	first, err := a.awaitAll(ctx, timeout, rs)
	switch {
	case err != nil:
		if cmd != "" {
			rs[len(rs)-1].dropped.Store(true) // not written yet? then never
		}
		return nil, err
	case cmd != "":
		return rs[len(rs)-1].value(), first
	}
	return values(rs), nil
}

// doOneLocked starts a Do of cmd on the shared connection. It runs the
// command by itself when the pipe is idle and the caller waits for plain
// arguments (see pipe.roundTrip), and reports done, with a.mu released.
// Otherwise it queues the command, its arguments taken now when the caller
// may return before they are written or they hold values of the user's
// (see cloneArgs), and keeps a.mu; a panic of the user's code there is
// done too, and goes on to the caller.
func (a *autoConn) doOneLocked(ctx context.Context, timeout time.Duration, cmd string, args []any) (reply any, done bool, err error) {
	plainArgs := plain(args)
	if plainArgs && ctx.Done() == nil && timeout < 0 && len(a.unsent) == 0 && len(a.pending) == 0 {
		if reply, ran, err := a.roundTripLocked(cmd, args); ran {
			a.mu.Unlock()
			if !replied(err) {
				return nil, true, a.broke(err)
			}
			return value(reply, err), true, err
		}
	}
	if !plainArgs || ctx.Done() != nil || timeout > 0 {
		if args, err = cloneArgs(args); err != nil {
			a.mu.Unlock()
			repanic(err)
			return nil, true, err
		}
	}
	a.unsent = append(a.unsent, newReq(cmd, args))
	return nil, false, nil
}

// values is the replies of rs as a Do("") returns them.
func values(rs []*req) []any {
	vals := make([]any, len(rs))
	for i, r := range rs {
		vals[i] = r.value()
	}
	return vals
}

// awaitAll waits for the replies of rs, in order, for at most timeout when
// it is positive, and returns the first error reply among them. Any other
// error breaks the borrow, but for that of a lone command never written
// (no connection to write it on): the borrow then did nothing, and stays
// clean.
func (a *autoConn) awaitAll(ctx context.Context, timeout time.Duration, rs []*req) (first, err error) {
	expire, stop := timer(timeout)
	defer stop()
	for _, r := range rs {
		if err := await(ctx, expire, r); err != nil {
			return nil, a.broke(err)
		}
		if !replied(r.err) {
			if len(rs) == 1 && r.unsent {
				return nil, r.err
			}
			return nil, a.broke(r.err)
		}
		if first == nil {
			first = r.err
		}
	}
	return first, nil
}

// brokenReply returns the error of the first of rs, all read, that got no
// reply.
func brokenReply(rs []*req) error {
	for _, r := range rs {
		if !replied(r.err) {
			return r.err
		}
	}
	return nil
}

// combine puts the replies read from the shared connection before a Do on
// the borrower's own in front of its outcome, as one connection's Do
// would return them.
func combine(cmd string, earlier []*req, reply any, err error) (any, error) {
	if len(earlier) == 0 {
		return reply, err
	}
	if cmd == "" {
		rest, _ := reply.([]any)
		vals := make([]any, 0, len(earlier)+len(rest))
		for _, r := range earlier {
			vals = append(vals, r.value())
		}
		return append(vals, rest...), err
	}
	if replied(err) {
		for _, r := range earlier {
			if r.err != nil {
				return reply, r.err
			}
		}
	}
	return reply, err
}

// Send queues a command; its reply is read by Receive, Do or Close.
func (a *autoConn) Send(cmd string, args ...any) error {
	a.mu.Lock()
	if err := a.usableLocked(); err != nil {
		a.mu.Unlock()
		return err
	}
	if a.sharable(cmd, args, -1) {
		cp, err := cloneArgs(args)
		if err == nil {
			a.unsent = append(a.unsent, newReq(cmd, cp))
		}
		a.mu.Unlock()
		repanic(err)
		return err
	}
	ded, err := a.dedicatedLocked(context.Background())
	a.mu.Unlock()
	if err != nil {
		repanic(err)
		return err
	}
	return ded.Send(cmd, args...)
}

// Flush writes the queued commands.
func (a *autoConn) Flush() error {
	a.mu.Lock()
	if err := a.usableLocked(); err != nil {
		a.mu.Unlock()
		return err
	}
	a.flushLocked(context.Background())
	ded := a.ded
	a.mu.Unlock()
	if ded != nil {
		return ded.Flush()
	}
	return nil
}

// Receive reads one reply. With no reply due from the shared connection,
// it moves the borrower to a connection of its own and reads there, as
// PubSubConn expects.
func (a *autoConn) Receive() (any, error) {
	return a.receive(context.Background(), 0, func(ac *activeConn) (any, error) {
		return ac.Receive()
	})
}

// ReceiveWithTimeout is Receive with the read timeout given.
func (a *autoConn) ReceiveWithTimeout(timeout time.Duration) (any, error) {
	return a.receive(context.Background(), timeout, func(ac *activeConn) (any, error) {
		return ac.ReceiveWithTimeout(timeout)
	})
}

// ReceiveContext is Receive bounded also by ctx, as DoContext is.
func (a *autoConn) ReceiveContext(ctx context.Context) (any, error) {
	if err := contextDone(ctx); err != nil {
		return nil, err
	}
	return a.receive(ctx, 0, func(ac *activeConn) (any, error) {
		return ac.ReceiveContext(ctx)
	})
}

func (a *autoConn) receive(ctx context.Context, timeout time.Duration, own func(*activeConn) (any, error)) (any, error) {
	a.mu.Lock()
	if err := a.usableLocked(); err != nil {
		a.mu.Unlock()
		return nil, err
	}
	a.flushLocked(ctx)
	if len(a.pending) == 0 {
		ded, err := a.dedicatedLocked(ctx)
		a.mu.Unlock()
		if err != nil {
			repanic(err)
			return nil, err
		}
		return own(ded)
	}
	r := a.pending[0]
	a.pending[0] = nil
	a.pending = a.pending[1:]
	a.mu.Unlock()
	expire, stop := timer(timeout)
	defer stop()
	if err := await(ctx, expire, r); err != nil {
		return nil, a.broke(err)
	}
	if !replied(r.err) {
		return nil, a.broke(r.err)
	}
	return r.reply, r.err
}

// Err returns a non-nil error when the conn is unusable: closed, broken by
// an earlier error, or its own connection's Err.
func (a *autoConn) Err() error {
	a.mu.Lock()
	err, ded := a.usableLocked(), a.ded
	a.mu.Unlock()
	if err == nil && ded != nil {
		return ded.Err()
	}
	return err
}

// Close ends the borrow. Commands sent and not flushed are written; replies
// not read are read and dropped by the shared connection. The borrower's
// own connection, if it took one, is closed as a conn from Get without
// AutoPipeline is. Close is idempotent.
func (a *autoConn) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	if a.leak != nil {
		a.leak.timer.Stop()
		a.leak = nil
	}
	if a.err == nil && len(a.unsent) > 0 {
		// Bounded as a Close's drain is: the commands wait for the replies
		// still due on a pipe that closed.
		ctx, cancel := context.WithTimeout(context.Background(), a.p.cfg.drainTimeout)
		a.flushLocked(ctx)
		cancel()
	}
	a.pending = nil
	ded := a.ded
	a.mu.Unlock()
	if ded != nil {
		return ded.Close()
	}
	return nil
}
