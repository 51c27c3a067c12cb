package bench

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Print writes the machine, one table per part and the targets.
func (rep *Report) Print(w io.Writer) {
	m := rep.Machine
	cfg := rep.Config
	fmt.Fprintf(w, "machine: %s, GOMAXPROCS %d, %d CPUs, %s, %s; load average %s at start, %s at end\n",
		m.CPU, m.GOMAXPROCS, m.NumCPU, m.GoVersion, m.OSArch, m.LoadAvgStart, m.LoadAvgEnd)
	var mods []string
	for p, v := range m.Modules {
		mods = append(mods, p+" "+v)
	}
	sort.Strings(mods)
	fmt.Fprintf(w, "redispool: %s\n", m.Redispool)
	if len(mods) > 0 {
		fmt.Fprintf(w, "peers: %s\n", strings.Join(mods, ", "))
	}
	if m.Server != "" {
		fmt.Fprintf(w, "server: %s; redis-benchmark: %s\n", m.Server, m.RedisBenchmark)
	}
	mode := ""
	if cfg.Short {
		mode = " (short mode: checks that everything runs; the figures mean nothing)"
	}
	slice := cfg.Duration / time.Duration(cfg.Slices)
	fmt.Fprintf(w, "rounds: %d; in each, every pool runs %v per measurement, as %d interleaved slices of %v (each slice in the next order of a balanced Latin square: every pool runs in every position, and right after every other pool, equally often), each after a %v warm-up; %d commands per connection-cost run%s\n",
		cfg.Rounds, cfg.Duration, cfg.Slices, slice, cfg.warmup(), cfg.Commands, mode)
	fmt.Fprintf(w, "ratios are redispool / peer per round, median [min-max] over rounds: below 1 is better for ns/op, wait and latency, above 1 for ops/s\n")

	if len(rep.GetClose) > 0 {
		fmt.Fprintf(w, "\n1. Get+Close of a no-op conn (pool overhead only); each slice measured once its clients have run %v; median over rounds\n", cfg.getCloseWarmup())
		tw := newTable(w, "shape", "pool", "ns/op", "allocs/op", "B/op", "failed Gets", "redispool/peer ns/op")
		for _, res := range rep.GetClose {
			for i, row := range res.Rows {
				shape := ""
				if i == 0 {
					shape = res.Shape.String()
				}
				tw.row(shape, row.Pool, fmt.Sprintf("%.1f", median(row.NsPerOp)),
					fmt.Sprintf("%.2f", median(row.AllocsPerOp)), fmt.Sprintf("%.0f", median(row.BytesPerOp)),
					fmt.Sprintf("%.0f", sumInt(row.Errors)), fmtRatioCell(row.Ratio))
			}
		}
		tw.flush()
	}

	if len(rep.Waiting) > 0 {
		fmt.Fprintf(w, "\n2. Waiting: %d clients on %d conns, each conn held busy for %v (a loop of runtime.Gosched until it has passed); wait in Get, median over rounds\n",
			waitClients, waitConns, waitHold)
		printWaiting(w, rep.Waiting)
	}
	if len(rep.WaitingSleep) > 0 {
		fmt.Fprintf(w, "\n2b. Waiting as in 2, each conn held by time.Sleep(%v), which lasts until the runtime notices the timer (see conn cycle)\n", waitHold)
		printWaiting(w, rep.WaitingSleep)
	}

	if len(rep.E2E) > 0 {
		fmt.Fprintf(w, "\n3. End to end on redis-server: %d goroutines on %d conns, %d keys, %d-byte values; latency = Get+command+Close; median over rounds\n",
			e2eClients, e2eConns, keySpace, valueSize)
		tw := newTable(w, "op", "client", "ops/s", "p50", "p99", "allocs/op", "CPU/op", "errors", "redispool/peer ops/s", "redispool/peer p99", "redispool/peer CPU/op")
		last := ""
		for _, row := range rep.E2E {
			op := ""
			if row.Op != last {
				op, last = row.Op, row.Op
			}
			name := row.Pool
			switch name {
			case nameRedigo:
				name = "redigo (bounded)"
			case nameGoRedis:
				name = fmt.Sprintf("go-redis (PoolSize %d)", e2eConns)
			case nameRedisBenchmark:
				name = fmt.Sprintf("redis-benchmark -c %d", e2eConns)
			case nameChannel:
				name = fmt.Sprintf("channel of %d conns", e2eConns)
			}
			if row.Skipped != "" {
				tw.row(op, name, "skipped: "+row.Skipped, "", "", "", "", "", "", "", "")
				continue
			}
			allocs := "-"
			if a := median(row.AllocsPerOp); !math.IsNaN(a) {
				allocs = fmt.Sprintf("%.1f", a)
			}
			cpu := "-"
			if c := median(cpuFloats(row.CPUPerOp)); !math.IsNaN(c) {
				cpu = fmt.Sprintf("%.1fus", c/1e3)
			}
			tw.row(op, name, fmtCount(median(row.OpsPerSec)), fmtDur(medianDur(row.P50)), fmtDur(medianDur(row.P99)),
				allocs, cpu, fmt.Sprintf("%.0f", sumInt(row.Errors)), fmtRatioCell(row.RatioOps), fmtRatioCell(row.RatioP99), fmtRatioCell(row.RatioCPU))
		}
		tw.flush()
		fmt.Fprintf(w, "redis-benchmark runs %d connections with no pool in between (its p99 is per request, no wait for a conn): it is the server's ceiling here, not a peer.\n", e2eConns)
		fmt.Fprintf(w, "The channel of %d conns is the least a bounded pool of plain redigo conns can cost: redigo conns in a buffered channel, with no checks, no bound on the wait and no accounting, moving their deadlines on every command as redigo does. It is not a peer either: its row shows what a pool could gain on this machine by costing less.\n", e2eConns)
	}

	if len(rep.ConnCost) > 0 {
		fmt.Fprintf(w, "\n4. Connection cost: %d goroutines, runs of %d commands (Get, GET or SET, Close; key choice seeded with %d); median over rounds\n",
			connClients, cfg.Commands, seed)
		tw := newTable(w, "configuration", "limit", "opened/run", "per 100k cmds", "server saw", "peak open",
			fmt.Sprintf("opened in %dx run", longFactor), "cmds/s", "errors")
		for _, row := range rep.ConnCost {
			limit := "none (MaxActive 0)"
			switch row.Pool {
			case nameRedispoolDefault:
				limit = fmt.Sprintf("%d (default MaxActive)", row.Limit)
			case nameGoRedisDefault:
				limit = fmt.Sprintf("%d (default PoolSize)", row.Limit)
			}
			opened := medianInt(row.Opened)
			tw.row(row.Pool, limit, fmt.Sprintf("%.0f", opened),
				fmt.Sprintf("%.0f", opened*100_000/float64(row.Commands)),
				fmt.Sprintf("%.0f", medianInt(row.ServerConns)),
				fmt.Sprintf("%.0f", medianInt(row.Peak)),
				fmt.Sprintf("%d", row.LongOpened),
				fmtCount(median(row.CmdsPerSec)),
				fmt.Sprintf("%.0f", sumInt(row.Errors)))
		}
		tw.flush()
	}

	printPipeline(w, rep.Pipeline)
	printBorrow(w, rep.Borrow)
	printAutoPipe(w, rep.AutoPipe)

	fmt.Fprintf(w, "\ntargets (done when; issue 4, issue 16 for pipeline and borrow, issue 19 for autopipe):\n")
	tw := newTable(w, "", "part", "target", "measured")
	for _, t := range rep.Targets {
		tw.row(t.Status(), t.Part, t.Name, t.Got)
	}
	tw.flush()
	if len(rep.Notes) > 0 {
		fmt.Fprintf(w, "\nnotes:\n")
		for _, n := range rep.Notes {
			fmt.Fprintf(w, "- %s\n", n)
		}
	}
}

