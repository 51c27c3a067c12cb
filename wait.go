package redispool

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Callers that find no idle connection and no dial ticket (a permit and a
// dial slot) wait in one queue, in the order of their deadlines, which is
// the order they came in: every caller waits WaitTimeout from its first
// wait. A waiter is granted whichever comes first: an idle connection, or
// a ticket to dial. A connection given back while anyone waits goes
// straight to the first waiter, through that waiter's own channel, so a
// wait costs one channel receive and no timer of its own: one pool-wide
// timer fires at the first waiter's deadline, which is the earliest.
//
// Giving back and queueing race: a token (connection, permit or dial slot)
// can be sent to its channel just as a caller that found the channels
// empty queues. Both sides close the gap the same way, in opposite orders:
// whoever gives back puts the token in its channel (or the hot slot), then
// looks at waiters; a caller queues, counts itself in waiters, then looks
// at the hot slot and the channels again (serveLocked). One of them sees the
// other: the hot slot and waiters are atomics; a channel send changes the
// channel's count under the channel's lock, released with one of the
// runtime's sequentially consistent atomics, and a non-blocking receive
// that finds the channel empty reads that count atomically. This rests on
// how the runtime implements channels (true on every port), not on a rule
// of the Go memory model; TestStressGiveBackRaceOversubscribed fails when
// either side's second look is left out.

// waitQueue is the callers waiting for a grant.
type waitQueue struct {
	mu      sync.Mutex   // protects list and armedAt
	list    waitList     // by deadline, first come first
	timer   *time.Timer  // calls Pool.expireWaiters
	armedAt time.Time    // the deadline timer is set for, at or before the first waiter's; zero when not set
	n       atomic.Int64 // waiters in list, read without mu
}

// waiter is a caller parked in wait.
type waiter struct {
	next, prev *waiter
	queued     bool       // in the list; protected by waitQueue.mu
	deadline   time.Time  // when WaitTimeout has passed
	ch         chan grant // capacity 1: the one grant this wait ends with
}

// grant ends a wait: a connection, an error, or, when both are nil, a
// ticket to dial: a permit and a dial slot.
type grant struct {
	pc  *poolConn
	err error
}

// errWaitExpired is the grant of a waiter whose WaitTimeout passed.
var errWaitExpired = errors.New("redispool: wait expired")

var waiterPool = sync.Pool{New: func() any { return &waiter{ch: make(chan grant, 1)} }}

// waitList is a doubly linked list of waiters, earliest deadline first.
type waitList struct{ head, tail *waiter }

// insert queues w after every waiter whose deadline is not later: a caller
// that queues again, after the connection it was granted turned out
// unusable, keeps its place by its first deadline.
func (l *waitList) insert(w *waiter) {
	after := l.tail
	for after != nil && after.deadline.After(w.deadline) {
		after = after.prev
	}
	w.prev, w.queued = after, true
	if after == nil {
		w.next, l.head = l.head, w
	} else {
		w.next, after.next = after.next, w
	}
	if w.next == nil {
		l.tail = w
	} else {
		w.next.prev = w
	}
}

func (l *waitList) remove(w *waiter) {
	if w.prev == nil {
		l.head = w.next
	} else {
		w.prev.next = w.next
	}
	if w.next == nil {
		l.tail = w.prev
	} else {
		w.next.prev = w.prev
	}
	w.prev, w.next, w.queued = nil, nil, false
}

func (l *waitList) popFront() *waiter {
	w := l.head
	if w != nil {
		l.remove(w)
	}
	return w
}

// wait waits, until ctx ends, the pool closes or *deadline passes, for an
// idle connection or, when it returns neither one nor an error, a dial
// ticket. *deadline is zero at a Get's first wait, which sets it.
func (p *Pool) wait(ctx context.Context, deadline *time.Time) (*poolConn, error) {
	if p.cfg.waitTimeout < 0 {
		return nil, p.exhausted(fmt.Sprintf("all %d connections are in use and WaitTimeout is negative", p.cfg.maxActive))
	}
	// A connection often comes back within a scheduling round: yield once
	// before queueing, unless others wait already, who would get it first.
	if p.q.n.Load() == 0 {
		runtime.Gosched()
		if pc := p.idle.takeAny(); pc != nil {
			return p.granted(ctx, grant{pc: pc})
		}
		if p.takeTicket() {
			return p.granted(ctx, grant{})
		}
	}

	w := waiterPool.Get().(*waiter)
	start := time.Now()
	if deadline.IsZero() {
		w.deadline = start.Add(p.cfg.waitTimeout) // first wait: see enqueue
	} else {
		w.deadline = *deadline
	}
	if !p.enqueue(w, deadline) {
		waiterPool.Put(w)
		return nil, ErrPoolClosed
	}
	g := p.await(ctx, w)
	waiterPool.Put(w)
	waited := time.Since(start)
	pc, err := p.waitEnded(ctx, g)
	p.stats.waited(waited, err == nil)
	return pc, err
}

// waitEnded returns what a wait in the queue ended with.
func (p *Pool) waitEnded(ctx context.Context, g grant) (*poolConn, error) {
	if g.err == errWaitExpired {
		if err := ctx.Err(); err != nil {
			return nil, err // ctx ended first, as the caller gave up
		}
		return nil, p.exhausted(fmt.Sprintf("all %d connections stayed in use for %v (WaitTimeout)", p.cfg.maxActive, p.cfg.waitTimeout))
	}
	return p.granted(ctx, g)
}

// enqueue puts w in the queue and serves the queue, unless the pool is
// closed. At a Get's first wait, *deadline is zero and w.deadline is the
// time it began plus WaitTimeout: w goes last, and its deadline is raised
// to the last waiter's should that one's be later (its clock was read
// later, but it got the lock first), so that deadlines grow along the
// queue in the order callers queue. *deadline is set then.
func (p *Pool) enqueue(w *waiter, deadline *time.Time) bool {
	q := &p.q
	q.mu.Lock()
	defer q.mu.Unlock()
	if p.closed.Load() {
		return false
	}
	if deadline.IsZero() {
		if t := q.list.tail; t != nil && t.deadline.After(w.deadline) {
			w.deadline = t.deadline
		}
		*deadline = w.deadline
	}
	q.list.insert(w)
	q.n.Add(1)
	if q.armedAt.IsZero() || w.deadline.Before(q.armedAt) {
		q.armedAt = w.deadline
		q.timer.Reset(time.Until(w.deadline))
	}
	p.serveLocked()
	return true
}

// await receives w's grant, or leaves the queue when ctx ends first.
func (p *Pool) await(ctx context.Context, w *waiter) grant {
	done := ctx.Done()
	if done == nil {
		return <-w.ch
	}
	select {
	case g := <-w.ch:
		return g
	case <-done:
	}
	p.q.mu.Lock()
	queued := w.queued
	if queued {
		p.q.list.remove(w)
		p.q.n.Add(-1)
	}
	p.q.mu.Unlock()
	if !queued {
		return <-w.ch // granted as ctx ended: given back by granted
	}
	return grant{err: ctx.Err()}
}

// granted returns what a wait ended with, giving a connection or ticket
// back if ctx ended meanwhile: a caller that gave up must not get a
// connection.
func (p *Pool) granted(ctx context.Context, g grant) (*poolConn, error) {
	if g.err != nil {
		return nil, g.err
	}
	if err := ctx.Err(); err != nil {
		if g.pc != nil {
			if perr := p.put(g.pc); perr != nil {
				return nil, perr // a panic of the conn's Close
			}
			return nil, err
		}
		p.releaseTicket()
		return nil, err
	}
	return g.pc, nil
}

// takeTicket takes a permit and a dial slot, or neither.
func (p *Pool) takeTicket() bool {
	select {
	case <-p.permits:
	default:
		return false
	}
	select {
	case <-p.slots:
		return true
	default:
		p.releasePermit() // a waiter may have missed it meanwhile
		return false
	}
}

// takeSlot takes a dial slot, if one is free.
func (p *Pool) takeSlot() bool {
	select {
	case <-p.slots:
		return true
	default:
		return false
	}
}

// takeTicketLocked is takeTicket for serveLocked, which serves the queue
// itself.
func (p *Pool) takeTicketLocked() bool {
	select {
	case <-p.permits:
	default:
		return false
	}
	select {
	case <-p.slots:
		return true
	default:
		p.permits <- struct{}{} // never blocks: there is room for every permit
		return false
	}
}

// handToWaiter gives pc to the first waiter, if there is one.
func (p *Pool) handToWaiter(pc *poolConn) bool {
	p.q.mu.Lock()
	w := p.q.list.popFront()
	if w == nil {
		p.q.mu.Unlock()
		return false
	}
	p.q.n.Add(-1)
	p.q.mu.Unlock()
	w.ch <- grant{pc: pc} // never blocks: w.ch is empty until this grant
	return true
}

// serveLocked hands idle connections and tickets to waiters, first come
// first served, while there are any. p.q.mu is held.
func (p *Pool) serveLocked() {
	for p.q.list.head != nil {
		g := grant{pc: p.idle.takeAny()}
		if g.pc == nil && !p.takeTicketLocked() {
			return
		}
		p.q.list.popFront().ch <- g
		p.q.n.Add(-1)
	}
}

// serve is serveLocked for callers that gave a token back to its channel
// or the hot slot, when they see a waiter.
func (p *Pool) serve() {
	if p.q.n.Load() == 0 {
		return
	}
	p.q.mu.Lock()
	p.serveLocked()
	p.q.mu.Unlock()
}

// releasePermit gives back the permit of a connection closed or never dialed.
func (p *Pool) releasePermit() {
	p.permits <- struct{}{} // never blocks: there is room for every permit
	p.serve()
}

// releaseSlot gives back the slot of a dial that ended.
func (p *Pool) releaseSlot() {
	p.slots <- struct{}{} // never blocks: there is room for every slot
	p.serve()
}

// releaseTicket gives back a ticket not used to dial.
func (p *Pool) releaseTicket() {
	p.slots <- struct{}{}
	p.releasePermit()
}

// expireWaiters runs on the wait timer: it fails the waiters whose
// WaitTimeout has passed, first in line first, and sets the timer for the
// next one.
func (p *Pool) expireWaiters() {
	var expired *waiter // linked through next
	q := &p.q
	q.mu.Lock()
	now := time.Now()
	for w := q.list.head; w != nil && !w.deadline.After(now); w = q.list.head {
		q.list.remove(w)
		q.n.Add(-1)
		w.next, expired = expired, w
	}
	q.armedAt = time.Time{}
	if w := q.list.head; w != nil {
		q.armedAt = w.deadline
		q.timer.Reset(w.deadline.Sub(now))
	}
	q.mu.Unlock()
	sendAll(expired, grant{err: errWaitExpired})
}

// wakeAll fails every waiter with ErrPoolClosed.
func (p *Pool) wakeAll() {
	var all *waiter
	q := &p.q
	q.mu.Lock()
	for w := q.list.popFront(); w != nil; w = q.list.popFront() {
		q.n.Add(-1)
		w.next, all = all, w
	}
	q.timer.Stop()
	q.armedAt = time.Time{}
	q.mu.Unlock()
	sendAll(all, grant{err: ErrPoolClosed})
}

// sendAll sends g to a list of waiters taken off the queue.
func sendAll(list *waiter, g grant) {
	for w := list; w != nil; {
		next := w.next // w is its waiter's again once it has g
		w.next = nil
		w.ch <- g
		w = next
	}
}

// tokens returns a channel holding n tokens.
func tokens(n int) chan struct{} {
	ch := make(chan struct{}, n)
	for range n {
		ch <- struct{}{}
	}
	return ch
}
