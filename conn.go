package redispool

import (
	"context"
	"errors"
	"io"
	"math"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/redispool/redispool/internal/command"
)

var (
	_ redis.ConnWithTimeout = (*activeConn)(nil)
	_ redis.ConnWithContext = (*activeConn)(nil)
	_ redis.ConnWithTimeout = errorConn{}
	_ redis.ConnWithContext = errorConn{}
)

// errTimeoutNotSupported is returned by DoWithTimeout and ReceiveWithTimeout
// when the connection from Dial does not implement redis.ConnWithTimeout.
var errTimeoutNotSupported = errors.New("redispool: connection from Dial does not support ConnWithTimeout")

// ErrConcurrentUse is returned by a call on a conn from Get that overlaps
// another call on it, from another goroutine, in a way redigo does not
// allow: two calls that write (Send, Flush, Do) or two that read (Receive,
// Do) at once. One goroutine may write while another reads, as with
// PubSubConn. The call returns without touching the connection, and the conn
// is broken: every later call fails with ErrConcurrentUse, and Close
// discards the connection.
var ErrConcurrentUse = errors.New("redispool: conn used by two goroutines at once")

// errNoUndoReply stands for the reply to an EXEC, DISCARD or UNWATCH sent
// with Send when it is not where the pool expects it: nothing says it ran.
var errNoUndoReply = errors.New("redispool: no reply to an EXEC, DISCARD or UNWATCH sent with Send")

// connState is what a borrower did to a connection that the next one must not
// inherit.
type connState uint8

const (
	stateWatch     connState = 1 << iota // WATCH without EXEC, DISCARD or UNWATCH
	stateMulti                           // MULTI without EXEC or DISCARD
	stateSubscribe                       // subscribed at some point
	stateChannels                        // subscribed to channels now
	stateShards                          // subscribed to shard channels now
	statePatterns                        // subscribed to patterns now
	stateMonitor                         // MONITOR: every command the server runs arrives
	stateTaint                           // anything else that cannot be undone

	// stateListen: replies arrive unasked, so Receive has no deadline.
	stateListen = stateChannels | stateShards | statePatterns | stateMonitor
)

// uses is what calls do on the connection: redigo allows one goroutine to
// write while another reads, and nothing more.
type uses uint8

const (
	writes uses = 1 << iota // Send, Flush, Do
	reads                   // Receive, Do
)

// subscribed maps a kind of subscription to its state.
var subscribed = [...]connState{
	command.Channels: stateChannels,
	command.Patterns: statePatterns,
	command.Shards:   stateShards,
}

// activeConn is the conn Get hands out. It passes commands to the pooled
// connection and keeps, in the pooled connection's borrowState, what Close
// needs to decide whether the connection is clean: its state, the replies
// still pending and the first error that was not a redis.Error.
//
// As with redigo's connections, one goroutine may Send and Flush while another
// Receives, so the bookkeeping is under pc.mu; no I/O happens under it. Calls
// that overlap otherwise break the connection (see ErrConcurrentUse).
type activeConn struct {
	pc  *poolConn
	seq uint64 // ours while pc.seq is this
}

// lock locks the pooled connection's bookkeeping, if this conn still owns it.
func (ac *activeConn) lock() (*poolConn, error) {
	pc := ac.pc
	pc.mu.Lock()
	if pc.seq != ac.seq {
		pc.mu.Unlock()
		return nil, ErrConnClosed
	}
	return pc, nil
}

// borrowState is what a borrower did to a connection.
type borrowState struct {
	state        connState
	db           int           // the database the connection is in; -1 when unknown
	pending      int           // commands sent whose replies were not read
	pendingBlock time.Duration // the longest pending blocking commands may wait at the server
	pendingEver  bool          // a pending command may block forever
	busy         uses          // what the calls in progress do
	err          error         // the first error that was not a redis.Error
	// sent numbers the commands sent since no reply was last pending: the
	// next reply to read is that of command number sent-pending.
	sent int
	// undos are the numbers (see sent) of the pending replies to EXEC,
	// DISCARD and UNWATCH commands sent with Send. The state they undo was
	// cleared when they were sent (see apply); each reply must say that the
	// server ran its command, or the connection is not kept.
	undos []int
}

