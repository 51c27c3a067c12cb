package bench

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// Thresholds of the done-when list.
const (
	targetSoloRatio      = 0.8  // Get+Close, 1 client: redispool ns/op <= 0.8 x redigo's
	targetSoloAllocs     = 1.0  // ... and at most 1 alloc per Get/Close
	allocsSlack          = 0.01 // allocations by the runtime itself during a measurement
	targetContendedRatio = 1.0  // contended: <= 1.0 x redigo's and <= puddle's
	targetMaxOverP50     = 20.0 // waiting: max wait < 20 x p50

	// Issue 16.
	targetPipelineCPU = 1.0 // pipelines: redispool CPU per command <= 1.0 x redigo's, either dialer
	targetBorrowRatio = 0.8 // one-command borrow: redispool ns/op <= 0.8 x redigo's
)

func targets(rep *Report) []Target {
	var out []Target
	add := func(part, name string, skipped, pass bool, got string) {
		out = append(out, Target{Part: part, Name: name, Skipped: skipped, Pass: pass && !skipped, Got: got})
	}
	report := func(part, name, got string) {
		out = append(out, Target{Part: part, Name: name, Info: true, Got: got})
	}

	// Part 1.
	shape := func(s Shape) *GetCloseResult {
		for i := range rep.GetClose {
			if rep.GetClose[i].Shape == s {
				return &rep.GetClose[i]
			}
		}
		return nil
	}
	row := func(res *GetCloseResult, pool string) *GetCloseRow {
		if res == nil {
			return nil
		}
		for i := range res.Rows {
			if res.Rows[i].Pool == pool {
				return &res.Rows[i]
			}
		}
		return nil
	}
	// ratioTarget reads a target on the median of per-round ratios (see
	// ratioOK and ratioGot).
	ratioTarget := func(part, name string, xs []float64, bound float64, atLeast bool) {
		add(part, name, xs == nil || math.IsNaN(median(xs)), ratioOK(xs, bound, atLeast), ratioGot(xs, bound))
	}
	// getCloseTarget is ratioTarget for part 1, where a failed Get, which
	// is not counted as an operation, fails the target: its pool did not do
	// what the others did.
	getCloseTarget := func(name string, res *GetCloseResult, peer string, xs []float64, bound float64) {
		got, ok := ratioGot(xs, bound), ratioOK(xs, bound, false)
		if n := failedGets(res, nameRedispool, peer); n > 0 {
			got += fmt.Sprintf("; %d Gets failed", n)
			ok = false
		}
		add("get+close", name, xs == nil || math.IsNaN(median(xs)), ok, got)
	}
	solo := shape(getCloseShapes[0])
	var soloRatio, soloAllocs []float64
	if r := row(solo, nameRedigo); r != nil {
		soloRatio = r.Ratio
	}
	if r := row(solo, nameRedispool); r != nil {
		soloAllocs = r.AllocsPerOp
	}
	getCloseTarget("1 client: redispool ns/op <= 0.8 x redigo's", solo, nameRedigo, soloRatio, targetSoloRatio)
	a := median(soloAllocs)
	add("get+close", "1 client: redispool <= 1 alloc per Get+Close", soloAllocs == nil, a <= targetSoloAllocs+allocsSlack,
		fmt.Sprintf("%.2f allocs/op", a))
	for _, s := range getCloseShapes[1:] {
		res := shape(s)
		for _, peer := range []string{nameRedigo, namePuddle} {
			var xs []float64
			if r := row(res, peer); r != nil {
				xs = r.Ratio
			}
			getCloseTarget(fmt.Sprintf("%s: redispool ns/op <= 1.0 x %s's", s, peer), res, peer, xs, targetContendedRatio)
		}
	}

	// Part 2: the targets are read on the busy hold, which lasts the shape's
	// 50 µs; the sleep hold lasts what the runtime's timers make of it (see
	// HoldSleep), so its p99 ratio is reported, and its fairness checked.
	for _, set := range []struct {
		rows  []WaitRow
		label string
		read  bool // the p99 target is read on these rows
	}{
		{rep.Waiting, fmt.Sprintf("%d clients on %d conns held %v", waitClients, waitConns, waitHold), true},
		{rep.WaitingSleep, fmt.Sprintf("the same held by time.Sleep(%v)", waitHold), false},
	} {
		var wRedispool, wRedigo *WaitRow
		for i := range set.rows {
			switch set.rows[i].Pool {
			case nameRedispool:
				wRedispool = &set.rows[i]
			case nameRedigo:
				wRedigo = &set.rows[i]
			}
		}
		name := set.label
		switch {
		case wRedigo == nil || wRedispool == nil:
			add("waiting", name+": redispool p99 wait <= redigo's", true, false, "not run")
			add("waiting", name+": redispool max wait < 20 x p50", true, false, "not run")
			add("waiting", name+": no starvation", true, false, "not run")
			continue
		case set.read:
			ratioTarget("waiting", name+": redispool p99 wait <= redigo's", wRedigo.RatioP99, 1.0, false)
		default:
			report("waiting", name+": redispool p99 wait / redigo's reported",
				fmt.Sprintf("%s x; a conn cycle lasts %v, not %v", fmtRatios(wRedigo.RatioP99), fmtDur(medianDur(wRedispool.Cycle)), waitHold))
		}
		mo := wRedispool.MaxOverP50()
		m := median(mo)
		add("waiting", name+": redispool max wait < 20 x p50", false, maxOf(mo) < targetMaxOverP50,
			fmt.Sprintf("max/p50 = %.1f in the worst round (median of rounds %.1f)", maxOf(mo), m))
		starved, minShare := 0, math.Inf(1)
		for i := range wRedispool.MinClient {
			if wRedispool.MinClient[i] == 0 {
				starved++
			}
			minShare = min(minShare, float64(wRedispool.MinClient[i])/wRedispool.MeanClient[i])
		}
		add("waiting", name+": no starvation (every client served in every round)", false, starved == 0,
			fmt.Sprintf("%d starved rounds; the least-served client got %.0f%% of the mean", starved, 100*minShare))
	}

	// Part 3.
	e2e := func(op, pool string) *E2ERow {
		for i := range rep.E2E {
			if rep.E2E[i].Op == op && rep.E2E[i].Pool == pool {
				return &rep.E2E[i]
			}
		}
		return nil
	}
	for _, op := range e2eOps {
		for _, peer := range []string{nameRedigo, nameGoRedis} {
			r := e2e(op, peer)
			var ops, p99 []float64
			if r != nil {
				ops, p99 = r.RatioOps, r.RatioP99
			}
			ratioTarget("end to end", fmt.Sprintf("%s: redispool ops/s >= 1.0 x %s's", op, peer), ops, 1.0, true)
			ratioTarget("end to end", fmt.Sprintf("%s: redispool p99 <= %s's", op, peer), p99, 1.0, false)
		}
		if r := e2e(op, nameChannel); r != nil && r.Skipped == "" {
			report("end to end", op+": ratio to a bare channel of conns reported",
				fmt.Sprintf("redispool at %s x the least a pool of plain redigo conns can cost", fmtRatios(r.RatioOps)))
		}
		r := e2e(op, nameRedisBenchmark)
		switch {
		case r == nil:
			add("end to end", op+": ratio to redis-benchmark -c 16 reported", true, false, "not run")
		case r.Skipped != "":
			add("end to end", op+": ratio to redis-benchmark -c 16 reported", true, false, r.Skipped)
		default:
			report("end to end", op+": ratio to redis-benchmark -c 16 reported",
				fmt.Sprintf("redispool at %s x the server's ceiling", fmtRatios(r.RatioOps)))
		}
	}

	// Part 4.
	var cr *ConnRow
	for i := range rep.ConnCost {
		if rep.ConnCost[i].Pool == nameRedispoolDefault {
			cr = &rep.ConnCost[i]
		}
	}
	if cr == nil {
		add("connection cost", "redispool opens at most its MaxActive per run, whatever the length", true, false, "not run")
	} else {
		worst := cr.LongOpened
		for _, n := range cr.Opened {
			worst = max(worst, n)
		}
		add("connection cost", "redispool opens at most its MaxActive per run, whatever the length",
			false, worst <= int64(cr.Limit),
			fmt.Sprintf("at most %d opened in any run (runs of %d and %d commands), MaxActive %d",
				worst, cr.Commands, cr.LongCommands, cr.Limit))
	}

	out = append(out, pipelineTargets(rep.Pipeline)...)
	out = append(out, borrowTarget(rep.Borrow))
	return append(out, autoTargets(rep.AutoPipe)...)
}

