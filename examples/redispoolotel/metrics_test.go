package redispoolotel_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/examples/redispoolotel"
	"github.com/redispool/redispool/internal/redistest"
)

// points maps a data point, written name{key=value,...} without the pool
// name, to its value.
type points map[string]float64

// newProvider returns a MeterProvider whose reader collects on demand.
func newProvider(t *testing.T) (*sdkmetric.MeterProvider, *sdkmetric.ManualReader) {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	return mp, reader
}

// sumPoint is a data point of a sum, its value as a float64.
type sumPoint struct {
	attrs attribute.Set
	value float64
}

// sumPoints returns m's data points and whether m is monotonic; ok is
// false when m is not a sum.
func sumPoints(m metricdata.Metrics) (pts []sumPoint, monotonic, ok bool) {
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			pts = append(pts, sumPoint{p.Attributes, float64(p.Value)})
		}
		return pts, d.IsMonotonic, true
	case metricdata.Sum[float64]:
		for _, p := range d.DataPoints {
			pts = append(pts, sumPoint{p.Attributes, p.Value})
		}
		return pts, d.IsMonotonic, true
	}
	return nil, false, false
}

// pointKey returns the pool name of a data point of the named instrument,
// and its key in points: name{key=value,...} without the pool name.
func pointKey(name string, attrs attribute.Set) (pool string, key string) {
	var labels []string
	for _, kv := range attrs.ToSlice() {
		if kv.Key == "db.client.connection.pool.name" {
			pool = kv.Value.AsString()
			continue
		}
		labels = append(labels, fmt.Sprintf("%s=%s", kv.Key, kv.Value.Emit()))
	}
	if len(labels) == 0 {
		return pool, name
	}
	slices.Sort(labels)
	return pool, name + "{" + strings.Join(labels, ",") + "}"
}

// collectMetrics returns the instruments of reader's collection. Every
// one must belong to the package's scope.
func collectMetrics(t *testing.T, reader *sdkmetric.ManualReader) []metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatalf("Collect: %v", err)
	}
	var ms []metricdata.Metrics
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != redispoolotel.ScopeName {
			t.Errorf("instruments of scope %q; want only %q", sm.Scope.Name, redispoolotel.ScopeName)
		}
		ms = append(ms, sm.Metrics...)
	}
	return ms
}

// collect returns the data points of reader's collection, by pool name.
// Every one must be a sum and carry a pool name.
func collect(t *testing.T, reader *sdkmetric.ManualReader) map[string]points {
	t.Helper()
	got := map[string]points{}
	for _, m := range collectMetrics(t, reader) {
		pts, _, ok := sumPoints(m)
		if !ok {
			t.Errorf("%s is a %T; want a sum", m.Name, m.Data)
		}
		for _, p := range pts {
			pool, key := pointKey(m.Name, p.attrs)
			if pool == "" {
				t.Errorf("%s has no db.client.connection.pool.name", key)
			}
			if got[pool] == nil {
				got[pool] = points{}
			}
			got[pool][key] = p.value
		}
	}
	return got
}

// expected is what the instruments must report for s.
func expected(s redispool.PoolStats) points {
	d := s.Discards
	return points{
		"db.client.connection.count{db.client.connection.state=idle}": float64(s.IdleCount),
		"db.client.connection.count{db.client.connection.state=used}": float64(s.ActiveCount - s.IdleCount),
		"db.client.connection.max":                                    float64(s.MaxActive),
		"db.client.connection.idle.max":                               float64(s.MaxIdle),
		"db.client.connection.pending_requests":                       float64(s.WaitingCount),
		"db.client.connection.timeouts":                               float64(s.WaitTimeoutCount),
		"redispool.waits":                                             float64(s.WaitCount),
		"redispool.wait.time":                                         s.WaitDuration.Seconds(),
		"redispool.failed_waits":                                      float64(s.FailedWaitCount),
		"redispool.failed_wait.time":                                  s.FailedWaitDuration.Seconds(),
		"redispool.dials":                                             float64(s.DialCount),
		"redispool.dial.errors":                                       float64(s.DialErrorCount),
		"redispool.fast_fails":                                        float64(s.FastFailCount),
		"redispool.leaks":                                             float64(s.LeakCount),
		"redispool.pipeline.batches":                                  float64(s.PipelineBatchCount),
		"redispool.pipeline.commands":                                 float64(s.PipelineCommandCount),
		"redispool.discards{redispool.discard.reason=broken}":         float64(d.Broken),
		"redispool.discards{redispool.discard.reason=state}":          float64(d.State),
		"redispool.discards{redispool.discard.reason=idle_timeout}":   float64(d.IdleTimeout),
		"redispool.discards{redispool.discard.reason=lifetime}":       float64(d.Lifetime),
		"redispool.discards{redispool.discard.reason=max_idle}":       float64(d.MaxIdle),
		"redispool.discards{redispool.discard.reason=health_check}":   float64(d.HealthCheck),
		"redispool.discards{redispool.discard.reason=pool_closed}":    float64(d.PoolClosed),
		"redispool.discards{redispool.discard.reason=retired}":        float64(d.Retired),
	}
}

