package redispool

import (
	"fmt"
	"iter"
	"sync/atomic"
	"time"
)

// DiscardReason says why the pool closed a connection.
type DiscardReason int

// The reasons a connection is discarded, counted in PoolStats.Discards.
const (
	// DiscardBroken: a call failed with an error other than a redis.Error
	// (timeout, EOF, protocol error, cancelled context) or with a reply after
	// which the server closes the connection ("max number of clients
	// reached", "Protocol error"), the conn's Err was set, replies could not
	// be read in time, or it was in use when closed.
	DiscardBroken DiscardReason = iota
	// DiscardState: it was left in a state the next caller must not inherit
	// (subscribed, MONITOR, CLIENT REPLY OFF, another database, READONLY, ...).
	DiscardState
	// DiscardIdleTimeout: it stayed idle longer than IdleTimeout, or the pool
	// shrank: once per IdleTimeout, a Get that reuses an idle connection
	// closes as many idle ones as no Get needed in that time.
	DiscardIdleTimeout
	// DiscardLifetime: it was older than MaxConnLifetime.
	DiscardLifetime
	// DiscardMaxIdle: MaxIdle connections were already idle.
	DiscardMaxIdle
	// DiscardHealthCheck: TestOnBorrow or TestOnBorrowContext failed.
	DiscardHealthCheck
	// DiscardPoolClosed: the pool was closed.
	DiscardPoolClosed
	// DiscardRetired: it was dialed before a call to Retire, or before a
	// READONLY reply showed that the server it reaches is now a replica.
	DiscardRetired
	numDiscardReasons
)

var discardNames = [numDiscardReasons]string{"broken", "state", "idle_timeout", "lifetime", "max_idle", "health_check", "pool_closed", "retired"}

// String returns the reason in snake case, as used in metric labels.
func (r DiscardReason) String() string {
	if r < 0 || r >= numDiscardReasons {
		return fmt.Sprintf("DiscardReason(%d)", int(r))
	}
	return discardNames[r]
}

// PoolStats are a pool's counters. The first four fields are those of
// redigo's redis.PoolStats.
type PoolStats struct {
	// ActiveCount is the number of connections open, idle, in use or being dialed.
	ActiveCount int
	// IdleCount is the number of idle connections.
	IdleCount int
	// WaitCount is the number of waits for a connection that ended with one,
	// or with the turn to dial one, as redigo counts them: a Get waits when
	// MaxActive connections are open or MaxConcurrentDials dials are under
	// way, and waits again should the connection it was handed fail its
	// checks. A wait is counted when it ends.
	WaitCount int64
	// WaitDuration is the total time of those waits.
	WaitDuration time.Duration

	// MaxActive and MaxIdle are the limits in effect: the Pool's fields
	// with their defaults applied. Both are zero when the Pool's
	// configuration is invalid.
	MaxActive, MaxIdle int

	// WaitingCount is the number of Gets waiting now.
	WaitingCount int
	// FailedWaitCount is the number of waits that ended without a
	// connection: WaitTimeout passed, the Get's context ended, or the pool
	// was closed.
	FailedWaitCount int64
	// FailedWaitDuration is the total time of those waits.
	FailedWaitDuration time.Duration

	// DialCount is the number of dials started.
	DialCount int64
	// DialErrorCount is the number of dials that failed.
	DialErrorCount int64
	// FastFailCount is the number of Gets refused at once with the last dial
	// error because the server was refusing connections.
	FastFailCount int64
	// WaitTimeoutCount is the number of Gets that failed with ErrPoolExhausted.
	WaitTimeoutCount int64
	// LeakCount is the number of connections held longer than LeakThreshold.
	LeakCount int64
	// Discards counts the connections closed by the pool, by reason.
	Discards DiscardStats
	// PipelineBatchCount is the number of batches of commands written to
	// shared connections with AutoPipeline, each with one flush.
	PipelineBatchCount int64
	// PipelineCommandCount is the number of commands in those batches.
	PipelineCommandCount int64
}

// DiscardStats counts closed connections by DiscardReason.
type DiscardStats struct {
	Broken, State, IdleTimeout, Lifetime, MaxIdle, HealthCheck, PoolClosed, Retired int64
}

// Total is the number of connections discarded for any reason.
func (d DiscardStats) Total() int64 {
	return d.Broken + d.State + d.IdleTimeout + d.Lifetime + d.MaxIdle + d.HealthCheck + d.PoolClosed + d.Retired
}

