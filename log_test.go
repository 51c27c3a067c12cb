package redispool_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redispool/redispool"
)

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
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *recorder) WithGroup(string) slog.Handler            { return r }

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

//go:noinline
func borrowAndForget(p *redispool.Pool) redis.Conn { return p.Get() }

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
	assert.Contains(t, got["borrowed_at"], "log_test.go")
	assert.NotContains(t, got["borrowed_at"], "redispool.(*Pool)", "the pool's own frames are left out")
	assert.EqualValues(t, 1, p.Stats().LeakCount)
	time.Sleep(3 * 20 * time.Millisecond) // still held: three thresholds more
	assert.EqualValues(t, 1, p.Stats().LeakCount, "reported once")
	assert.Len(t, rec.find("held longer than LeakThreshold"), 1, "reported once")
	held.Close()
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
