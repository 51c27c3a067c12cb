package redispool_test

// What the pool reports: Stats, counted where each event happens, so that
// dials = discards + ActiveCount holds for whoever reads them; the Logger's
// records of discards, failed dials and exhausted waits, each kind rate
// limited on its own and logged outside the pool's locks; connections held
// past LeakThreshold, with the borrower's stack; and never a password.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/redispool/redispool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// ---------------------------------------------------------------------------
// Stats.

func TestStatsBeginWithRedigosFourFields(t *testing.T) {
	// Same names, types and order as redis.PoolStats.
	ours, theirs := reflect.TypeFor[redispool.PoolStats](), reflect.TypeFor[redis.PoolStats]()
	require.GreaterOrEqual(t, ours.NumField(), theirs.NumField())
	for i := range theirs.NumField() {
		assert.Equal(t, theirs.Field(i).Name, ours.Field(i).Name, "field %d", i)
		assert.Equal(t, theirs.Field(i).Type, ours.Field(i).Type, "field %d", i)
	}
	var s redispool.PoolStats
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial}
	defer p.Close()
	conns := getN(t, p, 3)
	conns[0].Close()
	s = p.Stats()
	assert.Equal(t, 3, s.ActiveCount)
	assert.Equal(t, 1, s.IdleCount)
	assert.EqualValues(t, 3, s.DialCount)
	closeAll(conns[1:])
}

// TestStatsFieldsMatchWhatHappened checks each counter of PoolStats
// against a scripted sequence of events.
func TestStatsFieldsMatchWhatHappened(t *testing.T) {
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)()
	d := &fakeDialer{}
	var refuse atomic.Bool
	p := &redispool.Pool{MaxActive: 2, MaxIdle: 1, IdleTimeout: time.Minute, WaitTimeout: 20 * time.Millisecond,
		Dial: func() (redis.Conn, error) {
			if refuse.Load() {
				return nil, errRefused
			}
			return d.Dial()
		}}
	defer p.Close()
	ctx := context.Background()
	assert.Equal(t, redispool.PoolStats{MaxActive: 2, MaxIdle: 1}, p.Stats(), "a new pool")

	a, err := p.GetContext(ctx)
	require.NoError(t, err)
	b, err := p.GetContext(ctx)
	require.NoError(t, err)
	s := p.Stats()
	assert.Equal(t, 2, s.ActiveCount)
	assert.Equal(t, 0, s.IdleCount)
	assert.EqualValues(t, 2, s.DialCount)

	_, err = p.GetContext(ctx) // waits, then exhausted
	require.ErrorIs(t, err, redispool.ErrPoolExhausted)
	s = p.Stats()
	assert.Zero(t, s.WaitCount, "WaitCount counts the waits that ended with a conn")
	assert.EqualValues(t, 1, s.FailedWaitCount)
	assert.GreaterOrEqual(t, s.FailedWaitDuration, 20*time.Millisecond)
	assert.EqualValues(t, 1, s.WaitTimeoutCount)

	a.Close() // the hot slot: counted as idle
	b.Close() // MaxIdle 1: discarded
	s = p.Stats()
	assert.Equal(t, 1, s.ActiveCount)
	assert.Equal(t, 1, s.IdleCount, "the hot slot counts as idle")
	assert.EqualValues(t, 1, s.Discards.MaxIdle)

	clk.Advance(2 * time.Minute)
	refuse.Store(true)
	_, err = p.GetContext(ctx) // the idle one times out; the dial fails
	require.ErrorIs(t, err, errRefused)
	_, err = p.GetContext(ctx) // fails fast
	require.ErrorIs(t, err, redispool.ErrDialBackoff)
	s = p.Stats()
	assert.Equal(t, 0, s.ActiveCount)
	assert.Equal(t, 0, s.IdleCount)
	assert.EqualValues(t, 3, s.DialCount)
	assert.EqualValues(t, 1, s.DialErrorCount)
	assert.EqualValues(t, 1, s.FastFailCount)
	assert.EqualValues(t, 1, s.Discards.IdleTimeout)
	assert.EqualValues(t, 2, s.Discards.Total())
	checkAtRest(t, p, 0)
}

