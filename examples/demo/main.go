// Command demo shows what changing one type name, redis.Pool to
// redispool.Pool, does to an application's connections to Redis.
//
// It runs the same load three times, one pool after the other, against the
// same server: -clients goroutines (200 by default) each loop for -duration
// (3s by default), taking a connection with Get, writing their own key with
// SET, reading it back with GET, checking that the value read is the one
// written, and closing the connection. Only the pool differs:
//
//   - redigo (as boj/redistore sets it): the redis.Pool that boj/redistore
//     v1.4's NewRediStore(10, ...) builds: MaxIdle 10, IdleTimeout 240s, a
//     PING on every borrow, and MaxActive left at 0, which redigo takes as
//     unlimited;
//   - redigo (only Dial set): &redis.Pool{Dial: dial}, as in many examples.
//     It keeps no idle connection, so every Get dials a new TCP connection;
//   - redispool (only Dial set): &redispool.Pool{Dial: dial}, the same
//     literal with only the type name changed. Its zero value keeps at most
//     10 x GOMAXPROCS connections open and reuses them.
//
// All three use the same Dial, which counts the TCP connections it opens and
// how many are open at once. The demo prints a table with, for each pool, the
// most connections open at once, the connections opened, the commands served
// per second, the errors and the wrong replies, followed by what the table
// shows.
//
// With no flags it starts an embedded, in-process server (miniredis), so it
// needs nothing installed:
//
//	cd examples && go run ./demo
//
// To use a real server instead, pass its address with -addr or set REDIS_ADDR:
//
//	cd examples && go run ./demo -addr 127.0.0.1:6379
//	cd examples && REDIS_ADDR=127.0.0.1:6379 go run ./demo -clients 500 -duration 10s
//
// On a real server the demo touches only keys named "redispool-demo:N", which
// expire after a minute and are deleted before and after each run.
//
// A redigo pool with only Dial set opens one TCP connection per Get, and each
// connection it closes lingers in TIME_WAIT for a minute, so a long run can
// use up the client's ephemeral ports; dials then fail with "cannot assign
// requested address". The demo counts such failures as errors, pauses a few
// milliseconds and goes on. Every dial, read and write has a timeout and every
// caller stops at the deadline, so the demo ends shortly after -duration per
// pool whatever the server does.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/gomodule/redigo/redis"
	"github.com/redispool/redispool"
)

const (
	// keyPrefix starts the name of every key the demo writes.
	keyPrefix = "redispool-demo:"
	// keyTTL is the expiry, in seconds, of every key the demo writes, so that
	// none outlives an interrupted run.
	keyTTL = 60
	// connectTimeout bounds each TCP connect.
	connectTimeout = 2 * time.Second
	// ioTimeout bounds each write of a command and each read of a reply on
	// connections redigo dials. redispool applies its own ReadTimeout (3s by
	// default) on top.
	ioTimeout = 2 * time.Second
	// errorPause is how long a caller waits after an error, so that a server
	// that is down or out of ports does not make the callers spin.
	errorPause = 5 * time.Millisecond
	// closeTimeout bounds the wait for a pool's connections to close after
	// the pool is closed, before the next pool starts.
	closeTimeout = 10 * time.Second
	// pollInterval is how often that wait checks the count of open connections.
	pollInterval = 10 * time.Millisecond
	// delBatch is the most keys deleted by one DEL.
	delBatch = 500
)

// The names of the three configurations, as printed in the table.
const (
	nameRedistore  = "redigo (as boj/redistore sets it)"
	nameRedigoDial = "redigo (only Dial set)"
	nameRedispool  = "redispool (only Dial set)"
)

// dialFunc is the type of the Dial field of both pools.
type dialFunc = func() (redis.Conn, error)

// poolConfig is one pool to measure.
type poolConfig struct {
	name string
	// newPool builds the pool around dial. Both pool types satisfy
	// redispool.ConnPool, which is all the callers need.
	newPool func(dial dialFunc) redispool.ConnPool
}

