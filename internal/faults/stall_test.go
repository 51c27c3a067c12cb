package faults

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/internal/redistest"
)

// The stall workload, the scredis method: stallWorkers goroutines loop on
// GET key:i expecting value:i through a pool of stallMaxActive conns, while
// the server is frozen with SIGSTOP for 50-300 ms every ~200 ms. A command
// waits stallReadTimeout for its reply, so stalls longer than that leave
// late replies on the sockets.
const (
	stallWorkers = 16
	// autoStallWorkers is the number of workers with AutoPipeline, whose
	// commands share a few conns: many at once make batches.
	autoStallWorkers = 64
	stallMaxActive   = 8
	stallReadTimeout = 100 * time.Millisecond
	// stallDuration is how long each redispool run is stalled.
	stallDuration = 10 * time.Second
	// redigoStallDuration is how long redigo's pool with the naive conn is.
	redigoStallDuration = 3 * time.Second
	// maxCommandsPerWorker bounds every worker loop in count as well as time.
	maxCommandsPerWorker = 2_000_000
)

var keyNames, valueNames = func() ([]string, []string) {
	k, v := make([]string, keys), make([]string, keys)
	for i := range keys {
		k[i], v[i] = fmt.Sprintf("key:%d", i), fmt.Sprintf("value:%d", i)
	}
	return k, v
}()

// getter is what the workload needs from a pool; both pools have it.
type getter interface{ Get() redis.Conn }

// errorKinds counts failed commands by kind.
type errorKinds struct {
	timeout, exhausted, other atomic.Int64
	firstOther                atomic.Pointer[string]
}

func (k *errorKinds) add(err error) {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		k.timeout.Add(1)
	case errors.Is(err, redis.ErrPoolExhausted):
		k.exhausted.Add(1)
	default:
		k.other.Add(1)
		s := err.Error()
		k.firstOther.CompareAndSwap(nil, &s)
	}
}

func (k *errorKinds) String() string {
	s := fmt.Sprintf("timeouts %d, pool exhausted %d, other %d", k.timeout.Load(), k.exhausted.Load(), k.other.Load())
	if p := k.firstOther.Load(); p != nil {
		s += fmt.Sprintf(" (first: %q)", *p)
	}
	return s
}

// stallRun is the result of one stall run.
type stallRun struct {
	tally
	errs    errorKinds
	stamps  []time.Duration // when each good reply arrived, since base
	sched   stallLog
	wall    time.Duration
	workers int
}

// stallLog is the schedule that ran: when each SIGSTOP began and each SIGCONT
// took effect, since base.
type stallLog struct {
	stops, conts []time.Duration
	frozen       time.Duration
	end          time.Duration
}

// runStalls freezes srv for 50-300 ms after every 150-250 ms of running
// until d has passed, then lets it run for a last 300 ms. It runs on the test
// goroutine (Stop and Cont fail the test); the sleeps are the fault schedule.
func runStalls(t *testing.T, srv *redistest.Server, base time.Time, d time.Duration) stallLog {
	t.Helper()
	var l stallLog
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		time.Sleep(150*time.Millisecond + rand.N(100*time.Millisecond))
		l.stops = append(l.stops, time.Since(base))
		srv.Stop(t)
		time.Sleep(50*time.Millisecond + rand.N(250*time.Millisecond))
		srv.Cont(t)
		l.conts = append(l.conts, time.Since(base))
		l.frozen += l.conts[len(l.conts)-1] - l.stops[len(l.stops)-1]
	}
	time.Sleep(300 * time.Millisecond)
	l.end = time.Since(base)
	return l
}

// recovery finds, for each window between a SIGCONT and the next SIGSTOP
// (or the end of the run), how long after the SIGCONT the first good reply
// came; -1 when none came in the window.
func (l stallLog) recovery(stamps []time.Duration) []time.Duration {
	sort.Slice(stamps, func(i, j int) bool { return stamps[i] < stamps[j] })
	delays := make([]time.Duration, len(l.conts))
	for k, c := range l.conts {
		end := l.end
		if k+1 < len(l.stops) {
			end = l.stops[k+1]
		}
		delays[k] = -1
		j := sort.Search(len(stamps), func(i int) bool { return stamps[i] >= c })
		if j < len(stamps) && stamps[j] < end {
			delays[k] = stamps[j] - c
		}
	}
	return delays
}