// TestAConnGoneFromActiveCountIsCountedAsDiscarded: whoever sees
// ActiveCount drop finds the discard counted, so that dialed = discarded +
// active holds for a monitor, also while the permit is on its way to a
// waiter (which the test holds back by holding the queue's lock).
func TestAConnGoneFromActiveCountIsCountedAsDiscarded(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: 5 * time.Second}
	defer p.Close()
	held, err := p.GetContext(context.Background())
	require.NoError(t, err)
	waiter := queueGet(t, p, context.Background())
	held.Do("BREAK") // Close discards it, and its permit goes to the waiter

	unlock := p.LockQueue()
	closed := make(chan struct{})
	go func() { held.Close(); close(closed) }()
	dropped := assert.Eventually(t, func() bool { return p.ActiveCount() == 0 }, 5*time.Second, 50*time.Microsecond,
		"the closed conn leaves ActiveCount")
	// Read while the waiter cannot be served: once it is, it dials.
	s, dialed, open := p.Stats(), d.made.Load(), d.open.Load()
	unlock()
	require.True(t, dropped)
	assert.Zero(t, open, "the conn is closed")
	assert.Equal(t, dialed, s.Discards.Total()+int64(s.ActiveCount),
		"dialed %d != discarded %d + active %d", dialed, s.Discards.Total(), s.ActiveCount)

	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close never returned")
	}
	r := awaitGet(t, waiter, 5*time.Second, "the waiter was never served")
	require.NoError(t, r.err)
	r.close()
	require.Equal(t, 1, p.IdleCount())
	checkAtRest(t, p, 0)
}

// Stats give MaxActive and MaxIdle as the pool applies them, defaults
// included, and zero when the configuration is invalid.
func TestStatsGiveTheLimitsInEffect(t *testing.T) {
	procs := 10 * runtime.GOMAXPROCS(0)
	for _, tc := range []struct {
		name                    string
		pool                    *redispool.Pool
		wantMaxActive, wantIdle int
	}{
		{"zero value", &redispool.Pool{}, procs, procs},
		{"MaxIdle above the default MaxActive", &redispool.Pool{MaxIdle: procs + 5}, procs + 5, procs + 5},
		{"MaxIdle above MaxActive", &redispool.Pool{MaxActive: 3, MaxIdle: 5}, 3, 3},
		{"both set", &redispool.Pool{MaxActive: 4, MaxIdle: 2}, 4, 2},
		{"invalid", &redispool.Pool{MaxActive: -1}, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer tc.pool.Close()
			s := tc.pool.Stats()
			assert.Equal(t, tc.wantMaxActive, s.MaxActive)
			assert.Equal(t, tc.wantIdle, s.MaxIdle)
		})
	}
}

// ByReason yields each reason the pool defines once, with its own count.
func TestDiscardStatsByReasonYieldsEveryReasonWithItsCount(t *testing.T) {
	s := redispool.DiscardStats{Broken: 1, State: 2, IdleTimeout: 3, Lifetime: 4, MaxIdle: 5, HealthCheck: 6, PoolClosed: 7, Retired: 8}
	got := map[string]int64{}
	for r, n := range s.ByReason() {
		assert.NotContains(t, got, r.String(), "yielded twice")
		got[r.String()] = n
	}
	assert.Equal(t, map[string]int64{
		"broken": 1, "state": 2, "idle_timeout": 3, "lifetime": 4,
		"max_idle": 5, "health_check": 6, "pool_closed": 7, "retired": 8,
	}, got)
	const maxReasons = 64 // far more than the pool defines; bounds the loop
	var defined int
	for ; defined < maxReasons && !strings.HasPrefix(redispool.DiscardReason(defined).String(), "DiscardReason("); defined++ {
	}
	assert.Len(t, got, defined, "every reason the pool defines")
	for range s.ByReason() {
		break // stopping early must not panic
	}
}

func TestDiscardReasonNames(t *testing.T) {
	assert.Equal(t, "broken", redispool.DiscardBroken.String())
	assert.Equal(t, "pool_closed", redispool.DiscardPoolClosed.String())
	assert.Equal(t, "DiscardReason(99)", redispool.DiscardReason(99).String())
	s := redispool.DiscardStats{Broken: 1, State: 2, IdleTimeout: 3, Lifetime: 4, MaxIdle: 5, HealthCheck: 6, PoolClosed: 7, Retired: 8}
	assert.EqualValues(t, 36, s.Total())
}

