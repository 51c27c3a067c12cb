package bench

import (
	"bytes"
	"context"
	"math"
	"net"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redispool/redispool/internal/redistest"
)

// TestShortRun runs every part in short mode against a real redis-server. The
// figures of so short a run are noise, so it checks only that every part ran
// and produced positive figures, and the one deterministic target: redispool
// opens at most its MaxActive connections, whatever the run's length.
func TestShortRun(t *testing.T) {
	srv := redistest.Start(t)
	var out bytes.Buffer
	rep, err := Run(context.Background(), Config{Short: true, Addr: srv.Addr(), Out: &out})
	require.NoError(t, err)
	t.Logf("poolbench -short:\n%s", out.String())

	require.Len(t, rep.GetClose, len(getCloseShapes))
	for _, res := range rep.GetClose {
		require.Len(t, res.Rows, len(fakePoolNames), "%s", res.Shape)
		for _, row := range res.Rows {
			require.Len(t, row.NsPerOp, 1)
			// Finite: some operations were done in the measured window.
			assert.True(t, row.NsPerOp[0] > 0 && !math.IsInf(row.NsPerOp[0], 0), "get+close %s %s ns/op %v", res.Shape, row.Pool, row.NsPerOp[0])
			assert.Zero(t, row.Errors[0], "get+close %s %s failed Gets", res.Shape, row.Pool)
			if row.Pool != nameRedispool {
				assert.Positive(t, row.Ratio[0], "get+close %s %s ratio", res.Shape, row.Pool)
			}
		}
	}

	require.Len(t, rep.Waiting, len(fakePoolNames))
	require.Len(t, rep.WaitingSleep, len(fakePoolNames))
	for _, row := range slices.Concat(rep.Waiting, rep.WaitingSleep) {
		require.Len(t, row.P50, 1)
		assert.Positive(t, row.Acquires[0], "waiting %s acquires", row.Pool)
		assert.Positive(t, row.Elapsed[0], "waiting %s time measured", row.Pool)
		assert.Positive(t, row.P50[0], "waiting %s p50 wait: clients waited", row.Pool)
		assert.Zero(t, row.Errors[0], "waiting %s errors", row.Pool)
	}

	_, benchErr := exec.LookPath("redis-benchmark")
	require.Len(t, rep.E2E, len(e2eOps)*len(e2eNames))
	for _, row := range rep.E2E {
		if row.Pool == nameRedisBenchmark && benchErr != nil {
			assert.NotEmpty(t, row.Skipped)
			continue
		}
		require.Empty(t, row.Skipped, "%s %s", row.Op, row.Pool)
		require.Len(t, row.OpsPerSec, 1)
		assert.Positive(t, row.OpsPerSec[0], "e2e %s %s ops/s", row.Op, row.Pool)
		assert.Positive(t, row.P99[0], "e2e %s %s p99", row.Op, row.Pool)
		assert.Zero(t, row.Errors[0], "e2e %s %s errors", row.Op, row.Pool)
		if row.Pool != nameRedisBenchmark && runtime.GOOS == "linux" {
			assert.Positive(t, row.CPUPerOp[0], "e2e %s %s CPU per command", row.Op, row.Pool)
		}
		if row.Pool != nameRedispool {
			assert.False(t, math.IsNaN(row.RatioOps[0]), "e2e %s %s ratio", row.Op, row.Pool)
		}
	}

	require.Len(t, rep.ConnCost, len(connNames))
	for _, row := range rep.ConnCost {
		require.Len(t, row.Opened, 1)
		assert.Positive(t, row.Opened[0], "conncost %s opened", row.Pool)
		assert.Positive(t, row.LongOpened, "conncost %s long run opened", row.Pool)
		assert.Positive(t, row.CmdsPerSec[0], "conncost %s cmds/s", row.Pool)
		assert.Zero(t, sumInt(row.Errors), "conncost %s errors", row.Pool)
		if row.Pool == nameRedispoolDefault {
			assert.LessOrEqual(t, row.Opened[0], int64(row.Limit), "redispool opened more than MaxActive")
			assert.LessOrEqual(t, row.LongOpened, int64(row.Limit), "redispool opened more than MaxActive in the long run")
		}
	}

	checkShortPipeline(t, rep.Pipeline)
	checkShortBorrow(t, rep.Borrow)
	checkShortAutoPipe(t, rep.AutoPipe)

	// Every target is evaluated (none skipped) and printed.
	for _, tg := range rep.Targets {
		if unmeasurable(tg, benchErr != nil) {
			continue
		}
		assert.False(t, tg.Skipped, "target %q skipped: %s", tg.Name, tg.Got)
		assert.Contains(t, out.String(), tg.Name)
	}
	for _, heading := range []string{"1. Get+Close", "2. Waiting", "2b. Waiting", "3. End to end", "4. Connection cost",
		"5. Pipelines", "6. One-command borrow", "7. Auto-pipelining", "targets", "GOMAXPROCS"} {
		assert.Contains(t, out.String(), heading)
	}
}

