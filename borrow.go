package redispool

import (
	"errors"
	"io"
	"math"
	"strings"
	"syscall"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/redispool/redispool/internal/command"
)

// errNoUndoReply stands for the reply to a command that undoes state (EXEC,
// DISCARD, UNWATCH or READWRITE sent with Send, or an undo of Close's own)
// when it is not where the pool expects it: nothing says it ran.
var errNoUndoReply = errors.New("redispool: no reply to a command that undoes state")

// connState is what a borrower did to a connection that the next one must not
// inherit.
type connState uint16

const (
	stateWatch     connState = 1 << iota // WATCH without EXEC, DISCARD or UNWATCH
	stateMulti                           // MULTI without EXEC or DISCARD
	stateSubscribe                       // subscribed at some point
	stateChannels                        // subscribed to channels now
	stateShards                          // subscribed to shard channels now
	statePatterns                        // subscribed to patterns now
	stateMonitor                         // MONITOR: every command the server runs arrives
	stateTaint                           // anything else that cannot be undone
	stateReadOnly                        // READONLY without READWRITE
	stateAsking                          // ASKING with no command sent after it

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

// borrowState is what a borrower did to a connection.
type borrowState struct {
	state        connState
	db           int           // the database the connection is in; -1 when unknown
	pending      int           // commands sent whose replies were not read (see activeConn.lock)
	pendingBlock time.Duration // the longest pending blocking commands may wait at the server
	pendingEver  bool          // a pending command may block forever
	err          error         // the first error that was not a redis.Error
	// sent numbers the commands sent: the next reply to read is that of
	// command number sent-pending. Only differences count: while undos is
	// empty, a call that claims the conn without the lock moves pending
	// alone (see activeConn.claim).
	sent int
	// undos are the numbers (see sent) of the pending replies to EXEC,
	// DISCARD, UNWATCH and READWRITE commands sent with Send. The state they
	// undo was cleared when they were sent (see apply); each reply must say
	// that the server ran its command, or the connection is not kept.
	undos []int
}

// untouched reports whether the borrower left nothing to read or undo and
// nothing that breaks the connection. With no reply pending, undos is empty
// and no blocking command is pending.
func (s *borrowState) untouched(db int) bool {
	return s.state == 0 && s.db == db && s.pending == 0 && s.err == nil
}

// fullLocked reports whether the bookkeeping holds more than the count of
// pending replies: then every call takes pc.mu (see activeConn.claim).
func (pc *poolConn) fullLocked() bool {
	return pc.state != 0 || pc.db != pc.p.cfg.db || pc.err != nil || len(pc.undos) > 0 ||
		pc.pendingBlock != 0 || pc.pendingEver
}

// wordBitsLocked is what activeConn.word keeps of the bookkeeping beside
// the count of pending replies: wordFull and wordUnconfirmed.
func (pc *poolConn) wordBitsLocked() uint64 {
	var bits uint64
	if pc.fullLocked() {
		bits |= wordFull
	}
	if pc.unconfirmed {
		bits |= wordUnconfirmed
	}
	return bits
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
	// undoes is the state a Do of EXEC, DISCARD, UNWATCH or READWRITE
	// undoes once its reply says the server ran it (see settle).
	undoes connState
	// undo is set for a Receive of the reply to an EXEC, DISCARD, UNWATCH
	// or READWRITE sent with Send (see takeReplyLocked).
	undo bool
	// confirm is set for the first call that reads on a connection from a
	// Dial of the user's (see confirmLocked).
	confirm bool
	// For a Do, the pending replies it reads: the first's number and the
	// undos among them (see borrowState).
	first int
	undos []int
}

// start records in c, a zero call, that a command (or, with cmd "", a
// flush and read of the pending replies) is about to run, and computes its
// read timeout. send is true for Send, which queues a reply instead of
// reading one.
func (ac *activeConn) start(c *call, cmd string, args []any, send bool) error {
	c.pc, c.uses, c.timeout = ac.pc, reads|writes, ac.pc.p.cfg.readTimeout
	if send {
		c.uses = writes
	}
	if command.Inert(cmd) && ac.claim(c.uses, send) {
		// A command with no effect, on a borrow that kept nothing else: no
		// blocking command pending, no first reply to confirm.
		return nil
	}
	return ac.startLocked(c, cmd, command.Classify(cmd, args), send)
}

// startLocked is start for a command of info, or on a borrow that kept more
// than its count of pending replies: under the bookkeeping's lock.
func (ac *activeConn) startLocked(c *call, cmd string, info command.Info, send bool) error {
	pc, err := ac.lock()
	if err != nil {
		return err
	}
	defer ac.unlock()
	if err := ac.claimLocked(c.uses); err != nil {
		return err
	}
	c.confirm = !send && pc.confirmLocked()
	pc.useAsking(cmd, info)
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
	return nil
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
func (ac *activeConn) claimLocked(u uses) error {
	pc := ac.pc
	if err := pc.usableLocked(); err != nil {
		return err
	}
	// While the bookkeeping is locked, calls end, and none begins.
	if uses(ac.word.Load())&u != 0 {
		pc.err = ErrConcurrentUse
		return ErrConcurrentUse
	}
	ac.word.Or(uint64(u))
	return nil
}

// usableLocked reports why the connection cannot take a call: it is broken,
// or retired by Retire or, with Sentinel, reaches a master the sentinels
// have replaced.
func (pc *poolConn) usableLocked() error {
	switch {
	case pc.err != nil:
		return pc.err
	case pc.retired():
		// The old master may still accept writes for a while, which the
		// failover then loses: fail instead.
		return ErrConnRetired
	}
	return nil
}

// retired reports whether the connection was dialed before a Retire or,
// with Sentinel, reaches a master the sentinels have replaced.
func (pc *poolConn) retired() bool {
	return pc.gen < pc.p.cut.Load() || pc.p.Sentinel != nil && pc.gen != pc.p.gen.Load()
}

// apply records a command's effect on the connection's state when it is
// sent. Effects that would make the connection look cleaner apply only where
// the server is sure to carry them out at once: inside MULTI, commands are
// only queued, and EXEC or DISCARD without MULTI are errors that change
// nothing.
//
// A SELECT takes effect only if the server runs it: the database is unknown
// until its reply says so. apply reports whether the caller, a Do, is to set
// it from the reply (see end). An EXEC, DISCARD, UNWATCH or READWRITE can be
// refused (an ACL without it) and then undoes nothing; apply returns the state
// it undoes. For a Do, that state is cleared once its reply says it ran (see
// settle). Sent with Send, it is cleared now, so that the commands sent after
// it count as the server runs them if it ran; its reply, read later, must say
// it did, or the connection is tainted (see borrowState.undos). A SELECT sent
// with Send leaves the database unknown.
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
	case e&(command.Subscribe|command.UnsubscribeAll|command.Monitor) != 0:
		pc.applyListen(info)
	case e&command.Taint != 0:
		pc.state |= stateTaint
	case e&(command.ReadOnly|command.ReadWrite|command.Asking) != 0:
		undoes = pc.applyCluster(e, inMulti)
	case e&command.Select != 0:
		return pc.applySelect(info.DB, inMulti || send), 0
	}
	if send {
		pc.state &^= undoes
	}
	return false, undoes
}

