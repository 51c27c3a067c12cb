package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/gomodule/redigo/redis"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/goleak"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/examples/internal/bound"
	"github.com/redispool/redispool/internal/redistest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// samples maps a sample, written name{label="value",...} without the pool
// label, to its value.
type samples map[string]float64

// scrape GETs url over HTTP and returns its redispool_ samples. Every one
// must carry the label pool="main".
func scrape(t *testing.T, client *http.Client, url string) samples {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %s: %s", url, resp.Status, body)
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing %s: %v", url, err)
	}
	got := samples{}
	for name, f := range families {
		if !strings.HasPrefix(name, "redispool_") {
			continue
		}
		for _, m := range f.GetMetric() {
			var labels []string
			pool := ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "pool" {
					pool = l.GetValue()
					continue
				}
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			if pool != "main" {
				t.Errorf("%s has pool=%q; want \"main\"", name, pool)
			}
			key := name
			if len(labels) > 0 {
				slices.Sort(labels)
				key += "{" + strings.Join(labels, ",") + "}"
			}
			switch {
			case m.Gauge != nil:
				got[key] = m.GetGauge().GetValue()
			case m.Counter != nil:
				got[key] = m.GetCounter().GetValue()
			default:
				t.Errorf("%s is a %v; want a gauge or a counter", key, f.GetType())
			}
		}
	}
	return got
}

// expected is what the metrics must say for s.
func expected(s redispool.PoolStats) samples {
	d := s.Discards
	return samples{
		"redispool_connections_open":                      float64(s.ActiveCount),
		"redispool_connections_idle":                      float64(s.IdleCount),
		"redispool_connections_in_use":                    float64(s.ActiveCount - s.IdleCount),
		"redispool_connections_max":                       float64(s.MaxActive),
		"redispool_connections_idle_max":                  float64(s.MaxIdle),
		"redispool_waiting":                               float64(s.WaitingCount),
		"redispool_wait_total":                            float64(s.WaitCount),
		"redispool_wait_seconds_total":                    s.WaitDuration.Seconds(),
		"redispool_failed_waits_total":                    float64(s.FailedWaitCount),
		"redispool_failed_wait_seconds_total":             s.FailedWaitDuration.Seconds(),
		"redispool_dials_total":                           float64(s.DialCount),
		"redispool_dial_errors_total":                     float64(s.DialErrorCount),
		"redispool_fast_fails_total":                      float64(s.FastFailCount),
		"redispool_wait_timeouts_total":                   float64(s.WaitTimeoutCount),
		"redispool_leaks_total":                           float64(s.LeakCount),
		"redispool_pipeline_batches_total":                float64(s.PipelineBatchCount),
		"redispool_pipeline_commands_total":               float64(s.PipelineCommandCount),
		`redispool_discards_total{reason="broken"}`:       float64(d.Broken),
		`redispool_discards_total{reason="state"}`:        float64(d.State),
		`redispool_discards_total{reason="idle_timeout"}`: float64(d.IdleTimeout),
		`redispool_discards_total{reason="lifetime"}`:     float64(d.Lifetime),
		`redispool_discards_total{reason="max_idle"}`:     float64(d.MaxIdle),
		`redispool_discards_total{reason="health_check"}`: float64(d.HealthCheck),
		`redispool_discards_total{reason="pool_closed"}`:  float64(d.PoolClosed),
		`redispool_discards_total{reason="retired"}`:      float64(d.Retired),
	}
}

// compare fails t where got and want differ.
func compare(t *testing.T, got, want samples) {
	t.Helper()
	for k, w := range want {
		g, ok := got[k]
		switch {
		case !ok:
			t.Errorf("%s is missing from /metrics", k)
		case g != w:
			t.Errorf("/metrics has %s %v; Stats says %v", k, g, w)
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("/metrics has %s %v, which Stats does not have", k, g)
		}
	}
}

// TestMetrics runs a known workload on the pool (400 /incr requests from 32
// goroutines, 3 connections left in another database, a Retire, then 10 Gets
// while the server is down), scrapes /metrics over HTTP after each part, and
// checks every redispool_ sample against Stats() and what the workload must
// have done.
func TestMetrics(t *testing.T) {
	srv := redistest.Start(t)
	p := newPool(srv.Addr())
	p.MaxActive = bound.MaxConns
	defer p.Close()
	ts := httptest.NewServer(newHandler(p))
	defer ts.Close()
	tr := &http.Transport{MaxIdleConnsPerHost: bound.Workers}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}

	before := scrape(t, client, ts.URL+"/metrics")
	compare(t, before, expected(redispool.PoolStats{MaxActive: bound.MaxConns, MaxIdle: bound.MaxConns}))

	// 400 increments: at most 8 connections, all reused.
	r := bound.Measure(t, srv, p, func() {
		err := bound.Run(bound.Workers, bound.Requests, func(int) error {
			resp, err := client.Get(ts.URL + "/incr")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s: %s", resp.Status, body)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
	bound.Check(t, r)
	if n, err := redis.Int(srv.Do(t, "GET", counterKey), nil); err != nil || n != bound.Requests {
		t.Errorf("%s = %d (error %v); want %d", counterKey, n, err, bound.Requests)
	}

	// Three connections left with a name: discarded for their state.
	var conns []redis.Conn
	for range 3 {
		c := p.Get()
		if _, err := c.Do("CLIENT", "SETNAME", "left-behind"); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		c.Close()
	}
	idle := p.IdleCount()
	p.Retire() // every idle connection: retired

	s := p.Stats()
	got := scrape(t, client, ts.URL+"/metrics")
	compare(t, got, expected(s))
	t.Logf("after the workload: %v", got)
	known := samples{
		"redispool_dials_total":                      float64(r.Opened),
		`redispool_discards_total{reason="state"}`:   3,
		`redispool_discards_total{reason="retired"}`: float64(idle),
		"redispool_connections_open":                 0,
		"redispool_connections_in_use":               0,
		"redispool_wait_timeouts_total":              0,
		"redispool_dial_errors_total":                0,
	}
	for k, want := range known {
		if got[k] != want {
			t.Errorf("after the workload, %s is %v; want %v", k, got[k], want)
		}
	}

	// The server goes away: each Get dials and fails, or fails at once
	// while the pool backs off.
	srv.Kill(t)
	const failing = 10
	for range failing {
		if c, err := p.GetContext(t.Context()); err == nil {
			c.Close()
			t.Fatal("Get succeeded with the server down")
		}
	}
	s = p.Stats()
	got = scrape(t, client, ts.URL+"/metrics")
	compare(t, got, expected(s))
	t.Logf("after %d Gets with the server down: dial errors %v, fast fails %v", failing,
		got["redispool_dial_errors_total"], got["redispool_fast_fails_total"])
	if e, f := got["redispool_dial_errors_total"], got["redispool_fast_fails_total"]; e < 1 || e+f != failing {
		t.Errorf("%v dial errors and %v fast fails; want at least 1 dial error and %d in all", e, f, failing)
	}
}
