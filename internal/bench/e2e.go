package bench

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gomodule/redigo/redis"
	goredis "github.com/redis/go-redis/v9"

	"github.com/redispool/redispool"
)

// The end-to-end part: e2eClients goroutines run GET or SET through a pool of
// e2eConns connections to a real redis-server, on keySpace keys named as
// redis-benchmark -r names them, with valueSize-byte values as -d sets them.
const (
	e2eClients = 64
	e2eConns   = 16
	keySpace   = 10000
	valueSize  = 64
	// seed seeds the key choice of every client (client i uses PCG(seed, i)),
	// so that every pool sees the same key sequence.
	seed = 0
	// Timeouts of the redigo pools' Dial, the same as redispool's defaults,
	// so that every client sets the same deadlines.
	dialTimeout = 5 * time.Second
	ioTimeout   = 3 * time.Second
)

const (
	nameRedisBenchmark = "redis-benchmark"
	// nameChannel is the least a bounded pool of plain redigo conns can
	// cost: e2eConns redigo conns in a buffered channel, with no checks, no
	// bound on the wait and no accounting. It is no target's peer; its row
	// shows how much a pool could gain on this machine by costing less.
	nameChannel = "channel"
)

// e2eNames are the participants of the end-to-end part, redispool first and
// redis-benchmark, which is not a Go client, last.
var e2eNames = []string{nameRedispool, nameRedigo, nameGoRedis, nameChannel, nameRedisBenchmark}

// e2eOps are the commands measured.
var e2eOps = []string{"GET", "SET"}

var (
	keys  = makeKeys()
	value = bytes.Repeat([]byte("x"), valueSize)
)

func makeKeys() []string {
	out := make([]string, keySpace)
	for i := range out {
		out[i] = fmt.Sprintf("key:%012d", i)
	}
	return out
}

// E2ERow is one participant's figures for one command, one entry per round.
type E2ERow struct {
	Pool, Op  string
	OpsPerSec []float64
	P50, P99  []time.Duration
	Errors    []int64
	// AllocsPerOp is the heap objects allocated per command in this process
	// (NaN for redis-benchmark).
	AllocsPerOp []float64
	// CPUPerOp is the CPU time, user and system, this process used per
	// command: the client's cost, system calls included (NaN for
	// redis-benchmark, and where it cannot be read).
	CPUPerOp []time.Duration
	// RatioOps, RatioP99 and RatioCPU hold, per round, redispool's ops/s,
	// p99 and CPU per command over this participant's; NaN for redispool.
	RatioOps, RatioP99, RatioCPU []float64
	// Skipped says why the row has no figures.
	Skipped string
}

// e2ePool runs one command through a pool: Get, Do, Close, or the client's
// own call for go-redis.
type e2ePool interface {
	do(ctx context.Context, set bool, key string) error
	close()
}

func newE2EPool(name, addr string) e2ePool {
	switch name {
	case nameRedispool:
		return redigoE2E{&redispool.Pool{Addr: addr, MaxActive: e2eConns}}
	case nameRedigo:
		return redigoE2E{&redis.Pool{MaxActive: e2eConns, MaxIdle: e2eConns, Wait: true,
			Dial: func() (redis.Conn, error) { return dialE2E(addr) }}}
	case nameGoRedis:
		return goRedisE2E{goredis.NewClient(&goredis.Options{Addr: addr, PoolSize: e2eConns, MinIdleConns: 0})}
	case nameChannel:
		return newChannelE2E(addr)
	}
	panic("unknown pool " + name)
}

// channelE2E is the bare channel of nameChannel. Its conns are dialed on
// first use; one that fails is replaced by a fresh one.
type channelE2E struct {
	addr  string
	conns chan redis.Conn
	once  sync.Once
	err   error // the first dial's error, if it failed
}

func newChannelE2E(addr string) *channelE2E {
	return &channelE2E{addr: addr, conns: make(chan redis.Conn, e2eConns)}
}

func (c *channelE2E) dial() (redis.Conn, error) { return dialE2E(c.addr) }

// dialE2E dials addr as redigo's bounded pool and the bare channel do, with
// redispool's default timeouts, so that every client sets the same deadlines.
func dialE2E(addr string) (redis.Conn, error) {
	return redis.Dial("tcp", addr, redis.DialConnectTimeout(dialTimeout),
		redis.DialReadTimeout(ioTimeout), redis.DialWriteTimeout(ioTimeout))
}

