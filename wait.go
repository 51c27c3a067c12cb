package redispool

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"
)

// Callers that find no idle connection and no permit wait in a queue, first
// come first served. A connection or permit given back while anyone waits goes
// straight to the first waiter, through that waiter's own channel, so a wait
// costs one channel receive and no timer of its own: one pool-wide timer fires
// at the first waiter's deadline, which is the earliest, since every waiter
// waits WaitTimeout.
//
// Giving back and queueing race: a token can be sent to a channel just as a
// caller that found the channels empty queues. Both sides close the gap the
// same way, in opposite orders: whoever gives back puts the token in its
// channel (or the hot slot), then looks at waiters; a caller queues, counts
// itself in waiters, then looks at the hot slot and the channels again
// (serveLocked). One of them sees the other: the hot slot and waiters are
// atomics; a channel send changes the channel's count under the channel's
// lock, released with one of the runtime's sequentially consistent atomics,
// and a non-blocking receive that finds the channel empty reads that count
// atomically. This rests on how the runtime implements channels (true on
// every port), not on a rule of the Go memory model;
// TestStressGiveBackRaceOversubscribed fails when either side's second look
// is left out.

// waiter is a caller parked in wait.
type waiter struct {
	next, prev *waiter
	queued     bool          // in p.waitq; protected by p.wmu
	deadline   time.Duration // see monotonic
	ch         chan grant    // capacity 1: the one grant this wait ends with
}

// grant ends a wait: a connection, an error, or, when both are nil, a permit
// to dial.
type grant struct {
	pc  *poolConn
	err error
}

// errWaitExpired is the grant of a waiter whose WaitTimeout passed.
var errWaitExpired = errors.New("redispool: wait expired")

var waiterPool = sync.Pool{New: func() any { return &waiter{ch: make(chan grant, 1)} }}

// waitList is a doubly linked FIFO of waiters.
type waitList struct{ head, tail *waiter }

