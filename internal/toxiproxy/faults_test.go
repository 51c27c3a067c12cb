package toxiproxy_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/internal/redistest"
)

const (
	workers     = 16  // goroutines sending commands
	maxActive   = 8   // the pool's bound, below workers so that callers wait
	numKeys     = 500 // key:i holds value:i
	readTimeout = 100 * time.Millisecond

	// The schedule: cycles of a healthy period followed by a faulty one,
	// then a last healthy period, all under load.
	cycles     = 3
	healthyFor = 250 * time.Millisecond
	faultyFor  = 500 * time.Millisecond

	// maxCommandsPerWorker bounds the load phase in count as the schedule
	// bounds it in time.
	maxCommandsPerWorker = 100_000

	// After the schedule: sweeps that borrow every connection the pool may
	// hold at once, until one finds none broken, then finalPerWorker commands
	// per worker that must all succeed. That final round is tried up to
	// finalAttempts times: on this shared 2-core machine the whole process
	// sometimes stalls for a few hundred milliseconds (seen: 3 commands
	// failing together after 461 ms with a 100 ms ReadTimeout, in a healthy
	// period), which fails a round without any fault of the pool's. A pool
	// that does not recover fails every round.
	maxSweeps      = 5
	finalPerWorker = 50
	finalAttempts  = 3

	// serverSettle bounds the wait for the server to see the closed
	// connections go.
	serverSettle = 5 * time.Second
)

// fault is one toxic and what it must show.
type fault struct {
	name  string
	toxic toxic
	// timeouts: the fault makes replies late, so that commands must fail by
	// ReadTimeout. Without a per-command read deadline (a conn from the
	// user's redis.Dial has none of its own) they would hang instead.
	timeouts bool
	// relay: the pool reaches the proxy through a relay; see relay.
	relay bool
}

var faults = []fault{{
	// Every reply arrives 200 to 400 ms late: beyond the 100 ms ReadTimeout.
	name:     "latency",
	toxic:    toxic{"latency", "downstream", map[string]any{"latency": 300, "jitter": 100}},
	timeouts: true,
}, {
	// Replies in pieces of 2 to 4 bytes, 20 ms apart: a GET reply (13 to 15
	// bytes) takes about 60 to 80 ms, an ECHO reply (up to 66 bytes) up to
	// about 400 ms, so the 100 ms deadline falls after some replies and in
	// the middle of others.
	name:     "slicer",
	toxic:    toxic{"slicer", "downstream", map[string]any{"average_size": 3, "size_variation": 1, "delay": 20_000}},
	timeouts: true,
	relay:    true,
}, {
	// A black hole: no reply at all, connections stay open until the toxic
	// is removed, which closes them.
	name:     "timeout",
	toxic:    toxic{"timeout", "downstream", map[string]any{"timeout": 0}},
	timeouts: true,
}, {
	// The first reply on a connection is dropped and the connection closed
	// 20 ms later (with a TCP RST on connections opened while the toxic is
	// on).
	name:  "reset_peer",
	toxic: toxic{"reset_peer", "downstream", map[string]any{"timeout": 20}},
}, {
	// A connection is closed after 100 bytes of replies, most often in the
	// middle of a reply.
	name:  "limit_data",
	toxic: toxic{"limit_data", "downstream", map[string]any{"bytes": 100}},
}}

// TestFaults runs each fault against a pool dialing the proxy itself (Addr),
// against one using the caller's redis.Dial, whose connections have no read
// timeout of their own, and against one dialing the proxy with AutoPipeline,
// whose commands share connections.
func TestFaults(t *testing.T) {
	for _, f := range faults {
		for _, mode := range []struct {
			name           string
			userDial, auto bool
		}{{"Addr", false, false}, {"Dial", true, false}, {"AutoPipeline", false, true}} {
			t.Run(f.name+"/"+mode.name, func(t *testing.T) { runFault(t, f, mode.userDial, mode.auto) })
		}
	}
}

