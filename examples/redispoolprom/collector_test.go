package redispoolprom_test

import (
	"errors"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/examples/redispoolprom"
)

// fakeSource returns fixed statistics.
type fakeSource redispool.PoolStats

func (f fakeSource) Stats() redispool.PoolStats { return redispool.PoolStats(f) }

// TestCollectMapsEveryField gives every field of PoolStats a distinct value
// and checks the exposition, names, types and help included.
func TestCollectMapsEveryField(t *testing.T) {
	src := fakeSource{
		ActiveCount:          7,
		IdleCount:            3,
		WaitCount:            11,
		WaitDuration:         1500 * time.Millisecond,
		MaxActive:            31,
		MaxIdle:              37,
		WaitingCount:         41,
		FailedWaitCount:      43,
		FailedWaitDuration:   2500 * time.Millisecond,
		DialCount:            13,
		DialErrorCount:       17,
		FastFailCount:        19,
		WaitTimeoutCount:     23,
		LeakCount:            29,
		PipelineBatchCount:   47,
		PipelineCommandCount: 53,
		Discards: redispool.DiscardStats{
			Broken: 101, State: 102, IdleTimeout: 103, Lifetime: 104,
			MaxIdle: 105, HealthCheck: 106, PoolClosed: 107, Retired: 108,
		},
	}
	c := redispoolprom.NewCollector(src, redispoolprom.WithConstLabels(prometheus.Labels{"pool": "sessions"}))
	const want = `
# HELP redispool_connections_idle Idle connections.
# TYPE redispool_connections_idle gauge
redispool_connections_idle{pool="sessions"} 3
# HELP redispool_connections_idle_max The most idle connections kept (MaxIdle in effect).
# TYPE redispool_connections_idle_max gauge
redispool_connections_idle_max{pool="sessions"} 37
# HELP redispool_connections_in_use Connections in use or being dialed (open minus idle).
# TYPE redispool_connections_in_use gauge
redispool_connections_in_use{pool="sessions"} 4
# HELP redispool_connections_max The most connections open at once (MaxActive in effect).
# TYPE redispool_connections_max gauge
redispool_connections_max{pool="sessions"} 31
# HELP redispool_connections_open Connections open: idle, in use or being dialed.
# TYPE redispool_connections_open gauge
redispool_connections_open{pool="sessions"} 7
# HELP redispool_dial_errors_total Dials that failed.
# TYPE redispool_dial_errors_total counter
redispool_dial_errors_total{pool="sessions"} 17
# HELP redispool_dials_total Dials started.
# TYPE redispool_dials_total counter
redispool_dials_total{pool="sessions"} 13
# HELP redispool_discards_total Connections closed by the pool, by reason.
# TYPE redispool_discards_total counter
redispool_discards_total{pool="sessions",reason="broken"} 101
redispool_discards_total{pool="sessions",reason="health_check"} 106
redispool_discards_total{pool="sessions",reason="idle_timeout"} 103
redispool_discards_total{pool="sessions",reason="lifetime"} 104
redispool_discards_total{pool="sessions",reason="max_idle"} 105
redispool_discards_total{pool="sessions",reason="pool_closed"} 107
redispool_discards_total{pool="sessions",reason="retired"} 108
redispool_discards_total{pool="sessions",reason="state"} 102
# HELP redispool_failed_wait_seconds_total Total time of the waits for a connection that ended without one, in seconds.
# TYPE redispool_failed_wait_seconds_total counter
redispool_failed_wait_seconds_total{pool="sessions"} 2.5
# HELP redispool_failed_waits_total Waits for a connection that ended without one: WaitTimeout passed, the context ended or the pool was closed.
# TYPE redispool_failed_waits_total counter
redispool_failed_waits_total{pool="sessions"} 43
# HELP redispool_fast_fails_total Gets refused at once with the last dial error while the server refused connections.
# TYPE redispool_fast_fails_total counter
redispool_fast_fails_total{pool="sessions"} 19
# HELP redispool_leaks_total Connections held longer than LeakThreshold.
# TYPE redispool_leaks_total counter
redispool_leaks_total{pool="sessions"} 29
# HELP redispool_pipeline_batches_total Batches written to the shared connections with AutoPipeline, each with one flush.
# TYPE redispool_pipeline_batches_total counter
redispool_pipeline_batches_total{pool="sessions"} 47
# HELP redispool_pipeline_commands_total Commands in those batches.
# TYPE redispool_pipeline_commands_total counter
redispool_pipeline_commands_total{pool="sessions"} 53
# HELP redispool_wait_seconds_total Total time of the waits for a connection that ended with one, in seconds.
# TYPE redispool_wait_seconds_total counter
redispool_wait_seconds_total{pool="sessions"} 1.5
# HELP redispool_wait_timeouts_total Gets that failed with ErrPoolExhausted: WaitTimeout passed before a connection, a dial slot or the user's Dial was available.
# TYPE redispool_wait_timeouts_total counter
redispool_wait_timeouts_total{pool="sessions"} 23
# HELP redispool_wait_total Waits for a connection that ended with one.
# TYPE redispool_wait_total counter
redispool_wait_total{pool="sessions"} 11
# HELP redispool_waiting Gets waiting for a connection now.
# TYPE redispool_waiting gauge
redispool_waiting{pool="sessions"} 41
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(c); n != 25 {
		t.Errorf("collected %d metrics; want 25 (17 without labels, 8 discard reasons)", n)
	}
}

// TestInUseNeverNegative: the pool's two gauges are read one after the
// other, so idle may briefly exceed open; in_use stays at zero then.
func TestInUseNeverNegative(t *testing.T) {
	c := redispoolprom.NewCollector(fakeSource{ActiveCount: 2, IdleCount: 3})
	const want = `
# HELP redispool_connections_in_use Connections in use or being dialed (open minus idle).
# TYPE redispool_connections_in_use gauge
redispool_connections_in_use 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "redispool_connections_in_use"); err != nil {
		t.Error(err)
	}
}