// applyListen records a command that makes the server push messages to
// the connection, SUBSCRIBE and its kinds or MONITOR, or an UNSUBSCRIBE of
// every subscription of a kind.
func (pc *poolConn) applyListen(info command.Info) {
	switch e := info.Effects; {
	case e&command.Subscribe != 0:
		pc.state |= stateSubscribe | subscribed[info.PubSub]
	case e&command.UnsubscribeAll != 0:
		// The confirmations are still replies to read, within ReadTimeout,
		// once no kind of subscription is left.
		pc.state &^= subscribed[info.PubSub]
	default:
		pc.state |= stateMonitor | stateTaint
	}
}

// applyCluster records a READONLY or an ASKING, and returns the READONLY
// state a READWRITE undoes: none inside MULTI, where it is only queued.
func (pc *poolConn) applyCluster(e command.Effect, inMulti bool) (undoes connState) {
	switch {
	case e&command.ReadOnly != 0:
		pc.state |= stateReadOnly
	case e&command.Asking != 0:
		pc.state |= stateAsking
	case !inMulti:
		return pc.state & stateReadOnly
	}
	return 0
}

// useAsking clears ASKING when a command other than ASKING is sent after
// it. The server clears it once it has run that command or, in MULTI, at
// the EXEC or DISCARD that ends it, which Close sends for an open MULTI;
// Close reads the command's reply before it keeps the connection.
func (pc *poolConn) useAsking(cmd string, info command.Info) {
	if cmd != "" && !info.Has(command.Asking) {
		pc.state &^= stateAsking
	}
}

// applySelect records a SELECT of db. Unless the database stays the same
// whether it runs or fails, it becomes unknown: for good when the SELECT is
// queued in MULTI or its reply read later if at all (later, whether it ran
// depends on EXEC or on a reply the pool does not look at); otherwise until
// its reply says the server ran it, which applySelect reports the caller,
// a Do, is to look at.
func (pc *poolConn) applySelect(db int, queued bool) bool {
	if db == pc.db {
		return false
	}
	pc.db = -1
	return !queued && db >= 0
}