// compare fails t where got and want differ, both ways.
func compare(t *testing.T, got, want points) {
	t.Helper()
	for k, w := range want {
		g, ok := got[k]
		switch {
		case !ok:
			t.Errorf("%s is not reported", k)
		case g != w:
			t.Errorf("%s is %v; want %v", k, g, w)
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s = %v is reported; want no such data point", k, g)
		}
	}
}

// fakeSource returns fixed statistics.
type fakeSource redispool.PoolStats

func (f fakeSource) Stats() redispool.PoolStats { return redispool.PoolStats(f) }

// TestInstrumentsFollowTheConventions checks each instrument's kind and
// unit: the semantic conventions' UpDownCounters are non-monotonic sums,
// the counters monotonic ones.
func TestInstrumentsFollowTheConventions(t *testing.T) {
	mp, reader := newProvider(t)
	if _, err := redispoolotel.RegisterSource(fakeSource{}, mp); err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		monotonic bool
		unit      string
	}{
		"db.client.connection.count":            {false, "{connection}"},
		"db.client.connection.max":              {false, "{connection}"},
		"db.client.connection.idle.max":         {false, "{connection}"},
		"db.client.connection.pending_requests": {false, "{request}"},
		"db.client.connection.timeouts":         {true, "{timeout}"},
		"redispool.waits":                       {true, "{wait}"},
		"redispool.wait.time":                   {true, "s"},
		"redispool.failed_waits":                {true, "{wait}"},
		"redispool.failed_wait.time":            {true, "s"},
		"redispool.dials":                       {true, "{dial}"},
		"redispool.dial.errors":                 {true, "{error}"},
		"redispool.fast_fails":                  {true, "{request}"},
		"redispool.leaks":                       {true, "{connection}"},
		"redispool.pipeline.batches":            {true, "{batch}"},
		"redispool.pipeline.commands":           {true, "{command}"},
		"redispool.discards":                    {true, "{connection}"},
	}
	seen := map[string]bool{}
	for _, m := range collectMetrics(t, reader) {
		seen[m.Name] = true
		w, known := want[m.Name]
		_, monotonic, ok := sumPoints(m)
		switch {
		case !known:
			t.Errorf("unexpected instrument %s", m.Name)
		case !ok:
			t.Errorf("%s is a %T; want a sum", m.Name, m.Data)
		case monotonic != w.monotonic || m.Unit != w.unit:
			t.Errorf("%s: monotonic %v, unit %q; want %v, %q", m.Name, monotonic, m.Unit, w.monotonic, w.unit)
		case m.Description == "":
			t.Errorf("%s has no description", m.Name)
		}
	}
	for name := range want {
		if !seen[name] {
			t.Errorf("%s is not reported", name)
		}
	}
}

// TestEveryStatsFieldIsReported gives each counter in PoolStats, Discards
// included, a distinct value and checks that every value is reported, so
// that a field added to the pool fails here until it is reported.
func TestEveryStatsFieldIsReported(t *testing.T) {
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
	// ActiveCount is reported as used = ActiveCount - IdleCount: make that
	// difference ActiveCount's distinct value.
	stats.ActiveCount += stats.IdleCount

	mp, reader := newProvider(t)
	if _, err := redispoolotel.RegisterSource(fakeSource(stats), mp, redispoolotel.WithPoolName("sessions")); err != nil {
		t.Fatal(err)
	}
	got := collect(t, reader)
	for _, v := range got["sessions"] {
		delete(want, v)
	}
	for _, field := range want {
		t.Errorf("PoolStats.%s is not reported", field)
	}
	compare(t, got["sessions"], expected(stats))
}

