package bench

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"time"

	"github.com/redis/rueidis"

	"github.com/redispool/redispool"
)

// The auto-pipelining part (issue 19): GET and SET of autoValueSize-byte
// values, as in the end-to-end part, by 1, 64 and 1,024 goroutines, through
// redispool with AutoPipeline, redispool without it, and rueidis, which
// writes concurrent callers' commands together on a few shared connections.
// Every client but rueidis has at most e2eConns connections; rueidis keeps
// its defaults.
const autoValueSize = 16

// Participants of the auto-pipelining part; the ratios are
// nameRedispoolAuto's over each.
const (
	nameRedispoolAuto = "redispool AutoPipeline"
	nameRueidis       = "rueidis"
)

var (
	autoNames   = []string{nameRedispoolAuto, nameRedispool, nameRueidis}
	autoClients = []int{1, 64, 1024}
	autoValue   = []byte("0123456789abcdef")
)

// AutoRow is one participant's figures for one command at one number of
// clients, one entry per round; the ratios are redispool AutoPipeline's over
// this participant's (NaN on its own row).
type AutoRow struct {
	Pool, Op                     string
	Clients                      int
	OpsPerSec                    []float64
	P99                          []time.Duration
	CPUPerOp                     []time.Duration
	Errors                       []int64
	RatioOps, RatioP99, RatioCPU []float64
	// CmdsPerBatch is, for redispool AutoPipeline, the commands per batch
	// written to its shared connections, from PoolStats.
	CmdsPerBatch []float64
}

func newAutoPool(name, addr string) (e2ePool, error) {
	switch name {
	case nameRedispoolAuto:
		return redigoE2E{&redispool.Pool{Addr: addr, MaxActive: e2eConns, AutoPipeline: true}}, nil
	case nameRedispool:
		return redigoE2E{&redispool.Pool{Addr: addr, MaxActive: e2eConns}}, nil
	}
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{addr}, DisableCache: true})
	if err != nil {
		return nil, fmt.Errorf("rueidis: %w", err)
	}
	return rueidisE2E{c}, nil
}

type rueidisE2E struct{ c rueidis.Client }

func (r rueidisE2E) do(ctx context.Context, set bool, key string) error {
	var err error
	if set {
		err = r.c.Do(ctx, r.c.B().Set().Key(key).Value(rueidis.BinaryString(autoValue)).Build()).Error()
	} else {
		err = r.c.Do(ctx, r.c.B().Get().Key(key).Build()).Error()
	}
	if rueidis.IsRedisNil(err) {
		return nil
	}
	return err
}

func (r rueidisE2E) close() { r.c.Close() }

// batchStats is the pool's batch counters, for redispool AutoPipeline.
func batchStats(p e2ePool) (batches, cmds int64) {
	if r, ok := p.(redigoE2E); ok {
		if rp, ok := r.p.(*redispool.Pool); ok {
			s := rp.Stats()
			return s.PipelineBatchCount, s.PipelineCommandCount
		}
	}
	return 0, 0
}

// newAutoPools makes the participants' pools, as many as it can.
func newAutoPools(addr string) (map[string]e2ePool, error) {
	pools := map[string]e2ePool{}
	for _, name := range autoNames {
		p, err := newAutoPool(name, addr)
		if err != nil {
			return pools, err
		}
		pools[name] = p
	}
	return pools, nil
}

// autoRows are the part's rows, the participants of each command and
// number of clients together, redispool AutoPipeline first.
func autoRows() []AutoRow {
	var rows []AutoRow
	for _, op := range e2eOps {
		for _, n := range autoClients {
			for _, name := range autoNames {
				rows = append(rows, AutoRow{Pool: name, Op: op, Clients: n})
			}
		}
	}
	return rows
}

// runAutoPipe is poolbench's auto-pipelining part.
func (r *runner) runAutoPipe(ctx context.Context, s *server) ([]AutoRow, error) {
	if err := s.populate(keys, autoValue); err != nil {
		return nil, fmt.Errorf("populating keys: %w", err)
	}
	pools, err := newAutoPools(s.addr)
	defer func() {
		for _, p := range pools {
			p.close()
		}
	}()
	if err != nil {
		return nil, err
	}
	rows := autoRows()
	for round := range r.rounds {
		for i := 0; i < len(rows); i += len(autoNames) {
			if err := r.autoRound(ctx, pools, rows[i:i+len(autoNames)], round); err != nil {
				return nil, err
			}
		}
	}
	for i := 0; i < len(rows); i += len(autoNames) {
		autoRatios(rows[i:i+len(autoNames)], r.rounds)
	}
	return rows, nil
}

// autoRatios sets the ratios of redispool AutoPipeline, rows[0], over each
// of the other rows.
func autoRatios(rows []AutoRow, rounds int) {
	base := &rows[0]
	base.RatioOps, base.RatioP99, base.RatioCPU = nanSlice(rounds), nanSlice(rounds), nanSlice(rounds)
	for j := 1; j < len(rows); j++ {
		row := &rows[j]
		row.RatioOps = ratios(base.OpsPerSec, row.OpsPerSec)
		row.RatioP99 = ratios(durs(base.P99), durs(row.P99))
		row.RatioCPU = ratios(cpuFloats(base.CPUPerOp), cpuFloats(row.CPUPerOp))
	}
}