// untouched reports whether the borrower left nothing to read or undo and
// nothing that breaks the connection. With no reply pending, sent is 0,
// undos is empty and no blocking command is pending.
func (s *borrowState) untouched(db int) bool {
	return s.state == 0 && s.db == db && s.pending == 0 && s.busy == 0 && s.err == nil
}

// maxPendingBlock bounds the sum of pending blocking commands' timeouts,
// beyond which a read gets no deadline: ReadTimeout plus it still fits a
// time.Duration.
const maxPendingBlock = time.Duration(math.MaxInt64 / 4)

// call is one call in progress on the pooled connection.
type call struct {
	pc      *poolConn
	uses    uses
	timeout time.Duration // read deadline for the reply; 0 for none
	// selects is set for a Do of SELECT, which moves the connection to
	// database selectDB once its reply says it did.
	selects  bool
	selectDB int
	// undoes is the MULTI and WATCH state a Do of EXEC, DISCARD or UNWATCH
	// undoes once its reply says the server ran it (see settle).
	undoes connState
	// For a Do, the pending replies it reads: the first's number and the
	// undos among them (see borrowState).
	first int
	undos []int
}

// start records that a command (or, with cmd "", a flush and read of the
// pending replies) is about to run and computes its read timeout. send is
// true for Send, which queues a reply instead of reading one.
func (ac *activeConn) start(cmd string, args []any, send bool) (call, error) {
	var info command.Info
	if cmd != "" {
		info = command.Classify(cmd, args)
	}
	pc, err := ac.lock()
	if err != nil {
		return call{}, err
	}
	defer pc.mu.Unlock()
	u := reads | writes
	if send {
		u = writes
	}
	if err := pc.claimLocked(u); err != nil {
		return call{}, err
	}
	c := call{pc: pc, uses: u, timeout: pc.p.cfg.readTimeout}
	selects, undoes := pc.apply(info, send)
	if selects {
		c.selects, c.selectDB = true, info.DB
	}
	block, forever := pc.blockWithLocked(info)
	switch {
	case send:
		// Send("") too: redigo writes an empty command, which the server
		// answers with an error.
		if undoes != 0 {
			pc.undos = append(pc.undos, pc.sent)
		}
		pc.sent++
		pc.pending++
		pc.pendingBlock, pc.pendingEver = block, forever
	default:
		// Do reads every pending reply and its own, and settles what they
		// say (see settle).
		c.undoes, c.first, c.undos = undoes, pc.sent-pc.pending, pc.undos
		pc.pending, pc.pendingBlock, pc.pendingEver = 0, 0, false
		pc.sent, pc.undos = 0, nil
	}
	if c.timeout > 0 {
		if forever {
			c.timeout = 0
		} else {
			c.timeout += block
		}
	}
	return c, nil
}

// blockWithLocked returns how long the pending commands and the one of info
// may block at the server, or forever when nothing bounds that.
func (pc *poolConn) blockWithLocked(info command.Info) (block time.Duration, forever bool) {
	block, forever = pc.pendingBlock, pc.pendingEver
	if !info.Has(command.Blocking) || pc.state&stateMulti != 0 {
		// Inside MULTI a blocking command is only queued, and EXEC runs it
		// without blocking.
		return block, forever
	}
	if info.Timeout > maxPendingBlock-block {
		return block, true // longer than any deadline: none
	}
	return block + info.Timeout, forever || info.Forever
}

// claimLocked marks the connection busy with a call that does u, if it can
// take one: it is usable, and no call in progress does what u does. A call
// that overlaps another that way breaks the connection (see
// ErrConcurrentUse); the call in progress goes on.
func (pc *poolConn) claimLocked(u uses) error {
	if err := pc.usableLocked(); err != nil {
		return err
	}
	if pc.busy&u != 0 {
		pc.err = ErrConcurrentUse
		return ErrConcurrentUse
	}
	pc.busy |= u
	return nil
}

