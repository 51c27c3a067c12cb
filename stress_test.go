package redispool_test

// Randomized stress tests of the pool's accounting and concurrency: the
// permits, the hot slot and the idle channel, the FIFO wait queue and its one
// timer, Close, Retire and stale handles. Each test is bounded in time and in
// operations, so that it runs in a few seconds with -race on a small machine.
// Also the cost of a Get and Close: a benchmark and an allocation guard.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/redispool/redispool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestStressMixedWorkload: many callers Get with random contexts
// (cancelled at random moments, deadlines, already ended, or ended without
// Done closing), use the conn in random ways (clean, broken, dirty, pending
// replies, cancelled DoContext, double Close, use after Close), while dials
// fail and panic, health checks fail and panic, and the pool retires its
// conns; the bounds hold throughout and nothing is lost at the end.
func TestStressMixedWorkload(t *testing.T) {
	configs := []stressConfig{
		{maxActive: 1, maxIdle: 1, workers: 6, waitTimeout: 10 * time.Millisecond},
		{maxActive: 3, maxIdle: 2, workers: 10, waitTimeout: 15 * time.Millisecond, healthCheck: true},
		{maxActive: 4, maxIdle: 4, maxDials: 1, workers: 12, waitTimeout: 15 * time.Millisecond, leakThreshold: 3 * time.Millisecond},
		{maxActive: 6, maxIdle: 1, maxDials: 2, workers: 12, waitTimeout: 20 * time.Millisecond, healthCheck: true},
	}
	for i, cfg := range configs {
		t.Run(fmt.Sprintf("active%d_idle%d_dials%d", cfg.maxActive, cfg.maxIdle, cfg.maxDials), func(t *testing.T) {
			if i%2 == 1 {
				// More Ps than cores: the OS deschedules threads mid-step.
				defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4 * runtime.NumCPU()))
			}
			runStress(t, cfg, 1500*time.Millisecond, 40000)
		})
	}
}

// TestStressFIFOUnderCancellation: waiters queue in a known order on a
// pool of one conn; a random subset leave (context cancelled, or ended
// without Done closing) at random moments while the conn goes round. Those
// that stay are served in their order, also when the conn they are handed
// fails its health check or was broken by the last holder (they keep their
// turn and dial), and every one that stayed is served.
func TestStressFIFOUnderCancellation(t *testing.T) {
	deadline := time.Now().Add(3 * time.Second)
	for round := 0; round < 100 && time.Now().Before(deadline); round++ {
		d := &fakeDialer{}
		var tobFail atomic.Bool
		p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: 10 * time.Second,
			TestOnBorrow: func(redis.Conn, time.Time) error {
				if tobFail.Load() && rand.IntN(4) == 0 {
					return errUnhealthy
				}
				return nil
			}}
		held, err := p.GetContext(context.Background())
		require.NoError(t, err)
		tobFail.Store(true)

		const n = 16
		type outcome struct {
			i   int
			err error
		}
		var servedMu sync.Mutex
		var served []int
		results := make(chan outcome, n)
		leave := make([]func(), n)
		for i := range n {
			var ctx context.Context
			switch rand.IntN(4) {
			case 0:
				c, cancel := context.WithCancel(context.Background())
				ctx, leave[i] = c, cancel
			case 1:
				lc := redispool.NewLateContext()
				ctx, leave[i] = lc, func() { lc.End(context.Canceled) }
			default:
				ctx = context.Background()
			}
			waiter := queueGet(t, p, ctx)
			go func() {
				r := <-waiter
				if r.err == nil {
					servedMu.Lock()
					served = append(served, i) // before Close hands the conn on
					servedMu.Unlock()
					switch rand.IntN(4) {
					case 0:
						r.c.Do("BREAK") // the next in line gets a permit
					case 1:
						time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
					}
					r.c.Close()
				}
				results <- outcome{i, r.err}
			}()
		}
		var leavers sync.WaitGroup
		leavers.Add(1)
		go func() {
			defer leavers.Done()
			for _, i := range rand.Perm(n) {
				if leave[i] != nil {
					time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
					leave[i]()
				}
			}
		}()
		held.Close()

		errs := make([]error, n)
		for range n {
			select {
			case r := <-results:
				errs[r.i] = r.err
			case <-time.After(10 * time.Second):
				buf := make([]byte, 1<<20)
				t.Fatalf("round %d: a waiter was never served nor woken:\n%s", round, buf[:runtime.Stack(buf, true)])
			}
		}
		leavers.Wait()
		for i, err := range errs {
			switch {
			case err == nil:
			case leave[i] != nil && err == context.Canceled:
			default:
				t.Errorf("round %d: waiter %d (leaves: %v) got %v", round, i, leave[i] != nil, err)
			}
		}
		servedMu.Lock()
		for k := 1; k < len(served); k++ {
			if served[k] < served[k-1] {
				t.Fatalf("round %d: waiters served out of turn: %v", round, served)
			}
		}
		servedMu.Unlock()
		checkAtRest(t, p, 0)
		require.NoError(t, p.Close())
		assert.Zero(t, d.open.Load(), "round %d: conns left open", round)
	}
}