// unmeasurable reports whether this machine cannot measure tg: without
// redis-benchmark, or the CPU time, which is read on Linux only.
func unmeasurable(tg Target, noRedisBenchmark bool) bool {
	return (strings.Contains(tg.Name, "redis-benchmark") && noRedisBenchmark) ||
		((strings.Contains(tg.Name, "CPU per") || strings.Contains(tg.Name, "CPU/op")) && runtime.GOOS != "linux")
}

// checkShortPipeline checks that the pipeline part ran every pool in every
// variant, with no error: every reply was the value set.
func checkShortPipeline(t *testing.T, rows []PipeRow) {
	t.Helper()
	require.Len(t, rows, len(pipeDialers)*len(pipeNames))
	for _, row := range rows {
		require.Len(t, row.OpsPerSec, 1)
		assert.Positive(t, row.OpsPerSec[0], "pipeline %s %s cmds/s", row.Dialer, row.Pool)
		assert.Zero(t, row.Errors[0], "pipeline %s %s errors", row.Dialer, row.Pool)
		if runtime.GOOS == "linux" {
			assert.Positive(t, row.CPUPerOp[0], "pipeline %s %s CPU per command", row.Dialer, row.Pool)
		}
		if row.Pool != nameRedispool && runtime.GOOS == "linux" {
			assert.Positive(t, row.RatioCPU[0], "pipeline %s %s CPU ratio", row.Dialer, row.Pool)
		}
	}
}

// checkShortBorrow checks that the borrow part ran both pools, and that
// every Do got the no-op conn's reply.
func checkShortBorrow(t *testing.T, rows []GetCloseRow) {
	t.Helper()
	require.Len(t, rows, len(borrowNames))
	for _, row := range rows {
		require.Len(t, row.NsPerOp, 1)
		assert.True(t, row.NsPerOp[0] > 0 && !math.IsInf(row.NsPerOp[0], 0), "borrow %s ns/op %v", row.Pool, row.NsPerOp[0])
		assert.Zero(t, row.Errors[0], "borrow %s failed operations", row.Pool)
	}
	assert.Positive(t, rows[1].Ratio[0], "borrow ratio")
}

// checkShortAutoPipe checks that the auto-pipelining part ran every
// participant at every number of clients without an error, and that
// redispool AutoPipeline wrote batches to shared conns.
func checkShortAutoPipe(t *testing.T, rows []AutoRow) {
	t.Helper()
	require.Len(t, rows, len(e2eOps)*len(autoClients)*len(autoNames))
	for _, row := range rows {
		require.Len(t, row.OpsPerSec, 1)
		assert.Positive(t, row.OpsPerSec[0], "autopipe %s x%d %s ops/s", row.Op, row.Clients, row.Pool)
		assert.Zero(t, row.Errors[0], "autopipe %s x%d %s errors", row.Op, row.Clients, row.Pool)
		if row.Pool == nameRedispoolAuto {
			assert.Positive(t, row.CmdsPerBatch[0], "autopipe %s x%d commands per batch", row.Op, row.Clients)
		} else {
			assert.False(t, math.IsNaN(row.RatioOps[0]), "autopipe %s x%d %s ratio", row.Op, row.Clients, row.Pool)
		}
	}
}