// ---------------------------------------------------------------------------
// Logger.

func TestLoggerIsToldAboutDiscardsWithTheirReason(t *testing.T) {
	rec := &recorder{}
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, Logger: slog.New(rec)}
	defer p.Close()
	c := p.Get()
	d.last(t).doErr = os.ErrDeadlineExceeded
	c.Do("GET", "k")
	c.Close()
	c = p.Get()
	c.Do("SUBSCRIBE", "ch")
	c.Close()

	got := rec.find("connection discarded")
	require.Len(t, got, 2)
	assert.Equal(t, "broken", got[0]["reason"])
	assert.Equal(t, os.ErrDeadlineExceeded.Error(), got[0]["error"])
	assert.Equal(t, "WARN", got[0]["level"])
	assert.Equal(t, "state", got[1]["reason"])
}

func TestRoutineDiscardsAreLoggedAtDebug(t *testing.T) {
	rec := &recorder{}
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxIdle: 1, Logger: slog.New(rec)}
	closeAll(getN(t, p, 2))
	got := rec.find("connection discarded")
	require.Len(t, got, 1)
	assert.Equal(t, "max_idle", got[0]["reason"])
	assert.Equal(t, "DEBUG", got[0]["level"])
	p.Close()
}

func TestFailedDialsAreLogged(t *testing.T) {
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)()
	rec := &recorder{}
	d := &fakeDialer{}
	d.SetErr(errors.New("connection refused"))
	p := &redispool.Pool{Dial: d.Dial, Logger: slog.New(rec)}
	defer p.Close()
	p.Get()
	got := rec.find("dial failed")
	require.Len(t, got, 1)
	assert.Equal(t, "connection refused", got[0]["error"])
	assert.Equal(t, "1", got[0]["consecutive_failures"])
}

func TestLogRecordsAreRateLimitedPerKind(t *testing.T) {
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)()
	rec := &recorder{}
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: -1, Logger: slog.New(rec)}
	defer p.Close()
	held := p.Get()
	defer held.Close()
	for range 100 {
		p.Get()
	}
	require.Len(t, rec.find("pool exhausted"), 1, "a storm logs once per second")
	clk.Advance(time.Second)
	p.Get()
	got := rec.find("pool exhausted")
	require.Len(t, got, 2)
	assert.Equal(t, "99", got[1]["suppressed"])
	assert.Contains(t, got[1]["waited_for"], "WaitTimeout is negative", "the record says what the Get waited for")
}