// TestStressWaitTimeoutBound: waiters come at staggered moments while
// every conn stays in use, but for one that goes round now and then; some
// leave early. Each that gives up for WaitTimeout does so no sooner than
// WaitTimeout and not much later, whatever the waiters ahead of it did; one
// that left gets its own context's error soon after.
func TestStressWaitTimeoutBound(t *testing.T) {
	const (
		wait  = 150 * time.Millisecond
		slack = 250 * time.Millisecond // scheduling on a loaded machine, with -race
		n     = 60
	)
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 2, WaitTimeout: wait}
	defer p.Close()
	steady, err := p.GetContext(context.Background())
	require.NoError(t, err)
	rover, err := p.GetContext(context.Background())
	require.NoError(t, err)

	var stopRover atomic.Bool
	var roverExhausted atomic.Int64
	var roverWG sync.WaitGroup
	roverWG.Add(1)
	go func() { // hands its conn to the first in line now and then
		defer roverWG.Done()
		for !stopRover.Load() {
			time.Sleep(time.Duration(5+rand.IntN(20)) * time.Millisecond)
			rover.Close()
			for !stopRover.Load() {
				c, err := p.GetContext(context.Background())
				if err == nil {
					rover = c
					break
				}
				if errors.Is(err, redispool.ErrPoolExhausted) {
					roverExhausted.Add(1)
				}
			}
		}
	}()

	type result struct {
		err            error
		elapsed, leave time.Duration // leave: when the context ended, 0 if never
		late           bool
	}
	results := make(chan result, n)
	var wg sync.WaitGroup
	for range n {
		time.Sleep(time.Duration(rand.IntN(6000)) * time.Microsecond)
		wg.Add(1)
		go func() {
			defer wg.Done()
			var r result
			ctx := context.Background()
			switch rand.IntN(5) {
			case 0:
				r.leave = time.Duration(rand.IntN(int(wait)))
				c, cancel := context.WithTimeout(context.Background(), r.leave)
				defer cancel()
				ctx = c
			case 1:
				r.leave, r.late = time.Duration(rand.IntN(int(wait))), true
				lc := redispool.NewLateContext()
				tm := time.AfterFunc(r.leave, func() { lc.End(context.DeadlineExceeded) })
				defer tm.Stop()
				ctx = lc
			}
			start := time.Now()
			c, err := p.GetContext(ctx)
			r.err, r.elapsed = err, time.Since(start)
			if err == nil {
				time.Sleep(time.Duration(2000+rand.IntN(20000)) * time.Microsecond)
				c.Close()
			}
			results <- r
		}()
	}
	waitGroupWithin(t, &wg, 20*time.Second, "the waiters")
	stopRover.Store(true)
	roverWG.Wait()
	close(results)
	exhausted := 0
	for r := range results {
		switch {
		case r.err == nil:
			assert.Less(t, r.elapsed, wait+slack, "served after WaitTimeout")
		case errors.Is(r.err, redispool.ErrPoolExhausted):
			exhausted++
			assert.GreaterOrEqual(t, r.elapsed, wait, "gave up before WaitTimeout")
			assert.Less(t, r.elapsed, wait+slack, "gave up long after WaitTimeout")
			// Well before: after a stall, the context's timer and the
			// pool's may both fire late, in either order.
			if r.leave > 0 && r.leave < wait/2 {
				t.Errorf("a caller whose context ended %v into its wait (late: %v) was reported exhausted after %v", r.leave, r.late, r.elapsed)
			}
		case r.err == context.DeadlineExceeded:
			require.NotZero(t, r.leave, "context error without a context that ended")
			assert.GreaterOrEqual(t, r.elapsed, r.leave-time.Millisecond)
			if !r.late { // a late context is noticed at the grant or WaitTimeout
				assert.Less(t, r.elapsed, r.leave+slack, "left long after its context ended")
			} else {
				assert.Less(t, r.elapsed, wait+slack)
			}
		default:
			t.Errorf("unexpected error %v", r.err)
		}
	}
	t.Logf("%d waiters, %d exhausted, %d waits", n, exhausted, p.Stats().WaitCount)
	assert.EqualValues(t, int64(exhausted)+roverExhausted.Load(), p.Stats().WaitTimeoutCount, "WaitTimeoutCount counts exactly the exhausted waits")
	rover.Close()
	steady.Close()
	checkAtRest(t, p, 0)
}

