package redispool

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gomodule/redigo/redis"
)

// pipeLinger is how long a shared connection may go without a command
// before it goes back to the pool's idle set. It equals peekAfterIdle: a
// shared connection is used unchecked for no longer than an idle one is,
// and one idle longer passes Get's checks (idle timeout, lifetime, peek,
// TestOnBorrow) before it is shared again.
const pipeLinger = peekAfterIdle

// maxOutstanding bounds the commands a shared connection holds, queued,
// being written or waiting for their replies: a borrower that would add
// more waits until the reader has read some (see submit). Borrowers that
// send without waiting for replies (Send, then Close) cannot pile up
// commands faster than the server answers them.
const maxOutstanding = 4096

// errPipeGone is returned when a command found no shared connection that
// would take it, a few times in a row; it should not happen.
var errPipeGone = errors.New("redispool: no shared connection took the command")

// errDropped ends a command that was never written because its caller
// stopped waiting for it first; no one reads it.
var errDropped = errors.New("redispool: command dropped before it was written")

// errServerClosedPipe fails the commands on a shared connection after one
// got a reply after which the server closes the connection ("max number of
// clients reached", "Protocol error").
var errServerClosedPipe = errors.New("redispool: the server closed the shared connection after an error reply")

// autoPipes are the shared connections of a pool with AutoPipeline: a few
// slots, each empty or holding a pipe. A pipe that closes stays in its slot
// until a borrower finds it closed and puts a new one there.
type autoPipes struct {
	once  sync.Once
	next  atomic.Uint32
	slots []atomic.Pointer[pipe]
	mu    sync.Mutex // serializes putting pipes in slots, and Close
}

// pipeCount is how many shared connections a pool keeps: one per two
// processors, so that each has a core for its writer and reader, and at
// most half of MaxActive, so that borrowers that need a connection of
// their own still find one.
func pipeCount(maxActive int) int {
	return max(1, min(runtime.GOMAXPROCS(0)/2, maxActive/2))
}

