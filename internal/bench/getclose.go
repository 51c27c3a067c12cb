package bench

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Shape is a number of client goroutines sharing a pool of Conns connections.
type Shape struct{ Clients, Conns int }

func (s Shape) String() string {
	if s.Clients == 1 {
		return "1 client"
	}
	return fmt.Sprintf("%d clients on %d conns", s.Clients, s.Conns)
}

// getCloseShapes are the shapes of part 1, as the issue lists them. One client
// uses a pool of one connection, as the library's BenchmarkPoolGetClose does.
var getCloseShapes = []Shape{{1, 1}, {32, 8}, {256, 64}}

// GetCloseResult is part 1 for one shape.
type GetCloseResult struct {
	Shape Shape
	Rows  []GetCloseRow
}

// GetCloseRow is one pool's figures for a shape.
type GetCloseRow struct {
	Pool string
	// NsPerOp and AllocsPerOp are per round: wall time per Get+Close across
	// all clients (as testing.B.RunParallel reports it), and heap objects
	// allocated per Get+Close.
	NsPerOp, AllocsPerOp, BytesPerOp []float64
	// Errors counts, per round, the Gets that failed. They are not counted
	// as operations, and a target is not met on a round that had any.
	Errors []int64
	// Ratio holds, per round, redispool's ns/op over this pool's; NaN for
	// redispool itself.
	Ratio []float64
}

// loopBatch is how many operations a client does between looks at the stop
// flag.
const loopBatch = 16

// getCloseWarmup is how long the clients of part 1 run before a slice is
// measured, in the same run: a contended pool starts fast, while no client
// has parked yet, and settles within about 200 ms into its steady regime,
// where every Get parks and every Close wakes one client. The slice measures
// that regime.
const getCloseWarmup = 500 * time.Millisecond

// opCounter is one client's count of operations, and of those that failed,
// alone on its cache line.
type opCounter struct {
	n, failed atomic.Int64
	_         [48]byte
}

// loopResult is what loop measured.
type loopResult struct {
	ops, failed   int64 // operations that succeeded, and that failed
	elapsed       time.Duration
	allocs, bytes uint64
}

// loop runs clients goroutines calling op, lets them run for warmup, then
// measures d of their running: the operations that succeeded and those that
// failed (op returns false), the wall time, and the heap objects and bytes
// allocated meanwhile.
func loop(clients int, warmup, d time.Duration, op func() bool) loopResult {
	var stop atomic.Bool
	counts := make([]opCounter, clients)
	var ready, done sync.WaitGroup
	start := make(chan struct{})
	ready.Add(clients)
	done.Add(clients)
	for i := range clients {
		go func() {
			defer done.Done()
			ready.Done()
			<-start
			for !stop.Load() {
				failed := 0
				for range loopBatch {
					if !op() {
						failed++
					}
				}
				if failed > 0 {
					counts[i].failed.Add(int64(failed))
				}
				counts[i].n.Add(int64(loopBatch - failed))
			}
		}()
	}
	sum := func() (n, failed int64) {
		for i := range counts {
			n += counts[i].n.Load()
			failed += counts[i].failed.Load()
		}
		return n, failed
	}
	ready.Wait()
	close(start)
	time.Sleep(warmup)
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	n0, f0 := sum()
	t0 := time.Now()
	time.Sleep(d)
	n1, f1 := sum()
	t1 := time.Now()
	// Clients count whole batches: on a loaded machine a short window may
	// see none end. Measure on until one has, for at most a second more.
	for n1+f1 == n0+f0 && t1.Sub(t0) < d+time.Second {
		time.Sleep(time.Millisecond)
		n1, f1 = sum()
		t1 = time.Now()
	}
	runtime.ReadMemStats(&m1)
	stop.Store(true)
	done.Wait()
	return loopResult{ops: n1 - n0, failed: f1 - f0, elapsed: t1.Sub(t0),
		allocs: m1.Mallocs - m0.Mallocs, bytes: m1.TotalAlloc - m0.TotalAlloc}
}