// TestStressCloseWakesEveryoneAndLeavesNothingOpen: the pool is
// closed at a random moment among holders giving conns back (clean and
// broken), waiters (some cancelled), slow dials and dials given up on. Every
// Get returns promptly, queued ones with ErrPoolClosed unless served first;
// no conn stays open once the holders are done, the counts go to zero, and
// no goroutine is left.
func TestStressCloseWakesEveryoneAndLeavesNothingOpen(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4 * runtime.NumCPU()))
	deadline := time.Now().Add(3 * time.Second)
	rounds := 0
	for ; rounds < 1500 && time.Now().Before(deadline); rounds++ {
		d := &fakeDialer{}
		d.faults.Store(rand.IntN(2) == 0) // slow dials, failures, panics
		maxActive := 1 + rand.IntN(3)
		p := &redispool.Pool{Dial: d.Dial, MaxActive: maxActive, WaitTimeout: 5 * time.Second}
		var wg sync.WaitGroup
		get := func(ctx context.Context) {
			defer wg.Done()
			r := tryGet(p, ctx)
			switch err := r.err; {
			case r.panicked != nil:
			case err == nil:
				time.Sleep(time.Duration(rand.IntN(1000)) * time.Microsecond)
				if rand.IntN(3) == 0 {
					r.c.Do("BREAK")
				}
				r.c.Close()
			case err == redispool.ErrPoolClosed, errors.Is(err, context.Canceled),
				errors.Is(err, redispool.ErrDialBackoff), errors.Is(err, errRefused):
			default:
				t.Errorf("unexpected Get error %v", err)
			}
		}
		for range maxActive + 1 + rand.IntN(5) {
			wg.Add(1)
			ctx := context.Background()
			if rand.IntN(3) == 0 {
				c, cancel := context.WithCancel(context.Background())
				time.AfterFunc(time.Duration(rand.IntN(1500))*time.Microsecond, cancel)
				ctx = c
			}
			go get(ctx)
		}
		time.Sleep(time.Duration(rand.IntN(1500)) * time.Microsecond)
		require.NoError(t, p.Close())
		_, err := p.GetContext(context.Background())
		assert.Equal(t, redispool.ErrPoolClosed, err, "a Get after Close")
		waitGroupWithin(t, &wg, 10*time.Second, "the callers after Close")
		require.Eventually(t, func() bool {
			return d.inDial.Load() == 0 && d.open.Load() == 0 && p.ActiveCount() == 0
		}, 10*time.Second, time.Millisecond, "round %d: open %d active %d in dial %d",
			rounds, d.open.Load(), p.ActiveCount(), d.inDial.Load())
		assert.Equal(t, 0, p.IdleCount())
		assert.Zero(t, p.Accounting().Waiters)
		assert.LessOrEqual(t, d.peak.Load(), int64(maxActive))
		assert.Equal(t, d.made.Load(), p.Stats().Discards.Total(), "every conn dialed was discarded once")
		if t.Failed() {
			t.Fatalf("round %d failed", rounds)
		}
	}
	t.Logf("%d rounds", rounds)
}