func runFault(t *testing.T, f fault, userDial, auto bool) {
	srv := redistest.Start(t)
	preload(t, srv)
	fp := startProxy(t, srv.Addr())
	addr := fp.addr
	if f.relay {
		addr = startRelay(t, fp.addr)
	}

	pool := &redispool.Pool{MaxActive: maxActive, ReadTimeout: readTimeout, AutoPipeline: auto}
	if userDial {
		pool.Dial = func() (redis.Conn, error) { return redis.Dial("tcp", addr) }
	} else {
		pool.Addr = addr
		pool.DialTimeout = time.Second
	}
	t.Cleanup(func() { pool.Close() })

	// Load under the schedule.
	var tl tally
	start := time.Now()
	stop := make(chan struct{})
	loaded := make(chan struct{})
	go func() {
		defer close(loaded)
		load(pool, &tl, stop, maxCommandsPerWorker)
	}()
	stopped := false
	stopLoad := func() {
		if !stopped {
			stopped = true
			close(stop)
			<-loaded
		}
	}
	defer stopLoad() // also when a toxiproxy call fails the test

	for range cycles {
		time.Sleep(healthyFor)
		tl.epoch.Add(1) // odd: faulty
		fp.add(t, f.toxic)
		time.Sleep(faultyFor)
		fp.remove(t)
		tl.epoch.Add(1) // even: healthy
	}
	time.Sleep(healthyFor)
	stopLoad()
	elapsed := time.Since(start)

	// Recovery: borrow every connection the pool may hold at once, so that
	// each one left broken by the fault (the timeout toxic closes its
	// connections when removed) fails once and is discarded, until a sweep
	// finds none. Then every command must succeed.
	sweepFailures := 0
	for sweep := 1; ; sweep++ {
		n := sweepOnce(pool)
		sweepFailures += n
		if n == 0 {
			break
		}
		require.Less(t, sweep, maxSweeps, "every sweep of the pool found broken connections (%d failures in all)", sweepFailures)
	}
	var final *tally
	finalWrong, finalMaxActive, attempts := int64(0), int64(0), 0
	for attempts < finalAttempts {
		attempts++
		final = &tally{}
		load(pool, final, nil, finalPerWorker)
		finalWrong += final.wrong.Load()
		finalMaxActive = max(finalMaxActive, final.maxActive.Load())
		if final.good() == workers*finalPerWorker {
			break
		}
		t.Logf("recovery round %d: %d/%d good:\n%s", attempts, final.good(), final.commands.Load(), final.samples())
	}

	st := pool.Stats()
	t.Logf("%s %s: commands=%d good=%d failed=%d wrong=%d duration=%v | faulty good=%d failed=%d, healthy good=%d failed=%d | "+
		"failures: timeout=%d closed=%d exhausted=%d other=%d | longest command %v, longest toxic add/remove %v, max active %d/%d, dials %d, broken discarded %d | "+
		"recovery: sweep failures %d, then %d/%d good in round %d",
		f.name, dialName(userDial, auto), tl.commands.Load(), tl.good(), tl.failed(), tl.wrong.Load(), elapsed.Round(time.Millisecond),
		tl.goodIn[1].Load(), tl.failedIn[1].Load(), tl.goodIn[0].Load(), tl.failedIn[0].Load(),
		tl.timeouts.Load(), tl.closed.Load(), tl.exhausted.Load(), tl.other.Load(),
		time.Duration(tl.longest.Load()).Round(time.Millisecond), fp.longestControl.Round(time.Millisecond), max(tl.maxActive.Load(), finalMaxActive), maxActive,
		st.DialCount, st.Discards.Broken, sweepFailures, final.good(), final.commands.Load(), attempts)
	if s := tl.samples(); s != "" {
		t.Logf("wrong replies, unexpected errors and failures while healthy:\n%s", s)
	}

	assert.Zero(t, tl.wrong.Load(), "wrong replies under %s", f.toxic)
	assert.Positive(t, tl.good(), "no command succeeded")
	assert.Positive(t, tl.failIn(1), "no command failed while %s was on: the fault was not injected", f.toxic)
	if f.timeouts {
		assert.Positive(t, tl.timeouts.Load(), "no command failed by ReadTimeout under %s", f.toxic)
	}
	assert.LessOrEqual(t, tl.maxActive.Load(), int64(maxActive), "more connections open than MaxActive")
	assert.LessOrEqual(t, finalMaxActive, int64(maxActive), "more connections open than MaxActive")
	assert.Zero(t, finalWrong, "wrong replies after the fault")
	assert.Equal(t, int64(workers*finalPerWorker), final.good(), "not every command succeeded after the fault:\n%s", final.samples())

	// The server sees the pool's connections through the proxy: no more
	// than MaxActive once the closed ones are gone.
	deadline := time.Now().Add(serverSettle)
	for {
		n := srv.ConnectedClients(t)
		if n <= maxActive {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("the server still has %d clients %v after the load, more than MaxActive (%d)", n, serverSettle, maxActive)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func dialName(userDial, auto bool) string {
	switch {
	case userDial:
		return "with Dial"
	case auto:
		return "with Addr and AutoPipeline"
	}
	return "with Addr"
}

// preload sets key:i to value:i.
func preload(t *testing.T, srv *redistest.Server) {
	t.Helper()
	args := make([]any, 0, 2*numKeys)
	for i := range numKeys {
		args = append(args, fmt.Sprintf("key:%d", i), fmt.Sprintf("value:%d", i))
	}
	require.Equal(t, "OK", srv.Do(t, "MSET", args...))
}

// tally counts the outcomes of commands. Safe for concurrent use.
type tally struct {
	// epoch is odd while the toxic is on (from just before it is added to
	// just after it is removed). A command counts as healthy when it started
	// and ended in the same even epoch, as faulty otherwise.
	epoch atomic.Int64

	commands atomic.Int64
	goodIn   [2]atomic.Int64 // [0] while healthy, [1] while faulty
	failedIn [2]atomic.Int64
	wrong    atomic.Int64 // no error but not the reply asked for

	// Failures by cause.
	timeouts, closed, exhausted, other atomic.Int64

	maxActive atomic.Int64 // the most connections open seen after a Get
	longest   atomic.Int64 // nanoseconds: the longest Do

	mu   sync.Mutex
	seen []string // the first wrong replies, unexpected errors and failures while healthy
}

func (tl *tally) good() int64            { return tl.goodIn[0].Load() + tl.goodIn[1].Load() }
func (tl *tally) failed() int64          { return tl.failedIn[0].Load() + tl.failedIn[1].Load() }
func (tl *tally) failIn(phase int) int64 { return tl.failedIn[phase].Load() }

func (tl *tally) note(format string, args ...any) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	if len(tl.seen) < 10 {
		tl.seen = append(tl.seen, fmt.Sprintf(format, args...))
	}
}

func (tl *tally) samples() string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return strings.Join(tl.seen, "\n")
}

func storeMax(v *atomic.Int64, n int64) {
	for {
		old := v.Load()
		if n <= old || v.CompareAndSwap(old, n) {
			return
		}
	}
}

// load runs workers goroutines, each sending up to perWorker commands or
// until stop is closed (nil: never), and waits for them.
func load(pool *redispool.Pool, tl *tally, stop <-chan struct{}, perWorker int) {
	var wg sync.WaitGroup
	seed := rand.Uint64()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(seed, uint64(w)))
			for seq := range perWorker {
				select {
				case <-stop:
					return
				default:
				}
				one(pool, tl, rnd, seq)
			}
		}()
	}
	wg.Wait()
}