// configs are the pools the demo compares, in the order it runs them.
var configs = []poolConfig{
	{
		name: nameRedistore,
		newPool: func(dial dialFunc) redispool.ConnPool {
			// As boj/redistore v1.4's NewRediStore(size=10, ...) builds it.
			return &redis.Pool{
				MaxIdle:     10,
				IdleTimeout: 240 * time.Second,
				TestOnBorrow: func(c redis.Conn, t time.Time) error {
					_, err := c.Do("PING")
					return err
				},
				Dial: dial,
			}
		},
	},
	{
		name: nameRedigoDial,
		newPool: func(dial dialFunc) redispool.ConnPool {
			return &redis.Pool{Dial: dial}
		},
	},
	{
		name: nameRedispool,
		newPool: func(dial dialFunc) redispool.ConnPool {
			return &redispool.Pool{Dial: dial}
		},
	},
}

// result is what one configuration did.
type result struct {
	Name string
	// PeakOpen is the most TCP connections open at once.
	PeakOpen int64
	// Opened is the number of TCP connections opened.
	Opened int64
	// Commands is the number of SET and GET commands that succeeded.
	Commands int64
	// Elapsed is how long the callers ran.
	Elapsed time.Duration
	// Errors is the number of Get, SET, GET or Close calls that failed.
	Errors int64
	// WrongReplies is the number of GETs that returned another value than
	// the caller had just written.
	WrongReplies int64
	// FirstError is the message of the first error, if any.
	FirstError string
}

// CommandsPerSecond is the rate of successful commands.
func (r result) CommandsPerSecond() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Commands) / r.Elapsed.Seconds()
}

// connCounter counts the TCP connections that a pool's Dial opens and how
// many of them are open at once, by wrapping the net.Conn that redigo uses.
type connCounter struct {
	dialer net.Dialer
	opened atomic.Int64
	open   atomic.Int64
	peak   atomic.Int64
}

func newConnCounter() *connCounter {
	return &connCounter{dialer: net.Dialer{Timeout: connectTimeout}}
}

// dial opens a TCP connection for redis.DialNetDial and counts it.
func (c *connCounter) dial(network, addr string) (net.Conn, error) {
	nc, err := c.dialer.Dial(network, addr)
	if err != nil {
		return nil, err
	}
	c.opened.Add(1)
	n := c.open.Add(1)
	for {
		p := c.peak.Load()
		if n <= p || c.peak.CompareAndSwap(p, n) {
			break
		}
	}
	return &countedConn{Conn: nc, counter: c}, nil
}

// redisDial returns the Dial function that every pool of the demo uses.
//
// redis.DialConnectTimeout has no effect together with redis.DialNetDial,
// which replaces redigo's dialer; the connect timeout is set on c.dialer.
func (c *connCounter) redisDial(addr string) dialFunc {
	return func() (redis.Conn, error) {
		return redis.Dial("tcp", addr,
			redis.DialNetDial(c.dial),
			redis.DialReadTimeout(ioTimeout),
			redis.DialWriteTimeout(ioTimeout),
		)
	}
}

// waitClosed waits until every counted connection is closed, for at most
// timeout.
func (c *connCounter) waitClosed(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		n := c.open.Load()
		if n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d connections still open %v after closing the pool", n, timeout)
		}
		time.Sleep(pollInterval)
	}
}

// countedConn is a net.Conn whose first Close is counted.
type countedConn struct {
	net.Conn
	counter *connCounter
	closed  atomic.Bool
}

// Close closes the connection; only the first call lowers the open count.
func (cc *countedConn) Close() error {
	if cc.closed.CompareAndSwap(false, true) {
		cc.counter.open.Add(-1)
	}
	return cc.Conn.Close()
}

// loadStats is what the callers of one configuration count together.
type loadStats struct {
	commands atomic.Int64
	errors   atomic.Int64
	wrong    atomic.Int64

	firstErrOnce sync.Once
	firstErr     string
}

func (s *loadStats) fail(err error) {
	s.errors.Add(1)
	s.firstErrOnce.Do(func() { s.firstErr = err.Error() })
}

// errWrongReply marks a GET that returned another value than the one written.
var errWrongReply = errors.New("wrong reply")