// TestStressStaleHandlesNeverTouchTheNextOwner: a borrower closes its
// conn and keeps calling every method of the stale handle, from several
// goroutines, while the next borrower holds and uses the same pooled conn.
// Every stale call fails with ErrConnClosed, none reaches the conn, and none
// changes its state: the next borrower's conn stays clean and is reused,
// never discarded or handed out twice.
func TestStressStaleHandlesNeverTouchTheNextOwner(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: 5 * time.Second}
	defer p.Close()
	deadline := time.Now().Add(2 * time.Second)
	rounds := 0
	c, err := p.GetContext(context.Background())
	require.NoError(t, err)
	for ; rounds < 5000 && time.Now().Before(deadline); rounds++ {
		old := c
		require.NoError(t, old.Close())
		var stale sync.WaitGroup
		for range 2 {
			stale.Add(1)
			go func() {
				defer stale.Done()
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				cwt := old.(redis.ConnWithTimeout)
				cwc := old.(redis.ConnWithContext)
				for k := range 9 {
					var err error
					switch k {
					case 0:
						_, err = old.Do("STALE")
					case 1:
						err = old.Send("STALE")
					case 2:
						err = old.Flush()
					case 3:
						_, err = old.Receive()
					case 4:
						_, err = cwt.DoWithTimeout(time.Second, "STALE")
					case 5:
						_, err = cwc.DoContext(ctx, "STALE")
					case 6:
						_, err = cwc.ReceiveContext(ctx)
					case 7:
						_, err = cwt.ReceiveWithTimeout(time.Second)
					case 8:
						err = old.Err()
					}
					if err != redispool.ErrConnClosed {
						t.Errorf("stale call %d returned %v, not ErrConnClosed", k, err)
					}
					_, err = old.Do("SUBSCRIBE", "ch") // would taint the next owner's conn
					if err != redispool.ErrConnClosed {
						t.Errorf("stale SUBSCRIBE returned %v", err)
					}
					assert.NoError(t, old.Close()) // would give the next owner's conn back
				}
			}()
		}
		// The next owner, while the stale handle is hammered.
		c, err = p.GetContext(context.Background())
		require.NoError(t, err)
		if rounds%2 == 0 {
			runtime.Gosched()
			_, err = c.Do("GET", "k")
			require.NoError(t, err)
		}
		stale.Wait()
		require.NoError(t, c.Err())
		_, err = c.Do("GET", "k")
		require.NoError(t, err)
		if t.Failed() {
			break
		}
	}
	require.NoError(t, c.Close())
	s := p.Stats()
	t.Logf("%d rounds", rounds)
	assert.Zero(t, d.staleTouches.Load(), "a stale handle reached the conn")
	assert.Zero(t, s.Discards.Total(), "a stale handle changed the next owner's conn: %+v", s.Discards)
	assert.EqualValues(t, 1, d.made.Load())
	assert.Equal(t, 1, p.IdleCount())
	checkAtRest(t, p, 0)
}

// TestStressGiveBackAsACallerQueues: a conn or permit is given back
// (clean conn to the hot slot, clean conns to the hot slot and the idle
// channel at once, broken conn whose permit goes back, retired conn) at a
// random step of a caller that found nothing and is queueing. The caller
// always gets it: neither side may miss the other (wait.go's protocol).
// A miss would leave the caller waiting out WaitTimeout.
func TestStressGiveBackAsACallerQueues(t *testing.T) {
	type variant struct {
		name               string
		maxActive, maxIdle int
		getters            int
		giveBack           func(p *redispool.Pool, c redis.Conn)
	}
	clean := func(_ *redispool.Pool, c redis.Conn) { c.Close() }
	variants := []variant{
		{"clean_to_hot", 1, 1, 1, clean},
		{"clean_to_hot_and_idle", 2, 2, 2, clean},
		{"broken_permit_back", 1, 1, 1, func(_ *redispool.Pool, c redis.Conn) { c.Do("BREAK"); c.Close() }},
		{"retired_permit_back", 2, 2, 2, func(p *redispool.Pool, c redis.Conn) { p.Retire(); c.Close() }},
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			d := &fakeDialer{}
			p := &redispool.Pool{Dial: d.Dial, MaxActive: v.maxActive, MaxIdle: v.maxIdle, WaitTimeout: 2 * time.Second}
			defer p.Close()
			deadline := time.Now().Add(1500 * time.Millisecond)
			rounds := 0
			for ; rounds < 20000 && time.Now().Before(deadline); rounds++ {
				held := make([]redis.Conn, v.maxActive)
				for i := range held {
					c, err := p.GetContext(context.Background())
					require.NoError(t, err)
					held[i] = c
				}
				got := make(chan error, v.getters)
				for range v.getters {
					go func() {
						c, err := p.GetContext(context.Background())
						if err == nil {
							c.Close()
						}
						got <- err
					}()
				}
				for range rounds % 97 { // move the give-back across the callers' steps
					runtime.Gosched()
				}
				var wg sync.WaitGroup
				for _, c := range held[:v.getters] {
					wg.Add(1)
					go func() { defer wg.Done(); v.giveBack(p, c) }()
				}
				wg.Wait()
				for range v.getters {
					select {
					case err := <-got:
						require.NoError(t, err, "round %d: a caller missed what was given back as it queued", rounds)
					case <-time.After(5 * time.Second):
						t.Fatalf("round %d: a caller never got what was given back", rounds)
					}
				}
				closeAll(held[v.getters:])
			}
			t.Logf("%d rounds, %d waits", rounds, p.Stats().WaitCount)
			checkAtRest(t, p, 0)
		})
	}
}