// TestLint runs client_golang's metric linter: counters end in _total, units
// are base units, help is present.
func TestLint(t *testing.T) {
	problems, err := testutil.CollectAndLint(redispoolprom.NewCollector(fakeSource{}))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// TestEveryDiscardReason makes sure each DiscardReason the pool defines is
// exported under its own name, so that a reason added to the pool fails
// here until the collector maps it.
func TestEveryDiscardReason(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(redispoolprom.NewCollector(fakeSource{}))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, mf := range mfs {
		if mf.GetName() != "redispool_discards_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" {
					exported[l.GetValue()] = true
				}
			}
		}
	}
	const maxReasons = 64 // far more than the pool defines; bounds the loop
	n := 0
	for r := redispool.DiscardReason(0); r < maxReasons; r++ {
		name := r.String()
		if strings.HasPrefix(name, "DiscardReason(") {
			break // past the last reason
		}
		n++
		if !exported[name] {
			t.Errorf("DiscardReason %d (%s) is not exported; exported: %v", int(r), name, exported)
		}
	}
	if len(exported) != n {
		t.Errorf("exported %d discard reasons %v; the pool defines %d", len(exported), exported, n)
	}
}

// TestEveryStatsField gives each counter in PoolStats, Discards included, a
// distinct value and checks that every value is exported, so that a field
// added to the pool fails here until the collector exports it.
func TestEveryStatsField(t *testing.T) {
	var stats redispool.PoolStats
	want := map[float64]string{} // value -> field
	next := 1000.0
	var fill func(v reflect.Value, prefix string)
	fill = func(v reflect.Value, prefix string) {
		for i := range v.NumField() {
			f, name := v.Field(i), prefix+v.Type().Field(i).Name
			switch {
			case f.Kind() == reflect.Struct:
				fill(f, name+".")
			case f.Type() == reflect.TypeOf(time.Duration(0)):
				f.SetInt(int64(time.Duration(next) * time.Second))
				want[next] = name
			case f.CanInt():
				f.SetInt(int64(next))
				want[next] = name
			default:
				t.Fatalf("PoolStats.%s is a %v; teach this test about it", name, f.Type())
			}
			next++
		}
	}
	fill(reflect.ValueOf(&stats).Elem(), "")

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(redispoolprom.NewCollector(fakeSource(stats)))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			delete(want, m.GetGauge().GetValue())
			delete(want, m.GetCounter().GetValue())
		}
	}
	for _, field := range want {
		t.Errorf("PoolStats.%s is not exported", field)
	}
}

// TestPedanticRegistry registers two pools' collectors told apart by a
// constant label with a registry that checks Describe against Collect.
func TestPedanticRegistry(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	for _, name := range []string{"sessions", "cache"} {
		c := redispoolprom.NewCollector(&redispool.Pool{}, redispoolprom.WithConstLabels(prometheus.Labels{"pool": name}))
		if err := reg.Register(c); err != nil {
			t.Fatalf("registering the %s collector: %v", name, err)
		}
	}
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 2*25 {
		t.Errorf("gathered %d metrics, error %v; want %d and none", n, err, 2*25)
	}
	if err := reg.Register(redispoolprom.NewCollector(&redispool.Pool{}, redispoolprom.WithConstLabels(prometheus.Labels{"pool": "cache"}))); err == nil {
		t.Error("a second collector with the same constant labels registered; want an error")
	}
}

// fakeConn is a redis.Conn that answers every command with OK, so that the
// pool's bookkeeping can be driven without a server.
type fakeConn struct{}

func (c *fakeConn) Close() error                   { return nil }
func (c *fakeConn) Err() error                     { return nil }
func (c *fakeConn) Do(string, ...any) (any, error) { return "OK", nil }
func (c *fakeConn) Send(string, ...any) error      { return nil }
func (c *fakeConn) Flush() error                   { return nil }
func (c *fakeConn) Receive() (any, error)          { return "OK", nil }
func (c *fakeConn) DoWithTimeout(_ time.Duration, cmd string, args ...any) (any, error) {
	return c.Do(cmd, args...)
}
func (c *fakeConn) ReceiveWithTimeout(time.Duration) (any, error) { return c.Receive() }

