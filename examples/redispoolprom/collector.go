// Package redispoolprom exports the statistics of a [redispool.Pool] as
// Prometheus metrics.
//
// It lives in its own module, so that neither the redispool library nor its
// users who do not want Prometheus depend on client_golang:
//
//	reg.MustRegister(redispoolprom.NewCollector(pool))
//
// With several pools, tell them apart with a constant label:
//
//	reg.MustRegister(
//		redispoolprom.NewCollector(sessions, redispoolprom.WithConstLabels(prometheus.Labels{"pool": "sessions"})),
//		redispoolprom.NewCollector(cache, redispoolprom.WithConstLabels(prometheus.Labels{"pool": "cache"})),
//	)
//
// The metrics, read from [redispool.Pool.Stats] at each scrape:
//
//	redispool_connections_open              gauge    connections open: idle, in use or being dialed
//	redispool_connections_idle              gauge    idle connections
//	redispool_connections_in_use            gauge    open minus idle
//	redispool_connections_max               gauge    MaxActive in effect
//	redispool_connections_idle_max          gauge    MaxIdle in effect
//	redispool_waiting                       gauge    Gets waiting for a connection now
//	redispool_wait_total                    counter  waits for a connection that ended with one
//	redispool_wait_seconds_total            counter  time of those waits
//	redispool_failed_waits_total            counter  waits that ended without: WaitTimeout, context or pool closed
//	redispool_failed_wait_seconds_total     counter  time of those waits
//	redispool_dials_total                   counter  dials started
//	redispool_dial_errors_total             counter  dials that failed
//	redispool_fast_fails_total              counter  Gets refused at once while the server refused connections
//	redispool_wait_timeouts_total           counter  Gets that failed with ErrPoolExhausted
//	redispool_leaks_total                   counter  connections held longer than LeakThreshold
//	redispool_pipeline_batches_total        counter  batches written to the shared connections (AutoPipeline)
//	redispool_pipeline_commands_total       counter  commands in those batches
//	redispool_discards_total{reason="..."}  counter  connections the pool closed, by reason
//
// The reason label takes the values of [redispool.DiscardReason.String]:
// broken, state, idle_timeout, lifetime, max_idle, health_check, pool_closed
// and retired. Every reason is exported from the first scrape on, at zero
// until it happens, so that rate() and increase() see its first occurrence.
package redispoolprom

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/redispool/redispool"
)

// namespace prefixes every metric name.
const namespace = "redispool"

// Source is what the collector reads: *redispool.Pool satisfies it.
type Source interface {
	Stats() redispool.PoolStats
}

var _ Source = (*redispool.Pool)(nil)

// Option configures a Collector.
type Option func(*options)

type options struct {
	constLabels prometheus.Labels
}

// WithConstLabels adds labels with fixed values to every metric, for
// example {"pool": "sessions"} to tell several pools apart. Two collectors
// registered with the same registry must differ in their constant labels.
func WithConstLabels(labels prometheus.Labels) Option {
	return func(o *options) {
		if o.constLabels == nil {
			o.constLabels = prometheus.Labels{}
		}
		for k, v := range labels {
			o.constLabels[k] = v
		}
	}
}

// Collector is a prometheus.Collector for one pool's statistics.
type Collector struct {
	src Source

	open, idle, inUse, maxOpen, maxIdle, waiting *prometheus.Desc

	waits, waitSeconds, failedWaits, failedWaitSeconds, dials, dialErrors, fastFails, waitTimeouts, leaks, batches, batched *prometheus.Desc

	discards *prometheus.Desc
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a collector of src's statistics, typically a
// *redispool.Pool. Register it with a prometheus.Registerer.
func NewCollector(src Source, opts ...Option) *Collector {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, labels, o.constLabels)
	}
	return &Collector{
		src:               src,
		open:              desc("connections_open", "Connections open: idle, in use or being dialed."),
		idle:              desc("connections_idle", "Idle connections."),
		inUse:             desc("connections_in_use", "Connections in use or being dialed (open minus idle)."),
		maxOpen:           desc("connections_max", "The most connections open at once (MaxActive in effect)."),
		maxIdle:           desc("connections_idle_max", "The most idle connections kept (MaxIdle in effect)."),
		waiting:           desc("waiting", "Gets waiting for a connection now."),
		waits:             desc("wait_total", "Waits for a connection that ended with one."),
		waitSeconds:       desc("wait_seconds_total", "Total time of the waits for a connection that ended with one, in seconds."),
		failedWaits:       desc("failed_waits_total", "Waits for a connection that ended without one: WaitTimeout passed, the context ended or the pool was closed."),
		failedWaitSeconds: desc("failed_wait_seconds_total", "Total time of the waits for a connection that ended without one, in seconds."),
		dials:             desc("dials_total", "Dials started."),
		dialErrors:        desc("dial_errors_total", "Dials that failed."),
		fastFails:         desc("fast_fails_total", "Gets refused at once with the last dial error while the server refused connections."),
		waitTimeouts:      desc("wait_timeouts_total", "Gets that failed with ErrPoolExhausted: WaitTimeout passed before a connection, a dial slot or the user's Dial was available."),
		leaks:             desc("leaks_total", "Connections held longer than LeakThreshold."),
		batches:           desc("pipeline_batches_total", "Batches written to the shared connections with AutoPipeline, each with one flush."),
		batched:           desc("pipeline_commands_total", "Commands in those batches."),
		discards:          desc("discards_total", "Connections closed by the pool, by reason.", "reason"),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.open, c.idle, c.inUse, c.maxOpen, c.maxIdle, c.waiting,
		c.waits, c.waitSeconds, c.failedWaits, c.failedWaitSeconds, c.dials, c.dialErrors, c.fastFails, c.waitTimeouts, c.leaks,
		c.batches, c.batched, c.discards,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. It reads the statistics once, so
// that the values of one scrape are consistent with each other.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Stats()
	gauge := func(d *prometheus.Desc, v int) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v))
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge(c.open, s.ActiveCount)
	gauge(c.idle, s.IdleCount)
	// ActiveCount and IdleCount are read one after the other while the pool
	// runs, so their difference can be briefly off; it is never negative.
	gauge(c.inUse, max(s.ActiveCount-s.IdleCount, 0))
	gauge(c.maxOpen, s.MaxActive)
	gauge(c.maxIdle, s.MaxIdle)
	gauge(c.waiting, s.WaitingCount)
	counter(c.waits, float64(s.WaitCount))
	counter(c.waitSeconds, s.WaitDuration.Seconds())
	counter(c.failedWaits, float64(s.FailedWaitCount))
	counter(c.failedWaitSeconds, s.FailedWaitDuration.Seconds())
	counter(c.dials, float64(s.DialCount))
	counter(c.dialErrors, float64(s.DialErrorCount))
	counter(c.fastFails, float64(s.FastFailCount))
	counter(c.waitTimeouts, float64(s.WaitTimeoutCount))
	counter(c.leaks, float64(s.LeakCount))
	counter(c.batches, float64(s.PipelineBatchCount))
	counter(c.batched, float64(s.PipelineCommandCount))
	for reason, n := range s.Discards.ByReason() {
		counter(c.discards, float64(n), reason.String())
	}
}