// settle looks at the replies a Do of cmd read for the EXEC, DISCARD, UNWATCH
// and READWRITE among their commands. Its own (c.undoes) clears the state once
// its reply, reply, says the server ran it: a refused one leaves the
// transaction open or the keys watched. The state of those sent with Send
// before it (c.undos) was cleared when they were sent: if a reply says one did
// not run, or cannot say (redigo returns, along with the reply to a command,
// only the first error among the replies read before it), the connection is
// tainted.
func (ac *activeConn) settle(c *call, cmd string, reply any, err error) {
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
	pc, lerr := ac.lock()
	if lerr != nil {
		return // closed meanwhile: a call was in progress, so pc is discarded
	}
	pc.state &^= undone
	if taint {
		pc.state |= stateTaint
	}
	ac.unlock()
}

// undoRefused returns the reply to a command that undoes state if it says the
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
func (ac *activeConn) begin(c *call, u uses) error {
	c.pc, c.uses, c.timeout = ac.pc, u, ac.pc.p.cfg.readTimeout
	if ac.claim(u, false) {
		return nil
	}
	pc, err := ac.lock()
	if err != nil {
		return err
	}
	defer ac.unlock()
	if err := ac.claimLocked(u); err != nil {
		return err
	}
	if c.timeout > 0 {
		switch {
		case pc.state&stateListen != 0, pc.pendingEver:
			c.timeout = 0
		default:
			c.timeout += pc.pendingBlock
		}
	}
	if u == reads && pc.pending > 0 {
		c.undo = pc.takeReplyLocked()
	}
	c.confirm = u == reads && pc.confirmLocked()
	return nil
}

// end records the outcome of a call. Any error but a redis.Error means the
// connection may hold a late reply or half a command: it is broken, every
// later call fails with the same error, and Close discards it.
//
// A READONLY error reply means the server became a replica: the connection is
// not kept, and every connection dialed before it is retired. With Sentinel,
// so does a connection closed by the server, as happens during a failover.
func (ac *activeConn) end(c *call, err error) {
	if err == nil && !c.selects && !c.undo && !c.confirm {
		ac.word.And(^uint64(c.uses)) // nothing else to record
		return
	}
	ac.finish(c, err)
}

// finish is end for a call that has more to record than its end.
func (ac *activeConn) finish(c *call, err error) {
	pc := c.pc
	rerr, replied := err.(redis.Error)
	readOnly := replied && isReadOnly(rerr)
	if _, lerr := ac.lock(); lerr == nil {
		pc.recordLocked(c, err)
		ac.word.And(^uint64(c.uses))
		ac.unlock()
	}
	if c.confirm {
		pc.p.confirmDial(err)
	}
	if readOnly || (pc.p.Sentinel != nil && err != nil && !replied && closedByServer(err)) {
		pc.p.failover(pc.addr)
	}
}

// recordLocked keeps the outcome of call c.
func (pc *poolConn) recordLocked(c *call, err error) {
	if c.selects && err == nil {
		pc.db = c.selectDB
	}
	rerr, replied := err.(redis.Error)
	if err != nil {
		pc.failedLocked(err, rerr, replied)
	}
	if c.undo && undoRefused(err) != nil {
		pc.state |= stateTaint
	}
	if replied && isReadOnly(rerr) {
		pc.state |= stateTaint
	}
}

// confirmLocked reports whether the call about to read is the first on a
// connection from a Dial of the user's, whose reply tells whether the
// dial succeeded (see Pool.confirmDial).
func (pc *poolConn) confirmLocked() bool {
	if !pc.unconfirmed {
		return false
	}
	pc.unconfirmed = false
	return true
}

// failedLocked records a call's error: any but a redis.Error, or an error
// reply after which the server closes the connection, breaks it.
func (pc *poolConn) failedLocked(err error, rerr redis.Error, replied bool) {
	if pc.err == nil && (!replied || closesConn(rerr)) {
		pc.err = err
	}
}

// takeReplyLocked counts the next pending reply as read by the Receive about
// to run, and reports whether it answers an EXEC, DISCARD, UNWATCH or
// READWRITE sent with Send: that reply must say the command ran, or the
// connection is tainted (see end). Should the Receive get no reply, the
// connection is broken, and the count no longer matters.
func (pc *poolConn) takeReplyLocked() (undo bool) {
	if len(pc.undos) > 0 && pc.undos[0] == pc.sent-pc.pending {
		pc.undos = pc.undos[1:]
		undo = true
	}
	pc.pending--
	if pc.pending == 0 {
		pc.pendingBlock, pc.pendingEver = 0, false
		pc.sent, pc.undos = 0, nil
	}
	return undo
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