// TestEachLogKindHasItsOwnRateLimit checks "each kind at most once per
// second" (Pool.Logger) across kinds: a discard must not use up the second
// of a failed dial, an exhausted wait or a leak report.
func TestEachLogKindHasItsOwnRateLimit(t *testing.T) {
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)() // time stands still: all within one logInterval

	t.Run("a state discard swallows the first failed dial", func(t *testing.T) {
		rec := &recorder{}
		var refuse atomic.Bool
		d := &fakeDialer{}
		p := &redispool.Pool{MaxActive: 2, Logger: slog.New(rec), Dial: func() (redis.Conn, error) {
			if refuse.Load() {
				return nil, errRefused
			}
			return d.Dial()
		}}
		defer p.Close()
		c, err := p.GetContext(context.Background())
		require.NoError(t, err)
		c.Do("SUBSCRIBE", "ch")
		c.Close() // discarded: state
		require.Equal(t, 1, rec.count("connection discarded"))

		refuse.Store(true)
		_, err = p.GetContext(context.Background())
		require.ErrorIs(t, err, errRefused)
		assert.Equal(t, 1, rec.count("dial failed"), "the first failed dial was not logged")
	})

	t.Run("an idle timeout discard swallows the first exhausted wait", func(t *testing.T) {
		rec := &recorder{}
		d := &fakeDialer{}
		p := &redispool.Pool{MaxActive: 1, WaitTimeout: -1, IdleTimeout: 10 * time.Millisecond, Logger: slog.New(rec), Dial: d.Dial}
		defer p.Close()
		c, err := p.GetContext(context.Background())
		require.NoError(t, err)
		c.Close()
		clk.Advance(20 * time.Millisecond)
		held, err := p.GetContext(context.Background()) // the idle one is discarded: idle timeout
		require.NoError(t, err)
		defer held.Close()
		require.Equal(t, 1, rec.count("connection discarded"))

		_, err = p.GetContext(context.Background())
		require.ErrorIs(t, err, redispool.ErrPoolExhausted)
		assert.Equal(t, 1, rec.count("pool exhausted"), "the first exhausted wait was not logged")
	})

	t.Run("a lifetime discard swallows the first leak report", func(t *testing.T) {
		rec := &recorder{}
		d := &fakeDialer{}
		p := &redispool.Pool{MaxActive: 1, MaxConnLifetime: 10 * time.Millisecond, LeakThreshold: 10 * time.Millisecond,
			Logger: slog.New(rec), Dial: d.Dial}
		defer p.Close()
		c, err := p.GetContext(context.Background())
		require.NoError(t, err)
		c.Close()
		clk.Advance(20 * time.Millisecond)
		held, err := p.GetContext(context.Background()) // the idle one is discarded: lifetime
		require.NoError(t, err)
		defer held.Close()
		require.Equal(t, 1, rec.count("connection discarded"))

		require.Eventually(t, func() bool { return p.Stats().LeakCount == 1 }, 5*time.Second, time.Millisecond)
		// The leak is counted, then reported.
		assert.Eventually(t, func() bool { return rec.count("held longer than LeakThreshold") == 1 }, 5*time.Second, time.Millisecond,
			"the first leak was counted but not reported")
	})
}

func TestTheLogHandlerRunsOutsideThePoolLock(t *testing.T) {
	d := &fakeDialer{}
	d.SetErr(errors.New("refused"))
	p := &redispool.Pool{Dial: d.Dial, Logger: slog.New(&recorder{delay: 500 * time.Millisecond})}
	defer p.Close()
	logging := make(chan struct{})
	go func() { defer close(logging); p.Get() }() // its failed dial logs for 500ms
	require.Eventually(t, func() bool { return p.Stats().DialErrorCount == 1 }, 5*time.Second, time.Millisecond)
	start := time.Now()
	_, err := p.GetContext(context.Background())
	require.Error(t, err)
	assert.Less(t, time.Since(start), 250*time.Millisecond, "a fast fail waited for the log handler")
	<-logging
}