// TestEveryDiscardReasonIsReported makes sure each DiscardReason the pool
// defines is reported under its own name, at zero before it happens, so
// that a reason added to the pool fails here until it is mapped.
func TestEveryDiscardReasonIsReported(t *testing.T) {
	mp, reader := newProvider(t)
	if _, err := redispoolotel.RegisterSource(fakeSource{}, mp); err != nil {
		t.Fatal(err)
	}
	reported := map[string]bool{}
	for k, v := range collect(t, reader)[redispoolotel.DefaultPoolName] {
		if reason, ok := strings.CutPrefix(k, "redispool.discards{redispool.discard.reason="); ok {
			reported[strings.TrimSuffix(reason, "}")] = true
			if v != 0 {
				t.Errorf("%s is %v; want 0", k, v)
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
		if !reported[name] {
			t.Errorf("DiscardReason %d (%s) is not reported; reported: %v", int(r), name, reported)
		}
	}
	if len(reported) != n {
		t.Errorf("reported %d discard reasons %v; the pool defines %d", len(reported), reported, n)
	}
}

// TestUsedIsNeverNegative: the pool's two counts are read one after the
// other, so idle may briefly exceed open; used stays at zero then.
func TestUsedIsNeverNegative(t *testing.T) {
	mp, reader := newProvider(t)
	if _, err := redispoolotel.RegisterSource(fakeSource{ActiveCount: 2, IdleCount: 3}, mp); err != nil {
		t.Fatal(err)
	}
	const used = "db.client.connection.count{db.client.connection.state=used}"
	if v := collect(t, reader)[redispoolotel.DefaultPoolName][used]; v != 0 {
		t.Errorf("%s is %v; want 0", used, v)
	}
}

// TestUnregisterStopsReporting: after Unregister, a collection reports
// nothing of the pool.
func TestUnregisterStopsReporting(t *testing.T) {
	mp, reader := newProvider(t)
	reg, err := redispoolotel.Register(&redispool.Pool{}, mp)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(collect(t, reader)[redispoolotel.DefaultPoolName]); n != 24 {
		t.Fatalf("registered: %d data points; want 24", n)
	}
	if err := reg.Unregister(); err != nil {
		t.Fatalf("Unregister: %v", err)
	}
	if got := collect(t, reader); len(got) != 0 {
		t.Errorf("unregistered: still reports %v", got)
	}
}

// TestRegisterRejectsBadInput: each mistake gets an error that names it.
func TestRegisterRejectsBadInput(t *testing.T) {
	mp, _ := newProvider(t)
	for _, tc := range []struct {
		name string
		pool *redispool.Pool
		mp   metric.MeterProvider
		opts []redispoolotel.Option
		want string
	}{
		{"nil pool", nil, mp, nil, "pool is nil"},
		{"nil provider", &redispool.Pool{}, nil, nil, "MeterProvider is nil"},
		{"empty name", &redispool.Pool{}, mp, []redispoolotel.Option{redispoolotel.WithPoolName("")}, "pool name given to WithPoolName is empty"},
		{"negative MaxActive", &redispool.Pool{MaxActive: -1}, mp, nil, "MaxActive is -1"},
		{"negative MaxIdle", &redispool.Pool{MaxIdle: -2}, mp, nil, "MaxIdle -2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := redispoolotel.Register(tc.pool, tc.mp, tc.opts...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Register: %v; want an error containing %q", err, tc.want)
			}
		})
	}
}

// fakeConn is a redis.Conn that answers every command with OK, so that the
// pool's limits can be driven without a server.
type fakeConn struct{}

func (c *fakeConn) Close() error                   { return nil }
func (c *fakeConn) Err() error                     { return nil }
func (c *fakeConn) Do(string, ...any) (any, error) { return "OK", nil }
func (c *fakeConn) Send(string, ...any) error      { return nil }
func (c *fakeConn) Flush() error                   { return nil }
func (c *fakeConn) Receive() (any, error)          { return "OK", nil }

