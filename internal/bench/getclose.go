package bench

import (
	"context"
	"fmt"
	"math"
	"runtime"
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

// opCounter is one client's count of operations, alone on its cache line.
type opCounter struct {
	n atomic.Int64
	_ [56]byte
}

// loop runs clients goroutines calling op, lets them run for warmup, then
// measures d of their running: the operations done, the wall time, and the
// heap objects and bytes allocated meanwhile.
func loop(clients int, warmup, d time.Duration, op func()) (ops int64, elapsed time.Duration, allocs, bytes uint64) {
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
				for range loopBatch {
					op()
				}
				counts[i].n.Add(loopBatch)
			}
		}()
	}
	sum := func() int64 {
		var n int64
		for i := range counts {
			n += counts[i].n.Load()
		}
		return n
	}
	ready.Wait()
	close(start)
	time.Sleep(warmup)
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	n0, t0 := sum(), time.Now()
	time.Sleep(d)
	n1, t1 := sum(), time.Now()
	// Clients count whole batches: on a loaded machine a short window may
	// see none end. Measure on until one has, for at most a second more.
	for n1 == n0 && t1.Sub(t0) < d+time.Second {
		time.Sleep(time.Millisecond)
		n1, t1 = sum(), time.Now()
	}
	runtime.ReadMemStats(&m1)
	stop.Store(true)
	done.Wait()
	return n1 - n0, t1.Sub(t0), m1.Mallocs - m0.Mallocs, m1.TotalAlloc - m0.TotalAlloc
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
		ops     int64
		elapsed time.Duration
		allocs  uint64
		bytes   uint64
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
					ops, elapsed, allocs, bytes := loop(s.Clients, r.cfg.getCloseWarmup(), r.slice, p.getClose)
					accs[pi].ops += ops
					accs[pi].elapsed += elapsed
					accs[pi].allocs += allocs
					accs[pi].bytes += bytes
				}
			}
			for pi, a := range accs {
				row := &results[si].Rows[pi]
				row.NsPerOp = append(row.NsPerOp, float64(a.elapsed.Nanoseconds())/float64(a.ops))
				row.AllocsPerOp = append(row.AllocsPerOp, float64(a.allocs)/float64(a.ops))
				row.BytesPerOp = append(row.BytesPerOp, float64(a.bytes)/float64(a.ops))
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

// rotation returns 0..n-1 rotated by round, so that every pool runs in every
// round and none always runs first.
func rotation(n, round int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = (i + round) % n
	}
	return out
}

func nanSlice(n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = math.NaN()
	}
	return out
}