// usableLocked reports why the connection cannot take a call: it is broken,
// or, with Sentinel, reaches a master the sentinels have replaced.
func (pc *poolConn) usableLocked() error {
	switch {
	case pc.err != nil:
		return pc.err
	case pc.p.Sentinel != nil && pc.gen != pc.p.gen.Load():
		// The old master may still accept writes for a while, which the
		// failover then loses: fail instead.
		return ErrConnRetired
	}
	return nil
}

// apply records a command's effect on the connection's state when it is
// sent. Effects that would make the connection look cleaner apply only where
// the server is sure to carry them out at once: inside MULTI, commands are
// only queued, and EXEC or DISCARD without MULTI are errors that change
// nothing.
//
// A SELECT takes effect only if the server runs it: the database is unknown
// until its reply says so. apply reports whether the caller, a Do, is to set
// it from the reply (see end). An EXEC, DISCARD or UNWATCH can be refused
// (an ACL without it) and then undoes nothing; apply returns the state it
// undoes. For a Do, that state is cleared once its reply says it ran (see
// settle). Sent with Send, it is cleared now, so that the commands sent
// after it count as the server runs them if it ran; its reply, read later,
// must say it did, or the connection is tainted (see borrowState.undos).
// A SELECT sent with Send leaves the database unknown.
func (pc *poolConn) apply(info command.Info, send bool) (selects bool, undoes connState) {
	e := info.Effects
	if e == 0 {
		return false, 0
	}
	inMulti := pc.state&stateMulti != 0
	switch {
	case e&command.Watch != 0:
		pc.state |= stateWatch
	case e&command.Multi != 0:
		pc.state |= stateMulti
	case e&command.EndMulti != 0:
		if inMulti {
			undoes = stateMulti | stateWatch
		}
	case e&command.Unwatch != 0:
		if !inMulti {
			undoes = stateWatch
		}
	case e&command.Subscribe != 0:
		pc.state |= stateSubscribe | subscribed[info.PubSub]
	case e&command.UnsubscribeAll != 0:
		// The confirmations are still replies to read, within ReadTimeout,
		// once no kind of subscription is left.
		pc.state &^= subscribed[info.PubSub]
	case e&command.Monitor != 0:
		pc.state |= stateMonitor | stateTaint
	case e&command.Taint != 0:
		pc.state |= stateTaint
	case e&command.Select != 0:
		switch {
		case info.DB == pc.db:
			// Whether it runs or fails, the database stays the same.
		case inMulti, send:
			// Queued, or its reply read later if at all: whether it runs
			// depends on EXEC or on a reply the pool does not look at.
			pc.db = -1
		default:
			pc.db = -1 // until its reply says the server ran it
			return info.DB >= 0, 0
		}
	}
	if send {
		pc.state &^= undoes
	}
	return false, undoes
}

// settle looks at the replies a Do of cmd read for the EXEC, DISCARD and
// UNWATCH among their commands. Its own (c.undoes) clears the state once its
// reply, reply, says the server ran it: a refused one leaves the transaction
// open or the keys watched. The state of those sent with Send before it
// (c.undos) was cleared when they were sent: if a reply says one did not
// run, or cannot say (redigo returns, along with the reply to a command, only
// the first error among the replies read before it), the connection is
// tainted.
func (c call) settle(cmd string, reply any, err error) {
	if c.undoes == 0 && len(c.undos) == 0 {
		return
	}
	if _, replied := err.(redis.Error); err != nil && !replied {
		return // no reply: the conn is broken, and not kept
	}
	undone := c.undoes
	if undoRefused(reply) != nil {
		undone = 0
	}
	taint := len(c.undos) > 0 &&
		(cmd != "" && err != nil || cmd == "" && refusedAt(reply, c.first, c.undos) != nil)
	c.pc.mu.Lock()
	c.pc.state &^= undone
	if taint {
		c.pc.state |= stateTaint
	}
	c.pc.mu.Unlock()
}

