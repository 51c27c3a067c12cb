package bench

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/redispool/redispool"
)

// The pipeline part (issue 16): pipeClients goroutines each borrow a conn,
// Send pipeDepth GETs, Flush, Receive the pipeDepth replies and Close, as
// redigo's documentation pipelines (Send, Flush, Receive), on pipeKeys keys
// with pipeValueSize-byte values. Every client has a conn of its own, so the
// pool never makes one wait: what differs between pools is the work each
// call does around the same redigo connection.
const (
	pipeClients   = 16
	pipeDepth     = 100
	pipeValueSize = 16
)

// Dialers of the pipeline part.
const (
	// dialerPool is redispool dialing Addr itself, with its default
	// timeouts; redigo's Dial dials the address with the same timeouts.
	dialerPool = "pool's dialer"
	// dialerUser gives both pools the same Dial, redis.Dial with those
	// timeouts.
	dialerUser = "user Dial"
)

// pipeDialers are the variants of the pipeline part, in the order they print.
var pipeDialers = []string{dialerPool, dialerUser}

// pipeNames are the pools of the pipeline part, redispool first.
var pipeNames = []string{nameRedispool, nameRedigo}

var (
	pipeKeys  = makePipeKeys()
	pipeValue = bytes.Repeat([]byte("p"), pipeValueSize)
)

func makePipeKeys() []string {
	out := make([]string, keySpace)
	for i := range out {
		out[i] = fmt.Sprintf("pipe:%012d", i)
	}
	return out
}

// PipeRow is one pool's figures in one variant of the pipeline part, one
// entry per round. A command is one GET of a pipeline.
type PipeRow struct {
	Dialer, Pool string
	// OpsPerSec is pipelined commands per second over all clients.
	OpsPerSec []float64
	// CPUPerOp is this process's CPU time, user and system, per pipelined
	// command; -1 where it cannot be read.
	CPUPerOp    []time.Duration
	AllocsPerOp []float64
	// Errors counts failed calls and replies that were not the value set.
	Errors []int64
	// RatioOps and RatioCPU hold, per round, redispool's figure over this
	// pool's; NaN for redispool.
	RatioOps, RatioCPU []float64
}

// newPipePool returns the named pool of pipeClients conns to addr for a
// variant of the pipeline part.
func newPipePool(dialer, name, addr string) redispool.ConnPool {
	dial := func() (redis.Conn, error) { return dialE2E(addr) }
	switch {
	case name == nameRedigo:
		return &redis.Pool{MaxActive: pipeClients, MaxIdle: pipeClients, Wait: true, Dial: dial}
	case dialer == dialerPool:
		return &redispool.Pool{Addr: addr, MaxActive: pipeClients}
	}
	return &redispool.Pool{Dial: dial, MaxActive: pipeClients}
}

// pipeline borrows a conn from p, runs one pipeline of pipeDepth GETs of
// keys drawn by rng, and gives the conn back. It returns the number of
// errors: failed calls and replies that are not pipeValue.
func pipeline(p redispool.ConnPool, rng *rand.Rand) int64 {
	c := p.Get()
	defer c.Close()
	var errs int64
	for range pipeDepth {
		if c.Send("GET", pipeKeys[rng.IntN(len(pipeKeys))]) != nil {
			errs++
		}
	}
	if c.Flush() != nil {
		errs++
	}
	for range pipeDepth {
		if v, err := c.Receive(); err != nil || !isPipeValue(v) {
			errs++
		}
	}
	return errs
}

func isPipeValue(v any) bool {
	b, ok := v.([]byte)
	return ok && bytes.Equal(b, pipeValue)
}

// pipeAcc accumulates the slices of one measurement.
type pipeAcc struct {
	cmds, errors int64
	elapsed      time.Duration
	cpu          time.Duration
	noCPU        bool
	mallocs      uint64
}

func (a *pipeAcc) cpuPerOp() time.Duration {
	if a.noCPU || a.cmds == 0 {
		return -1
	}
	return a.cpu / time.Duration(a.cmds)
}

