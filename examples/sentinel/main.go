// Command sentinel writes to a Redis master that it finds through Redis
// Sentinel, and prints the master in use, so that you can watch redispool
// follow a failover.
//
// Point it at your sentinels and name the master they monitor:
//
//	cd examples && go run ./sentinel -sentinels 127.0.0.1:26379,127.0.0.1:26380,127.0.0.1:26381 -master mymaster
//
// then, in another terminal, fail the master over:
//
//	redis-cli -p 26379 SENTINEL FAILOVER mymaster
//
// -writers goroutines (8 by default) each increment their own key,
// "redispool-example:sentinel:N", which expires after a minute, through one
// redispool.Pool whose Sentinel field lists the sentinels. Every -report
// (1s) it prints the master in use and the writes so far; when the master
// changes it says so at once. It stops after -duration, or on Ctrl-C when
// -duration is 0 (the default), and prints a summary.
//
// A write can fail for a moment during a failover: the old master refuses
// writes (or is gone) until the sentinels announce the new one, then the
// pool drops its connections to the old master and dials the new one. The
// pool's Logger prints that announcement and, rate-limited, failed dials.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/redispool/redispool"
)

// keyPrefix starts the name of every key the example writes.
const keyPrefix = "redispool-example:sentinel:"

// config is what the flags set.
type config struct {
	sentinels []string
	master    string
	writers   int
	duration  time.Duration // 0: until ctx ends
	report    time.Duration
}

// summary is what a run did.
type summary struct {
	Writes, Failures int64
	Masters          []string // the masters used, in order
	FirstError       string
}

func main() {
	var (
		sentinels = flag.String("sentinels", "127.0.0.1:26379", "comma-separated host:port of the sentinels")
		master    = flag.String("master", "mymaster", "name under which the sentinels monitor the master")
		writers   = flag.Int("writers", 8, "goroutines writing at once")
		duration  = flag.Duration("duration", 0, "how long to write; 0 runs until interrupted")
		report    = flag.Duration("report", time.Second, "how often to print progress")
	)
	flag.Parse()
	cfg := config{master: *master, writers: *writers, duration: *duration, report: *report}
	for _, s := range strings.Split(*sentinels, ",") {
		if s = strings.TrimSpace(s); s != "" {
			cfg.sentinels = append(cfg.sentinels, s)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if _, err := run(ctx, os.Stdout, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "sentinel:", err)
		os.Exit(1)
	}
}

// run writes through a pool that follows the sentinels until cfg.duration
// passes or ctx ends, printing the master in use to out.
func run(ctx context.Context, out io.Writer, cfg config) (summary, error) {
	if len(cfg.sentinels) == 0 || cfg.master == "" || cfg.writers < 1 || cfg.report <= 0 {
		return summary{}, errors.New("need -sentinels, -master, -writers of at least 1 and a positive -report")
	}
	if cfg.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.duration)
		defer cancel()
	}
	pool := &redispool.Pool{
		Sentinel: &redispool.Sentinel{
			Addrs:      cfg.sentinels,
			MasterName: cfg.master,
		},
		MaxActive:   cfg.writers,
		ReadTimeout: time.Second,
		// Say when the pool follows a new master, and why writes fail.
		Logger: slog.New(slog.NewTextHandler(out, nil)),
	}
	defer pool.Close()

	// The first write finds the master: fail early with a clear error when
	// the sentinels cannot be reached or do not know the master.
	if err := write(pool, keyPrefix+"0"); err != nil {
		return summary{}, fmt.Errorf("first write: %w", err)
	}

	var (
		writes, failures atomic.Int64
		errMu            sync.Mutex
		firstErr         string
		wg               sync.WaitGroup
	)
	for w := range cfg.writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := fmt.Sprint(keyPrefix, w)
			for ctx.Err() == nil {
				if err := write(pool, key); err != nil {
					failures.Add(1)
					errMu.Lock()
					if firstErr == "" {
						firstErr = err.Error()
					}
					errMu.Unlock()
					sleep(ctx, 50*time.Millisecond) // the pool fails fast while the master is away
					continue
				}
				writes.Add(1)
				sleep(ctx, time.Millisecond)
			}
		}()
	}

	start := time.Now()
	var sum summary
	note := func(now bool) {
		m := pool.Sentinel.Master()
		switch {
		case m != "" && len(sum.Masters) == 0:
			sum.Masters = append(sum.Masters, m)
			fmt.Fprintf(out, "%5.1fs  master %s\n", time.Since(start).Seconds(), m)
		case m != "" && m != sum.Masters[len(sum.Masters)-1]:
			sum.Masters = append(sum.Masters, m)
			fmt.Fprintf(out, "%5.1fs  master changed to %s\n", time.Since(start).Seconds(), m)
		}
		if now {
			fmt.Fprintf(out, "%5.1fs  %d writes, %d failed, master %s\n", time.Since(start).Seconds(),
				writes.Load(), failures.Load(), sum.Masters[len(sum.Masters)-1])
		}
	}
	note(false)
	check := time.NewTicker(10 * time.Millisecond) // notice a change of master at once
	defer check.Stop()
	report := time.NewTicker(cfg.report)
	defer report.Stop()
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-check.C:
			note(false)
		case <-report.C:
			note(true)
		}
	}
	wg.Wait()
	note(false)

	sum.Writes, sum.Failures = writes.Load(), failures.Load()
	sum.FirstError = firstErr
	st := pool.Stats()
	fmt.Fprintf(out, "done: %d writes, %d failed, masters used: %s; %d connections dialed, %d sentinel queries\n",
		sum.Writes, sum.Failures, strings.Join(sum.Masters, " then "), st.DialCount, pool.Sentinel.Queries())
	if firstErr != "" {
		fmt.Fprintf(out, "first error: %s\n", firstErr)
	}
	return sum, nil
}

// write increments key, which expires after a minute, in one round trip.
func write(pool *redispool.Pool, key string) error {
	c := pool.Get()
	defer c.Close()
	c.Send("INCR", key)
	c.Send("EXPIRE", key, 60)
	replies, err := redis.Values(c.Do(""))
	if err != nil {
		return err
	}
	for _, r := range replies {
		if err, ok := r.(redis.Error); ok {
			return err // NOREPLICAS, READONLY, ...
		}
	}
	return nil
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