// TestHist checks the histogram's quantiles against exact ones.
func TestHist(t *testing.T) {
	var h hist
	for i := 1; i <= 10000; i++ {
		h.record(time.Duration(i) * time.Microsecond)
	}
	for _, q := range []float64{0.5, 0.99, 1} {
		want := float64(q*10000) * float64(time.Microsecond)
		got := float64(h.quantile(q))
		assert.InEpsilon(t, want, got, 0.02, "q=%v", q)
	}
	assert.Equal(t, 10000*time.Microsecond, time.Duration(h.max))
	for v := int64(0); v < 1<<20; v += 997 {
		i := bucketOf(v)
		mid := bucketMid(i)
		assert.InDelta(t, float64(v), float64(mid), math.Max(1, float64(v)/64), "v=%d", v)
	}
}

func TestMedianRatios(t *testing.T) {
	assert.Equal(t, 2.0, median([]float64{3, 1, 2}))
	assert.Equal(t, 2.5, median([]float64{4, 1, 2, 3}))
	assert.Equal(t, 2.0, median([]float64{math.NaN(), 2}))
	assert.True(t, math.IsNaN(median(nil)))
	assert.Equal(t, []float64{0.5, 2}, ratios([]float64{1, 4}, []float64{2, 2}))
	assert.Equal(t, "1,234,568", fmtCount(1234567.8))
	assert.Equal(t, "999", fmtCount(999))
}

// TestRotationIsBalanced checks that over its period the order of the
// pools puts every pool in every position equally often, and right after
// every other pool equally often, counting the pair that spans two rows.
func TestRotationIsBalanced(t *testing.T) {
	for n := 1; n <= 6; n++ {
		period := n
		if n%2 == 1 {
			period = 2 * n
		}
		pos := make(map[[2]int]int)  // {pool, position}
		next := make(map[[2]int]int) // {pool, the pool right after it}
		var seq []int
		for k := range period {
			row := rotation(n, k)
			require.ElementsMatch(t, seqTo(n), row, "n=%d k=%d is not a permutation", n, k)
			for j, p := range row {
				pos[[2]int{p, j}]++
			}
			for j := 1; j < n; j++ {
				next[[2]int{row[j-1], row[j]}]++
			}
			seq = append(seq, row...)
		}
		for p := range n {
			for j := range n {
				assert.Equal(t, period/n, pos[[2]int{p, j}], "n=%d: pool %d in position %d", n, p, j)
			}
			for q := range n {
				if p != q {
					assert.Equal(t, period/n, next[[2]int{p, q}], "n=%d: pool %d right after pool %d", n, q, p)
				}
			}
		}
		assert.Equal(t, rotation(n, 0), rotation(n, period), "n=%d: the period", n)
	}
}

