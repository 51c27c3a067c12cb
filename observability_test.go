package redispool_test

// The observability paths and the pool's edges: the Logger (and one whose
// handler panics), leak detection, Stats, RedigoPool, Retire and Close.

import (
	"bufio"
	"context"
	"log/slog"
	"net"
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

// obsPanicHandler is a slog.Handler that panics on the first record whose
// message contains msg once it is armed, as a buggy handler or a handler
// writing to a closed sink does. Every record is kept.
type obsPanicHandler struct {
	recordingHandler
	msg      string
	armed    atomic.Bool
	panicked chan struct{} // closed when it panicked
}

func newObsPanicHandler(msg string) *obsPanicHandler {
	return &obsPanicHandler{msg: msg, panicked: make(chan struct{})}
}

func (h *obsPanicHandler) Handle(ctx context.Context, rec slog.Record) error {
	h.recordingHandler.Handle(ctx, rec)
	if strings.Contains(rec.Message, h.msg) && h.armed.CompareAndSwap(true, false) {
		close(h.panicked)
		panic("log handler panicked")
	}
	return nil
}
func (h *obsPanicHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *obsPanicHandler) WithGroup(string) slog.Handler      { return h }

// obsOutcome is what a Get run on its own goroutine ended with.
type obsOutcome struct {
	c         redis.Conn
	err       error
	recovered any
}

// obsGet runs GetContext on its own goroutine, recovering a panic.
func obsGet(p *redispool.Pool, ctx context.Context) <-chan obsOutcome {
	out := make(chan obsOutcome, 1)
	go func() {
		var o obsOutcome
		defer func() {
			o.recovered = recover()
			out <- o
		}()
		o.c, o.err = p.GetContext(ctx)
	}()
	return out
}

func obsWait(t *testing.T, ch <-chan obsOutcome) obsOutcome {
	t.Helper()
	select {
	case o := <-ch:
		if o.c != nil && o.err == nil {
			t.Cleanup(func() { o.c.Close() })
		}
		return o
	case <-time.After(5 * time.Second):
		t.Fatal("the Get did not return within 5s")
		return obsOutcome{}
	}
}

// TestALogHandlerPanicWhileAWaiterDiscardsItsGrantLosesNoPermit: a waiter
// granted an idle conn that turns out too old closes it and keeps its permit
// to dial (closeConn with release false); the discard is logged from
// closeConn's deferred function. A handler that panics there must not take
// the permit with it: with MaxActive 1 the pool could never hand out a conn
// again.
func TestALogHandlerPanicWhileAWaiterDiscardsItsGrantLosesNoPermit(t *testing.T) {
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)()
	d := &fakeDialer{}
	h := newObsPanicHandler("connection discarded")
	p := &redispool.Pool{MaxActive: 1, IdleTimeout: time.Minute, WaitTimeout: 5 * time.Second, Dial: d.Dial, Logger: slog.New(h)}
	defer p.Close()
	ctx := context.Background()

	held, err := p.GetContext(ctx)
	require.NoError(t, err)
	before := p.Stats().WaitCount
	waiter := obsGet(p, ctx)
	require.Eventually(t, func() bool { return p.Stats().WaitCount == before+1 }, 5*time.Second, 50*time.Microsecond)

	clk.Advance(2 * time.Minute) // the conn held is past IdleTimeout when the waiter gets it
	h.armed.Store(true)
	held.Close() // handed to the waiter, which discards it (idle timeout)
	o := obsWait(t, waiter)
	select {
	case <-h.panicked:
	default:
		t.Fatal("the handler was not called for the discard")
	}
	if o.recovered == nil {
		require.NoError(t, o.err, "the waiter dials a new conn")
		o.c.Close()
	}

	checkAtRest(t, p, 0)
	ctx2, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	c, err := p.GetContext(ctx2)
	require.NoError(t, err, "MaxActive 1, nothing held: a permit was lost to the log handler's panic")
	c.Close()
}

// obsSilentServer is a TCP server that accepts connections and answers
// their first command with +OK only once release is closed.
type obsSilentServer struct {
	ln       net.Listener
	accepted chan struct{} // one value per connection accepted
	release  chan struct{}
	wg       sync.WaitGroup
}

func startObsSilentServer(t *testing.T) *obsSilentServer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := &obsSilentServer{ln: ln, accepted: make(chan struct{}, 16), release: make(chan struct{})}
	var conns []net.Conn
	var mu sync.Mutex
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			s.accepted <- struct{}{}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				r := bufio.NewReader(c)
				// CLIENT SETNAME x: *3, then three $len/value pairs.
				for range 7 {
					if _, err := r.ReadString('\n'); err != nil {
						return
					}
				}
				<-s.release
				c.Write([]byte("+OK\r\n"))
				answerOK(c)
			}()
		}
	}()
	t.Cleanup(func() {
		select {
		case <-s.release:
		default:
			close(s.release)
		}
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		s.wg.Wait()
	})
	return s
}

