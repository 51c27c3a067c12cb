// Package redispoolotel reports the statistics of a [redispool.Pool] as
// OpenTelemetry metrics.
//
// It lives in its own module, so that neither the redispool library nor its
// users who do not want OpenTelemetry depend on it:
//
//	reg, err := redispoolotel.Register(pool, meterProvider, redispoolotel.WithPoolName("sessions"))
//	...
//	defer reg.Unregister()
//
// The instruments are asynchronous: one callback reads [redispool.Pool.Stats]
// once per collection, so that the values of one collection are consistent
// with each other. Those named by OpenTelemetry's semantic conventions for
// database client connection pools (still experimental there):
//
//	db.client.connection.count             UpDownCounter {connection}  connections by db.client.connection.state: idle, or used (in use or being dialed)
//	db.client.connection.max               UpDownCounter {connection}  MaxActive in effect
//	db.client.connection.idle.max          UpDownCounter {connection}  MaxIdle in effect
//	db.client.connection.pending_requests  UpDownCounter {request}     Gets waiting for a connection now
//	db.client.connection.timeouts          Counter       {timeout}     Gets that failed with ErrPoolExhausted
//
// The pool's own, which the conventions have no name for:
//
//	redispool.waits             Counter  {wait}        waits for a connection that ended with one
//	redispool.wait.time         Counter  s             time of those waits
//	redispool.failed_waits      Counter  {wait}        waits that ended without: WaitTimeout, context or pool closed
//	redispool.failed_wait.time  Counter  s             time of those waits
//	redispool.dials             Counter  {dial}        dials started
//	redispool.dial.errors       Counter  {error}       dials that failed
//	redispool.fast_fails        Counter  {request}     Gets refused at once while the server refused connections
//	redispool.leaks             Counter  {connection}  connections held longer than LeakThreshold
//	redispool.pipeline.batches  Counter  {batch}       batches written to the shared connections (AutoPipeline)
//	redispool.pipeline.commands Counter  {command}     commands in those batches
//	redispool.discards          Counter  {connection}  connections the pool closed, by redispool.discard.reason
//
// Every data point carries db.client.connection.pool.name, "redispool"
// unless [WithPoolName] says otherwise. The discard reason takes the values
// of [redispool.DiscardReason.String]: broken, state, idle_timeout,
// lifetime, max_idle, health_check, pool_closed and retired; every reason
// is reported from the first collection on, at zero until it happens.
//
// The conventions' db.client.connection.wait_time is a histogram of each
// wait. The pool counts waits and their total time, not each one, so they
// are reported as the two counters above instead: the mean wait over an
// interval is the increase of redispool.wait.time divided by that of
// redispool.waits. There is no db.client.connection.create_time or
// use_time: the pool's statistics time neither dials nor borrows. Nor is
// there db.client.connection.idle.min: the pool keeps no minimum.
package redispoolotel

import (
	"context"
	"errors"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/redispool/redispool"
)

// ScopeName is the instrumentation scope of the Meter the instruments
// belong to.
const ScopeName = "github.com/redispool/redispool/examples/redispoolotel"

// DefaultPoolName is the db.client.connection.pool.name of a pool
// registered without WithPoolName.
const DefaultPoolName = "redispool"

// Option configures Register.
type Option func(*options)

type options struct {
	poolName string
}

// WithPoolName sets db.client.connection.pool.name, which tells pools
// apart: give each pool registered with one MeterProvider its own, such as
// "sessions" or "cache:6379/0". When not given, it is DefaultPoolName.
func WithPoolName(name string) Option {
	return func(o *options) { o.poolName = name }
}

// source is what the instruments read: *redispool.Pool satisfies it.
type source interface {
	Stats() redispool.PoolStats
}