func (c *channelE2E) fill() {
	for range e2eConns {
		conn, err := c.dial()
		if err != nil {
			c.err = fmt.Errorf("channel: dialing: %w", err)
			return
		}
		c.conns <- conn
	}
}

func (c *channelE2E) do(_ context.Context, set bool, key string) error {
	if c.once.Do(c.fill); c.err != nil {
		return c.err
	}
	conn := <-c.conns
	var err error
	if set {
		_, err = conn.Do("SET", key, value)
	} else {
		_, err = conn.Do("GET", key)
	}
	if err != nil {
		if _, reply := err.(redis.Error); !reply {
			conn.Close()
			fresh, derr := c.dial()
			if derr != nil {
				// Keep the broken conn's place, so that the channel
				// stays full; its next Do fails too.
				c.conns <- conn
				return err
			}
			conn = fresh
		}
	}
	c.conns <- conn
	return err
}

// close closes the conns in the channel: all of them once every do has
// returned.
func (c *channelE2E) close() {
	for {
		select {
		case conn := <-c.conns:
			conn.Close()
		default:
			return
		}
	}
}

// redigoE2E is either redigo pool: both satisfy redispool.ConnPool.
type redigoE2E struct{ p redispool.ConnPool }

func (r redigoE2E) do(_ context.Context, set bool, key string) error {
	c := r.p.Get()
	var err error
	if set {
		_, err = c.Do("SET", key, value)
	} else {
		_, err = c.Do("GET", key)
	}
	if cerr := c.Close(); err == nil {
		err = cerr
	}
	return err
}

func (r redigoE2E) close() { r.p.Close() }

type goRedisE2E struct{ c *goredis.Client }

func (g goRedisE2E) do(ctx context.Context, set bool, key string) error {
	if set {
		return g.c.Set(ctx, key, value, 0).Err()
	}
	err := g.c.Get(ctx, key).Err()
	if errors.Is(err, goredis.Nil) {
		return nil
	}
	return err
}

func (g goRedisE2E) close() { g.c.Close() }

type e2eRun struct {
	opsPerSec float64
	allocs    float64
	cpuPerOp  time.Duration // -1 when not measured
	p50, p99  time.Duration
	errors    int64
	firstErr  error
}

// e2eAcc accumulates the slices of one measurement.
type e2eAcc struct {
	h       hist
	elapsed time.Duration
	mallocs uint64
	cpu     time.Duration
	noCPU   bool // the CPU time could not be read
	errors  int64
	// redis-benchmark reports percentiles, not a histogram: the mean of
	// its slices' p50 and p99 is kept instead.
	benchOps, benchSlices    int64
	benchP50Sum, benchP99Sum time.Duration
	firstErr                 error
}

func (a *e2eAcc) result() e2eRun {
	if a.benchSlices > 0 {
		return e2eRun{
			opsPerSec: float64(a.benchOps) / a.elapsed.Seconds(),
			allocs:    math.NaN(),
			cpuPerOp:  -1,
			p50:       a.benchP50Sum / time.Duration(a.benchSlices),
			p99:       a.benchP99Sum / time.Duration(a.benchSlices),
		}
	}
	cpu := a.cpu / time.Duration(max(a.h.n, 1))
	if a.noCPU {
		cpu = -1
	}
	return e2eRun{
		opsPerSec: float64(a.h.n) / a.elapsed.Seconds(),
		allocs:    float64(a.mallocs) / float64(max(a.h.n, 1)),
		cpuPerOp:  cpu,
		p50:       a.h.quantile(0.5),
		p99:       a.h.quantile(0.99),
		errors:    a.errors,
		firstErr:  a.firstErr,
	}
}

// e2eLoop runs e2eClients clients doing op through p for d, and adds what
// they did to acc unless it is nil.
func e2eLoop(ctx context.Context, p e2ePool, set bool, d time.Duration, acc *e2eAcc) {
	clientsLoop(ctx, p, set, e2eClients, d, acc)
}