// TestCollectPool drives a real pool through a known sequence of events and
// checks the counters the collector exports.
func TestCollectPool(t *testing.T) {
	var failDial atomic.Bool
	errRefused := errors.New("connection refused")
	p := &redispool.Pool{
		MaxActive:   3,
		MaxIdle:     2,
		WaitTimeout: -1, // fail at once when all 3 are in use
		Dial: func() (redis.Conn, error) {
			if failDial.Load() {
				return nil, errRefused
			}
			return &fakeConn{}, nil
		},
	}
	defer p.Close()
	get := func() redis.Conn {
		t.Helper()
		c, err := p.GetContext(t.Context())
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		return c
	}

	c1, c2, c3 := get(), get(), get() // 3 dials
	if _, err := p.GetContext(t.Context()); !errors.Is(err, redispool.ErrPoolExhausted) {
		t.Fatalf("fourth Get: %v; want ErrPoolExhausted", err) // 1 wait timeout
	}
	if _, err := c1.Do("CLIENT", "SETNAME", "left-behind"); err != nil {
		t.Fatal(err)
	}
	c1.Close()                        // a name set: 1 state discard
	c2.Close()                        // idle
	c3.Close()                        // idle
	c5, c6, c7 := get(), get(), get() // 2 idle reused, 1 dial
	c5.Close()
	c6.Close()
	c7.Close() // MaxIdle 2 were idle: 1 max_idle discard
	p.Retire() // 2 retired
	failDial.Store(true)
	if _, err := p.GetContext(t.Context()); !errors.Is(err, errRefused) {
		t.Fatalf("Get with a failing dial: %v; want %v", err, errRefused) // 1 dial, 1 dial error
	}

	const want = `
# HELP redispool_connections_idle Idle connections.
# TYPE redispool_connections_idle gauge
redispool_connections_idle 0
# HELP redispool_connections_idle_max The most idle connections kept (MaxIdle in effect).
# TYPE redispool_connections_idle_max gauge
redispool_connections_idle_max 2
# HELP redispool_connections_in_use Connections in use or being dialed (open minus idle).
# TYPE redispool_connections_in_use gauge
redispool_connections_in_use 0
# HELP redispool_connections_max The most connections open at once (MaxActive in effect).
# TYPE redispool_connections_max gauge
redispool_connections_max 3
# HELP redispool_connections_open Connections open: idle, in use or being dialed.
# TYPE redispool_connections_open gauge
redispool_connections_open 0
# HELP redispool_dial_errors_total Dials that failed.
# TYPE redispool_dial_errors_total counter
redispool_dial_errors_total 1
# HELP redispool_dials_total Dials started.
# TYPE redispool_dials_total counter
redispool_dials_total 5
# HELP redispool_discards_total Connections closed by the pool, by reason.
# TYPE redispool_discards_total counter
redispool_discards_total{reason="broken"} 0
redispool_discards_total{reason="health_check"} 0
redispool_discards_total{reason="idle_timeout"} 0
redispool_discards_total{reason="lifetime"} 0
redispool_discards_total{reason="max_idle"} 1
redispool_discards_total{reason="pool_closed"} 0
redispool_discards_total{reason="retired"} 2
redispool_discards_total{reason="state"} 1
# HELP redispool_failed_wait_seconds_total Total time of the waits for a connection that ended without one, in seconds.
# TYPE redispool_failed_wait_seconds_total counter
redispool_failed_wait_seconds_total 0
# HELP redispool_failed_waits_total Waits for a connection that ended without one: WaitTimeout passed, the context ended or the pool was closed.
# TYPE redispool_failed_waits_total counter
redispool_failed_waits_total 0
# HELP redispool_fast_fails_total Gets refused at once with the last dial error while the server refused connections.
# TYPE redispool_fast_fails_total counter
redispool_fast_fails_total 0
# HELP redispool_leaks_total Connections held longer than LeakThreshold.
# TYPE redispool_leaks_total counter
redispool_leaks_total 0
# HELP redispool_pipeline_batches_total Batches written to the shared connections with AutoPipeline, each with one flush.
# TYPE redispool_pipeline_batches_total counter
redispool_pipeline_batches_total 0
# HELP redispool_pipeline_commands_total Commands in those batches.
# TYPE redispool_pipeline_commands_total counter
redispool_pipeline_commands_total 0
# HELP redispool_wait_seconds_total Total time of the waits for a connection that ended with one, in seconds.
# TYPE redispool_wait_seconds_total counter
redispool_wait_seconds_total 0
# HELP redispool_wait_timeouts_total Gets that failed with ErrPoolExhausted: WaitTimeout passed before a connection, a dial slot or the user's Dial was available.
# TYPE redispool_wait_timeouts_total counter
redispool_wait_timeouts_total 1
# HELP redispool_wait_total Waits for a connection that ended with one.
# TYPE redispool_wait_total counter
redispool_wait_total 0
# HELP redispool_waiting Gets waiting for a connection now.
# TYPE redispool_waiting gauge
redispool_waiting 0
`
	if err := testutil.CollectAndCompare(redispoolprom.NewCollector(p), strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}