// roundTrip takes a connection, writes val to key, reads it back and closes
// the connection. It returns how many commands succeeded and the first error;
// errWrongReply when the value read is not val.
func roundTrip(p redispool.ConnPool, key, val string) (commands int64, err error) {
	c := p.Get()
	defer func() {
		if cerr := c.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if _, err := c.Do("SET", key, val, "EX", keyTTL); err != nil {
		return 0, err
	}
	got, err := redis.String(c.Do("GET", key))
	switch {
	case errors.Is(err, redis.ErrNil):
		return 1, fmt.Errorf("%w: GET %s returned nil, want %q", errWrongReply, key, val)
	case err != nil:
		return 1, err
	case got != val:
		return 2, fmt.Errorf("%w: GET %s returned %q, want %q", errWrongReply, key, got, val)
	}
	return 2, nil
}

// caller is one client: it loops over roundTrip with its own key until the
// deadline or until ctx is done.
func caller(ctx context.Context, p redispool.ConnPool, id int, deadline time.Time, st *loadStats) {
	key := keyPrefix + strconv.Itoa(id)
	for i := 0; ctx.Err() == nil && time.Now().Before(deadline); i++ {
		n, err := roundTrip(p, key, strconv.Itoa(id)+"-"+strconv.Itoa(i))
		st.commands.Add(n)
		switch {
		case errors.Is(err, errWrongReply):
			st.wrong.Add(1)
		case err != nil:
			st.fail(err)
			pause(ctx, errorPause)
		}
	}
}

// pause sleeps for d or until ctx is done.
func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// runOne puts the load on one configuration and closes its pool.
func runOne(ctx context.Context, cfg poolConfig, addr string, clients int, d time.Duration) (result, error) {
	counter := newConnCounter()
	pool := cfg.newPool(counter.redisDial(addr))

	var st loadStats
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for id := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			caller(ctx, pool, id, deadline, &st)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)

	if err := pool.Close(); err != nil {
		return result{}, fmt.Errorf("%s: closing the pool: %w", cfg.name, err)
	}
	if err := counter.waitClosed(closeTimeout); err != nil {
		return result{}, fmt.Errorf("%s: %w", cfg.name, err)
	}
	return result{
		Name:         cfg.name,
		PeakOpen:     counter.peak.Load(),
		Opened:       counter.opened.Load(),
		Commands:     st.commands.Load(),
		Elapsed:      elapsed,
		Errors:       st.errors.Load(),
		WrongReplies: st.wrong.Load(),
		FirstError:   st.firstErr,
	}, nil
}

// deleteKeys deletes the keys of callers 0 to clients-1 over a connection of
// its own, not counted, so that each configuration starts from the same
// server-side state.
func deleteKeys(addr string, clients int) error {
	c, err := redis.Dial("tcp", addr,
		redis.DialConnectTimeout(connectTimeout),
		redis.DialReadTimeout(ioTimeout),
		redis.DialWriteTimeout(ioTimeout),
	)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", addr, err)
	}
	defer c.Close()
	for lo := 0; lo < clients; lo += delBatch {
		keys := make([]any, 0, delBatch)
		for id := lo; id < min(lo+delBatch, clients); id++ {
			keys = append(keys, keyPrefix+strconv.Itoa(id))
		}
		if _, err := c.Do("DEL", keys...); err != nil {
			return fmt.Errorf("deleting the demo's keys on %s: %w", addr, err)
		}
	}
	return nil
}

// run puts clients callers on each configuration in turn for d, against the
// server at addr, and writes progress, the table and a summary to w. It
// returns the results of the configurations that ran.
func run(ctx context.Context, w io.Writer, addr string, clients int, d time.Duration) ([]result, error) {
	if clients < 1 {
		return nil, fmt.Errorf("clients is %d; it must be at least 1", clients)
	}
	if d <= 0 {
		return nil, fmt.Errorf("duration is %v; it must be positive", d)
	}
	fmt.Fprintf(w, "%d clients, %v per pool, GOMAXPROCS %d, server %s\n",
		clients, d, runtime.GOMAXPROCS(0), addr)

	var results []result
	for _, cfg := range configs {
		if err := deleteKeys(addr, clients); err != nil {
			return results, err
		}
		fmt.Fprintf(w, "running %s...\n", cfg.name)
		r, err := runOne(ctx, cfg, addr, clients, d)
		if err != nil {
			return results, err
		}
		results = append(results, r)
		if err := ctx.Err(); err != nil {
			return results, err
		}
	}
	if err := deleteKeys(addr, clients); err != nil {
		return results, err
	}

	fmt.Fprintln(w)
	if err := writeTable(w, results); err != nil {
		return results, err
	}
	fmt.Fprintln(w)
	writeSummary(w, results)
	return results, nil
}