// undoRefused returns the reply to an EXEC, DISCARD or UNWATCH if it says the
// server did not run the command: an error reply other than EXECABORT (with
// which EXEC discards the transaction).
func undoRefused(reply any) error {
	if e, ok := reply.(redis.Error); ok && !strings.HasPrefix(string(e), "EXECABORT ") {
		return e
	}
	return nil
}

// refusedAt returns the first refusal (see undoRefused) in reply, the array
// of the pending replies from number first on, at the numbers in undos.
func refusedAt(reply any, first int, undos []int) error {
	rs, _ := reply.([]any)
	for _, n := range undos {
		i := n - first
		if i < 0 || i >= len(rs) {
			return errNoUndoReply
		}
		if err := undoRefused(rs[i]); err != nil {
			return err
		}
	}
	return nil
}

// begin is start for Flush (u is writes) and Receive (reads). The timeout is
// for reading one pending reply, or a pushed message on a listening
// connection, which has no deadline.
func (ac *activeConn) begin(u uses) (call, error) {
	pc, err := ac.lock()
	if err != nil {
		return call{}, err
	}
	defer pc.mu.Unlock()
	if err := pc.claimLocked(u); err != nil {
		return call{}, err
	}
	c := call{pc: pc, uses: u, timeout: pc.p.cfg.readTimeout}
	if c.timeout > 0 {
		switch {
		case pc.state&stateListen != 0, pc.pendingEver:
			c.timeout = 0
		default:
			c.timeout += pc.pendingBlock
		}
	}
	return c, nil
}

// end records the outcome of a call. Any error but a redis.Error means the
// connection may hold a late reply or half a command: it is broken, every
// later call fails with the same error, and Close discards it.
//
// A READONLY error reply means the server became a replica: the connection is
// not kept, and every connection dialed before it is retired. With Sentinel,
// so does a connection closed by the server, as happens during a failover.
func (ac *activeConn) end(c call, err error, received bool) {
	pc := c.pc
	pc.mu.Lock()
	pc.busy &^= c.uses
	if c.selects && err == nil {
		pc.db = c.selectDB
	}
	rerr, replied := err.(redis.Error)
	if err != nil && !replied && pc.err == nil {
		pc.err = err
	}
	if replied && pc.err == nil && closesConn(rerr) {
		pc.err = err // the server closes the connection after this reply
	}
	if received && pc.pending > 0 && (err == nil || replied) {
		pc.receivedLocked(err)
	}
	readOnly := replied && isReadOnly(rerr)
	if readOnly {
		pc.state |= stateTaint
	}
	pc.mu.Unlock()
	if readOnly || (pc.p.Sentinel != nil && err != nil && !replied && closedByServer(err)) {
		pc.p.failover(pc.addr)
	}
}

// receivedLocked counts one pending reply as read; err is nil, or the error
// reply Receive returned for it. A reply that says an EXEC, DISCARD or
// UNWATCH sent with Send did not run taints the connection.
func (pc *poolConn) receivedLocked(err error) {
	if len(pc.undos) > 0 && pc.undos[0] == pc.sent-pc.pending {
		pc.undos = pc.undos[1:]
		if undoRefused(err) != nil {
			pc.state |= stateTaint
		}
	}
	pc.pending--
	if pc.pending == 0 {
		pc.pendingBlock, pc.pendingEver = 0, false
		pc.sent, pc.undos = 0, nil
	}
}

// closedByServer reports whether err says the server closed the connection.
func closedByServer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// closesConn reports whether the server closes the connection after the
// error reply e: when it refuses a client at maxclients, and after a
// protocol error, such as a bulk argument longer than proto-max-bulk-len.
func closesConn(e redis.Error) bool {
	return strings.HasPrefix(string(e), "ERR max number of clients reached") ||
		strings.HasPrefix(string(e), "ERR Protocol error")
}