// autoRound measures one round of one command at one number of clients,
// the participants interleaved slice by slice.
func (r *runner) autoRound(ctx context.Context, pools map[string]e2ePool, rows []AutoRow, round int) error {
	set := rows[0].Op == "SET"
	n := rows[0].Clients
	accs := make([]e2eAcc, len(rows))
	var batches, cmds int64
	for slice := range r.slices {
		for _, pi := range rotation(len(rows), round+slice) {
			if err := ctx.Err(); err != nil {
				return err
			}
			p := pools[rows[pi].Pool]
			runtime.GC()
			clientsLoop(ctx, p, set, n, r.warmup, nil)
			runtime.GC()
			b0, c0 := batchStats(p)
			clientsLoop(ctx, p, set, n, r.slice, &accs[pi])
			b1, c1 := batchStats(p)
			batches, cmds = batches+b1-b0, cmds+c1-c0
		}
	}
	for pi := range rows {
		row := &rows[pi]
		res := accs[pi].result()
		if res.firstErr != nil {
			r.note("auto-pipelining: %s %s x%d: %d errors, the first: %v", row.Pool, row.Op, n, res.errors, res.firstErr)
		}
		row.OpsPerSec = append(row.OpsPerSec, res.opsPerSec)
		row.P99 = append(row.P99, res.p99)
		row.CPUPerOp = append(row.CPUPerOp, res.cpuPerOp)
		row.Errors = append(row.Errors, res.errors)
		row.CmdsPerBatch = append(row.CmdsPerBatch, ratio(float64(cmds), float64(batches)))
		r.progress("auto round %d/%d %s x%d %s: %.0f ops/s p99 %v", round+1, r.rounds, row.Op, n, row.Pool, res.opsPerSec, res.p99)
	}
	return nil
}

// printAutoPipe prints the auto-pipelining part, if it ran.
func printAutoPipe(w io.Writer, rows []AutoRow) {
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\n7. Auto-pipelining on redis-server: GET and SET of %d-byte values on %d keys by 1, 64 and 1,024 goroutines; redispool with at most %d conns, with and without AutoPipeline; rueidis with its defaults (client cache off); median over rounds\n",
		autoValueSize, keySpace, e2eConns)
	tw := newTable(w, "op", "clients", "pool", "ops/s", "p99", "CPU/op", "cmds/batch", "errors", "auto/peer ops/s", "auto/peer p99", "auto/peer CPU/op")
	for _, row := range rows {
		batch := "-"
		if row.Pool == nameRedispoolAuto {
			batch = fmt.Sprintf("%.1f", median(row.CmdsPerBatch))
		}
		tw.row(row.Op, fmt.Sprint(row.Clients), row.Pool, fmtCount(median(row.OpsPerSec)), fmtDur(medianDur(row.P99)),
			fmtCPU(row.CPUPerOp), batch, fmt.Sprintf("%.0f", sumInt(row.Errors)),
			fmtRatioCell(row.RatioOps), fmtRatioCell(row.RatioP99), fmtRatioCell(row.RatioCPU))
	}
	tw.flush()
}

// Issue 19's targets.
const (
	targetAutoOps   = 1.0 // ops/s >= 1.0 x rueidis's at 64 and 1,024 clients
	targetAutoTails = 1.2 // p99 and CPU per command <= 1.2 x rueidis's
	targetAutoSolo  = 1.0 // at 1 client, ops/s >= 1.0 x redispool's without AutoPipeline
)

// autoTargets reads issue 19's targets.
func autoTargets(rows []AutoRow) []Target {
	var out []Target
	for _, row := range rows {
		errs := int64(sumInt(row.Errors))
		switch {
		case row.Pool == nameRueidis && row.Clients > 1:
			pre := fmt.Sprintf("%s x%d: redispool AutoPipeline", row.Op, row.Clients)
			out = append(out,
				atLeastTarget(pre+fmt.Sprintf(" ops/s >= %.1f x rueidis's", targetAutoOps), row.RatioOps, targetAutoOps, errs),
				ratioTargetOf("autopipe", pre+fmt.Sprintf(" p99 <= %.1f x rueidis's", targetAutoTails), row.RatioP99, targetAutoTails, errs),
				ratioTargetOf("autopipe", pre+fmt.Sprintf(" CPU/op <= %.1f x rueidis's", targetAutoTails), row.RatioCPU, targetAutoTails, errs))
		case row.Pool == nameRedispool && row.Clients == 1:
			name := fmt.Sprintf("%s x1: redispool AutoPipeline ops/s >= %.1f x redispool's without it", row.Op, targetAutoSolo)
			out = append(out, atLeastTarget(name, row.RatioOps, targetAutoSolo, errs))
		}
	}
	return out
}

// atLeastTarget is ratioTargetOf for an at-least bound.
func atLeastTarget(name string, xs []float64, bound float64, errs int64) Target {
	t := ratioTargetOf("autopipe", name, xs, bound, errs)
	if !t.Skipped {
		t.Pass = ratioOK(xs, bound, true) && errs == 0
	}
	return t
}
