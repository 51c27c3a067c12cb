package pipelinetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/internal/redistest"
)

// gatedConn is a redigo conn whose Flush, once hold is called, waits until
// release is: a write that takes as long as the test wants.
type gatedConn struct {
	redis.Conn
	g *gate
}

type gate struct {
	mu      sync.Mutex
	held    chan struct{} // closed by release; nil when Flush does not wait
	entered chan struct{} // gets a value when a Flush starts waiting
}

func newGate() *gate { return &gate{entered: make(chan struct{}, 16)} }

func (g *gate) hold() {
	g.mu.Lock()
	g.held = make(chan struct{})
	g.mu.Unlock()
}

func (g *gate) release() {
	g.mu.Lock()
	close(g.held)
	g.held = nil
	g.mu.Unlock()
}

func (c *gatedConn) Flush() error {
	c.g.mu.Lock()
	held := c.g.held
	c.g.mu.Unlock()
	if held != nil {
		c.g.entered <- struct{}{}
		<-held
	}
	return c.Conn.Flush()
}

func (c *gatedConn) ReceiveWithTimeout(timeout time.Duration) (any, error) {
	return c.Conn.(redis.ConnWithTimeout).ReceiveWithTimeout(timeout)
}

func (c *gatedConn) DoWithTimeout(timeout time.Duration, cmd string, args ...any) (any, error) {
	return c.Conn.(redis.ConnWithTimeout).DoWithTimeout(timeout, cmd, args...)
}

// gatedPool is a pool with AutoPipeline on one shared connection whose
// writes g can hold up.
func gatedPool(t *testing.T, readTimeout time.Duration) (*redispool.Pool, *gate) {
	srv := redistest.Start(t)
	g := newGate()
	p := &redispool.Pool{
		Dial: func() (redis.Conn, error) {
			c, err := redis.Dial("tcp", srv.Addr())
			if err != nil {
				return nil, err
			}
			return &gatedConn{Conn: c, g: g}, nil
		},
		MaxActive:    2, // one shared connection
		ReadTimeout:  readTimeout,
		AutoPipeline: true,
	}
	t.Cleanup(func() { p.Close() })
	c := p.Get()
	_, err := c.Do("PING")
	require.NoError(t, err)
	c.Close()
	return p, g
}

// A reply waits at most ReadTimeout from when its command was written, not
// from when it was queued: a batch that takes longer than ReadTimeout to
// write does not break the shared connection.
func TestReadTimeoutCountsFromTheWrite(t *testing.T) {
	p, g := gatedPool(t, 200*time.Millisecond)
	g.hold()
	c := p.Get()
	defer c.Close()
	require.NoError(t, c.Send("SET", "slow-write", "v"))
	require.NoError(t, c.Send("GET", "slow-write"))
	require.NoError(t, c.Flush())
	select {
	case <-g.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the batch was never written")
	}
	time.Sleep(500 * time.Millisecond) // the write takes 2.5 ReadTimeouts
	g.release()
	_, err := c.Receive()
	require.NoError(t, err, "the SET's reply")
	got, err := redis.String(c.Receive())
	require.NoError(t, err, "the GET's reply")
	assert.Equal(t, "v", got)
	assert.Zero(t, p.Stats().Discards.Broken, "the shared connection broke")
}

// A DoContext whose context ends before its command is written never
// writes it; commands queued behind it still run, in order.
func TestACommandCancelledBeforeItIsWrittenNeverRuns(t *testing.T) {
	p, g := gatedPool(t, time.Second)
	g.hold()

	// A first borrower's write is held up: the shared connection's writer
	// is busy with it, and what comes next waits in the queue.
	first := make(chan error, 1)
	go func() {
		c := p.Get()
		defer c.Close()
		_, err := c.Do("SET", "first", "1")
		first <- err
	}()
	select {
	case <-g.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the first command was never written")
	}

	c := p.Get()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := redis.DoContext(c, ctx, "INCR", "cancelled")
	assert.True(t, errors.Is(err, context.DeadlineExceeded), "DoContext: %v", err)
	c.Close()

	after := p.Get()
	defer after.Close()
	done := make(chan error, 1)
	var got any
	go func() {
		var err error
		got, err = after.Do("GET", "cancelled")
		done <- err
	}()
	g.release()
	require.NoError(t, <-first)
	require.NoError(t, <-done)
	assert.Nil(t, got, "the INCR whose caller stopped waiting before it was written ran")
	assert.Zero(t, p.Stats().Discards.Broken)
}

