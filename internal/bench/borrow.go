package bench

import (
	"context"
	"fmt"
	"runtime"
	"time"
)

// The borrow part (issue 16): one client on a pool of one no-op conn, each
// operation a Get, a Do("PING"), whose reply the conn returns without I/O,
// and a Close. It prices the pool's work around one command: Get and Close
// as in part 1, and whatever each call on the borrowed conn adds.

// borrowNames are the pools of the borrow part, redispool first.
var borrowNames = []string{nameRedispool, nameRedigo}

// borrowPool is a pool of no-op conns whose every borrow runs one command.
type borrowPool interface {
	// getDoClose takes a conn, runs PING on it and gives it back; it
	// reports whether Get and Do succeeded with PING's reply.
	getDoClose() bool
	close()
}

// newBorrowPool returns the named pool of one no-op conn, configured as in
// part 1.
func newBorrowPool(name string) (borrowPool, error) {
	p, err := newFakePool(name, 1)
	if err != nil {
		return nil, err
	}
	bp, ok := p.(borrowPool)
	if !ok {
		p.close()
		return nil, fmt.Errorf("pool %q hands out no redis.Conn to run a command on", name)
	}
	return bp, nil
}

// borrowAcc accumulates the slices of one measurement.
type borrowAcc struct {
	ops, failed   int64
	elapsed       time.Duration
	allocs, bytes uint64
}

func (a *borrowAcc) add(res loopResult) {
	a.ops += res.ops
	a.failed += res.failed
	a.elapsed += res.elapsed
	a.allocs += res.allocs
	a.bytes += res.bytes
}

// runBorrow is the borrow part: every round, each pool's measurement cut
// into slices, interleaved as in part 1.
func (r *runner) runBorrow(ctx context.Context) ([]GetCloseRow, error) {
	pools := make([]borrowPool, len(borrowNames))
	rows := make([]GetCloseRow, len(borrowNames))
	for i, name := range borrowNames {
		p, err := newBorrowPool(name)
		if err != nil {
			return nil, err
		}
		pools[i] = p
		defer p.close()
		rows[i].Pool = name
	}
	for round := range r.rounds {
		accs := make([]borrowAcc, len(borrowNames))
		err := r.interleave(ctx, round, len(borrowNames), func(pi int) {
			runtime.GC()
			accs[pi].add(loop(1, r.warmup, r.slice, pools[pi].getDoClose))
		})
		if err != nil {
			return nil, err
		}
		for pi, a := range accs {
			row := &rows[pi]
			row.NsPerOp = append(row.NsPerOp, float64(a.elapsed.Nanoseconds())/float64(a.ops))
			row.AllocsPerOp = append(row.AllocsPerOp, float64(a.allocs)/float64(a.ops))
			row.BytesPerOp = append(row.BytesPerOp, float64(a.bytes)/float64(a.ops))
			row.Errors = append(row.Errors, a.failed)
			r.progress("borrow round %d/%d %s: %.1f ns/op", round+1, r.rounds, row.Pool, row.NsPerOp[round])
		}
	}
	rows[0].Ratio = nanSlice(r.rounds)
	for pi := 1; pi < len(rows); pi++ {
		rows[pi].Ratio = ratios(rows[0].NsPerOp, rows[pi].NsPerOp)
	}
	return rows, nil
}