// pipeLoop runs pipeClients clients running pipelines through p for d, and
// adds what they did, to the last pipeline, to acc unless it is nil.
func pipeLoop(p redispool.ConnPool, d time.Duration, acc *pipeAcc) {
	var stop atomic.Bool
	var cmds, errs atomic.Int64
	var ready, done sync.WaitGroup
	start := make(chan struct{})
	ready.Add(pipeClients)
	for i := range pipeClients {
		done.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			var n, e int64
			ready.Done()
			<-start
			for !stop.Load() {
				e += pipeline(p, rng)
				n += pipeDepth
			}
			cmds.Add(n)
			errs.Add(e)
		})
	}
	ready.Wait()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	cpu0, ok0 := processCPU()
	t0 := time.Now()
	close(start)
	time.Sleep(d)
	stop.Store(true)
	done.Wait()
	elapsed := time.Since(t0)
	cpu1, ok1 := processCPU()
	runtime.ReadMemStats(&m1)
	if acc == nil {
		return
	}
	acc.cmds += cmds.Load()
	acc.errors += errs.Load()
	acc.elapsed += elapsed
	acc.cpu += cpu1 - cpu0
	acc.noCPU = acc.noCPU || !ok0 || !ok1
	acc.mallocs += m1.Mallocs - m0.Mallocs
}

// runPipeline is the pipeline part: in each variant, each round, every
// pool's measurement cut into slices, interleaved as in the other parts.
func (r *runner) runPipeline(ctx context.Context, s *server) ([]PipeRow, error) {
	if err := s.populate(pipeKeys, pipeValue); err != nil {
		return nil, fmt.Errorf("populating keys: %w", err)
	}
	var rows []PipeRow
	for _, dialer := range pipeDialers {
		got, err := r.runPipeVariant(ctx, dialer, s.addr)
		if err != nil {
			return nil, err
		}
		rows = append(rows, got...)
	}
	return rows, nil
}

// runPipeVariant measures the pools of pipeNames in one variant.
func (r *runner) runPipeVariant(ctx context.Context, dialer, addr string) ([]PipeRow, error) {
	pools := make([]redispool.ConnPool, len(pipeNames))
	rows := make([]PipeRow, len(pipeNames))
	for i, name := range pipeNames {
		pools[i] = newPipePool(dialer, name, addr)
		defer pools[i].Close()
		rows[i] = PipeRow{Dialer: dialer, Pool: name}
	}
	for round := range r.rounds {
		accs := make([]pipeAcc, len(pipeNames))
		err := r.interleave(ctx, round, len(pipeNames), func(pi int) {
			runtime.GC()
			pipeLoop(pools[pi], r.warmup, nil)
			runtime.GC()
			pipeLoop(pools[pi], r.slice, &accs[pi])
		})
		if err != nil {
			return nil, err
		}
		for pi := range rows {
			r.addPipeRound(&rows[pi], &accs[pi], round)
		}
	}
	for pi := range rows {
		rows[pi].RatioOps, rows[pi].RatioCPU = nanSlice(r.rounds), nanSlice(r.rounds)
		if pi > 0 {
			rows[pi].RatioOps = ratios(rows[0].OpsPerSec, rows[pi].OpsPerSec)
			rows[pi].RatioCPU = ratios(cpuFloats(rows[0].CPUPerOp), cpuFloats(rows[pi].CPUPerOp))
		}
	}
	return rows, nil
}

// addPipeRound appends a round's figures to row.
func (r *runner) addPipeRound(row *PipeRow, a *pipeAcc, round int) {
	row.OpsPerSec = append(row.OpsPerSec, float64(a.cmds)/a.elapsed.Seconds())
	row.CPUPerOp = append(row.CPUPerOp, a.cpuPerOp())
	row.AllocsPerOp = append(row.AllocsPerOp, float64(a.mallocs)/float64(max(a.cmds, 1)))
	row.Errors = append(row.Errors, a.errors)
	if a.errors > 0 {
		r.note("pipeline: %s, %s: %d errors", row.Dialer, row.Pool, a.errors)
	}
	r.progress("pipeline round %d/%d %s %s: %.0f cmds/s, CPU %v/cmd", round+1, r.rounds, row.Dialer, row.Pool,
		row.OpsPerSec[round], row.CPUPerOp[round])
}