// tokens numbers the ECHO tokens, so that each is unique in the process.
var tokens atomic.Uint64

// one borrows a connection, sends GET key:i (expecting value:i) or ECHO of a
// token unique in the process, of a random length, and counts the outcome.
func one(pool *redispool.Pool, tl *tally, rnd *rand.Rand, seq int) {
	epoch := tl.epoch.Load()
	tl.commands.Add(1)
	c := pool.Get()
	defer c.Close()
	storeMax(&tl.maxActive, int64(pool.ActiveCount()))

	var want string
	var reply any
	var err error
	begin := time.Now()
	if seq%2 == 0 {
		k := rnd.IntN(numKeys)
		want = fmt.Sprintf("value:%d", k)
		reply, err = c.Do("GET", fmt.Sprintf("key:%d", k))
	} else {
		want = fmt.Sprintf("tok:%d:%s", tokens.Add(1), strings.Repeat("x", rnd.IntN(49)))
		reply, err = c.Do("ECHO", want)
	}
	took := time.Since(begin)
	storeMax(&tl.longest, int64(took))
	phase := 0
	if epoch%2 == 1 || tl.epoch.Load() != epoch {
		phase = 1
	}

	var rerr redis.Error
	switch {
	case errors.As(err, &rerr):
		// A reply, but an error reply to GET or ECHO is never right.
		tl.wrong.Add(1)
		tl.note("wrong: want %q, got error reply %q", want, rerr)
	case err != nil:
		tl.failedIn[phase].Add(1)
		tl.classify(err)
		if phase == 0 {
			tl.note("failed while healthy, after %v: %v", took.Round(time.Millisecond), err)
		}
	default:
		if b, ok := reply.([]byte); !ok || string(b) != want {
			tl.wrong.Add(1)
			tl.note("wrong: want %q, got %#v", want, reply)
			return
		}
		tl.goodIn[phase].Add(1)
	}
}

func (tl *tally) classify(err error) {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		tl.timeouts.Add(1)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		tl.closed.Add(1)
	case errors.Is(err, redispool.ErrPoolExhausted):
		tl.exhausted.Add(1)
	default:
		tl.other.Add(1)
		tl.note("error: %v", err)
	}
}

// sweepOnce borrows maxActive connections at once, so every idle one and
// new ones, sends PING on each and returns them. It returns the number of
// failures.
func sweepOnce(pool *redispool.Pool) int {
	conns := make([]redis.Conn, 0, maxActive)
	for range maxActive {
		conns = append(conns, getPastBackoff(pool))
	}
	failures := 0
	for _, c := range conns {
		if _, err := pingPastBackoff(pool, c); err != nil {
			failures++
		}
	}
	return failures
}

// pingPastBackoff is a PING on c, closed after, and with AutoPipeline,
// whose Get takes no connection and so is never refused, on fresh conns
// while the backoff refuses the dial it needs (for at most 2 seconds).
func pingPastBackoff(pool *redispool.Pool, c redis.Conn) (any, error) {
	deadline := time.Now().Add(2 * time.Second)
	for {
		reply, err := c.Do("PING")
		c.Close()
		if !errors.Is(err, redispool.ErrDialBackoff) || time.Now().After(deadline) {
			return reply, err
		}
		time.Sleep(10 * time.Millisecond)
		c = pool.Get()
	}
}

// getPastBackoff is Get, waiting out the backoff that dials refused during
// the fault left (at most half a second): a Get refused by the backoff says
// nothing about the connections the pool holds.
func getPastBackoff(pool *redispool.Pool) redis.Conn {
	deadline := time.Now().Add(2 * time.Second)
	for {
		c, err := pool.GetContext(context.Background())
		if !errors.Is(err, redispool.ErrDialBackoff) || time.Now().After(deadline) {
			return c
		}
		time.Sleep(10 * time.Millisecond)
	}
}