// stallLoad runs the GET workload on pool for d of stalls and returns what
// it counted.
func stallLoad(t *testing.T, srv *redistest.Server, pool getter, workers int, d time.Duration) *stallRun {
	t.Helper()
	r := &stallRun{workers: workers}
	base := time.Now()
	var stop atomic.Bool
	var wg sync.WaitGroup
	stamps := make([][]time.Duration, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < maxCommandsPerWorker && !stop.Load(); n++ {
				i := rand.IntN(keys)
				c := pool.Get()
				reply, err := c.Do("GET", keyNames[i])
				c.Close()
				switch r.count(reply, err, valueNames[i]) {
				case good:
					stamps[w] = append(stamps[w], time.Since(base))
				case failed:
					r.errs.add(err)
				}
			}
		}()
	}
	stopWorkers := sync.OnceFunc(func() {
		stop.Store(true)
		wg.Wait()
	})
	defer func() {
		// On a failed Stop or Cont: let the workers see a running server.
		srv.Cont(t)
		stopWorkers()
	}()
	r.sched = runStalls(t, srv, base, d)
	stopWorkers()
	r.wall = time.Since(base)
	for _, s := range stamps {
		r.stamps = append(r.stamps, s...)
	}
	return r
}

// TestStallsWithTheNaiveConnBreakRedigosPool is the control: the naive conn
// in redigo's own pool, which trusts Err() and so keeps conns that timed out,
// hands replies to the wrong callers within seconds.
func TestStallsWithTheNaiveConnBreakRedigosPool(t *testing.T) {
	checkLeaks(t)
	srv := redistest.Start(t)
	loadKeys(t, srv)
	var st naiveStats
	rp := &redis.Pool{
		Dial:      naiveDialer(srv.Addr(), stallReadTimeout, &st),
		MaxActive: stallMaxActive, MaxIdle: stallMaxActive, Wait: true,
	}
	r := stallLoad(t, srv, rp, stallWorkers, redigoStallDuration)
	require.NoError(t, rp.Close())

	t.Logf("redigo pool + naive conn: %d workers, MaxActive %d, %d stalls (%v frozen) in %v: %v; %d commands sent on conns that had failed; conns dialed %d",
		stallWorkers, stallMaxActive, len(r.sched.stops), r.sched.frozen.Round(time.Millisecond),
		r.wall.Round(time.Millisecond), &r.tally, st.reusedBroken.Load(), st.opened.Load())
	assert.Positive(t, r.wrong.Load(), "the naive conn must be shown to be dangerous")
	assert.Positive(t, st.reusedBroken.Load())
}

