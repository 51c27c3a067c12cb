// Command poolbench measures redispool against redigo's redis.Pool, go-redis
// v9, jackc/puddle v2, rueidis and redis-benchmark in one run and prints a table per
// part, the machine, and PASS or MISS for each target of issues 4, 16 and 19:
//
//	cd internal/bench && go run ./cmd/poolbench
//
// Every round runs each pool once, interleaved, and the ratios printed are
// redispool over each peer, the median over rounds. Parts 3 to 5 need a
// redis-server: one is started on a free loopback port unless -addr names
// one; redis-benchmark is taken from PATH, and its rows are skipped with a
// note when it is not there.
//
// Flags:
//
//	-rounds N     interleaved rounds (default 5)
//	-short        tiny durations and 1 round: checks that everything runs
//	-addr H:P     use this redis-server instead of starting one
//	-duration D   length of one measurement in every part but 4 (default 1s)
//	-slices N     split each measurement into N interleaved slices (default 5)
//	-commands N   commands per connection-cost run (default 100000)
//	-parts LIST   comma-separated parts: getclose,waiting,borrow,e2e,conncost,pipeline,autopipe (or none)
//	-profile DIR  also write CPU and allocation profiles of Get+Close to DIR
//	-profiletime D  length of each CPU profile (default 5s)
//	-q            no progress lines on stderr
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/redispool/redispool/internal/bench"
)

func main() {
	var cfg bench.Config
	var parts string
	var quiet bool
	flag.IntVar(&cfg.Rounds, "rounds", 5, "interleaved rounds; the figures are medians over them")
	flag.BoolVar(&cfg.Short, "short", false, "tiny durations and 1 round, to check that everything runs")
	flag.StringVar(&cfg.Addr, "addr", "", "address of an existing redis-server (default: start one on a free port)")
	flag.DurationVar(&cfg.Duration, "duration", 0, "length of one measurement in every part but 4 (default 1s, 20ms with -short)")
	flag.IntVar(&cfg.Slices, "slices", 0, "interleaved slices per measurement (default 5, 1 with -short)")
	flag.IntVar(&cfg.Commands, "commands", 0, "commands per connection-cost run (default 100000, 2000 with -short)")
	flag.StringVar(&parts, "parts", strings.Join(bench.AllParts, ","), "comma-separated parts to run, or none")
	flag.StringVar(&cfg.ProfileDir, "profile", "", "directory for CPU and allocation profiles of Get+Close")
	flag.DurationVar(&cfg.ProfileTime, "profiletime", 5*time.Second, "length of each CPU profile")
	flag.BoolVar(&quiet, "q", false, "no progress lines on stderr")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "poolbench: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	roundsSet := false
	flag.Visit(func(f *flag.Flag) { roundsSet = roundsSet || f.Name == "rounds" })
	if cfg.Short && !roundsSet {
		cfg.Rounds = 1
	}
	cfg.Parts = strings.Split(parts, ",")
	cfg.Out = os.Stdout
	cfg.Progress = os.Stderr
	if quiet {
		cfg.Progress = io.Discard
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if _, err := bench.Run(ctx, cfg); err != nil {
		fmt.Fprintf(os.Stderr, "poolbench: %v\n", err)
		os.Exit(1)
	}
}
