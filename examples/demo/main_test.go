package main

import (
	"bytes"
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"go.uber.org/goleak"

	"github.com/redispool/redispool/internal/redistest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	testClients  = 200
	testDuration = time.Second
	// testTimeout bounds a whole run: three pools of testDuration each, plus
	// the timeouts of the calls still in flight at each deadline and the
	// wait for each pool's connections to close.
	testTimeout = time.Minute
)

// TestDemoMiniredis runs the demo against the embedded server it uses by
// default.
func TestDemoMiniredis(t *testing.T) {
	srv := miniredis.RunT(t)
	checkDemo(t, srv.Addr())
}

// TestDemoRedisServer runs the demo against a real redis-server. It is
// skipped when redis-server is not installed, unless CI=true.
func TestDemoRedisServer(t *testing.T) {
	srv := redistest.Start(t)
	checkDemo(t, srv.Addr())
}

// checkDemo runs the demo against addr and checks that redispool stayed
// within its bounds without an error while redigo with only Dial set dialed
// for every Get.
func checkDemo(t *testing.T, addr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var out bytes.Buffer
	start := time.Now()
	results, err := run(ctx, &out, addr, testClients, testDuration)
	t.Logf("demo output (%v):\n%s", time.Since(start).Round(time.Millisecond), out.String())
	if err != nil {
		t.Fatalf("run: %v", err)
	}

	byName := make(map[string]result)
	for _, r := range results {
		byName[r.Name] = r
	}
	for _, cfg := range configs {
		if _, ok := byName[cfg.name]; !ok {
			t.Errorf("no result for %q", cfg.name)
		}
	}
	checkTable(t, out.String())

	limit := int64(10 * runtime.GOMAXPROCS(0))
	pool := byName[nameRedispool]
	if pool.PeakOpen > limit {
		t.Errorf("redispool had %d connections open at once; want at most 10 x GOMAXPROCS = %d", pool.PeakOpen, limit)
	}
	if pool.Opened > limit {
		t.Errorf("redispool opened %d connections; want at most 10 x GOMAXPROCS = %d", pool.Opened, limit)
	}
	if pool.Opened == 0 || pool.Commands == 0 {
		t.Errorf("redispool opened %d connections and served %d commands; want some of each", pool.Opened, pool.Commands)
	}
	if pool.Errors != 0 {
		t.Errorf("redispool had %d errors (first: %s); want none", pool.Errors, pool.FirstError)
	}
	if pool.WrongReplies != 0 {
		t.Errorf("redispool had %d wrong replies; want none", pool.WrongReplies)
	}

	// redigo with only Dial set keeps no idle connection, so it dials once per
	// Get: far more than the pool that reuses at most 10 x GOMAXPROCS.
	redigo := byName[nameRedigoDial]
	if want := 10 * max(pool.Opened, 1); redigo.Opened < want {
		t.Errorf("redigo with only Dial set opened %d connections, redispool %d; want redigo to open at least 10 times as many (%d)",
			redigo.Opened, pool.Opened, want)
	}
	for _, r := range results {
		if r.WrongReplies != 0 {
			t.Errorf("%s had %d wrong replies; no pool should hand a reply to the wrong caller", r.Name, r.WrongReplies)
		}
	}
}

// checkTable checks that the table, which follows the progress lines, has a
// row for every configuration.
func checkTable(t *testing.T, out string) {
	t.Helper()
	i := strings.Index(out, "\nconfiguration ")
	if i < 0 {
		t.Errorf("output has no table header")
		return
	}
	rows := strings.Split(out[i+1:], "\n")
	for _, cfg := range configs {
		found := false
		for _, row := range rows {
			if strings.HasPrefix(row, cfg.name+"  ") {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("the table has no row for %q", cfg.name)
		}
	}
}