// clientsLoop is e2eLoop with the number of clients given.
func clientsLoop(ctx context.Context, p e2ePool, set bool, clients int, d time.Duration, acc *e2eAcc) {
	hs := make([]hist, clients)
	errs := make([]int64, clients)
	var firstErr atomic.Pointer[error]
	var stop atomic.Bool
	var ready, done sync.WaitGroup
	start := make(chan struct{})
	ready.Add(clients)
	done.Add(clients)
	for i := range clients {
		go func() {
			defer done.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			h := &hs[i]
			ready.Done()
			<-start
			for !stop.Load() {
				key := keys[rng.IntN(keySpace)]
				t0 := time.Now()
				err := p.do(ctx, set, key)
				if err != nil {
					errs[i]++
					firstErr.CompareAndSwap(nil, &err)
					continue
				}
				h.record(time.Since(t0))
			}
		}()
	}
	ready.Wait()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	cpu0, cpuOK := processCPU()
	t0 := time.Now()
	close(start)
	time.Sleep(d)
	stop.Store(true)
	done.Wait()
	elapsed := time.Since(t0)
	cpu1, cpuOK1 := processCPU()
	runtime.ReadMemStats(&m1)
	if acc == nil {
		return
	}
	acc.elapsed += elapsed
	acc.mallocs += m1.Mallocs - m0.Mallocs
	acc.cpu += cpu1 - cpu0
	acc.noCPU = acc.noCPU || !cpuOK || !cpuOK1
	for i := range hs {
		acc.h.merge(&hs[i])
		acc.errors += errs[i]
	}
	if e := firstErr.Load(); e != nil && acc.firstErr == nil {
		acc.firstErr = *e
	}
}

// populate sets every key to v, so that GET always finds a value.
func (s *server) populate(keys []string, v []byte) error {
	for _, k := range keys {
		if err := s.admin.Send("SET", k, v); err != nil {
			return err
		}
	}
	if err := s.admin.Flush(); err != nil {
		return err
	}
	for range keys {
		if _, err := s.admin.Receive(); err != nil {
			return err
		}
	}
	return nil
}

// runE2E is poolbench's part 3 (item 4 of the build list).
func (r *runner) runE2E(ctx context.Context, s *server) ([]E2ERow, error) {
	if err := s.populate(keys, value); err != nil {
		return nil, fmt.Errorf("populating keys: %w", err)
	}
	benchBin, benchErr := exec.LookPath("redis-benchmark")
	pools := map[string]e2ePool{}
	defer func() {
		for _, p := range pools {
			p.close()
		}
	}()
	for _, name := range e2eNames {
		if name != nameRedisBenchmark {
			pools[name] = newE2EPool(name, s.addr)
		}
	}
	rows := make([]E2ERow, 0, len(e2eOps)*len(e2eNames))
	idx := map[[2]string]int{}
	for _, op := range e2eOps {
		for _, name := range e2eNames {
			idx[[2]string{op, name}] = len(rows)
			row := E2ERow{Pool: name, Op: op}
			if name == nameRedisBenchmark && benchErr != nil {
				row.Skipped = "redis-benchmark not found on PATH"
			}
			rows = append(rows, row)
		}
	}
	benchN := map[string]int{}
	for round := range r.rounds {
		for _, op := range e2eOps {
			set := op == "SET"
			accs := make([]e2eAcc, len(e2eNames))
			for slice := range r.slices {
				for _, pi := range rotation(len(e2eNames), round+slice) {
					if err := ctx.Err(); err != nil {
						return nil, err
					}
					name := e2eNames[pi]
					if rows[idx[[2]string{op, name}]].Skipped != "" {
						continue
					}
					acc := &accs[pi]
					if name == nameRedisBenchmark {
						// As many requests as the slice's length allows at the
						// rate of the previous run.
						n := benchN[op]
						if n == 0 {
							n = max(500, int(r.slice.Seconds()*50000))
						}
						res, err := redisBenchmark(ctx, benchBin, s.addr, op, n)
						if err != nil {
							return nil, err
						}
						benchN[op] = max(500, int(res.opsPerSec*r.slice.Seconds()))
						acc.benchOps += int64(n)
						acc.benchSlices++
						acc.elapsed += time.Duration(float64(n) / res.opsPerSec * float64(time.Second))
						acc.benchP50Sum += res.p50
						acc.benchP99Sum += res.p99
						continue
					}
					p := pools[name]
					runtime.GC()
					e2eLoop(ctx, p, set, r.warmup, nil)
					runtime.GC()
					e2eLoop(ctx, p, set, r.slice, acc)
				}
			}
			for pi, name := range e2eNames {
				row := &rows[idx[[2]string{op, name}]]
				if row.Skipped != "" {
					continue
				}
				res := accs[pi].result()
				if res.firstErr != nil {
					r.note("end to end: %s %s: %d errors, the first: %v", name, op, res.errors, res.firstErr)
				}
				row.OpsPerSec = append(row.OpsPerSec, res.opsPerSec)
				row.P50 = append(row.P50, res.p50)
				row.P99 = append(row.P99, res.p99)
				row.Errors = append(row.Errors, res.errors)
				row.AllocsPerOp = append(row.AllocsPerOp, res.allocs)
				row.CPUPerOp = append(row.CPUPerOp, res.cpuPerOp)
				r.progress("e2e round %d/%d %s %s: %.0f ops/s p99 %v", round+1, r.rounds, op, name, res.opsPerSec, res.p99)
			}
		}
	}
	for _, op := range e2eOps {
		base := &rows[idx[[2]string{op, nameRedispool}]]
		for _, name := range e2eNames {
			row := &rows[idx[[2]string{op, name}]]
			if name == nameRedispool || row.Skipped != "" {
				row.RatioOps, row.RatioP99, row.RatioCPU = nanSlice(r.rounds), nanSlice(r.rounds), nanSlice(r.rounds)
				continue
			}
			row.RatioCPU = ratios(cpuFloats(base.CPUPerOp), cpuFloats(row.CPUPerOp))
			row.RatioOps = ratios(base.OpsPerSec, row.OpsPerSec)
			row.RatioP99 = ratios(durs(base.P99), durs(row.P99))
		}
	}
	return rows, nil
}