// TestStressGiveBackRaceOversubscribed is the give-back race of
// TestStressGiveBackAsACallerQueues with more Ps than cores and several
// pools at once, so that the OS deschedules threads inside the few
// instructions between a step and the check that closes the race.
func TestStressGiveBackRaceOversubscribed(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4 * runtime.NumCPU()))
	const pools = 8
	deadline := time.Now().Add(3 * time.Second)
	var wg sync.WaitGroup
	var rounds, misses atomic.Int64
	for k := range pools {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := &fakeDialer{}
			p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: time.Second}
			defer p.Close()
			for time.Now().Before(deadline) {
				held, err := p.GetContext(context.Background())
				if !assert.NoError(t, err) {
					return
				}
				got := make(chan error, 1)
				go func() {
					c, err := p.GetContext(context.Background())
					if err == nil {
						c.Close()
					}
					got <- err
				}()
				n := rounds.Add(1)
				for range n % 31 {
					runtime.Gosched()
				}
				if k%2 == 0 {
					held.Close() // to the hot slot
				} else {
					held.Do("BREAK") // its permit goes back
					held.Close()
				}
				if err := <-got; err != nil {
					misses.Add(1)
					t.Errorf("pool %d: a caller missed what was given back as it queued: %v", k, err)
					return
				}
			}
		}()
	}
	waitGroupWithin(t, &wg, 30*time.Second, "the pools")
	t.Logf("%d rounds, %d misses", rounds.Load(), misses.Load())
}

// TestStressAbandonedDialsGiveTheirPermitBack: callers give up on
// slow dials (short contexts, ended contexts, WaitTimeout) that then
// succeed, fail or panic; each such dial hands its conn to the pool or its
// permit back, so the pool ends with every permit and dial slot.
func TestStressAbandonedDialsGiveTheirPermitBack(t *testing.T) {
	// A clock that leaps on every read: no dial backoff holds callers back.
	var leaps atomic.Int64
	base := time.Now()
	defer redispool.SetNowFunc(func() time.Time { return base.Add(time.Duration(leaps.Add(1)) * redispool.BackoffCap) })()
	var inDial atomic.Int64
	d := &fakeDialer{}
	p := &redispool.Pool{MaxActive: 3, MaxConcurrentDials: 2, WaitTimeout: 3 * time.Millisecond, Dial: func() (redis.Conn, error) {
		inDial.Add(1)
		defer inDial.Add(-1)
		time.Sleep(time.Duration(rand.IntN(4000)) * time.Microsecond)
		switch rand.IntN(4) {
		case 0:
			return nil, errRefused
		case 1:
			panic("stress: dial panicked")
		}
		return d.Dial()
	}}
	defer p.Close()
	deadline := time.Now().Add(1500 * time.Millisecond)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				ctx, cancel, _ := stressCtx()
				r := tryGet(p, ctx)
				cancel()
				if r.err == nil && r.c != nil {
					if rand.IntN(2) == 0 {
						r.c.Do("BREAK") // closed: its permit goes back, the next Get dials
					}
					r.c.Close()
				} else if errors.Is(r.err, redispool.ErrDialBackoff) {
					time.Sleep(time.Millisecond)
				}
			}
		}()
	}
	waitGroupWithin(t, &wg, 20*time.Second, "the callers")
	require.Eventually(t, func() bool {
		return inDial.Load() == 0 && p.ActiveCount() == p.IdleCount()
	}, 10*time.Second, time.Millisecond)
	s := p.Stats()
	t.Logf("%d dials, %d failed, %d wait timeouts", s.DialCount, s.DialErrorCount, s.WaitTimeoutCount)
	checkAtRest(t, p, 0)
}

// ---------------------------------------------------------------------------
// The cost of a Get and Close.