// pick returns an open pipe, starting one in the next slot if that slot has
// none open.
func (a *autoPipes) pick(p *Pool) (*pipe, error) {
	a.init(p)
	i := int(a.next.Add(1)) % len(a.slots)
	if pp := a.slots[i].Load(); pp != nil && pp.open() {
		return pp, nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if p.closed.Load() {
		return nil, ErrPoolClosed
	}
	old := a.slots[i].Load()
	if old != nil && old.open() {
		return old, nil
	}
	if old != nil {
		old.close() // retired: it finishes what it has and leaves
	}
	pp := newPipe(p)
	a.slots[i].Store(pp)
	go pp.run()
	return pp, nil
}

func (a *autoPipes) init(p *Pool) {
	a.once.Do(func() { a.slots = make([]atomic.Pointer[pipe], pipeCount(p.cfg.maxActive)) })
}

// close makes every pipe finish the commands it has and give its
// connection back: called by Pool.Close and Pool.Retire.
func (a *autoPipes) close(p *Pool) {
	a.init(p)
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := range a.slots {
		if pp := a.slots[i].Load(); pp != nil {
			pp.close()
		}
	}
}

// req is one command written on a shared connection, and its reply once
// read. done is closed when reply and err are set.
type req struct {
	cmd   string
	args  []any
	reply any
	err   error
	done  chan struct{}
	// dropped is set when the caller stopped waiting for the reply: a
	// command not yet written then never is.
	dropped atomic.Bool
	// unsent is set, before done is closed, when the command failed
	// without being written: it provably did not run.
	unsent bool
}

func newReq(cmd string, args []any) *req {
	return &req{cmd: cmd, args: args, done: make(chan struct{})}
}

// finish hands the reply to whoever waits for it, if anyone still does.
func (r *req) finish(reply any, err error) {
	r.reply, r.err = reply, err
	close(r.done)
}

// handed reports whether r's reply, or error, was handed over.
func (r *req) handed() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

func finishAll(rs []*req, err error) {
	for _, r := range rs {
		r.finish(nil, err)
	}
}

// finishUnsent fails rs, none of which was written, with err.
func finishUnsent(rs []*req, err error) {
	for _, r := range rs {
		r.unsent = true
		r.finish(nil, err)
	}
}

// readerRole says who reads a pipe's replies: the reader goroutine, a
// batch at a time, or a borrower that found the pipe idle and makes its own
// round trip (see roundTrip).
type readerRole uint8

const (
	readerNone readerRole = iota
	readerGoroutine
	readerDirect
)

// The states of a pipe: it takes commands only while open.
const (
	pipeOpen    int32 = iota
	pipeClosing       // finishing what it has: retired, lingered, or the pool closed
	pipeBroken        // failed: every command it had failed with its err
)

// pipe is one shared connection. Borrowers queue commands; one goroutine
// at a time, the writer, writes the queue and flushes; a reader goroutine
// reads the replies, in the order the commands were written, and hands
// each to its req. redigo allows one writer and one reader at once.
//
// A reply that does not come within ReadTimeout, or any read or write
// error, breaks the pipe: its connection is closed at once, every command
// it has fails with the error, and nothing is read from it again. A
// borrower that stops waiting leaves its req behind: its reply is read and
// dropped.
type pipe struct {
	p      *Pool
	gen    uint64 // the pool's generation when the pipe started: see open
	state  atomic.Int32
	notify chan struct{} // wakes the reader: inflight grew, or the state changed
	wake   chan struct{} // hands the writer role to the writer goroutine
	done   chan struct{} // closed when the reader leaves

	mu       sync.Mutex // protects the fields below; held across no I/O
	pc       *poolConn  // nil until the connection is taken from the pool
	err      error      // why the pipe broke
	queue    []*req     // commands queued, not yet taken by a writer
	inflight []*req     // commands flushed, replies not yet taken by the reader
	writing  bool       // a goroutine holds the writer role
	reader   readerRole // who reads replies now
	used     bool       // a round trip ran since the last linger check
	// outstanding counts the commands submitted whose replies the reader
	// has not yet read; room, when not nil, is closed once it is below
	// maxOutstanding or the pipe takes no more commands.
	outstanding int
	room        chan struct{}

	// Used by the writer role's holder only: its batch, and the command of
	// a round trip.
	wbuf []*req
	one  req
}

func newPipe(p *Pool) *pipe {
	return &pipe{
		p:      p,
		gen:    p.gen.Load(),
		notify: make(chan struct{}, 1),
		wake:   make(chan struct{}, 1),
		done:   make(chan struct{}),
		// The connection is not there yet: the writer role waits for it
		// (see run).
		writing: true,
	}
}

// open reports whether the pipe takes commands: it has not closed, and it
// was started before the pool last retired its connections.
func (pp *pipe) open() bool {
	return pp.state.Load() == pipeOpen && pp.gen == pp.p.gen.Load()
}

// close makes the pipe finish the commands it has and give its connection
// back.
func (pp *pipe) close() {
	pp.mu.Lock()
	if pp.state.Load() == pipeOpen {
		pp.state.Store(pipeClosing)
	}
	pp.roomLocked()
	pp.mu.Unlock()
	signal(pp.notify)
}

// roomLocked wakes the borrowers waiting to submit, when there is room or
// the pipe takes no more commands.
func (pp *pipe) roomLocked() {
	if pp.room != nil && (pp.outstanding < maxOutstanding || pp.state.Load() != pipeOpen) {
		close(pp.room)
		pp.room = nil
	}
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// submit queues rs, in order, and writes them unless another goroutine
// holds the writer role, which then writes them. While the pipe holds
// maxOutstanding commands, it first waits for the reader to read some, or
// for ctx to end, which it returns. It returns false, and queues nothing,
// when the pipe takes no more commands.
func (pp *pipe) submit(ctx context.Context, rs []*req) (bool, error) {
	pp.mu.Lock()
	for pp.outstanding >= maxOutstanding && pp.state.Load() == pipeOpen {
		if pp.room == nil {
			pp.room = make(chan struct{})
		}
		room := pp.room
		pp.mu.Unlock()
		select {
		case <-room:
		case <-ctx.Done():
			return false, ctx.Err()
		}
		pp.mu.Lock()
	}
	if pp.state.Load() != pipeOpen {
		pp.mu.Unlock()
		return false, nil
	}
	pp.queue = append(pp.queue, rs...)
	pp.outstanding += len(rs)
	if pp.writing {
		pp.mu.Unlock()
		return true, nil
	}
	pp.writing = true
	pp.mu.Unlock()
	signal(pp.wake)
	return true, nil
}

// write holds the writer role: it writes and flushes the queue until it is
// empty, then gives the role up. After rounds batches (when rounds >= 0) it
// hands the role to the writer goroutine instead, so that a borrower writes
// its own command and does not stay to write everyone's.
func (pp *pipe) write(rounds int) {
	for i := 0; ; i++ {
		pp.mu.Lock()
		if len(pp.queue) == 0 || pp.err != nil {
			pp.writing = false
			closing := pp.state.Load() != pipeOpen
			pp.mu.Unlock()
			if closing {
				signal(pp.notify) // the reader may be waiting for the writer to finish
			}
			return
		}
		if i == rounds {
			pp.mu.Unlock()
			signal(pp.wake)
			return
		}
		pp.takeQueueLocked()
		pc := pp.pc
		pp.mu.Unlock()
		if len(pp.wbuf) == 0 {
			continue
		}
		if err := pp.send(pc, pp.wbuf); err != nil {
			pp.fail(err)
		}
		pp.written(pp.wbuf)
		clear(pp.wbuf)
	}
}

// takeQueueLocked moves the queue to the writer's batch, wbuf, but for the
// commands whose callers stopped waiting: those are never written.
func (pp *pipe) takeQueueLocked() {
	pp.wbuf = pp.wbuf[:0]
	for _, r := range pp.queue {
		if r.dropped.Load() {
			r.finish(nil, errDropped)
			pp.outstanding--
		} else {
			pp.wbuf = append(pp.wbuf, r)
		}
	}
	clear(pp.queue)
	pp.queue = pp.queue[:0]
	pp.roomLocked()
}

// written hands a batch just flushed to the reader: only then, so that
// ReadTimeout bounds the wait for a reply from when its command was
// written, however long a large batch took to write. When the pipe broke
// meanwhile, the batch fails with its error instead.
func (pp *pipe) written(batch []*req) {
	pp.mu.Lock()
	err := pp.err
	if err == nil {
		pp.inflight = append(pp.inflight, batch...)
	}
	pp.mu.Unlock()
	if err != nil {
		finishAll(batch, err)
		return
	}
	signal(pp.notify)
}

// send writes a batch and flushes it. The conn may be the user's: a panic
// of its methods breaks the pipe, as an error does.
func (pp *pipe) send(pc *poolConn, batch []*req) (err error) {
	pp.p.stats.batches.Add(1)
	pp.p.stats.batched.Add(int64(len(batch)))
	if perr := guard(func() {
		for _, r := range batch {
			if err = pc.c.Send(r.cmd, r.args...); err != nil {
				break
			}
		}
		if err == nil {
			err = pc.c.Flush()
		}
		if cerr := pc.c.Err(); err != nil && cerr != nil {
			// A read that failed first closed the conn under the write
			// (redigo's conns do): its error is the cause.
			err = cerr
		}
	}); perr != nil {
		return perr
	}
	return err
}

// writer is the goroutine the writer role is handed to (see write).
func (pp *pipe) writer() {
	for {
		select {
		case <-pp.wake:
			runtime.Gosched()
			pp.write(-1)
		case <-pp.done:
			return
		}
	}
}

// fail breaks the pipe with err: its connection is closed, which stops a
// read or write in progress, and every command queued or in flight fails
// with err. A batch the writer is writing meanwhile fails by the writer's
// hand (see written).
func (pp *pipe) fail(err error) {
	pp.mu.Lock()
	if pp.err != nil {
		pp.mu.Unlock()
		return
	}
	pp.err = err
	pp.state.Store(pipeBroken)
	pp.roomLocked()
	queued, inflight := pp.queue, pp.inflight
	pp.queue, pp.inflight = nil, nil
	pc := pp.pc
	pp.mu.Unlock()
	if pc != nil {
		_ = guard(func() { pc.c.Close() })
	}
	finishUnsent(queued, err)
	finishAll(inflight, err)
	signal(pp.notify)
}

// run takes the pipe's connection from the pool, starts the writer, and
// reads replies until the pipe breaks or closes; then it gives the
// connection back, or discards it when the pipe broke.
func (pp *pipe) run() {
	pc, err := pp.p.get(context.Background())
	if err != nil {
		pp.fail(err)
		close(pp.done)
		return
	}
	pp.mu.Lock()
	pp.pc = pc
	pp.mu.Unlock()
	go pp.writer()
	signal(pp.wake) // the writer role, held since newPipe, goes to the writer
	pp.read(pc)
	close(pp.done)
	if err := pp.brokenErr(); err != nil {
		if pp.p.Sentinel != nil && closedByServer(err) {
			pp.p.failover(pc.addr)
		}
		_ = pp.p.discard(pc, DiscardBroken, err)
		return
	}
	_ = pp.p.put(pc) // every reply read: clean
}

func (pp *pipe) brokenErr() error {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	return pp.err
}

// read reads the replies of the commands in flight, in order, until the
// pipe breaks, or it is closing and has nothing left, or it lingered idle
// for pipeLinger and closes.
func (pp *pipe) read(pc *poolConn) {
	var batch []*req
	linger := time.NewTimer(pipeLinger)
	defer linger.Stop()
	for {
		var leave bool
		batch, leave = pp.take(batch)
		switch {
		case leave:
			return
		case len(batch) > 0:
			if perr := guard(func() { pp.readBatch(pc, batch) }); perr != nil {
				pp.failBatch(batch, perr)
			}
			clear(batch)
			continue
		}
		linger.Reset(pipeLinger)
		select {
		case <-pp.notify:
		case <-linger.C:
			pp.linger()
		}
		linger.Stop()
	}
}

// failBatch breaks the pipe with err, which a read of batch panicked with.
// The batch is neither queued nor in flight, so fail does not reach it:
// its commands not yet answered fail here.
func (pp *pipe) failBatch(batch []*req, err error) {
	pp.fail(err)
	for _, r := range batch {
		if !r.handed() {
			r.finish(nil, pp.brokenErr())
		}
	}
}

// take moves the commands in flight to batch, or reports that the reader
// is to leave: the pipe broke, or it is closing and has nothing left.
// While a borrower makes its own round trip, the reader waits for it.
func (pp *pipe) take(batch []*req) ([]*req, bool) {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if pp.reader == readerGoroutine {
		pp.reader = readerNone // the last batch is read
		pp.outstanding -= len(batch)
		pp.roomLocked()
	}
	switch {
	case pp.err != nil:
		return batch[:0], true
	case pp.reader == readerDirect:
		return batch[:0], false
	case len(pp.inflight) > 0:
		pp.reader = readerGoroutine
		batch = append(batch[:0], pp.inflight...)
		clear(pp.inflight)
		pp.inflight = pp.inflight[:0]
		return batch, false
	}
	return batch[:0], pp.state.Load() == pipeClosing && !pp.writing && len(pp.queue) == 0
}

// roundTrip writes a command and reads its reply itself, as a connection
// of one's own would, when the pipe is idle: nothing queued, written or
// being read. It saves the hand-offs to and from the reader, and the
// command's req, when one borrower is alone. Commands queued meanwhile are
// written after it, and read by the reader once its reply is in. It
// reports done false, having done nothing, when the pipe is not idle.
func (pp *pipe) roundTrip(cmd string, args []any) (reply any, done bool, err error) {
	pp.mu.Lock()
	if pp.state.Load() != pipeOpen || pp.writing || pp.reader != readerNone ||
		len(pp.inflight) > 0 || len(pp.queue) > 0 {
		pp.mu.Unlock()
		return nil, false, nil
	}
	pp.writing, pp.reader, pp.used = true, readerDirect, true
	pc := pp.pc
	pp.mu.Unlock()
	pp.one = req{cmd: cmd, args: args} // the writer role's, as wbuf is
	pp.wbuf = append(pp.wbuf[:0], &pp.one)
	broke := pp.send(pc, pp.wbuf)
	pp.wbuf[0], pp.one = nil, req{}
	pp.write(0) // gives the writer role up, or hands it on
	if broke == nil {
		if perr := guard(func() { reply, err, broke = pp.receive(pc) }); perr != nil {
			broke = perr
		}
	}
	if broke != nil {
		pp.fail(broke)
		if err == nil {
			reply, err = nil, pp.brokenErr() // the first error, not the closed conn's
		}
	}
	pp.mu.Lock()
	pp.reader = readerNone
	wake := len(pp.inflight) > 0 || pp.state.Load() != pipeOpen
	pp.mu.Unlock()
	if wake {
		signal(pp.notify)
	}
	return reply, true, err
}

// linger closes a pipe that has had nothing to do for pipeLinger: no
// batch, and no round trip (see used).
func (pp *pipe) linger() {
	pp.mu.Lock()
	used := pp.used
	pp.used = false
	if !used && !pp.writing && pp.reader == readerNone && len(pp.queue) == 0 && len(pp.inflight) == 0 && pp.state.Load() == pipeOpen {
		pp.state.Store(pipeClosing)
	}
	pp.mu.Unlock()
}

// readBatch reads the reply of each command in batch. The first read that
// fails with anything but an error reply breaks the pipe: that command and
// those after it fail with the error.
func (pp *pipe) readBatch(pc *poolConn, batch []*req) {
	for i, r := range batch {
		if pp.state.Load() == pipeBroken {
			// Broken by the writer: replies may still be buffered, but
			// nothing more is handed out.
			finishAll(batch[i:], pp.brokenErr())
			return
		}
		if err := pp.readOne(pc, r); err != nil {
			pp.fail(err)
			if !r.handed() {
				finishAll(batch[i:i+1], pp.brokenErr())
			}
			finishAll(batch[i+1:], pp.brokenErr())
			return
		}
	}
}

// readOne reads r's reply and hands it over. It returns the error that
// breaks the pipe, if any: then r is left to fail with the pipe's error
// (the first that broke it), unless it got the error reply after which
// the server closes the connection.
func (pp *pipe) readOne(pc *poolConn, r *req) error {
	reply, err, broke := pp.receive(pc)
	if broke == nil || err != nil {
		r.finish(reply, err)
	}
	return broke
}

// receive reads one reply: the reply and its error reply, if any, and the
// error that breaks the pipe, if any. With one, the reply is nil, and err
// is the error reply after which the server closes the connection, or nil.
func (pp *pipe) receive(pc *poolConn) (reply any, err, broke error) {
	reply, err = pc.receive(pp.p.cfg.readTimeout)
	if pc.unconfirmed {
		pp.confirm(pc, err)
	}
	rerr, replied := err.(redis.Error)
	switch {
	case err != nil && !replied:
		return nil, nil, err
	case replied && closesConn(rerr):
		return nil, err, fmt.Errorf("%w: %s", errServerClosedPipe, string(rerr))
	case replied && isReadOnly(rerr):
		pp.p.failover(pc.addr) // retires this pipe too (see open)
	}
	return reply, err, nil
}

// confirm reports the first reply on a connection from a Dial of the
// user's (see Pool.confirmDial).
func (pp *pipe) confirm(pc *poolConn, err error) {
	pc.mu.Lock()
	first := pc.confirmLocked()
	pc.mu.Unlock()
	if first {
		pp.p.confirmDial(err)
	}
}
