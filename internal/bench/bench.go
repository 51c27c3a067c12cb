// Package bench measures redispool against redigo's redis.Pool, go-redis v9,
// jackc/puddle v2 and redis-benchmark, in one run, with every round
// interleaving the pools, and reports ratios (redispool over each peer, the
// median over rounds) as the headline figures.
//
// It is a nested module so that go-redis and puddle stay out of the library's
// go.mod. Run it with
//
//	cd internal/bench && go run ./cmd/poolbench
//
// The parts, as issue 4 lists them:
//
//  1. Get+Close of a no-op connection (pool overhead only): 1 client; 32
//     clients on 8 conns; 256 clients on 64 conns; redispool, redigo
//     (MaxActive = MaxIdle = N, Wait) and puddle.
//  2. Waiting: 256 clients on 16 conns, each holding its conn about 50 us:
//     the wait in Get, p50, p99 and max, and whether a client starved;
//     once with the conn held by time.Sleep, once held busy.
//  3. End to end on a real redis-server: GET and SET, 64 goroutines on 16
//     conns, redispool, redigo (bounded), go-redis (PoolSize 16), and
//     redis-benchmark -c 16 as the server's ceiling on this machine.
//  4. Connection cost: the connections opened by 200 goroutines running
//     100,000 commands, for redispool (only Dial set), redigo as
//     boj/redistore configures it, and go-redis (defaults).
//
// And two parts of issue 16:
//
//  5. Pipelines on redis-server: 16 goroutines, each borrowing a conn to
//     Send 100 GETs, Flush and Receive the replies: client CPU per
//     pipelined command and commands/s, redispool against redigo, each pool
//     dialing through its own dialer, then both through the same Dial.
//  6. One-command borrow: Get, Do("PING") on a no-op conn, Close; 1 client
//     on a pool of 1, redispool against redigo.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"time"
)

// Part names, for Config.Parts.
const (
	PartGetClose = "getclose"
	PartWaiting  = "waiting"
	PartE2E      = "e2e"
	PartConnCost = "conncost"
	PartPipeline = "pipeline"
	PartBorrow   = "borrow"
	PartAutoPipe = "autopipe"
	// PartNone runs no part, for a run that only profiles.
	PartNone = "none"
)

// AllParts are every part, in the order they run: those that need no
// server first.
var AllParts = []string{PartGetClose, PartWaiting, PartBorrow, PartE2E, PartConnCost, PartPipeline, PartAutoPipe}

// Config says what to run.
type Config struct {
	// Rounds is the number of interleaved rounds: 5 when zero, 1 in short mode.
	Rounds int
	// Short shrinks every measurement to a few milliseconds, to check that
	// everything runs, not to measure.
	Short bool
	// Addr is an existing redis-server for parts 3 to 5. When empty, a
	// redis-server is started on a free loopback port, if installed.
	Addr string
	// Duration is the length of one measurement in every part but 4: 1s when
	// zero, 20ms in short mode.
	Duration time.Duration
	// Slices splits each measurement of a round into this many slices, run
	// interleaved (A B C A B C ...), so that a burst of load from another
	// process on a shared machine hits every pool alike: 5 when zero, 1 in
	// short mode. Each slice is preceded by a warm-up a tenth as long.
	Slices int
	// Commands is the length of one connection-cost run: 100,000 when zero,
	// 2,000 in short mode.
	Commands int
	// Parts selects parts by name (AllParts); all when empty.
	Parts []string
	// ProfileDir, when set, receives CPU and allocation profiles of
	// redispool's and redigo's Get+Close for each shape of part 1, each
	// taken over ProfileTime (5s when zero).
	ProfileDir  string
	ProfileTime time.Duration
	// Out receives the tables; Progress, when not nil, a line per measurement.
	Out, Progress io.Writer
}

// Report is what a run measured.
type Report struct {
	Machine  Machine
	Config   Config // with defaults applied
	GetClose []GetCloseResult
	Waiting  []WaitRow // each conn held busy for 50 µs: the rows the targets read
	// WaitingSleep is the waiting part again with each conn held by
	// time.Sleep(50µs) (HoldSleep), which lasts far longer: for comparison.
	WaitingSleep []WaitRow
	E2E          []E2ERow
	ConnCost     []ConnRow
	Pipeline     []PipeRow
	Borrow       []GetCloseRow // one row per pool, with part 1's figures
	AutoPipe     []AutoRow
	Targets      []Target
	// Notes are things the reader should know: skipped rows, errors.
	Notes []string
}