func TestGetClosePathAllocatesAtMostOnce(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial}
	defer p.Close()
	p.Get().Close()
	ctx := context.Background()
	n := testing.AllocsPerRun(1000, func() {
		c, _ := p.GetContext(ctx)
		c.Close()
	})
	assert.LessOrEqual(t, n, 1.0, "allocations per Get+Close")
}

// BenchmarkPoolGetClose measures the pool's own overhead: Get and Close of a
// fake connection, for redispool and for redigo's bounded redis.Pool.
func BenchmarkPoolGetClose(b *testing.B) {
	shapes := []struct{ size, clients int }{{1, 1}, {8, 32}, {64, 256}}
	for _, s := range shapes {
		b.Run(fmt.Sprintf("redispool/size=%d/clients=%d", s.size, s.clients), func(b *testing.B) {
			p := &redispool.Pool{Dial: dialNop, MaxActive: s.size}
			defer p.Close()
			benchGetClose(b, s.clients, func() redis.Conn { c, _ := p.GetContext(context.Background()); return c })
		})
		b.Run(fmt.Sprintf("redigo/size=%d/clients=%d", s.size, s.clients), func(b *testing.B) {
			p := &redis.Pool{Dial: dialNop, MaxActive: s.size, MaxIdle: s.size, Wait: true}
			defer p.Close()
			benchGetClose(b, s.clients, p.Get)
		})
	}
}

func benchGetClose(b *testing.B, clients int, get func() redis.Conn) {
	b.ReportAllocs()
	if clients == 1 {
		for b.Loop() {
			get().Close()
		}
		return
	}
	b.SetParallelism((clients + 1) / 2) // GOMAXPROCS x parallelism goroutines
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			get().Close()
		}
	})
}

// ---------------------------------------------------------------------------
// Helpers.

type stressConfig struct {
	maxActive, maxIdle, maxDials, workers int
	waitTimeout                           time.Duration
	healthCheck                           bool
	leakThreshold                         time.Duration
}