// TestNoErrorLogOrStatShowsAPassword: whatever is typed into Addr,
// Password or Sentinel.Addrs, no password reaches Get's error, the Logger's
// records or Stats, and the error still names the problem.
func TestNoErrorLogOrStatShowsAPassword(t *testing.T) {
	dial := func() (redis.Conn, error) { return nil, errors.New("not dialed") }
	sentinel := func(addr string) *redispool.Sentinel {
		return &redispool.Sentinel{Addrs: []string{addr}, MasterName: "m"}
	}
	for _, tc := range []struct {
		name    string
		pool    *redispool.Pool
		secrets []string // no part of the password may show
		want    string   // the error names the problem
		invalid bool     // the error is ErrInvalidConfig
	}{
		{"user info without a scheme", &redispool.Pool{Addr: "alice:Hunter2pw@127.0.0.1:1"},
			[]string{"Hunter2pw"}, "not a redis:// URL", true},
		{"password without a scheme", &redispool.Pool{Addr: "Hunter2pw@127.0.0.1:1"},
			[]string{"Hunter2pw"}, "not a redis:// URL", true},
		{"scheme without slashes", &redispool.Pool{Addr: "redis:alice:Hunter2pw@127.0.0.1:1"},
			[]string{"Hunter2pw"}, "not a redis:// URL", true},
		{"URL with a port that is not a number", &redispool.Pool{Addr: "redis://alice:Hunter2pw@127.0.0.1:port"},
			[]string{"Hunter2pw"}, "not a valid URL", true},
		{"URL with a port out of range", &redispool.Pool{Addr: "redis://alice:Hunter2pw@127.0.0.1:99999"},
			[]string{"Hunter2pw"}, "port", true},
		{"URL with a bad escape in the password", &redispool.Pool{Addr: "redis://alice:Hunter2%zzTiger3@127.0.0.1:1"},
			[]string{"Hunter2", "Tiger3"}, "not a valid URL", true},
		{"URL with a control character in the password", &redispool.Pool{Addr: "redis://alice:Hunter2\nTiger3@127.0.0.1:1"},
			[]string{"Hunter2", "Tiger3"}, "not a valid URL", true},
		{"URL with an unbalanced bracket", &redispool.Pool{Addr: "redis://alice:Hunter2pw@[::1"},
			[]string{"Hunter2pw"}, "not a valid URL", true},
		// A password of digits cut at / ? or # reads as a port: the URL parses.
		{"URL with / in the password", &redispool.Pool{Addr: "redis://alice:48213/90577@127.0.0.1:1"},
			[]string{"48213", "90577"}, "database", true},
		{"URL with ? in the password", &redispool.Pool{Addr: "redis://alice:48213?90577@127.0.0.1:1"},
			[]string{"48213", "90577"}, "query", true},
		{"URL with # in the password", &redispool.Pool{Addr: "redis://alice:48213#90577@127.0.0.1:1"},
			[]string{"48213", "90577"}, "fragment", true},
		{"URL with another scheme", &redispool.Pool{Addr: "http://alice:Hunter2pw@127.0.0.1:1"},
			[]string{"Hunter2pw"}, "scheme", true},
		{"URL with a path that is not a database", &redispool.Pool{Addr: "redis://alice:Hunter2pw@127.0.0.1:1/x"},
			[]string{"Hunter2pw"}, "database", true},
		{"URL with a query", &redispool.Pool{Addr: "redis://alice:Hunter2pw@127.0.0.1:1/0?db=2"},
			[]string{"Hunter2pw"}, "query", true},
		{"URL together with Dial", &redispool.Pool{Addr: "redis://:Hunter2pw@127.0.0.1:1", Dial: dial},
			[]string{"Hunter2pw"}, "Dial", true},
		{"URL with a password together with Password", &redispool.Pool{Addr: "redis://:Hunter2pw@127.0.0.1:1", Password: "Tiger3"},
			[]string{"Hunter2pw", "Tiger3"}, "Username or Password", true},
		{"URL with a database together with DB", &redispool.Pool{Addr: "redis://:Hunter2pw@127.0.0.1:1/2", DB: 3},
			[]string{"Hunter2pw"}, "DB", true},
		{"URL of a server that refuses", &redispool.Pool{Addr: "redis://alice:Hunter2pw@127.0.0.1:1"},
			[]string{"Hunter2pw"}, "refused", false},
		{"TLS URL of a server that refuses", &redispool.Pool{Addr: "REDISS://:Hunter2pw@127.0.0.1:1/1"},
			[]string{"Hunter2pw"}, "refused", false},
		{"sentinel address with a password", &redispool.Pool{Sentinel: sentinel("Hunter2pw@127.0.0.1:1")},
			[]string{"Hunter2pw"}, "Sentinel.Username", true},
		{"sentinel address with user info", &redispool.Pool{Sentinel: sentinel("alice:Hunter2pw@127.0.0.1:1")},
			[]string{"Hunter2pw"}, "Sentinel.Username", true},
		{"sentinel URL", &redispool.Pool{Sentinel: sentinel("redis://alice:Hunter2pw@127.0.0.1:26379")},
			[]string{"Hunter2pw"}, "Sentinel.Username", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs := &lockedBuffer{}
			p := tc.pool
			p.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			p.WaitTimeout = -1
			c := p.Get()
			getErr := c.Err()
			_, doErr := c.Do("PING")
			c.Close()
			_, ctxErr := p.GetContext(context.Background())
			stats := fmt.Sprintf("%+v", p.Stats())
			p.Close()

			require.Error(t, getErr)
			assert.Contains(t, getErr.Error(), tc.want)
			assert.Equal(t, tc.invalid, errors.Is(getErr, redispool.ErrInvalidConfig), "ErrInvalidConfig: %v", getErr)
			if !tc.invalid {
				assert.Contains(t, logs.String(), "dial failed")
			}
			for _, s := range tc.secrets {
				for what, text := range map[string]string{
					"Get's error": getErr.Error(), "Do's error": fmt.Sprint(doErr), "GetContext's error": fmt.Sprint(ctxErr),
					"the log": logs.String(), "Stats": stats,
				} {
					assert.NotContains(t, text, s, "%s shows the password", what)
				}
			}
		})
	}
}

