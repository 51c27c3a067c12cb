package redispool

import (
	"math"
	"sync/atomic"
	"time"
)

// idleSet holds the idle connections: one in a hot slot, which Get takes
// first and put fills when it is empty, so that a caller alone reuses one
// connection with an atomic swap each way; the others in a channel, longest
// idle first. Its methods are safe for concurrent use.
type idleSet struct {
	_   [64]byte // keep hot off the cache line of the Pool's fields before it, wherever they end
	hot atomic.Pointer[poolConn]
	ch  chan *poolConn // room for MaxIdle-1: the hot slot holds the last
	_   [64]byte       // hot is written on every Get and Close: keep the fields below off its cache line

	// Idle connections are reused in turn, so a trickle of Gets would keep
	// every one of them from ever reaching IdleTimeout, and the pool would
	// never shrink after a burst. So once per period, the connections that
	// stayed idle through all of it are closed (see due).
	period  time.Duration
	low     atomic.Int64 // fewest idle connections a Get left since the last shrink
	shrinks atomic.Int64 // a time.Duration (see Pool.clock): when the next shrink is due
}

// init readies the set for maxIdle connections, shrinking once per period.
func (s *idleSet) init(maxIdle int, period time.Duration) {
	s.ch, s.period = make(chan *poolConn, max(maxIdle-1, 0)), period
	s.low.Store(math.MaxInt64)
	s.shrinks.Store(int64(period))
}

// take takes the connection to reuse next, or returns nil, and notes how
// many it left.
func (s *idleSet) take() *poolConn {
	if pc := s.takeHot(); pc != nil {
		s.noteLeft(int64(len(s.ch)))
		return pc
	}
	select {
	case pc := <-s.ch:
		s.noteLeft(int64(len(s.ch)))
		return pc
	default:
		s.noteLeft(0)
		return nil
	}
}

// takeAny takes an idle connection, if there is one, without noting it.
func (s *idleSet) takeAny() *poolConn {
	if pc := s.takeHot(); pc != nil {
		return pc
	}
	return s.takeOldest()
}

func (s *idleSet) takeHot() *poolConn {
	if s.hot.Load() == nil {
		return nil // no atomic write when there is nothing to take
	}
	return s.hot.Swap(nil)
}

// takeOldest takes the connection idle longest, leaving the hot one.
func (s *idleSet) takeOldest() *poolConn {
	select {
	case pc := <-s.ch:
		return pc
	default:
		return nil
	}
}

// put makes pc idle, unless MaxIdle are idle already.
func (s *idleSet) put(pc *poolConn) bool {
	if s.hot.Load() == nil && s.hot.CompareAndSwap(nil, pc) {
		return true
	}
	select {
	case s.ch <- pc:
		return true
	default:
		return false
	}
}

func (s *idleSet) len() int {
	n := len(s.ch)
	if s.hot.Load() != nil {
		n++
	}
	return n
}

// noteLeft records how many idle connections a Get left: the fewest over a
// period are connections nobody needed in it.
func (s *idleSet) noteLeft(n int64) {
	if n < s.low.Load() {
		s.low.Store(n) // racy minimum: at worst one connection too many is closed
	}
}

// due reports, at now, how many idle connections stayed unused through
// the period that just ended, when one has: the caller closes that many,
// longest idle first. Only one caller per period gets a count.
func (s *idleSet) due(now time.Duration) int64 {
	at := s.shrinks.Load()
	if now < time.Duration(at) || !s.shrinks.CompareAndSwap(at, int64(now+s.period)) {
		return 0
	}
	return s.low.Swap(math.MaxInt64)
}

// clock returns the time since the pool's epoch, which ages connections.
// It reads only the monotonic clock, which costs about half of time.Now.
// Waits use the real clock, which tests do not move.
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