// Register creates the instruments with a Meter of mp named ScopeName and
// registers one callback that reads pool's statistics at each collection.
// Call Unregister on the registration to stop reporting, for example when
// the pool is closed.
//
// db.client.connection.max and db.client.connection.idle.max are the
// limits in effect, PoolStats.MaxActive and MaxIdle, defaults applied.
// Register does not use the pool; the first collection does (see Pool on
// first use), so set its fields before that.
//
// Register fails when pool or mp is nil, the pool name is empty, MaxActive
// or MaxIdle is negative, or mp refuses an instrument or the callback.
func Register(pool *redispool.Pool, mp metric.MeterProvider, opts ...Option) (metric.Registration, error) {
	if pool == nil {
		return nil, errors.New("redispoolotel: the pool is nil")
	}
	if pool.MaxActive < 0 || pool.MaxIdle < 0 {
		return nil, fmt.Errorf("redispoolotel: the pool's MaxActive is %d and MaxIdle %d; neither may be negative", pool.MaxActive, pool.MaxIdle)
	}
	return register(pool, mp, opts...)
}

// register is Register for any source.
func register(src source, mp metric.MeterProvider, opts ...Option) (metric.Registration, error) {
	o := options{poolName: DefaultPoolName}
	for _, opt := range opts {
		opt(&o)
	}
	switch {
	case mp == nil:
		return nil, errors.New("redispoolotel: the MeterProvider is nil")
	case o.poolName == "":
		return nil, errors.New("redispoolotel: the pool name given to WithPoolName is empty")
	}
	meter := mp.Meter(ScopeName)
	in, err := newInstruments(meter)
	if err != nil {
		return nil, fmt.Errorf("redispoolotel: creating the instruments: %w", err)
	}
	r := newRecorder(src, in, o.poolName)
	reg, err := meter.RegisterCallback(r.observe, in.all()...)
	if err != nil {
		return nil, fmt.Errorf("redispoolotel: registering the callback: %w", err)
	}
	return reg, nil
}

// instruments are the pool's instruments, one per metric.
type instruments struct {
	count, max, idleMax, pending metric.Int64ObservableUpDownCounter

	timeouts, waits, failedWaits, dials, dialErrors, fastFails, leaks, batches, batched, discards metric.Int64ObservableCounter

	waitTime, failedWaitTime metric.Float64ObservableCounter
}

// newInstruments creates the instruments with m.
func newInstruments(m metric.Meter) (*instruments, error) {
	var errs []error
	upDown := func(name, unit, desc string) metric.Int64ObservableUpDownCounter {
		i, err := m.Int64ObservableUpDownCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return i
	}
	counter := func(name, unit, desc string) metric.Int64ObservableCounter {
		i, err := m.Int64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return i
	}
	seconds := func(name, desc string) metric.Float64ObservableCounter {
		i, err := m.Float64ObservableCounter(name, metric.WithUnit("s"), metric.WithDescription(desc))
		errs = append(errs, err)
		return i
	}
	in := &instruments{
		count:          upDown("db.client.connection.count", "{connection}", "The number of connections that are currently in state described by the state attribute."),
		max:            upDown("db.client.connection.max", "{connection}", "The maximum number of open connections allowed (MaxActive)."),
		idleMax:        upDown("db.client.connection.idle.max", "{connection}", "The maximum number of idle open connections allowed (MaxIdle)."),
		pending:        upDown("db.client.connection.pending_requests", "{request}", "The number of current pending requests for an open connection: Gets waiting."),
		timeouts:       counter("db.client.connection.timeouts", "{timeout}", "Gets that failed with ErrPoolExhausted: WaitTimeout passed before a connection, a dial slot or the user's Dial was available."),
		waits:          counter("redispool.waits", "{wait}", "Waits for a connection that ended with one."),
		waitTime:       seconds("redispool.wait.time", "Total time of the waits for a connection that ended with one."),
		failedWaits:    counter("redispool.failed_waits", "{wait}", "Waits for a connection that ended without one: WaitTimeout passed, the context ended or the pool was closed."),
		failedWaitTime: seconds("redispool.failed_wait.time", "Total time of the waits for a connection that ended without one."),
		dials:          counter("redispool.dials", "{dial}", "Dials started."),
		dialErrors:     counter("redispool.dial.errors", "{error}", "Dials that failed."),
		fastFails:      counter("redispool.fast_fails", "{request}", "Gets refused at once with the last dial error while the server refused connections."),
		leaks:          counter("redispool.leaks", "{connection}", "Connections held longer than LeakThreshold."),
		batches:        counter("redispool.pipeline.batches", "{batch}", "Batches written to the shared connections with AutoPipeline, each with one flush."),
		batched:        counter("redispool.pipeline.commands", "{command}", "Commands in those batches."),
		discards:       counter("redispool.discards", "{connection}", "Connections closed by the pool, by reason."),
	}
	return in, errors.Join(errs...)
}