// TestLimitsAreThePools checks db.client.connection.max and idle.max
// against what the pool does: max Gets succeed and the next fails with
// ErrPoolExhausted; giving them all back leaves idle.max idle.
func TestLimitsAreThePools(t *testing.T) {
	procs := runtime.GOMAXPROCS(0)
	for _, tc := range []struct {
		maxActive, maxIdle int
	}{
		{0, 0},
		{0, 3},
		{0, 10*procs + 5},
		{4, 0},
		{4, 2},
		{4, 9},
	} {
		t.Run(fmt.Sprintf("MaxActive=%d/MaxIdle=%d", tc.maxActive, tc.maxIdle), func(t *testing.T) {
			checkLimits(t, tc.maxActive, tc.maxIdle)
		})
	}
}

// checkLimits checks the limits reported for a pool with the given
// MaxActive and MaxIdle against what the pool does.
func checkLimits(t *testing.T, maxActive, maxIdle int) {
	p := &redispool.Pool{
		MaxActive:   maxActive,
		MaxIdle:     maxIdle,
		WaitTimeout: -1,
		Dial:        func() (redis.Conn, error) { return &fakeConn{}, nil },
	}
	defer p.Close()
	mp, reader := newProvider(t)
	if _, err := redispoolotel.Register(p, mp); err != nil {
		t.Fatal(err)
	}
	got := collect(t, reader)[redispoolotel.DefaultPoolName]
	reportedMax, reportedIdleMax := int(got["db.client.connection.max"]), int(got["db.client.connection.idle.max"])

	var conns []redis.Conn
	for range reportedMax {
		c, err := p.GetContext(context.Background())
		if err != nil {
			t.Fatalf("Get %d of db.client.connection.max = %d: %v", len(conns)+1, reportedMax, err)
		}
		conns = append(conns, c)
	}
	if _, err := p.GetContext(context.Background()); !errors.Is(err, redispool.ErrPoolExhausted) {
		t.Fatalf("Get %d with db.client.connection.max = %d: %v; want ErrPoolExhausted", reportedMax+1, reportedMax, err)
	}
	for _, c := range conns {
		c.Close()
	}
	if idle := p.IdleCount(); idle != reportedIdleMax {
		t.Errorf("%d connections given back left %d idle; db.client.connection.idle.max is %d", len(conns), idle, reportedIdleMax)
	}
}

// The keys of the data points TestValuesFollowPoolUse looks at.
const (
	idle          = "db.client.connection.count{db.client.connection.state=idle}"
	used          = "db.client.connection.count{db.client.connection.state=used}"
	maxConns      = "db.client.connection.max"
	idleMax       = "db.client.connection.idle.max"
	timeouts      = "db.client.connection.timeouts"
	waits         = "redispool.waits"
	waitTime      = "redispool.wait.time"
	failedWaits   = "redispool.failed_waits"
	failedTime    = "redispool.failed_wait.time"
	dials         = "redispool.dials"
	stateDiscards = "redispool.discards{redispool.discard.reason=state}"
	idleDiscards  = "redispool.discards{redispool.discard.reason=max_idle}"
)

// twoPools are two pools on one server, registered with one provider as
// "main" (MaxActive 2, MaxIdle 1) and "short" (MaxActive 1, WaitTimeout
// 50ms, to make a Get time out).
type twoPools struct {
	t           *testing.T
	reader      *sdkmetric.ManualReader
	main, short *redispool.Pool
}