type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer, header ...string) *table {
	t := &table{tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
	t.row(header...)
	return t
}

func (t *table) row(cells ...string) { fmt.Fprintln(t.tw, strings.Join(cells, "\t")) }
func (t *table) flush()              { t.tw.Flush() }

func fmtRatioCell(xs []float64) string {
	if math.IsNaN(median(xs)) {
		return "-"
	}
	return fmtRatios(xs)
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= 10*time.Millisecond:
		return fmt.Sprintf("%.1fms", float64(d)/1e6)
	case d >= time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/1e6)
	case d >= 10*time.Microsecond:
		return fmt.Sprintf("%.0fus", float64(d)/1e3)
	}
	return fmt.Sprintf("%.1fus", float64(d)/1e3)
}

// fmtCount writes n rounded, with thousands separators.
func fmtCount(n float64) string {
	if math.IsNaN(n) {
		return "-"
	}
	s := strconv.FormatInt(int64(math.Round(n)), 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 && s[i-1] != '-' {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func sumInt(xs []int64) float64 {
	var s int64
	for _, x := range xs {
		s += x
	}
	return float64(s)
}

// printWaiting prints one table of the waiting part.
func printWaiting(w io.Writer, rows []WaitRow) {
	tw := newTable(w, "pool", "p50", "p99", "max", "max/p50", "acquires/s", "conn cycle", "p99 in cycles", "least-served client", "errors", "redispool/peer p99", "redispool/peer cycle")
	for _, row := range rows {
		minShare := math.Inf(1)
		for i := range row.MinClient {
			minShare = min(minShare, float64(row.MinClient[i])/row.MeanClient[i])
		}
		tw.row(row.Pool, fmtDur(medianDur(row.P50)), fmtDur(medianDur(row.P99)), fmtDur(medianDur(row.Max)),
			fmt.Sprintf("%.1f", median(row.MaxOverP50())),
			fmtCount(median(row.AcquiresPerSec())),
			fmtDur(medianDur(row.Cycle)),
			fmt.Sprintf("%.1f", median(ratios(durs(row.P99), durs(row.Cycle)))),
			fmt.Sprintf("%.0f%% of mean", 100*minShare),
			fmt.Sprintf("%.0f", sumInt(row.Errors)),
			fmtRatioCell(row.RatioP99), fmtRatioCell(row.RatioCycle))
	}
	tw.flush()
}

// printPipeline prints the pipeline part, if it ran.
func printPipeline(w io.Writer, rows []PipeRow) {
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\n5. Pipelines on redis-server: %d goroutines, each borrowing a conn to Send %d GETs (%d-byte values), Flush, Receive %d replies and Close; a command is one GET; median over rounds\n",
		pipeClients, pipeDepth, pipeValueSize, pipeDepth)
	tw := newTable(w, "dialer", "pool", "cmds/s", "CPU/cmd", "allocs/cmd", "errors", "redispool/peer cmds/s", "redispool/peer CPU/cmd")
	last := ""
	for _, row := range rows {
		dialer := ""
		if row.Dialer != last {
			dialer, last = row.Dialer, row.Dialer
		}
		tw.row(dialer, row.Pool, fmtCount(median(row.OpsPerSec)), fmtCPU(row.CPUPerOp),
			fmt.Sprintf("%.2f", median(row.AllocsPerOp)), fmt.Sprintf("%.0f", sumInt(row.Errors)),
			fmtRatioCell(row.RatioOps), fmtRatioCell(row.RatioCPU))
	}
	tw.flush()
	fmt.Fprintf(w, "%s: redispool with Addr; redigo with a Dial that dials the address with redispool's default timeouts. %s: both pools given that Dial.\n", dialerPool, dialerUser)
}

// fmtCPU is the median of CPU times per command, "-" where none was read.
func fmtCPU(ds []time.Duration) string {
	c := median(cpuFloats(ds))
	if math.IsNaN(c) {
		return "-"
	}
	if c < 1e3 {
		return fmt.Sprintf("%.0fns", c)
	}
	return fmt.Sprintf("%.2fus", c/1e3)
}

// printBorrow prints the borrow part, if it ran.
func printBorrow(w io.Writer, rows []GetCloseRow) {
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\n6. One-command borrow: Get, Do(\"PING\") answered by a no-op conn without I/O, Close; 1 client on a pool of 1; median over rounds\n")
	tw := newTable(w, "pool", "ns/op", "allocs/op", "B/op", "failed ops", "redispool/peer ns/op")
	for _, row := range rows {
		tw.row(row.Pool, fmt.Sprintf("%.1f", median(row.NsPerOp)),
			fmt.Sprintf("%.2f", median(row.AllocsPerOp)), fmt.Sprintf("%.0f", median(row.BytesPerOp)),
			fmt.Sprintf("%.0f", sumInt(row.Errors)), fmtRatioCell(row.Ratio))
	}
	tw.flush()
}