// runGetClose is part 1: Get+Close of a no-op connection, every shape, every
// pool, interleaved in each round.
func (r *runner) runGetClose(ctx context.Context) ([]GetCloseResult, error) {
	type key struct{ shape, pool int }
	pools := map[key]fakePool{}
	defer func() {
		for _, p := range pools {
			p.close()
		}
	}()
	results := make([]GetCloseResult, len(getCloseShapes))
	for si, s := range getCloseShapes {
		results[si].Shape = s
		for pi, name := range fakePoolNames {
			p, err := newFakePool(name, s.Conns)
			if err != nil {
				return nil, err
			}
			pools[key{si, pi}] = p
			results[si].Rows = append(results[si].Rows, GetCloseRow{Pool: name})
		}
	}
	type acc struct {
		ops, failed int64
		elapsed     time.Duration
		allocs      uint64
		bytes       uint64
	}
	for round := range r.rounds {
		for si, s := range getCloseShapes {
			accs := make([]acc, len(fakePoolNames))
			for slice := range r.slices {
				for _, pi := range rotation(len(fakePoolNames), round+slice) {
					if err := ctx.Err(); err != nil {
						return nil, err
					}
					p := pools[key{si, pi}]
					runtime.GC()
					res := loop(s.Clients, r.cfg.getCloseWarmup(), r.slice, p.getClose)
					accs[pi].ops += res.ops
					accs[pi].failed += res.failed
					accs[pi].elapsed += res.elapsed
					accs[pi].allocs += res.allocs
					accs[pi].bytes += res.bytes
				}
			}
			for pi, a := range accs {
				row := &results[si].Rows[pi]
				row.NsPerOp = append(row.NsPerOp, float64(a.elapsed.Nanoseconds())/float64(a.ops))
				row.AllocsPerOp = append(row.AllocsPerOp, float64(a.allocs)/float64(a.ops))
				row.BytesPerOp = append(row.BytesPerOp, float64(a.bytes)/float64(a.ops))
				row.Errors = append(row.Errors, a.failed)
				r.progress("getclose round %d/%d %s %s: %.1f ns/op", round+1, r.rounds, s, fakePoolNames[pi], row.NsPerOp[round])
			}
		}
	}
	for si := range results {
		rows := results[si].Rows
		for pi := range rows {
			if pi == 0 {
				rows[pi].Ratio = nanSlice(r.rounds)
				continue
			}
			rows[pi].Ratio = ratios(rows[0].NsPerOp, rows[pi].NsPerOp)
		}
	}
	return results, nil
}

// warmup is the warm-up before each slice of parts 2 and 3: a tenth of
// the slice, at least a millisecond. The defaults must be applied.
func (c Config) warmup() time.Duration {
	return max(c.Duration/time.Duration(c.Slices)/10, time.Millisecond)
}

// getCloseWarmup is how long part 1's clients run before each slice:
// getCloseWarmup, or the short warm-up of a short run.
func (c Config) getCloseWarmup() time.Duration {
	if c.Short {
		return c.warmup()
	}
	return getCloseWarmup
}

// rotation returns the order in which n pools run in the k-th slice: row k
// of a Williams design, a Latin square in which, over its period (n rows
// for an even n, 2n for an odd one), every pool runs in every position
// equally often and follows every other pool equally often. A plain cyclic
// shift has the first property only: with it, each pool always runs right
// after the same other one, whose after-effects (its garbage, its parked
// goroutines, the caches it evicted) it alone would inherit.
func rotation(n, k int) []int {
	out := make([]int, n)
	if n == 0 {
		return out
	}
	// The first row is 0, 1, n-1, 2, n-2, ...; row r adds r to each.
	first := make([]int, n)
	for j := 1; j < n; j++ {
		if j%2 == 1 {
			first[j] = (j + 1) / 2
		} else {
			first[j] = n - j/2
		}
	}
	period := n
	if n%2 == 1 {
		period = 2 * n // the mirror image of each row completes the balance
	}
	k %= period
	r := k % n
	for j := range out {
		out[j] = (first[j] + r) % n
	}
	if k >= n {
		slices.Reverse(out)
	}
	return out
}

// interleave runs one round's measurements of n pools: r.slices slices, each
// calling measure for every pool in the next order of rotation. It stops
// when ctx is done.
func (r *runner) interleave(ctx context.Context, round, n int, measure func(pool int)) error {
	for slice := range r.slices {
		for _, pi := range rotation(n, round+slice) {
			if err := ctx.Err(); err != nil {
				return err
			}
			measure(pi)
		}
	}
	return nil
}

func nanSlice(n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = math.NaN()
	}
	return out
}