// runStress runs a randomized workload against a pool and checks the pool's
// invariants during and after it.
func runStress(t *testing.T, cfg stressConfig, dur time.Duration, maxOps int) {
	d := &fakeDialer{}
	d.faults.Store(true)
	var tobFaults atomic.Bool
	tobFaults.Store(cfg.healthCheck)
	p := &redispool.Pool{
		Dial:               d.Dial,
		MaxActive:          cfg.maxActive,
		MaxIdle:            cfg.maxIdle,
		MaxConcurrentDials: cfg.maxDials,
		WaitTimeout:        cfg.waitTimeout,
		LeakThreshold:      cfg.leakThreshold,
		Logger:             slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if cfg.healthCheck {
		p.TestOnBorrow = func(redis.Conn, time.Time) error {
			if !tobFaults.Load() {
				return nil
			}
			switch r := rand.IntN(400); {
			case r < 6:
				return errUnhealthy
			case r < 7:
				panic("stress: TestOnBorrow panicked")
			}
			return nil
		}
	}
	defer p.Close()

	var stop atomic.Bool
	var ops, gets, fails, panics atomic.Int64
	var errMu sync.Mutex
	errKinds := map[string]int{}
	var wg sync.WaitGroup
	deadline := time.Now().Add(dur)

	// Sampler: the bounds hold at every moment.
	var samplerWG sync.WaitGroup
	samplerWG.Add(1)
	go func() {
		defer samplerWG.Done()
		for !stop.Load() {
			if n := p.ActiveCount(); n > cfg.maxActive {
				t.Errorf("ActiveCount %d > MaxActive %d", n, cfg.maxActive)
			}
			if n := p.IdleCount(); n > cfg.maxIdle {
				t.Errorf("IdleCount %d > MaxIdle %d", n, cfg.maxIdle)
			}
			if n := d.open.Load(); n > int64(cfg.maxActive) {
				t.Errorf("%d conns open > MaxActive %d", n, cfg.maxActive)
			}
			time.Sleep(50 * time.Microsecond)
		}
	}()
	// Retire now and then.
	samplerWG.Add(1)
	go func() {
		defer samplerWG.Done()
		for !stop.Load() {
			time.Sleep(time.Duration(500+rand.IntN(3000)) * time.Microsecond)
			p.Retire()
		}
	}()

	for range cfg.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) && ops.Add(1) <= int64(maxOps) {
				ctx, cancel, mustFail := stressCtx()
				r := tryGet(p, ctx)
				c, err := r.c, r.err
				gets.Add(1)
				switch {
				case r.panicked != nil:
					panics.Add(1)
				case err != nil:
					fails.Add(1)
					k := err.Error()
					if len(k) > 40 {
						k = k[:40]
					}
					errMu.Lock()
					errKinds[k]++
					errMu.Unlock()
					if errors.Is(err, redispool.ErrDialBackoff) {
						time.Sleep(time.Millisecond) // do not spin on fast failures
					}
					if !expectedGetError(err) {
						t.Errorf("unexpected Get error: %v", err)
					}
					if c == nil {
						t.Error("GetContext returned a nil conn with its error")
					}
				case mustFail:
					t.Error("a Get whose context had ended got a conn")
					c.Close()
				default:
					useConn(t, c)
				}
				cancel()
			}
		}()
	}
	waitGroupWithin(t, &wg, dur+20*time.Second, "the workers")
	stop.Store(true)
	samplerWG.Wait()

	// Quiescence: dials given up on finish and hand their conn to the pool.
	d.faults.Store(false)
	tobFaults.Store(false)
	require.Eventually(t, func() bool {
		return d.inDial.Load() == 0 && p.ActiveCount() == p.IdleCount() && int64(p.ActiveCount()) == d.open.Load()
	}, 10*time.Second, time.Millisecond, "at rest every conn open is idle: active %d idle %d open %d",
		p.ActiveCount(), p.IdleCount(), d.open.Load())

	checkAtRest(t, p, 0)

	s := p.Stats()
	t.Logf("%+v: %d gets (%d failed, %d panicked), %d dials, %d waits, %d wait timeouts, discards %+v",
		cfg, gets.Load(), fails.Load(), panics.Load(), s.DialCount, s.WaitCount, s.WaitTimeoutCount, s.Discards)
	t.Logf("errors: %v", errKinds)
	assert.LessOrEqual(t, d.peak.Load(), int64(cfg.maxActive), "more than MaxActive conns open at once")
	assert.Zero(t, d.staleTouches.Load(), "a stale handle reached a conn")
	assert.Equal(t, d.made.Load(), s.DialCount-s.DialErrorCount, "dials that made a conn")
	assert.Equal(t, d.closed.Load(), s.Discards.Total(), "every conn closed was discarded once")
	assert.Equal(t, d.made.Load(), d.closed.Load()+int64(s.ActiveCount))
	assert.LessOrEqual(t, s.IdleCount, cfg.maxIdle)

	// No permit or conn was lost: MaxActive conns at once, at once. Dials may
	// be backing off after the injected failures.
	held := make([]redis.Conn, 0, cfg.maxActive)
	for len(held) < cfg.maxActive {
		c, err := p.GetContext(context.Background())
		if errors.Is(err, redispool.ErrDialBackoff) {
			time.Sleep(5 * time.Millisecond)
			continue
		}
		require.NoError(t, err, "Get #%d of MaxActive %d after the run: a permit or conn was lost", len(held)+1, cfg.maxActive)
		held = append(held, c)
	}
	// ... and no more: no permit was made up either.
	_, err := p.GetContext(context.Background())
	assert.ErrorIs(t, err, redispool.ErrPoolExhausted, "more than MaxActive conns handed out")
	assert.Equal(t, cfg.maxActive, p.ActiveCount())
	assert.Equal(t, 0, p.IdleCount())
	before := p.Stats().Discards.MaxIdle
	closeAll(held)
	// MaxIdle exactly: the rest are closed.
	assert.Equal(t, cfg.maxIdle, p.IdleCount(), "idle conns after giving back MaxActive")
	assert.EqualValues(t, cfg.maxActive-cfg.maxIdle, p.Stats().Discards.MaxIdle-before)
	checkAtRest(t, p, 0)

	require.NoError(t, p.Close())
	assert.Equal(t, 0, p.ActiveCount())
	assert.Equal(t, 0, p.IdleCount())
	assert.Zero(t, d.open.Load(), "conns left open after Close")
	_, err = p.GetContext(context.Background())
	assert.Equal(t, redispool.ErrPoolClosed, err)
}