// pipelineTargets reads the pipeline part's target in each variant, on
// redigo's row: CPU per pipelined command. An error in either pool's
// pipelines fails it.
func pipelineTargets(rows []PipeRow) []Target {
	var out []Target
	for _, dialer := range pipeDialers {
		name := fmt.Sprintf("%s: redispool CPU per pipelined command <= %.1f x redigo's", dialer, targetPipelineCPU)
		var xs []float64
		var errs int64
		for _, row := range rows {
			if row.Dialer != dialer {
				continue
			}
			errs += int64(sumInt(row.Errors))
			if row.Pool == nameRedigo {
				xs = row.RatioCPU
			}
		}
		out = append(out, ratioTargetOf("pipeline", name, xs, targetPipelineCPU, errs))
	}
	return out
}

// borrowTarget reads the borrow part's target on redigo's row. A failed
// operation in either pool fails it.
func borrowTarget(rows []GetCloseRow) Target {
	var xs []float64
	var errs int64
	for _, row := range rows {
		errs += int64(sumInt(row.Errors))
		if row.Pool == nameRedigo {
			xs = row.Ratio
		}
	}
	name := fmt.Sprintf("Get, Do(PING), Close, 1 client on 1 conn: redispool ns/op <= %.1f x redigo's", targetBorrowRatio)
	return ratioTargetOf("borrow", name, xs, targetBorrowRatio, errs)
}