func (l *waitList) pushBack(w *waiter) {
	w.prev, w.next, w.queued = l.tail, nil, true
	if l.tail == nil {
		l.head = w
	} else {
		l.tail.next = w
	}
	l.tail = w
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

// monotonic is the time since the pool's epoch on the real clock, which
// bounds waits even when a test moves the pool's clock.
func (p *Pool) monotonic() time.Duration {
	return time.Since(p.epochMono)
}

// wait waits until ctx ends, WaitTimeout passes or the pool closes, for an
// idle connection or, when it returns neither one nor an error, a permit.
// It is a Get's first wait, and sets *waitEnd (see waitLeft). end is the
// monotonic clock as the wait ended, or -1 when it did not read it.
func (p *Pool) wait(ctx context.Context, waitEnd *time.Duration) (_ *poolConn, end time.Duration, _ error) {
	if p.cfg.waitTimeout < 0 {
		return nil, -1, p.exhausted(fmt.Errorf("%w: all %d connections are in use and WaitTimeout is negative", ErrPoolExhausted, p.cfg.maxActive))
	}
	// A connection often comes back within a scheduling round: yield once
	// before queueing, unless others wait already, who would get it first.
	if p.waiters.Load() == 0 {
		runtime.Gosched()
		if pc := p.takeHot(); pc != nil {
			pc, err := p.granted(ctx, grant{pc: pc})
			return pc, -1, err
		}
		select {
		case pc := <-p.idle:
			pc, err := p.granted(ctx, grant{pc: pc})
			return pc, -1, err
		case <-p.permits:
			pc, err := p.granted(ctx, grant{})
			return pc, -1, err
		default:
		}
	}

	w := waiterPool.Get().(*waiter)
	p.wmu.Lock()
	if p.closed.Load() {
		p.wmu.Unlock()
		waiterPool.Put(w)
		return nil, -1, ErrPoolClosed
	}
	// Read under wmu, so that deadlines grow along the queue, which the
	// timer relies on.
	start := p.monotonic()
	w.deadline = start + p.cfg.waitTimeout
	*waitEnd = w.deadline
	p.waitq.pushBack(w)
	p.waiters.Add(1)
	if !p.timerArmed {
		p.timerArmed = true
		p.waitTimer.Reset(p.cfg.waitTimeout)
	}
	p.serveLocked()
	p.wmu.Unlock()
	p.waitCount.Add(1)

	var g grant
	if done := ctx.Done(); done == nil {
		g = <-w.ch
	} else {
		select {
		case g = <-w.ch:
		case <-done:
			p.wmu.Lock()
			queued := w.queued
			if queued {
				p.waitq.remove(w)
				p.waiters.Add(-1)
			}
			p.wmu.Unlock()
			if !queued {
				g = <-w.ch // granted as ctx ended: given back by granted
			} else {
				g = grant{err: ctx.Err()}
			}
		}
	}
	waiterPool.Put(w)
	end = p.monotonic()
	p.waitNanos.Add(int64(end - start))
	if g.err == errWaitExpired {
		if err := ctx.Err(); err != nil {
			return nil, -1, err // ctx ended first, as the caller gave up
		}
		return nil, -1, p.exhausted(fmt.Errorf("%w: all %d connections stayed in use for %v (WaitTimeout)", ErrPoolExhausted, p.cfg.maxActive, p.cfg.waitTimeout))
	}
	pc, err := p.granted(ctx, g)
	return pc, end, err
}

// granted returns what a wait ended with, giving a connection or permit back
// if ctx ended meanwhile: a caller that gave up must not get a connection.
func (p *Pool) granted(ctx context.Context, g grant) (*poolConn, error) {
	if g.err != nil {
		return nil, g.err
	}
	if err := ctx.Err(); err != nil {
		if g.pc != nil {
			p.put(g.pc)
		} else {
			p.releasePermit()
		}
		return nil, err
	}
	return g.pc, nil
}

// handToWaiter gives g to the first waiter, if there is one.
func (p *Pool) handToWaiter(g grant) bool {
	p.wmu.Lock()
	w := p.waitq.popFront()
	if w == nil {
		p.wmu.Unlock()
		return false
	}
	p.waiters.Add(-1)
	p.wmu.Unlock()
	w.ch <- g // never blocks: w.ch is empty until this grant
	return true
}

// serveLocked hands idle connections and permits to waiters, first come first
// served, while there are both. p.wmu is held.
func (p *Pool) serveLocked() {
	for p.waitq.head != nil {
		g := grant{pc: p.takeHot()}
		if g.pc == nil {
			select {
			case g.pc = <-p.idle:
			default:
				select {
				case <-p.permits:
				default:
					return
				}
			}
		}
		p.waitq.popFront().ch <- g
		p.waiters.Add(-1)
	}
}

// serve is serveLocked for callers not holding p.wmu: those that saw a waiter
// after giving a token back to its channel or the hot slot.
func (p *Pool) serve() {
	p.wmu.Lock()
	p.serveLocked()
	p.wmu.Unlock()
}

// releasePermit gives back the permit of a connection closed or never dialed.
func (p *Pool) releasePermit() {
	if p.waiters.Load() > 0 && p.handToWaiter(grant{}) {
		return
	}
	p.permits <- struct{}{} // never blocks: there is room for every permit
	if p.waiters.Load() > 0 {
		p.serve()
	}
}

// expireWaiters runs on the wait timer: it fails the waiters whose
// WaitTimeout has passed, first in line first, and sets the timer for the
// next one.
func (p *Pool) expireWaiters() {
	var expired *waiter // linked through next
	p.wmu.Lock()
	now := p.monotonic()
	for w := p.waitq.head; w != nil && w.deadline <= now; w = p.waitq.head {
		p.waitq.remove(w)
		p.waiters.Add(-1)
		w.next, expired = expired, w
	}
	if w := p.waitq.head; w != nil {
		p.waitTimer.Reset(w.deadline - now)
	} else {
		p.timerArmed = false
	}
	p.wmu.Unlock()
	sendAll(expired, grant{err: errWaitExpired})
}

// wakeAll fails every waiter with ErrPoolClosed.
func (p *Pool) wakeAll() {
	var all *waiter
	p.wmu.Lock()
	for w := p.waitq.popFront(); w != nil; w = p.waitq.popFront() {
		p.waiters.Add(-1)
		w.next, all = all, w
	}
	p.waitTimer.Stop()
	p.timerArmed = false
	p.wmu.Unlock()
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