// all lists the instruments, for RegisterCallback.
func (in *instruments) all() []metric.Observable {
	return []metric.Observable{
		in.count, in.max, in.idleMax, in.pending,
		in.timeouts, in.waits, in.failedWaits, in.dials, in.dialErrors, in.fastFails, in.leaks, in.batches, in.batched, in.discards,
		in.waitTime, in.failedWaitTime,
	}
}

// The attribute keys.
const (
	poolNameKey      = attribute.Key("db.client.connection.pool.name")
	stateKey         = attribute.Key("db.client.connection.state")
	discardReasonKey = attribute.Key("redispool.discard.reason")
)

// recorder observes one pool's statistics. Its attribute sets are built
// once, not at each collection.
type recorder struct {
	src source
	*instruments

	pool, idle, used metric.MeasurementOption
	reasons          []metric.MeasurementOption // by DiscardReason
}

func newRecorder(src source, in *instruments, poolName string) *recorder {
	name := poolNameKey.String(poolName)
	r := &recorder{
		src:         src,
		instruments: in,
		pool:        metric.WithAttributeSet(attribute.NewSet(name)),
		idle:        metric.WithAttributeSet(attribute.NewSet(name, stateKey.String("idle"))),
		used:        metric.WithAttributeSet(attribute.NewSet(name, stateKey.String("used"))),
	}
	for reason := range (redispool.DiscardStats{}).ByReason() {
		r.reasons = append(r.reasons, metric.WithAttributeSet(attribute.NewSet(name, discardReasonKey.String(reason.String()))))
	}
	return r
}

// observe is the callback: it reads the statistics once and observes every
// instrument.
func (r *recorder) observe(_ context.Context, o metric.Observer) error {
	s := r.src.Stats()
	o.ObserveInt64(r.count, int64(s.IdleCount), r.idle)
	// ActiveCount and IdleCount are read one after the other while the pool
	// runs, so their difference can be briefly off; it is never negative.
	o.ObserveInt64(r.count, int64(max(s.ActiveCount-s.IdleCount, 0)), r.used)
	o.ObserveInt64(r.max, int64(s.MaxActive), r.pool)
	o.ObserveInt64(r.idleMax, int64(s.MaxIdle), r.pool)
	o.ObserveInt64(r.pending, int64(s.WaitingCount), r.pool)
	o.ObserveInt64(r.timeouts, s.WaitTimeoutCount, r.pool)
	o.ObserveInt64(r.waits, s.WaitCount, r.pool)
	o.ObserveFloat64(r.waitTime, s.WaitDuration.Seconds(), r.pool)
	o.ObserveInt64(r.failedWaits, s.FailedWaitCount, r.pool)
	o.ObserveFloat64(r.failedWaitTime, s.FailedWaitDuration.Seconds(), r.pool)
	o.ObserveInt64(r.dials, s.DialCount, r.pool)
	o.ObserveInt64(r.dialErrors, s.DialErrorCount, r.pool)
	o.ObserveInt64(r.fastFails, s.FastFailCount, r.pool)
	o.ObserveInt64(r.leaks, s.LeakCount, r.pool)
	o.ObserveInt64(r.batches, s.PipelineBatchCount, r.pool)
	o.ObserveInt64(r.batched, s.PipelineCommandCount, r.pool)
	for reason, n := range s.Discards.ByReason() {
		o.ObserveInt64(r.discards, n, r.reasons[reason])
	}
	return nil
}