// ratioTargetOf reads an at-most target on the median of per-round ratios,
// as ratioOK and ratioGot do; errors, counted apart from the operations,
// fail it. It is skipped when nothing was measured.
func ratioTargetOf(part, name string, xs []float64, bound float64, errs int64) Target {
	if math.IsNaN(median(xs)) {
		return Target{Part: part, Name: name, Skipped: true, Got: "not run"}
	}
	got, ok := ratioGot(xs, bound), ratioOK(xs, bound, false)
	if errs > 0 {
		got += fmt.Sprintf("; %d errors", errs)
		ok = false
	}
	return Target{Part: part, Name: name, Pass: ok, Got: got}
}

// rangeOf is the least and the greatest of xs, NaNs left out; +Inf and
// -Inf when there are none.
func rangeOf(xs []float64) (lo, hi float64) {
	lo, hi = math.Inf(1), math.Inf(-1)
	for _, x := range xs {
		if !math.IsNaN(x) {
			lo, hi = min(lo, x), max(hi, x)
		}
	}
	return lo, hi
}

// fmtRatios is the median of per-round ratios, with their range when there
// is more than one round.
func fmtRatios(xs []float64) string {
	m := median(xs)
	if math.IsNaN(m) {
		return "-"
	}
	lo, hi := rangeOf(xs)
	n := 0
	for _, x := range xs {
		if !math.IsNaN(x) {
			n++
		}
	}
	if n < 2 {
		return fmt.Sprintf("%.2f", m)
	}
	return fmt.Sprintf("%.2f [%.2f-%.2f]", m, lo, hi)
}

func medianDur(ds []time.Duration) time.Duration {
	m := median(durs(ds))
	if math.IsNaN(m) {
		return 0
	}
	return time.Duration(m)
}

func medianInt(xs []int64) float64 {
	f := make([]float64, len(xs))
	for i, x := range xs {
		f[i] = float64(x)
	}
	return median(f)
}

// ratioOK reads a target on the median of per-round ratios: at most bound,
// or at least bound when atLeast.
func ratioOK(xs []float64, bound float64, atLeast bool) bool {
	m := median(xs)
	if atLeast {
		return m >= bound
	}
	return m <= bound
}

// ratioGot prints per-round ratios, and marks a tie: a target whose rounds
// fall on both sides of the bound, whether its median passes or misses.
// Over n rounds, [min-max] holds the true median with probability
// 1-2^(1-n) (94% for 5 rounds), so the run cannot tell the two apart.
func ratioGot(xs []float64, bound float64) string {
	got := fmtRatios(xs) + " x"
	if lo, hi := rangeOf(xs); lo <= bound && bound <= hi {
		got += fmt.Sprintf("; a tie: the range holds %.1f", bound)
	}
	return got
}

// failedGets sums the failed Gets of the named pools over every round of a
// part 1 shape.
func failedGets(res *GetCloseResult, pools ...string) int64 {
	if res == nil {
		return 0
	}
	var n int64
	for _, row := range res.Rows {
		if slices.Contains(pools, row.Pool) {
			for _, e := range row.Errors {
				n += e
			}
		}
	}
	return n
}