// A shared connection that serves a lone borrower's round trips, one every
// millisecond or so, is in use: it goes back to the pool only after 100 ms
// without any.
func TestALoneBorrowersSharedConnStaysWhileInUse(t *testing.T) {
	srv := redistest.Start(t)
	var borrows atomic.Int64
	p := &redispool.Pool{
		Addr:         srv.Addr(),
		AutoPipeline: true,
		TestOnBorrow: func(redis.Conn, time.Time) error {
			borrows.Add(1) // once per shared connection taken from the idle set
			return nil
		},
	}
	defer p.Close()
	for start := time.Now(); time.Since(start) < 500*time.Millisecond; {
		c := p.Get()
		_, err := c.Do("GET", "lone")
		c.Close()
		require.NoError(t, err)
		time.Sleep(time.Millisecond) // idle between commands, as a borrower doing other work is
	}
	assert.Zero(t, borrows.Load(), "the shared connection went back to the pool while in use")
	time.Sleep(300 * time.Millisecond)
	c := p.Get()
	_, err := c.Do("GET", "lone")
	c.Close()
	require.NoError(t, err)
	assert.Equal(t, int64(1), borrows.Load(), "an idle shared connection lingers and goes back to the pool")
}

// Borrowers that send commands without reading their replies (Send, then
// Close) wait once a shared connection holds 4,096 commands, rather than
// pile up commands faster than they are written; none is lost. A DoContext
// that waits for room returns when its context ends.
func TestASharedConnHoldsABoundedNumberOfCommands(t *testing.T) {
	p, g := gatedPool(t, 5*time.Second)
	g.hold()
	const sends = 6000
	var closed atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range sends {
			c := p.Get()
			c.Send("INCR", "sent")
			c.Close()
			closed.Add(1)
		}
	}()
	select {
	case <-g.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("nothing was written")
	}
	time.Sleep(300 * time.Millisecond)
	select {
	case <-done:
		t.Fatalf("all %d commands were taken while none could be written", sends)
	default:
	}
	assert.LessOrEqual(t, closed.Load(), int64(4096+1), "commands taken while none could be written")

	c := p.Get()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := redis.DoContext(c, ctx, "GET", "sent")
	assert.True(t, errors.Is(err, context.DeadlineExceeded), "DoContext: %v", err)
	assert.Less(t, time.Since(start), time.Second, "DoContext waited for room past its context")
	c.Close()

	g.release()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the borrowers never got room")
	}
	c = p.Get()
	defer c.Close()
	n, err := redis.Int(c.Do("GET", "sent"))
	require.NoError(t, err)
	assert.Equal(t, sends, n, "commands lost")
}

// profile is a redis.Argument of the user's, written as JSON.
type profile struct {
	Name string
	Age  int
}

func (p *profile) RedisArg() any {
	b, _ := json.Marshal(p)
	return b
}