// writeTable writes one row per result, then the first error of each row
// that has errors.
func writeTable(w io.Writer, results []result) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "configuration\tpeak open\topened\tcommands/s\terrors\twrong replies")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Name,
			group(r.PeakOpen), group(r.Opened), group(int64(r.CommandsPerSecond()+0.5)),
			group(r.Errors), group(r.WrongReplies))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range results {
		if r.FirstError != "" {
			fmt.Fprintf(w, "first error of %s: %s\n", r.Name, r.FirstError)
		}
	}
	return nil
}

// writeSummary states in plain words what the table shows about the two
// pools built from the same literal.
func writeSummary(w io.Writer, results []result) {
	redigo, ok1 := find(results, nameRedigoDial)
	pool, ok2 := find(results, nameRedispool)
	if !ok1 || !ok2 {
		return
	}
	fmt.Fprintf(w, "Changing only the type name from redis.Pool to redispool.Pool took the connections opened from %s to %s (%s) and the most open at once from %s to %s (the limit is 10 x GOMAXPROCS = %d).\n",
		group(redigo.Opened), group(pool.Opened), fewer(redigo.Opened, pool.Opened),
		group(redigo.PeakOpen), group(pool.PeakOpen), 10*runtime.GOMAXPROCS(0))
	fmt.Fprintf(w, "Throughput went from %s to %s commands/s (%s), with %s errors and %s wrong replies for redispool against %s and %s for redigo.\n",
		group(int64(redigo.CommandsPerSecond()+0.5)), group(int64(pool.CommandsPerSecond()+0.5)),
		ratio(pool.CommandsPerSecond(), redigo.CommandsPerSecond()),
		group(pool.Errors), group(pool.WrongReplies), group(redigo.Errors), group(redigo.WrongReplies))
}

func find(results []result, name string) (result, bool) {
	for _, r := range results {
		if r.Name == name {
			return r, true
		}
	}
	return result{}, false
}

// fewer says how many times fewer b is than a, as in "1,234x fewer".
func fewer(a, b int64) string {
	switch {
	case b <= 0:
		return "none opened"
	case a <= b:
		return "not fewer"
	}
	return fmt.Sprintf("%sx fewer", group(int64(float64(a)/float64(b)+0.5)))
}

// ratio formats a/b as "2.5 times as many".
func ratio(a, b float64) string {
	if b <= 0 {
		return "no baseline"
	}
	return fmt.Sprintf("%.1f times as many", a/b)
}

// group formats n with commas between groups of three digits.
func group(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func main() {
	clients := flag.Int("clients", 200, "number of concurrent callers")
	duration := flag.Duration("duration", 3*time.Second, "how long the callers run against each pool")
	addr := flag.String("addr", "", "host:port of a Redis server to use (default $REDIS_ADDR, or an embedded miniredis when that is empty)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "demo: unexpected arguments %q\n", flag.Args())
		flag.Usage()
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := mainErr(ctx, os.Stdout, *addr, *clients, *duration); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		stop()
		os.Exit(1)
	}
}

// mainErr picks the server, starting an embedded one when addr and
// REDIS_ADDR are empty, and runs the demo against it.
func mainErr(ctx context.Context, w io.Writer, addr string, clients int, d time.Duration) error {
	if addr == "" {
		addr = os.Getenv("REDIS_ADDR")
	}
	if addr == "" {
		srv, err := miniredis.Run()
		if err != nil {
			return fmt.Errorf("starting the embedded server: %w", err)
		}
		defer srv.Close()
		addr = srv.Addr()
		fmt.Fprintf(w, "using an embedded miniredis server (pass -addr or set REDIS_ADDR to use a real one)\n")
	}
	_, err := run(ctx, w, addr, clients, d)
	return err
}