// isReadOnly reports whether e is the error a replica answers writes with,
// itself or as the reason EXEC discarded a transaction.
func isReadOnly(e redis.Error) bool {
	s, _ := strings.CutPrefix(string(e), "EXECABORT Transaction discarded because of: ")
	return strings.HasPrefix(s, "READONLY ")
}

// arrayError returns the READONLY error inside the reply of EXEC or of Do
// with no command, which carry the replies of several commands, for end to see.
func arrayError(cmd string, reply any, err error) error {
	if err != nil || (cmd != "" && !strings.EqualFold(cmd, "EXEC")) {
		return err
	}
	rs, _ := reply.([]any)
	for _, r := range rs {
		if e, ok := r.(redis.Error); ok && isReadOnly(e) {
			return e
		}
	}
	return nil
}

// Do sends a command and returns its reply, after reading the replies of
// commands sent before it. The reply waits at most ReadTimeout, plus the
// command's own timeout for blocking commands.
func (ac *activeConn) Do(cmd string, args ...any) (any, error) {
	c, err := ac.start(cmd, args, false)
	if err != nil {
		return nil, err
	}
	var reply any
	if c.pc.cwt != nil {
		reply, err = c.pc.cwt.DoWithTimeout(c.timeout, cmd, args...)
	} else {
		reply, err = c.pc.c.Do(cmd, args...)
	}
	c.settle(cmd, reply, err)
	ac.end(c, arrayError(cmd, reply, err), false)
	return reply, err
}

// DoWithTimeout is Do with the read timeout given instead of the pool's.
func (ac *activeConn) DoWithTimeout(timeout time.Duration, cmd string, args ...any) (any, error) {
	if err := ac.timeoutsSupported(); err != nil {
		return nil, err
	}
	c, err := ac.start(cmd, args, false)
	if err != nil {
		return nil, err
	}
	reply, err := c.pc.cwt.DoWithTimeout(timeout, cmd, args...)
	c.settle(cmd, reply, err)
	ac.end(c, arrayError(cmd, reply, err), false)
	return reply, err
}

// timeoutsSupported fails, before anything is sent, a call that needs the
// pooled connection to implement redis.ConnWithTimeout when it does not.
func (ac *activeConn) timeoutsSupported() error {
	if ac.pc.cwt != nil {
		return nil
	}
	if _, err := ac.lock(); err != nil {
		return err
	}
	ac.pc.mu.Unlock()
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
	c, err := ac.start(cmd, args, false)
	if err != nil {
		return nil, err
	}
	reply, err := ac.withContext(ctx, c, func(timeout time.Duration) (any, error) {
		if c.pc.cwt != nil {
			return c.pc.cwt.DoWithTimeout(timeout, cmd, args...)
		}
		return c.pc.c.Do(cmd, args...)
	})
	c.settle(cmd, reply, err)
	ac.end(c, arrayError(cmd, reply, err), false)
	return reply, err
}