func seqTo(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

// TestHolds checks that each kind of hold lasts at least waitHold, and that
// a busy hold ends soon after: it yields, so even with more holders than
// processors each notices its time is up within a round of the others.
func TestHolds(t *testing.T) {
	for _, kind := range []string{HoldSleep, HoldBusy} {
		hold := holdFunc(kind)
		start := time.Now()
		hold()
		assert.GreaterOrEqual(t, time.Since(start), waitHold, "%s hold", kind)
	}

	hold := holdFunc(HoldBusy)
	holders := 4 * runtime.GOMAXPROCS(0)
	var mu sync.Mutex
	var took []float64
	var wg sync.WaitGroup
	for range holders {
		wg.Go(func() {
			for range 20 {
				start := time.Now()
				hold()
				d := float64(time.Since(start))
				mu.Lock()
				took = append(took, d)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	// A sleep lasts up to a millisecond whenever the process is idle; a
	// busy hold has no reason to, whatever the machine's load.
	assert.Less(t, time.Duration(median(took)), 10*waitHold, "median busy hold with %d holders", holders)
}

// TestTargetsTie checks how a ratio target is read: on the median of the
// rounds, marked a tie when it misses but the rounds' range holds the bound.
func TestTargetsTie(t *testing.T) {
	read := func(p99 []float64) Target {
		rep := &Report{Waiting: []WaitRow{{Pool: nameRedispool}, {Pool: nameRedigo, RatioP99: p99}}}
		for _, tg := range targets(rep) {
			if strings.Contains(tg.Name, "p99 wait <= redigo's") {
				return tg
			}
		}
		t.Fatal("no waiting p99 target")
		return Target{}
	}
	tg := read([]float64{0.9, 0.8, 0.95, 0.99, 0.97})
	assert.Equal(t, "PASS", tg.Status())
	assert.NotContains(t, tg.Got, "tie")

	// A median that passes while rounds fall on both sides is a tie too.
	tg = read([]float64{0.9, 1.2, 0.95, 1.1, 0.97})
	assert.Equal(t, "PASS", tg.Status())
	assert.Contains(t, tg.Got, "0.97 [0.90-1.20] x; a tie")

	tg = read([]float64{0.9, 1.2, 1.05, 1.1, 0.97})
	assert.Equal(t, "MISS", tg.Status())
	assert.Contains(t, tg.Got, "1.05 [0.90-1.20] x; a tie")

	tg = read([]float64{1.02, 1.2, 1.05, 1.1, 1.3})
	assert.Equal(t, "MISS", tg.Status())
	assert.NotContains(t, tg.Got, "tie")

	rep := &Report{E2E: []E2ERow{{Op: "GET", Pool: nameRedigo, RatioOps: []float64{0.97, 1.02, 0.95}, RatioP99: []float64{0.9, 0.8, 0.95}}}}
	seen := 0
	for _, tg := range targets(rep) {
		switch tg.Name {
		case "GET: redispool ops/s >= 1.0 x redigo's":
			seen++
			assert.Equal(t, "MISS", tg.Status())
			assert.Contains(t, tg.Got, "0.97 [0.95-1.02] x; a tie")
		case "GET: redispool p99 <= redigo's":
			seen++
			assert.Equal(t, "PASS", tg.Status())
			assert.NotContains(t, tg.Got, "tie")
		}
	}
	assert.Equal(t, 2, seen, "both end-to-end targets were read")
}

// TestFailedGetsAreNotOperations checks that part 1 counts a failed Get
// apart from the operations, and that one fails the shape's targets however
// fast its pool was.
func TestFailedGetsAreNotOperations(t *testing.T) {
	var calls atomic.Int64
	res := loop(4, 5*time.Millisecond, 20*time.Millisecond, func() bool {
		return calls.Add(1)%4 != 0 // every fourth fails
	})
	require.Positive(t, res.ops)
	assert.InDelta(t, 3.0, float64(res.ops)/float64(res.failed), 0.2, "%d ops, %d failed", res.ops, res.failed)

	rep := &Report{GetClose: []GetCloseResult{{Shape: getCloseShapes[1], Rows: []GetCloseRow{
		{Pool: nameRedispool, Errors: []int64{0, 3, 0}},
		{Pool: nameRedigo, Ratio: []float64{0.5, 0.5, 0.5}, Errors: []int64{0, 0, 0}},
		{Pool: namePuddle, Ratio: []float64{0.5, 0.5, 0.5}, Errors: []int64{0, 0, 0}},
	}}}}
	seen := 0
	for _, tg := range targets(rep) {
		if strings.HasPrefix(tg.Name, getCloseShapes[1].String()+": ") {
			seen++
			assert.Equal(t, "MISS", tg.Status(), tg.Name)
			assert.Contains(t, tg.Got, "0.50 [0.50-0.50] x; 3 Gets failed", tg.Name)
		}
	}
	assert.Equal(t, 2, seen, "both targets of the shape were read")

	rep.GetClose[0].Rows[0].Errors = []int64{0, 0, 0}
	for _, tg := range targets(rep) {
		if strings.HasPrefix(tg.Name, getCloseShapes[1].String()+": ") {
			assert.Equal(t, "PASS", tg.Status(), tg.Name)
		}
	}
}

// TestAcquiresPerSecondUseTheMeasuredTime checks that the waiting table's
// rate divides by the time measured, which a loaded machine stretches past
// the nominal one.
func TestAcquiresPerSecondUseTheMeasuredTime(t *testing.T) {
	row := WaitRow{Pool: nameRedispool,
		P50: []time.Duration{time.Millisecond}, P99: []time.Duration{time.Millisecond}, Max: []time.Duration{time.Millisecond},
		Acquires: []int64{3000, 1000}, Elapsed: []time.Duration{3 * time.Second, 2 * time.Second},
		MinClient: []int64{1, 1}, MeanClient: []float64{1, 1}, Cycle: []time.Duration{time.Millisecond, time.Millisecond},
		Errors: []int64{0, 0}, RatioP99: nanSlice(2), RatioCycle: nanSlice(2)}
	assert.Equal(t, []float64{1000, 500}, row.AcquiresPerSec())
	var out bytes.Buffer
	printWaiting(&out, []WaitRow{row})
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 2, "a header and a row:\n%s", out.String())
	header, fields := strings.Fields(lines[0]), strings.Fields(lines[1])
	col := slices.Index(header, "acquires/s")
	require.GreaterOrEqual(t, col, 0, "%s", lines[0])
	assert.Equal(t, "750", fields[col], "the median of 1,000/s and 500/s")
}

// TestWaitingTargetsReadTheBusyHold checks that the waiting p99 target is
// read on the busy hold, the one that lasts the shape's 50 µs, and that the
// sleep hold's ratio is reported beside it, with its fairness still checked.
func TestWaitingTargetsReadTheBusyHold(t *testing.T) {
	rows := func(p99 []float64, minClient int64) []WaitRow {
		return []WaitRow{
			{Pool: nameRedispool, P50: []time.Duration{time.Millisecond}, Max: []time.Duration{2 * time.Millisecond},
				MinClient: []int64{minClient}, MeanClient: []float64{100}, Cycle: []time.Duration{600 * time.Microsecond}},
			{Pool: nameRedigo, RatioP99: p99},
		}
	}
	rep := &Report{Waiting: rows([]float64{0.95}, 90), WaitingSleep: rows([]float64{1.3}, 0)}
	byName := map[string]Target{}
	for _, tg := range targets(rep) {
		if tg.Part == "waiting" {
			byName[tg.Name] = tg
		}
	}
	busy := "256 clients on 16 conns held 50µs"
	sleep := "the same held by time.Sleep(50µs)"
	assert.Equal(t, "PASS", byName[busy+": redispool p99 wait <= redigo's"].Status())
	assert.Equal(t, "PASS", byName[busy+": no starvation (every client served in every round)"].Status())
	reported := byName[sleep+": redispool p99 wait / redigo's reported"]
	assert.Equal(t, "INFO", reported.Status(), "reported, not a target")
	assert.Equal(t, "1.30 x; a conn cycle lasts 600us, not 50µs", reported.Got)
	assert.Equal(t, "MISS", byName[sleep+": no starvation (every client served in every round)"].Status())
	assert.Len(t, byName, 6, "three targets per hold")

	rep.Waiting, rep.WaitingSleep = rows([]float64{1.3}, 90), rows([]float64{0.95}, 90)
	for _, tg := range targets(rep) {
		if tg.Name == busy+": redispool p99 wait <= redigo's" {
			assert.Equal(t, "MISS", tg.Status(), "read on the busy hold")
		}
	}
}

// TestMaxWaitIsReadOnTheWorstRound: max wait < 20 x p50 is a bound on the
// worst case, so one round above it fails the target.
func TestMaxWaitIsReadOnTheWorstRound(t *testing.T) {
	ms := func(xs ...int) []time.Duration {
		out := make([]time.Duration, len(xs))
		for i, x := range xs {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	rep := &Report{Waiting: []WaitRow{
		{Pool: nameRedispool, P50: ms(1, 1, 1), Max: ms(2, 25, 3),
			MinClient: []int64{90, 90, 90}, MeanClient: []float64{100, 100, 100}},
		{Pool: nameRedigo, RatioP99: []float64{0.9, 0.9, 0.9}},
	}}
	for _, tg := range targets(rep) {
		if tg.Name == "256 clients on 16 conns held 50µs: redispool max wait < 20 x p50" {
			assert.Equal(t, "MISS", tg.Status(), tg.Got)
			assert.Contains(t, tg.Got, "25.0 in the worst round")
			return
		}
	}
	t.Fatal("no max wait target")
}

// TestChannelPoolReportsADialError checks that the bare channel of the end
// to end part fails its commands, rather than blocking on an empty channel,
// when its conns cannot be dialed, and that close then returns.
func TestChannelPoolReportsADialError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close()) // nothing listens there now

	c := newChannelE2E(addr)
	for range 2 {
		err := c.do(context.Background(), false, "key")
		require.ErrorContains(t, err, "channel: dialing")
	}
	c.close()
}

// TestPipelineAndBorrowTargets checks that the issue 16 targets are read on
// the median ratio to redigo, per dialer for pipelines, and that an error in
// either pool fails them however the ratio reads.
func TestPipelineAndBorrowTargets(t *testing.T) {
	rep := &Report{
		Pipeline: []PipeRow{
			{Dialer: dialerPool, Pool: nameRedispool, Errors: []int64{0, 0, 0}},
			{Dialer: dialerPool, Pool: nameRedigo, Errors: []int64{0, 0, 0}, RatioCPU: []float64{0.9, 0.95, 0.97}},
			{Dialer: dialerUser, Pool: nameRedispool, Errors: []int64{0, 2, 0}},
			{Dialer: dialerUser, Pool: nameRedigo, Errors: []int64{0, 0, 0}, RatioCPU: []float64{0.9, 0.95, 0.97}},
		},
		Borrow: []GetCloseRow{
			{Pool: nameRedispool, Errors: []int64{0, 0, 0}},
			{Pool: nameRedigo, Errors: []int64{0, 0, 0}, Ratio: []float64{0.7, 0.85, 0.9}},
		},
	}
	got := map[string]Target{}
	for _, tg := range targets(rep) {
		if tg.Part == "pipeline" || tg.Part == "borrow" {
			got[tg.Name] = tg
		}
	}
	require.Len(t, got, 3)
	pool := got[dialerPool+": redispool CPU per pipelined command <= 1.0 x redigo's"]
	assert.Equal(t, "PASS", pool.Status(), pool.Got)
	assert.Equal(t, "0.95 [0.90-0.97] x", pool.Got)
	user := got[dialerUser+": redispool CPU per pipelined command <= 1.0 x redigo's"]
	assert.Equal(t, "MISS", user.Status(), "errors fail the target")
	assert.Contains(t, user.Got, "2 errors")
	borrow := got["Get, Do(PING), Close, 1 client on 1 conn: redispool ns/op <= 0.8 x redigo's"]
	assert.Equal(t, "MISS", borrow.Status(), borrow.Got)
	assert.Equal(t, "0.85 [0.70-0.90] x; a tie: the range holds 0.8", borrow.Got)

	for _, tg := range targets(&Report{}) {
		if tg.Part == "pipeline" || tg.Part == "borrow" {
			assert.Equal(t, "SKIP", tg.Status(), "%s: not run", tg.Name)
		}
	}
}