// Machine describes where the run happened.
type Machine struct {
	GOMAXPROCS, NumCPU int
	CPU                string
	GoVersion          string
	OSArch             string
	LoadAvgStart       string
	LoadAvgEnd         string
	Modules            map[string]string
	Redispool          string // the commit of the redispool tree measured
	Server             string // redis-server version and address, or why none
	RedisBenchmark     string // path, or why none
}

// Target is one of the done-when conditions, or a figure it asks to
// have reported (Info).
type Target struct {
	Part, Name string
	Got        string
	Pass       bool
	Skipped    bool
	Info       bool
}

// Status is PASS, MISS, INFO (reported, nothing to pass) or SKIP.
func (t Target) Status() string {
	switch {
	case t.Skipped:
		return "SKIP"
	case t.Info:
		return "INFO"
	case t.Pass:
		return "PASS"
	}
	return "MISS"
}

type runner struct {
	cfg      Config
	rounds   int
	duration time.Duration
	slices   int
	slice    time.Duration // duration / slices
	warmup   time.Duration
	commands int
	rep      *Report
}

func (r *runner) progress(format string, args ...any) {
	if r.cfg.Progress != nil {
		fmt.Fprintf(r.cfg.Progress, format+"\n", args...)
	}
}

func (r *runner) note(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if !slices.Contains(r.rep.Notes, msg) {
		r.rep.Notes = append(r.rep.Notes, msg)
	}
}

func (cfg *Config) applyDefaults() {
	if cfg.Rounds <= 0 {
		cfg.Rounds = 5
		if cfg.Short {
			cfg.Rounds = 1
		}
	}
	if cfg.Duration <= 0 {
		cfg.Duration = time.Second
		if cfg.Short {
			cfg.Duration = 20 * time.Millisecond
		}
	}
	if cfg.Slices <= 0 {
		cfg.Slices = 5
		if cfg.Short {
			cfg.Slices = 1
		}
	}
	if cfg.Commands <= 0 {
		cfg.Commands = 100_000
		if cfg.Short {
			cfg.Commands = 2_000
		}
	}
	if len(cfg.Parts) == 0 {
		cfg.Parts = AllParts
	}
	if cfg.ProfileTime <= 0 {
		cfg.ProfileTime = 5 * time.Second
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
}

// Run runs the selected parts, prints the tables to cfg.Out and returns what
// it measured. An error means a part could not run at all, not that a target
// was missed.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg.applyDefaults()
	for _, p := range cfg.Parts {
		if !slices.Contains(AllParts, p) && p != PartNone {
			return nil, fmt.Errorf("unknown part %q; the parts are %s, or %s", p, strings.Join(AllParts, ", "), PartNone)
		}
	}
	rep := &Report{Config: cfg, Machine: machine()}
	r := &runner{
		cfg:      cfg,
		rounds:   cfg.Rounds,
		duration: cfg.Duration,
		slices:   cfg.Slices,
		slice:    cfg.Duration / time.Duration(cfg.Slices),
		warmup:   cfg.warmup(),
		commands: cfg.Commands,
		rep:      rep,
	}
	want := func(p string) bool { return slices.Contains(cfg.Parts, p) }

	if err := r.runNoServerParts(ctx, want); err != nil {
		return nil, err
	}
	if want(PartE2E) || want(PartConnCost) || want(PartPipeline) || want(PartAutoPipe) {
		if err := r.runServerParts(ctx, want); err != nil {
			return nil, err
		}
	}
	rep.Machine.LoadAvgEnd = loadAvg()
	rep.Targets = targets(rep)
	rep.Print(cfg.Out)

	if cfg.ProfileDir != "" {
		if err := r.profile(); err != nil {
			return rep, fmt.Errorf("profiling: %w", err)
		}
	}
	return rep, nil
}

// runNoServerParts runs the selected parts that need no server.
func (r *runner) runNoServerParts(ctx context.Context, want func(string) bool) error {
	rep := r.rep
	var err error
	if want(PartGetClose) {
		if rep.GetClose, err = r.runGetClose(ctx); err != nil {
			return fmt.Errorf("get+close: %w", err)
		}
	}
	if want(PartWaiting) {
		if rep.Waiting, err = r.runWaiting(ctx, HoldBusy); err != nil {
			return fmt.Errorf("waiting: %w", err)
		}
		if rep.WaitingSleep, err = r.runWaiting(ctx, HoldSleep); err != nil {
			return fmt.Errorf("waiting, sleep hold: %w", err)
		}
	}
	if want(PartBorrow) {
		if rep.Borrow, err = r.runBorrow(ctx); err != nil {
			return fmt.Errorf("borrow: %w", err)
		}
	}
	return nil
}

