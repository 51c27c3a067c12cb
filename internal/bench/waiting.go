package bench

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// The waiting part: many clients queue for few connections, each held for a
// while, as callers of a busy service do.
const (
	waitClients = 256
	waitConns   = 16
	waitHold    = 50 * time.Microsecond
)

// How a client holds its connection for waitHold.
const (
	// HoldBusy runs the caller until waitHold has passed, yielding the
	// processor in between, as a caller busy with the connection would:
	// the hold lasts waitHold and a little more, the ~50 µs of the issue's
	// shape. The targets are read on it.
	HoldBusy = "busy"
	// HoldSleep is time.Sleep(waitHold), reported for comparison. When
	// every goroutine is parked, Go's scheduler waits for the next timer in
	// epoll_wait, whose unit is a millisecond, so such a sleep lasts 50 µs
	// to about 1 ms: the hold is then the runtime's timer, not the shape.
	HoldSleep = "sleep"
)

// holdFunc returns how a client holds a connection.
func holdFunc(kind string) func() {
	if kind == HoldBusy {
		return func() {
			start := time.Now()
			for time.Since(start) < waitHold {
				runtime.Gosched()
			}
		}
	}
	return func() { time.Sleep(waitHold) }
}

// WaitRow is one pool's figures in the waiting part, one entry per round.
type WaitRow struct {
	Pool string
	// Hold is HoldBusy or HoldSleep.
	Hold string
	// P50, P99 and Max are the wait in Get over all clients.
	P50, P99, Max []time.Duration
	// Acquires is the number of connections handed out; MinClient and
	// MeanClient are the fewest and the mean handed to one client.
	Acquires   []int64
	MinClient  []int64
	MeanClient []float64
	// Elapsed is the time measured, the slices' wall times summed.
	Elapsed []time.Duration
	// Cycle is how long a connection was out per acquire, on average:
	// conns x elapsed / acquires, the hold plus the pool's and the
	// scheduler's overhead.
	Cycle []time.Duration
	// Errors counts failed Gets.
	Errors []int64
	// RatioP99 and RatioCycle hold, per round, redispool's p99 wait and
	// conn cycle over this pool's.
	RatioP99, RatioCycle []float64
}

// AcquiresPerSec is, per round, the connections handed out per second of
// measured time.
func (w *WaitRow) AcquiresPerSec() []float64 {
	out := make([]float64, len(w.Acquires))
	for i := range out {
		out[i] = float64(w.Acquires[i]) / w.Elapsed[i].Seconds()
	}
	return out
}

// MaxOverP50 is, per round, the longest wait over the median wait.
func (w *WaitRow) MaxOverP50() []float64 {
	out := make([]float64, len(w.Max))
	for i := range out {
		out[i] = ratio(float64(w.Max[i]), float64(w.P50[i]))
	}
	return out
}

// waitAcc accumulates the slices of one pool's measurement in a round.
type waitAcc struct {
	h       hist
	counts  [waitClients]int64 // acquires per client
	errors  int64
	elapsed time.Duration
}

// waitLoop runs waitClients clients on p for d, each holding its conn while
// hold runs, and adds what they did to acc unless it is nil.
func waitLoop(p fakePool, hold func(), d time.Duration, acc *waitAcc) {
	hs := make([]hist, waitClients)
	counts := make([]int64, waitClients)
	errs := make([]int64, waitClients)
	var stop atomic.Bool
	var ready, done sync.WaitGroup
	start := make(chan struct{})
	ready.Add(waitClients)
	done.Add(waitClients)
	for i := range waitClients {
		go func() {
			defer done.Done()
			h := &hs[i]
			ready.Done()
			<-start
			for !stop.Load() {
				w, ok := p.getHoldClose(hold)
				if !ok {
					errs[i]++
					continue
				}
				h.record(w)
				counts[i]++
			}
		}()
	}
	ready.Wait()
	t0 := time.Now()
	close(start)
	time.Sleep(d)
	stop.Store(true)
	done.Wait()
	elapsed := time.Since(t0)
	if acc == nil {
		return
	}
	acc.elapsed += elapsed
	for i := range waitClients {
		acc.h.merge(&hs[i])
		acc.counts[i] += counts[i]
		acc.errors += errs[i]
	}
}

// runWaiting is poolbench's part 2 (item 3 of the build list): waitClients clients on waitConns
// connections held waitHold each, the hold being of the given kind.
func (r *runner) runWaiting(ctx context.Context, kind string) ([]WaitRow, error) {
	hold := holdFunc(kind)
	pools := make([]fakePool, len(fakePoolNames))
	rows := make([]WaitRow, len(fakePoolNames))
	defer func() {
		for _, p := range pools {
			if p != nil {
				p.close()
			}
		}
	}()
	for i, name := range fakePoolNames {
		p, err := newFakePool(name, waitConns)
		if err != nil {
			return nil, err
		}
		pools[i] = p
		rows[i].Pool = name
		rows[i].Hold = kind
	}
	for round := range r.rounds {
		accs := make([]waitAcc, len(pools))
		for slice := range r.slices {
			for _, pi := range rotation(len(pools), round+slice) {
				if err := ctx.Err(); err != nil {
					return nil, err
				}
				runtime.GC()
				waitLoop(pools[pi], hold, r.warmup, nil)
				runtime.GC()
				waitLoop(pools[pi], hold, r.slice, &accs[pi])
			}
		}
		for pi := range accs {
			a := &accs[pi]
			var acquires int64
			minClient := a.counts[0]
			for _, n := range a.counts {
				acquires += n
				minClient = min(minClient, n)
			}
			var cycle time.Duration
			if acquires > 0 {
				cycle = time.Duration(int64(a.elapsed) * waitConns / acquires)
			}
			row := &rows[pi]
			row.P50 = append(row.P50, a.h.quantile(0.50))
			row.P99 = append(row.P99, a.h.quantile(0.99))
			row.Max = append(row.Max, time.Duration(a.h.max))
			row.Acquires = append(row.Acquires, acquires)
			row.Elapsed = append(row.Elapsed, a.elapsed)
			row.MinClient = append(row.MinClient, minClient)
			row.MeanClient = append(row.MeanClient, float64(acquires)/waitClients)
			row.Cycle = append(row.Cycle, cycle)
			row.Errors = append(row.Errors, a.errors)
			r.progress("waiting (%s hold) round %d/%d %s: p50 %v p99 %v max %v", kind, round+1, r.rounds, row.Pool,
				a.h.quantile(0.5), a.h.quantile(0.99), time.Duration(a.h.max))
		}
	}
	for pi := range rows {
		if pi == 0 {
			rows[pi].RatioP99 = nanSlice(r.rounds)
			rows[pi].RatioCycle = nanSlice(r.rounds)
			continue
		}
		rows[pi].RatioP99 = ratios(durs(rows[0].P99), durs(rows[pi].P99))
		rows[pi].RatioCycle = ratios(durs(rows[0].Cycle), durs(rows[pi].Cycle))
	}
	return rows, nil
}

func durs(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = float64(d)
	}
	return out
}