func newTwoPools(t *testing.T, addr string) *twoPools {
	mp, reader := newProvider(t)
	f := &twoPools{
		t:      t,
		reader: reader,
		main:   &redispool.Pool{Addr: addr, MaxActive: 2, MaxIdle: 1, WaitTimeout: 5 * time.Second},
		short:  &redispool.Pool{Addr: addr, MaxActive: 1, WaitTimeout: 50 * time.Millisecond},
	}
	t.Cleanup(func() { f.main.Close(); f.short.Close() })
	for name, p := range map[string]*redispool.Pool{"main": f.main, "short": f.short} {
		if _, err := redispoolotel.Register(p, mp, redispoolotel.WithPoolName(name)); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// check collects, compares each pool's data points with its Stats, then
// checks the values in want, by pool name: those the step must have
// produced. It returns the collection.
func (f *twoPools) check(step string, want map[string]points) map[string]points {
	t := f.t
	t.Helper()
	got := collect(t, f.reader)
	if len(got) != 2 {
		t.Errorf("data points under %d pool names; want 2 (main, short)", len(got))
	}
	compare(t, got["main"], expected(f.main.Stats()))
	compare(t, got["short"], expected(f.short.Stats()))
	for pool, pts := range want {
		for k, v := range pts {
			if got[pool][k] != v {
				t.Errorf("%s: %s is %v; want %v", pool, k, got[pool][k], v)
			}
		}
	}
	if t.Failed() {
		t.Fatalf("after %s", step)
	}
	return got
}

// mustGet borrows a connection from p and checks it with a PING.
func mustGet(t *testing.T, p *redispool.Pool) redis.Conn {
	t.Helper()
	c, err := p.GetContext(context.Background())
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if _, err := c.Do("PING"); err != nil {
		t.Fatalf("PING: %v", err)
	}
	return c
}

// getAfterWait starts a Get on p, which has no connection free, waits until
// it queues, then gives back held so that the Get gets it.
func getAfterWait(t *testing.T, p *redispool.Pool, held redis.Conn) redis.Conn {
	t.Helper()
	type result struct {
		c   redis.Conn
		err error
	}
	waited := make(chan result, 1)
	go func() {
		c, err := p.GetContext(context.Background())
		waited <- result{c, err}
	}()
	for deadline := time.Now().Add(5 * time.Second); p.Stats().WaitingCount == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the Get did not queue within 5s")
		}
	}
	held.Close()
	r := <-waited
	if r.err != nil {
		t.Fatalf("Get that waited: %v", r.err)
	}
	return r.c
}

// TestValuesFollowPoolUse drives two pools on one real redis-server
// through Gets, a discard, a wait and a timed-out wait, and checks after
// each step that a collection reports what the pools did, each pool under
// its own name.
func TestValuesFollowPoolUse(t *testing.T) {
	f := newTwoPools(t, redistest.Start(t).Addr())
	f.check("registering", map[string]points{
		"main":  {maxConns: 2, idleMax: 1, used: 0, idle: 0, dials: 0},
		"short": {maxConns: 1, idleMax: 1},
	})

	c1 := mustGet(t, f.main)
	f.check("a Get", map[string]points{"main": {used: 1, idle: 0, dials: 1}})

	if _, err := c1.Do("CLIENT", "SETNAME", "left-behind"); err != nil {
		t.Fatal(err)
	}
	c1.Close()
	f.check("a discard", map[string]points{"main": {used: 0, idle: 0, stateDiscards: 1}})

	c2, c3 := mustGet(t, f.main), mustGet(t, f.main)
	c4 := getAfterWait(t, f.main, c2)
	got := f.check("a wait", map[string]points{"main": {used: 2, dials: 3, waits: 1}})
	if got["main"][waitTime] <= 0 {
		t.Fatalf("after a wait, %s is %v; want more than 0", waitTime, got["main"][waitTime])
	}

	c5 := mustGet(t, f.short)
	if _, err := f.short.GetContext(context.Background()); !errors.Is(err, redispool.ErrPoolExhausted) {
		t.Fatalf("Get with the only connection in use: %v; want ErrPoolExhausted", err)
	}
	got = f.check("a timeout", map[string]points{"short": {timeouts: 1, waits: 0, failedWaits: 1}, "main": {timeouts: 0, failedWaits: 0}})
	if got["short"][failedTime] < 0.05 {
		t.Fatalf("after a wait that timed out after WaitTimeout (50ms), %s is %v", failedTime, got["short"][failedTime])
	}

	c3.Close()
	c4.Close()
	c5.Close()
	f.check("giving the rest back", map[string]points{
		"main":  {used: 0, idle: 1, idleDiscards: 1},
		"short": {used: 0, idle: 1},
	})
}