// ---------------------------------------------------------------------------
// LeakThreshold.

func TestLeakThresholdReportsAHeldConnWithTheBorrowersStack(t *testing.T) {
	rec := &recorder{}
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, LeakThreshold: 20 * time.Millisecond, Logger: slog.New(rec)}
	defer p.Close()

	quick := p.Get()
	quick.Close() // returned in time: not reported

	held := borrowAndForget(p)
	require.Eventually(t, func() bool { return len(rec.find("held longer than LeakThreshold")) == 1 }, 5*time.Second, 5*time.Millisecond)
	got := rec.find("held longer than LeakThreshold")[0]
	assert.Contains(t, got["borrowed_at"], "redispool_test.borrowAndForget")
	assert.Contains(t, got["borrowed_at"], "observability_test.go")
	assert.NotContains(t, got["borrowed_at"], "redispool.(*Pool)", "the pool's own frames are left out")
	assert.EqualValues(t, 1, p.Stats().LeakCount)
	time.Sleep(3 * 20 * time.Millisecond) // still held: three thresholds more
	assert.EqualValues(t, 1, p.Stats().LeakCount, "reported once")
	assert.Len(t, rec.find("held longer than LeakThreshold"), 1, "reported once")
	held.Close()
}

//go:noinline
func borrowAndForget(p *redispool.Pool) redis.Conn { return p.Get() }

// TestLeakThresholdOffCostsNoTimer: with LeakThreshold zero, a Get sets
// up no leak watch.
func TestLeakThresholdOffCostsNoTimer(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial}
	defer p.Close()
	c, err := p.GetContext(context.Background())
	require.NoError(t, err)
	assert.False(t, redispool.LeakWatched(c), "no leak watch when LeakThreshold is zero")
	c.Close()
	assert.Zero(t, p.Stats().LeakCount)
}

// ---------------------------------------------------------------------------
// Helpers.

// recorder is a slog.Handler that keeps the records it is given. It may
// be slow, as a handler writing to a slow sink is (delay), or panic, as a
// buggy handler or one writing to a closed sink does (see panicking).
type recorder struct {
	delay    time.Duration // how long each record takes
	panicOn  string        // see panicking
	armed    atomic.Bool
	panicked chan struct{} // closed when it panicked

	mu      sync.Mutex
	records []map[string]string // "msg" and "level", then the attributes
}

// panicking returns a recorder that, once armed, panics on the first record
// whose message holds msg, and closes panicked.
func panicking(msg string) *recorder {
	return &recorder{panicOn: msg, panicked: make(chan struct{})}
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }

func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r }

func (r *recorder) WithGroup(string) slog.Handler { return r }

func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	time.Sleep(r.delay)
	m := map[string]string{"msg": rec.Message, "level": rec.Level.String()}
	rec.Attrs(func(a slog.Attr) bool {
		m[a.Key] = a.Value.String()
		return true
	})
	r.mu.Lock()
	r.records = append(r.records, m)
	r.mu.Unlock()
	if r.panicOn != "" && strings.Contains(rec.Message, r.panicOn) && r.armed.CompareAndSwap(true, false) {
		close(r.panicked)
		panic("log handler panicked")
	}
	return nil
}

// find returns the records whose message holds part.
func (r *recorder) find(part string) []map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []map[string]string
	for _, m := range r.records {
		if strings.Contains(m["msg"], part) {
			out = append(out, m)
		}
	}
	return out
}

// count returns how many records have a message that holds part.
func (r *recorder) count(part string) int { return len(r.find(part)) }

// lockedBuffer is a bytes.Buffer safe for a log handler on the pool's
// goroutines and a test reading it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