// runServerParts starts a redis-server, or uses the one given, and runs the
// selected parts that need one.
func (r *runner) runServerParts(ctx context.Context, want func(string) bool) error {
	rep := r.rep
	var s *server
	var err error
	if r.cfg.Addr != "" {
		s, err = useServer(r.cfg.Addr)
		if err != nil {
			return err
		}
		rep.Machine.Server = fmt.Sprintf("redis-server %s at %s (given with -addr; other clients may share it)", s.version, s.addr)
	} else {
		s, err = startServer()
		if errors.Is(err, errNoServer) {
			rep.Machine.Server = "none: " + err.Error()
			r.note("parts 3 to 5 skipped: %v (apt-get install redis-server)", err)
			return nil
		}
		if err != nil {
			return err
		}
		rep.Machine.Server = fmt.Sprintf("redis-server %s on %s, started by poolbench (persistence off)", s.version, s.addr)
	}
	defer s.close()
	if bin, err := exec.LookPath("redis-benchmark"); err == nil {
		rep.Machine.RedisBenchmark = bin
	} else {
		rep.Machine.RedisBenchmark = "not found on PATH: its rows are skipped"
		r.note("redis-benchmark not found on PATH: its rows are skipped (apt-get install redis-tools)")
	}
	return r.runOnServer(ctx, s, want)
}

// runOnServer runs the selected parts that need a server on s.
func (r *runner) runOnServer(ctx context.Context, s *server, want func(string) bool) error {
	rep := r.rep
	var err error
	if want(PartE2E) {
		if rep.E2E, err = r.runE2E(ctx, s); err != nil {
			return fmt.Errorf("end to end: %w", err)
		}
	}
	if want(PartConnCost) {
		if rep.ConnCost, err = r.runConnCost(ctx, s); err != nil {
			return fmt.Errorf("connection cost: %w", err)
		}
	}
	if want(PartPipeline) {
		if rep.Pipeline, err = r.runPipeline(ctx, s); err != nil {
			return fmt.Errorf("pipeline: %w", err)
		}
	}
	if want(PartAutoPipe) {
		if rep.AutoPipe, err = r.runAutoPipe(ctx, s); err != nil {
			return fmt.Errorf("auto-pipelining: %w", err)
		}
	}
	if r.cfg.ProfileDir != "" && want(PartE2E) {
		if err := os.MkdirAll(r.cfg.ProfileDir, 0o755); err != nil {
			return err
		}
		if err := r.profileE2E(ctx, s); err != nil {
			return fmt.Errorf("profiling end to end: %w", err)
		}
	}
	return nil
}

func machine() Machine {
	m := Machine{
		GOMAXPROCS:   runtime.GOMAXPROCS(0),
		NumCPU:       runtime.NumCPU(),
		CPU:          cpuModel(),
		GoVersion:    runtime.Version(),
		OSArch:       runtime.GOOS + "/" + runtime.GOARCH,
		LoadAvgStart: loadAvg(),
		Modules:      map[string]string{},
		Redispool:    redispoolCommit(),
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			switch d.Path {
			case "github.com/gomodule/redigo", "github.com/redis/go-redis/v9", "github.com/jackc/puddle/v2", "github.com/redis/rueidis":
				m.Modules[d.Path] = d.Version
			}
		}
	}
	return m
}

// redispoolCommit describes the commit of the work tree measured (the bench
// module replaces redispool with ../..), and whether its Go files differ.
func redispoolCommit() string {
	out, err := exec.Command("git", "log", "-1", "--format=%h %s").Output()
	if err != nil {
		return "unknown (not run from a git work tree)"
	}
	s := strings.TrimSpace(string(out))
	dirty, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no", "--", ":/*.go").Output()
	var files []string
	for line := range strings.SplitSeq(strings.TrimSpace(string(dirty)), "\n") {
		if f := strings.Fields(line); err == nil && len(f) == 2 {
			files = append(files, f[1])
		}
	}
	if len(files) > 0 {
		s += " + uncommitted changes to " + strings.Join(files, ", ")
	}
	return s
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