// ByReason yields every DiscardReason with its count, zero included, in
// the order of the constants: a metrics exporter labels each count with the
// reason's String.
func (d DiscardStats) ByReason() iter.Seq2[DiscardReason, int64] {
	counts := [numDiscardReasons]int64{d.Broken, d.State, d.IdleTimeout, d.Lifetime, d.MaxIdle, d.HealthCheck, d.PoolClosed, d.Retired}
	return func(yield func(DiscardReason, int64) bool) {
		for r, n := range counts {
			if !yield(DiscardReason(r), n) {
				return
			}
		}
	}
}

// counters are the pool's statistics, each updated atomically where the
// event happens.
type counters struct {
	waits       atomic.Int64 // waits in the queue that ended with a connection or a ticket
	waitNanos   atomic.Int64 // their time in the queue
	failed      atomic.Int64 // waits in the queue that ended without
	failedNanos atomic.Int64 // their time in the queue
	dials       atomic.Int64 // dials started
	dialErrors  atomic.Int64 // dials failed
	fastFails   atomic.Int64 // Gets refused at once while dials back off
	exhausted   atomic.Int64 // Gets that gave up waiting
	leaks       atomic.Int64 // borrows held past LeakThreshold
	batches     atomic.Int64 // batches written to shared connections
	batched     atomic.Int64 // commands in them
	discards    [numDiscardReasons]atomic.Int64
}

// waited counts a wait in the queue that took d and ended with a
// connection or a ticket (ok), or without.
func (c *counters) waited(d time.Duration, ok bool) {
	if ok {
		c.waits.Add(1)
		c.waitNanos.Add(int64(d))
		return
	}
	c.failed.Add(1)
	c.failedNanos.Add(int64(d))
}

// Stats returns the pool's counters. With Cluster, each field is the sum
// over the node pools, those of nodes gone from the slot map included
// until they are closed: MaxActive, for example, is the per-node limit
// times the number of node pools.
func (p *Pool) Stats() PoolStats {
	if p == nil {
		return PoolStats{}
	}
	if p.Cluster != nil && p.init() == nil {
		return p.Cluster.stats()
	}
	s, d := &p.stats, &p.stats.discards
	var maxActive, maxIdle int
	if p.init() == nil {
		maxActive, maxIdle = p.cfg.maxActive, p.cfg.maxIdle
	}
	return PoolStats{
		MaxActive:            maxActive,
		MaxIdle:              maxIdle,
		ActiveCount:          int(p.active.Load()),
		IdleCount:            p.idleLen(),
		WaitCount:            s.waits.Load(),
		WaitDuration:         time.Duration(s.waitNanos.Load()),
		WaitingCount:         int(p.q.n.Load()),
		FailedWaitCount:      s.failed.Load(),
		FailedWaitDuration:   time.Duration(s.failedNanos.Load()),
		DialCount:            s.dials.Load(),
		DialErrorCount:       s.dialErrors.Load(),
		FastFailCount:        s.fastFails.Load(),
		WaitTimeoutCount:     s.exhausted.Load(),
		LeakCount:            s.leaks.Load(),
		PipelineBatchCount:   s.batches.Load(),
		PipelineCommandCount: s.batched.Load(),
		Discards: DiscardStats{
			Broken:      d[DiscardBroken].Load(),
			State:       d[DiscardState].Load(),
			IdleTimeout: d[DiscardIdleTimeout].Load(),
			Lifetime:    d[DiscardLifetime].Load(),
			MaxIdle:     d[DiscardMaxIdle].Load(),
			HealthCheck: d[DiscardHealthCheck].Load(),
			PoolClosed:  d[DiscardPoolClosed].Load(),
			Retired:     d[DiscardRetired].Load(),
		},
	}
}

// ActiveCount returns the number of connections open, idle, in use or being dialed.
func (p *Pool) ActiveCount() int {
	if p == nil {
		return 0
	}
	if p.Cluster != nil {
		return p.Stats().ActiveCount
	}
	return int(p.active.Load())
}

// IdleCount returns the number of idle connections.
func (p *Pool) IdleCount() int {
	if p == nil {
		return 0
	}
	return p.idleLen()
}

// idleLen is the number of idle connections. It counts as the pool's first
// use, and is zero when the configuration is invalid.
func (p *Pool) idleLen() int {
	if p.init() != nil {
		return 0
	}
	if p.Cluster != nil {
		return p.Cluster.stats().IdleCount
	}
	return p.idle.len()
}