// TestStallsNeverHandAReplyToTheWrongCaller runs the stall workload for
// stallDuration through redispool: with conns the pool dials, with a Dial
// that returns the naive conn, and with AutoPipeline, where a timeout on a
// shared conn must fail every command waiting on it and hand nobody a reply
// read after it.
func TestStallsNeverHandAReplyToTheWrongCaller(t *testing.T) {
	t.Run("pool dials", func(t *testing.T) {
		checkLeaks(t)
		srv := redistest.Start(t)
		loadKeys(t, srv)
		p := &redispool.Pool{Addr: srv.Addr(), MaxActive: stallMaxActive, ReadTimeout: stallReadTimeout}
		defer p.Close()
		r := stallLoad(t, srv, p, stallWorkers, stallDuration)
		checkStallRun(t, "stall, pool dials", srv, p, r)
	})
	for _, naive := range []bool{false, true} {
		name := "AutoPipeline"
		if naive {
			name += ", naive Dial"
		}
		t.Run(name, func(t *testing.T) {
			checkLeaks(t)
			srv := redistest.Start(t)
			loadKeys(t, srv)
			p := &redispool.Pool{Addr: srv.Addr(), MaxActive: stallMaxActive, ReadTimeout: stallReadTimeout, AutoPipeline: true}
			var st naiveStats
			if naive {
				// The naive conn keeps reading after a timeout: only the
				// pool stands between a late reply and the next caller.
				p.Addr, p.Dial = "", naiveDialer(srv.Addr(), stallReadTimeout, &st)
			}
			defer p.Close()
			r := stallLoad(t, srv, p, autoStallWorkers, stallDuration)
			checkStallRun(t, "stall, "+name, srv, p, r)
			s := p.Stats()
			t.Logf("%s: %d batches, %.1f commands per batch; naive conns: %d commands sent on conns that had failed", name, s.PipelineBatchCount,
				float64(s.PipelineCommandCount)/float64(max(1, s.PipelineBatchCount)), st.reusedBroken.Load())
			// A shared conn's writer may still write for a moment after
			// its reader failed, until the conn is closed: what counts is
			// that nothing read from it reaches anyone, which wrong checks.
			assert.Positive(t, s.PipelineBatchCount, "commands went to shared conns")
		})
	}
	t.Run("naive Dial", func(t *testing.T) {
		checkLeaks(t)
		srv := redistest.Start(t)
		loadKeys(t, srv)
		var st naiveStats
		p := &redispool.Pool{
			Dial:      naiveDialer(srv.Addr(), stallReadTimeout, &st),
			MaxActive: stallMaxActive, ReadTimeout: stallReadTimeout,
		}
		defer p.Close()
		r := stallLoad(t, srv, p, stallWorkers, stallDuration)
		checkStallRun(t, "stall, naive Dial", srv, p, r)
		t.Logf("naive conns: %d dialed, %d commands sent on conns that had failed", st.opened.Load(), st.reusedBroken.Load())
		assert.Zero(t, st.reusedBroken.Load(), "a naive conn that failed was used again")
		require.NoError(t, p.Close())
		assert.Equal(t, st.opened.Load(), st.closed.Load(), "every naive conn is closed once the pool is")
	})
}

// checkStallRun logs a redispool stall run's figures and checks them.
func checkStallRun(t *testing.T, name string, srv *redistest.Server, p *redispool.Pool, r *stallRun) {
	t.Helper()
	windows := r.sched.recovery(r.stamps)
	var delays []time.Duration
	for _, d := range windows {
		if d >= 0 {
			delays = append(delays, d)
		}
	}
	recovered := len(delays)
	s := p.Stats()
	t.Logf("%s: %d workers, MaxActive %d, ReadTimeout %v, %d stalls (%v frozen) in %v: %v (%s); recovered after %d/%d stalls, first good reply p50 %s max %s after SIGCONT; dials %d, discarded broken %d",
		name, r.workers, stallMaxActive, stallReadTimeout, len(r.sched.stops), r.sched.frozen.Round(time.Millisecond),
		r.wall.Round(time.Millisecond), &r.tally, &r.errs, recovered, len(windows),
		ms(percentile(delays, 0.5)), ms(percentile(delays, 1)), s.DialCount, s.Discards.Broken)
	record(name, &r.tally, r.wall)

	assert.Zero(t, r.wrong.Load(), "replies handed to the wrong caller")
	assert.GreaterOrEqual(t, r.wall, stallDuration)
	assert.Positive(t, r.errs.timeout.Load(), "the stalls must make commands time out")
	assert.Positive(t, s.Discards.Broken, "conns that timed out must be discarded")
	// The pool recovers between stalls: good replies in (nearly) every
	// window, and in the last one, which runs 300 ms.
	require.NotEmpty(t, windows)
	assert.GreaterOrEqual(t, recovered, len(windows)-max(1, len(windows)/10), "windows between stalls with a good reply")
	assert.GreaterOrEqual(t, windows[len(windows)-1], time.Duration(0), "no good reply after the last stall")
	// And is sound afterwards.
	for i := range 100 {
		c := p.Get()
		v, err := redis.String(c.Do("GET", keyNames[i]))
		c.Close()
		require.NoError(t, err)
		require.Equal(t, valueNames[i], v)
	}
	assert.LessOrEqual(t, p.ActiveCount(), stallMaxActive)
	assert.LessOrEqual(t, srv.ConnectedClients(t), stallMaxActive)
}