// withContext runs f with its read timeout shortened to ctx's deadline, and
// closes the connection if ctx is cancelled while f runs.
func (ac *activeConn) withContext(ctx context.Context, c call, f func(time.Duration) (any, error)) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	timeout := c.timeout
	dl, ctxDeadline := ctx.Deadline() // ctxDeadline: the read deadline is ctx's
	if ctxDeadline {
		left := time.Until(dl)
		if left <= 0 {
			return nil, context.DeadlineExceeded
		}
		if timeout != 0 && left >= timeout {
			ctxDeadline = false
		} else {
			timeout = left
		}
	}
	var stop func() bool
	if ctx.Done() != nil {
		stop = context.AfterFunc(ctx, func() { c.pc.c.Close() })
	}
	reply, err := f(timeout)
	if stop != nil && !stop() {
		// ctx ended and closed the connection. A reply read in full before
		// that is still the caller's: for BLPOP, the element has left the
		// list. Either way the connection is gone: later calls fail, and
		// Close discards it.
		ctxErr := ctx.Err()
		c.pc.mu.Lock()
		if c.pc.err == nil {
			c.pc.err = ctxErr
		}
		c.pc.mu.Unlock()
		if _, replied := err.(redis.Error); err == nil || replied {
			return reply, err
		}
		return nil, ctxErr
	}
	if _, replied := err.(redis.Error); err != nil && !replied {
		if ctxDeadline && errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(dl) {
			// The read deadline was ctx's and has passed, though ctx's own
			// timer may not have fired yet: it will at once. (A write
			// deadline that passed earlier is the error it is.)
			<-ctx.Done()
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	return reply, err
}

// Send queues a command; its reply is read by Receive, Do or Close.
func (ac *activeConn) Send(cmd string, args ...any) error {
	c, err := ac.start(cmd, args, true)
	if err != nil {
		return err
	}
	err = c.pc.c.Send(cmd, args...)
	ac.end(c, err, false)
	return err
}

// Flush writes the queued commands.
func (ac *activeConn) Flush() error {
	c, err := ac.begin(writes)
	if err != nil {
		return err
	}
	err = c.pc.c.Flush()
	ac.end(c, err, false)
	return err
}

// Receive reads one reply, waiting at most ReadTimeout (plus the timeouts of
// pending blocking commands). On a subscribed connection it waits for the next
// message without a deadline, as redigo's PubSubConn.Receive expects.
func (ac *activeConn) Receive() (any, error) {
	c, err := ac.begin(reads)
	if err != nil {
		return nil, err
	}
	var reply any
	if c.pc.cwt != nil {
		reply, err = c.pc.cwt.ReceiveWithTimeout(c.timeout)
	} else {
		reply, err = c.pc.c.Receive()
	}
	ac.end(c, err, true)
	return reply, err
}

// ReceiveWithTimeout is Receive with the read timeout given.
func (ac *activeConn) ReceiveWithTimeout(timeout time.Duration) (any, error) {
	if err := ac.timeoutsSupported(); err != nil {
		return nil, err
	}
	c, err := ac.begin(reads)
	if err != nil {
		return nil, err
	}
	reply, err := c.pc.cwt.ReceiveWithTimeout(timeout)
	ac.end(c, err, true)
	return reply, err
}

// ReceiveContext is Receive bounded also by ctx, as DoContext is.
func (ac *activeConn) ReceiveContext(ctx context.Context) (any, error) {
	if err := contextDone(ctx); err != nil {
		return nil, err
	}
	c, err := ac.begin(reads)
	if err != nil {
		return nil, err
	}
	reply, err := ac.withContext(ctx, c, func(timeout time.Duration) (any, error) {
		if c.pc.cwt != nil {
			return c.pc.cwt.ReceiveWithTimeout(timeout)
		}
		return c.pc.c.Receive()
	})
	ac.end(c, err, true)
	return reply, err
}

// Err returns a non-nil error when the conn is unusable: closed, broken by an
// earlier error, retired by a failover (ErrConnRetired), or reported unusable
// by the pooled connection.
func (ac *activeConn) Err() error {
	pc, err := ac.lock()
	if err != nil {
		return err
	}
	err = pc.usableLocked()
	pc.mu.Unlock()
	if err != nil {
		return err
	}
	return pc.c.Err()
}

// Close returns the connection to the pool if it is provably clean, and
// closes it otherwise. Replies still pending are read first, within
// ReadTimeout and at most one second; an open MULTI is discarded and WATCH
// undone. A connection the pool retired (see Pool.Retire) is closed without
// writing anything more to it: commands sent and not yet written are
// dropped, and Close returns ErrConnRetired when any reply was still
// pending. Close is idempotent; every other method fails after it.
func (ac *activeConn) Close() error {
	pc, err := ac.lock()
	if err != nil {
		return nil // closed already
	}
	pc.seq++ // every later call on ac fails
	leak := pc.leak
	if leak != nil {
		pc.leak = nil // no pointer write (and GC barrier) when LeakThreshold is off
	}
	p := pc.p
	// From here the pool owns pc: should the conn's own Err, Flush, Send
	// or DoWithTimeout panic before pc is put back or discarded, it is
	// discarded, so that its permit is not lost, and the panic goes on up
	// to the caller.
	owned := true
	defer func() {
		if owned {
			if r := recover(); r != nil {
				p.discard(pc, DiscardBroken, nil)
				panic(r)
			}
		}
	}()
	if pc.untouched(p.cfg.db) {
		// Nothing to undo: the common case, without copying the state.
		pc.mu.Unlock()
		if leak != nil {
			leak.timer.Stop()
		}
		if err := pc.c.Err(); err != nil {
			owned = false
			repanic(p.discard(pc, DiscardBroken, err))
			return nil
		}
		owned = false
		repanic(p.put(pc))
		return nil
	}
	st := pc.borrowState
	pc.borrowState = borrowState{db: p.cfg.db}
	pc.mu.Unlock()
	if leak != nil {
		leak.timer.Stop()
	}
	return p.release(pc, &st, &owned)
}

// release decides the fate of a connection given back by a borrower whose
// final bookkeeping is st. It clears *owned as it hands pc to put or
// discard (see Close).
func (p *Pool) release(pc *poolConn, st *borrowState, owned *bool) error {
	retired := pc.gen != p.gen.Load()
	switch {
	case st.err != nil, st.busy != 0, pc.c.Err() != nil:
		err := st.err
		if err == nil {
			err = pc.c.Err()
		}
		*owned = false
		repanic(p.discard(pc, DiscardBroken, err))
		return nil
	case st.state&(stateSubscribe|stateListen|stateTaint) != 0, st.db != p.cfg.db,
		st.pendingEver, st.pendingBlock > 0,
		pc.cwt == nil && (st.state != 0 || st.pending > 0): // no deadline to read with
		// Do not wait for replies that may not come in time or at all.
		err := flushLeft(pc, st, retired)
		*owned = false
		repanic(p.discard(pc, DiscardState, nil))
		return err
	case retired:
		err := flushLeft(pc, st, retired)
		*owned = false
		repanic(p.discard(pc, DiscardRetired, nil))
		return err
	}
	if st.state != 0 || st.pending > 0 {
		refused, err := p.drain(pc, st)
		if err != nil {
			*owned = false
			repanic(p.discard(pc, DiscardBroken, err))
			return err
		}
		if refused != nil {
			// The transaction may still be open, the keys still watched.
			*owned = false
			repanic(p.discard(pc, DiscardState, refused))
			return nil
		}
	}
	*owned = false
	repanic(p.put(pc))
	return nil
}

// flushLeft writes the commands the borrower sent and read no reply to, so
// that none is lost, unless the connection is retired: it may reach a master
// that a failover is about to lose writes on, so nothing more is written,
// and ErrConnRetired says the commands may not have reached the server.
func flushLeft(pc *poolConn, st *borrowState, retired bool) error {
	switch {
	case st.pending == 0:
		return nil
	case retired:
		return ErrConnRetired
	}
	return pc.c.Flush()
}

// drain undoes MULTI and WATCH and reads every pending reply within the
// drain timeout. refused is the error reply to its DISCARD or UNWATCH, or to
// an EXEC, DISCARD or UNWATCH the borrower sent with Send (see
// borrowState.undos), which the server may refuse (an ACL without them) and
// then has undone nothing.
func (p *Pool) drain(pc *poolConn, st *borrowState) (refused, err error) {
	undo := true
	switch {
	case st.state&stateMulti != 0:
		err = pc.c.Send("DISCARD")
	case st.state&stateWatch != 0:
		err = pc.c.Send("UNWATCH")
	default:
		undo = false
	}
	if err != nil {
		return nil, err
	}
	reply, err := pc.cwt.DoWithTimeout(p.cfg.drainTimeout, "")
	if err != nil {
		return nil, err
	}
	if refused := refusedAt(reply, st.sent-st.pending, st.undos); refused != nil || !undo {
		return refused, nil
	}
	if rs, _ := reply.([]any); len(rs) > 0 {
		return undoRefused(rs[len(rs)-1]), nil
	}
	return nil, nil
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