// TestALogHandlerPanicOnAnExhaustedWaitForADialSlotLosesNoPermit: a Get
// that holds a permit and waits for a dial slot logs "pool exhausted" when
// its WaitTimeout passes. A handler that panics there must not take the
// permit with it.
func TestALogHandlerPanicOnAnExhaustedWaitForADialSlotLosesNoPermit(t *testing.T) {
	srv := startObsSilentServer(t)
	h := newObsPanicHandler("pool exhausted")
	p := &redispool.Pool{Addr: srv.ln.Addr().String(), MaxActive: 2, MaxConcurrentDials: 1, WaitTimeout: 100 * time.Millisecond,
		DialOptions: []redis.DialOption{redis.DialClientName("x")}, Logger: slog.New(h)}
	defer p.Close()
	ctx := context.Background()

	// The first Get dials and waits for the server: the pool's own dials are
	// bounded by DialTimeout, not WaitTimeout.
	first := obsGet(p, ctx)
	select {
	case <-srv.accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("the first dial did not reach the server")
	}
	h.armed.Store(true)
	second := obsGet(p, ctx) // a permit, no dial slot: waits, then exhausted
	o := obsWait(t, second)
	select {
	case <-h.panicked:
	default:
		t.Fatalf("the handler was not called for the exhausted wait (Get returned %v)", o.err)
	}
	if o.recovered == nil {
		require.ErrorIs(t, o.err, redispool.ErrPoolExhausted)
	}

	close(srv.release)
	o = obsWait(t, first)
	require.Nil(t, o.recovered)
	require.NoError(t, o.err)
	checkAtRest(t, p, 1)
	o.c.Close()
	checkAtRest(t, p, 0)
}

// TestALogHandlerPanicOnAnExhaustedWaitForAUserDialLosesNoConn: a Get
// whose Dial outlasts WaitTimeout gives up, logging "pool exhausted"; the
// dial goes on and must hand its conn to the pool. A handler that panics
// as the Get gives up must not leave the dial's conn, and its permit,
// waiting for a caller that is gone.
func TestALogHandlerPanicOnAnExhaustedWaitForAUserDialLosesNoConn(t *testing.T) {
	d := &fakeDialer{}
	release := make(chan struct{})
	inDial := make(chan struct{}, 1)
	h := newObsPanicHandler("pool exhausted")
	p := &redispool.Pool{MaxActive: 1, WaitTimeout: 50 * time.Millisecond, Logger: slog.New(h), Dial: func() (redis.Conn, error) {
		inDial <- struct{}{}
		<-release
		return d.Dial()
	}}
	defer p.Close()
	h.armed.Store(true)
	o := obsWait(t, obsGet(p, context.Background()))
	<-inDial
	select {
	case <-h.panicked:
	default:
		t.Fatalf("the handler was not called for the exhausted wait (Get returned %v)", o.err)
	}
	close(release)
	require.Eventually(t, func() bool { return p.IdleCount() == 1 }, 5*time.Second, time.Millisecond,
		"the dial's conn never reached the idle set")
	checkAtRest(t, p, 0)
}

// TestALogHandlerPanicInALeakReportDoesNotEndTheProgram: leak reports are
// written on a timer's goroutine, where a panic cannot reach any caller
// and would end the program.
func TestALogHandlerPanicInALeakReportDoesNotEndTheProgram(t *testing.T) {
	d := &fakeDialer{}
	h := newObsPanicHandler("LeakThreshold")
	h.armed.Store(true)
	p := &redispool.Pool{Dial: d.Dial, LeakThreshold: 10 * time.Millisecond, Logger: slog.New(h)}
	defer p.Close()
	c, err := p.GetContext(context.Background())
	require.NoError(t, err)
	select {
	case <-h.panicked:
	case <-time.After(5 * time.Second):
		t.Fatal("no leak report")
	}
	c.Close()
	p.Close()
	assert.EqualValues(t, 1, p.Stats().LeakCount)
}

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
	assert.Equal(t, redispool.PoolStats{}, p.Stats(), "a new pool")

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
	assert.EqualValues(t, 1, s.WaitCount)
	assert.GreaterOrEqual(t, s.WaitDuration, 20*time.Millisecond)
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