// TestAnArgumentIsWrittenAsItWasAtSend: a value the caller changes after
// Send, a redis.Argument or a buffer printed by redigo, is written as it
// was at Send, as redigo's Send writes it at once; and the pipe's goroutine
// never reads the caller's value, which would race with the change.
func TestAnArgumentIsWrittenAsItWasAtSend(t *testing.T) {
	srv := redistest.Start(t)
	p := &redispool.Pool{Addr: srv.Addr(), AutoPipeline: true}
	defer p.Close()
	busy := p.Get() // keeps the pipe's writer busy, so that it writes later
	defer busy.Close()
	for i := range 50 {
		c := p.Get()
		pr := &profile{Name: "alice", Age: i}
		var buf bytes.Buffer
		buf.WriteString("first")
		require.NoError(t, c.Send("SET", "user:alice", pr))
		require.NoError(t, c.Send("SET", "buf", &buf))
		busy.Send("PING")
		busy.Flush()
		require.NoError(t, c.Flush())
		pr.Name = "bob"
		buf.Reset()
		buf.WriteString("second")
		_, err := c.Do("")
		require.NoError(t, err)
		got, err := redis.String(c.Do("GET", "user:alice"))
		require.NoError(t, err)
		assert.JSONEq(t, fmt.Sprintf(`{"Name":"alice","Age":%d}`, i), got)
		got, err = redis.String(c.Do("GET", "buf"))
		require.NoError(t, err)
		assert.Equal(t, "first", got)
		c.Close()
	}
	_, err := busy.Do("")
	require.NoError(t, err)
}

// TestAWaitForRepliesDueOnAClosedPipeEnds: a borrower's commands wait for
// the replies still due to it on a shared connection that closed (here
// retired while its server is stopped). DoContext waits no longer than
// its context, and Close no longer than a drain, even with ReadTimeout
// off.
func TestAWaitForRepliesDueOnAClosedPipeEnds(t *testing.T) {
	for _, closing := range []bool{false, true} {
		t.Run(fmt.Sprintf("Close=%v", closing), func(t *testing.T) {
			srv := redistest.Start(t)
			p := &redispool.Pool{Addr: srv.Addr(), AutoPipeline: true, ReadTimeout: -1}
			defer p.Close()
			c := p.Get()
			defer c.Close()
			_, err := c.Do("PING")
			require.NoError(t, err)
			srv.Stop(t)
			defer srv.Cont(t)
			written := p.Stats().PipelineCommandCount
			c.Send("GET", "k")
			c.Flush()
			require.Eventually(t, func() bool { return p.Stats().PipelineCommandCount > written },
				5*time.Second, time.Millisecond, "the GET goes to the shared connection, whose server does not answer")
			p.Retire()

			start := time.Now()
			if closing {
				c.Send("GET", "k2")
				c.Close()
				assert.Less(t, time.Since(start), 3*time.Second, "Close waited past its drain (1 s)")
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			_, err = c.(redis.ConnWithContext).DoContext(ctx, "GET", "k2")
			require.ErrorIs(t, err, context.DeadlineExceeded)
			assert.Less(t, time.Since(start), 2*time.Second, "DoContext waited past its context")
		})
	}
}

// panicArg is a redis.Argument whose RedisArg panics.
type panicArg struct{}

func (panicArg) RedisArg() any { panic("RedisArg panics") }

// TestAnArgumentThatPanicsReachesItsCallerAlone: the arguments of a
// command are taken on the caller's goroutine, so a RedisArg that panics
// panics in the caller's Do or Send, and the shared connection, which never
// saw the command, goes on serving the others.
func TestAnArgumentThatPanicsReachesItsCallerAlone(t *testing.T) {
	srv := redistest.Start(t)
	p := &redispool.Pool{Addr: srv.Addr(), AutoPipeline: true}
	defer p.Close()
	other := p.Get()
	defer other.Close()
	_, err := other.Do("SET", "k", "v")
	require.NoError(t, err)

	c := p.Get()
	assert.PanicsWithValue(t, "RedisArg panics", func() { c.Do("SET", "k", panicArg{}) })
	assert.PanicsWithValue(t, "RedisArg panics", func() { c.Send("SET", "k", panicArg{}) })
	c.Close()

	got, err := redis.String(other.Do("GET", "k"))
	require.NoError(t, err)
	assert.Equal(t, "v", got)
	assert.Zero(t, p.Stats().Discards.Broken, "no shared connection broke")
}