// redisBenchmark runs redis-benchmark -c e2eConns for one command on the same
// keys and value size, and reads its CSV report.
func redisBenchmark(ctx context.Context, bin, addr, op string, n int) (e2eRun, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return e2eRun{}, err
	}
	cmd := exec.CommandContext(ctx, bin, "-h", host, "-p", port,
		"-c", strconv.Itoa(e2eConns), "-n", strconv.Itoa(n),
		"-d", strconv.Itoa(valueSize), "-r", strconv.Itoa(keySpace),
		"-t", op, "--csv")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return e2eRun{}, fmt.Errorf("redis-benchmark: %w: %s", err, stderr.String())
	}
	recs, err := csv.NewReader(bytes.NewReader(out)).ReadAll()
	if err != nil || len(recs) < 2 {
		return e2eRun{}, fmt.Errorf("redis-benchmark: unexpected output %q: %v", out, err)
	}
	col := map[string]int{}
	for i, h := range recs[0] {
		col[h] = i
	}
	field := func(name string) (float64, error) {
		i, ok := col[name]
		if !ok || i >= len(recs[1]) {
			return 0, fmt.Errorf("redis-benchmark: no %q column in %q", name, out)
		}
		return strconv.ParseFloat(recs[1][i], 64)
	}
	rps, err := field("rps")
	if err != nil {
		return e2eRun{}, err
	}
	if math.IsInf(rps, 0) || math.IsNaN(rps) || rps <= 0 {
		// Its total time is counted in milliseconds: too short a run
		// reads as no time at all.
		return e2eRun{}, fmt.Errorf("redis-benchmark: rps %q is not a rate; the run was too short to time", recs[1][col["rps"]])
	}
	ms := func(name string) (time.Duration, error) {
		v, err := field(name)
		return time.Duration(math.Round(v * float64(time.Millisecond))), err
	}
	p50, err := ms("p50_latency_ms")
	if err != nil {
		return e2eRun{}, err
	}
	p99, err := ms("p99_latency_ms")
	if err != nil {
		return e2eRun{}, err
	}
	return e2eRun{opsPerSec: rps, allocs: math.NaN(), p50: p50, p99: p99}, nil
}

// cpuFloats is CPU times as float64 nanoseconds, NaN where not measured.
func cpuFloats(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = float64(d)
		if d < 0 {
			out[i] = math.NaN()
		}
	}
	return out
}