// stressCtx returns a random context for a Get: none, cancelled at a random
// moment, with a short deadline, already cancelled, or one whose Err is set
// without Done closing (the order in which a grant and a cancellation race).
// mustFail is set when the context ended before the Get began.
func stressCtx() (ctx context.Context, cancel func(), mustFail bool) {
	switch r := rand.IntN(100); {
	case r < 40:
		return context.Background(), func() {}, false
	case r < 60:
		ctx, cancel := context.WithCancel(context.Background())
		tm := time.AfterFunc(time.Duration(rand.IntN(3000))*time.Microsecond, cancel)
		return ctx, func() { tm.Stop(); cancel() }, false
	case r < 80:
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rand.IntN(5000))*time.Microsecond)
		return ctx, cancel, false
	case r < 85:
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		return ctx, cancel, true
	default:
		lc := redispool.NewLateContext()
		tm := time.AfterFunc(time.Duration(rand.IntN(3000))*time.Microsecond, func() { lc.End(context.Canceled) })
		return lc, func() { tm.Stop() }, false
	}
}

// expectedGetError reports whether err is one a Get may fail with in a
// stress run before the pool is closed.
func expectedGetError(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, redispool.ErrPoolExhausted) || errors.Is(err, redispool.ErrDialBackoff) ||
		errors.Is(err, errRefused)
}

// useConn does random things with a borrowed conn, then closes it, and
// sometimes uses it again after Close, which must fail without reaching the
// conn (by then lent to someone else).
func useConn(t *testing.T, c redis.Conn) {
	// One borrower at a time: a conn handed out twice would show here.
	r, err := c.Do("WHOAMI")
	if errors.Is(err, redispool.ErrConnRetired) || !assert.NoError(t, err) {
		c.Close() // retired by a Retire running meanwhile
		return
	}
	fc := r.(*fakeConn)
	if !fc.borrowed.CompareAndSwap(false, true) {
		calls := fc.Calls()
		t.Errorf("a conn was handed to two borrowers at once: %p, after %q", c, calls[max(len(calls)-12, 0):])
	}
	switch r := rand.IntN(100); {
	case r < 30:
		if _, err := c.Do("GET", "k"); !errors.Is(err, redispool.ErrConnRetired) {
			assert.NoError(t, err)
		}
	case r < 36:
		c.Do("BREAK")
	case r < 42:
		c.Do("SUBSCRIBE", "ch")
	case r < 52:
		for range 1 + rand.IntN(2) {
			c.Send("GET", "k")
		}
	case r < 57:
		c.Do("MULTI")
		c.Do("SET", "k", "v")
	case r < 64:
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rand.IntN(1000))*time.Microsecond)
		redis.DoContext(c, ctx, "SLOW", rand.IntN(1500))
		cancel()
	case r < 71:
		time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
	case r < 74: // long enough for waiters to reach WaitTimeout
		time.Sleep(time.Duration(5000+rand.IntN(20000)) * time.Microsecond)
	}
	closeConn := func() {
		// A conn retired meanwhile drops the commands left pending, and says so.
		if err := c.Close(); !errors.Is(err, redispool.ErrConnRetired) {
			assert.NoError(t, err)
		}
	}
	switch rand.IntN(16) {
	case 0:
		fc.borrowed.Store(false)
		var wg sync.WaitGroup
		for range 2 {
			wg.Add(1)
			go func() { defer wg.Done(); closeConn() }()
		}
		wg.Wait()
	default:
		fc.borrowed.Store(false)
		closeConn()
	}
	if rand.IntN(3) == 0 {
		_, err := c.Do("STALE")
		assert.Equal(t, redispool.ErrConnClosed, err, "a closed conn must fail")
		assert.Equal(t, redispool.ErrConnClosed, c.Err())
		assert.Equal(t, redispool.ErrConnClosed, c.Send("STALE"))
		assert.NoError(t, c.Close())
	}
}

// nopConn is a connection that does nothing, so that only the pool is measured.
type nopConn struct{}

func dialNop() (redis.Conn, error) { return nopConn{}, nil }

func (nopConn) Close() error { return nil }

func (nopConn) Err() error { return nil }

func (nopConn) Do(string, ...any) (any, error) { return nil, nil }

func (nopConn) Send(string, ...any) error { return nil }

func (nopConn) Flush() error { return nil }

func (nopConn) Receive() (any, error) { return nil, nil }

func (nopConn) DoWithTimeout(time.Duration, string, ...any) (any, error) { return nil, nil }

func (nopConn) ReceiveWithTimeout(time.Duration) (any, error) { return nil, nil }
