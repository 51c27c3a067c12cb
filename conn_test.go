package redispool_test

import (
	"context"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redispool/redispool"
)

// onePool is a pool of at most one fake conn.
func onePool(t *testing.T, d *fakeDialer) *redispool.Pool {
	t.Helper()
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: time.Second, ReadTimeout: 200 * time.Millisecond}
	t.Cleanup(func() { p.Close() })
	return p
}

func TestNonRedisErrorDiscardsTheConn(t *testing.T) {
	d := &fakeDialer{}
	p := onePool(t, d)
	c := p.Get()
	d.last(t).doErr = os.ErrDeadlineExceeded
	_, err := c.Do("GET", "k")
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	require.NoError(t, c.Close())
	assert.True(t, d.Conns()[0].IsClosed())
	assert.EqualValues(t, 1, p.Stats().Discards.Broken)
	p.Get().Close()
	assert.EqualValues(t, 2, d.dials.Load())
}

func TestRedisErrorReplyKeepsTheConnAndPassesThroughUnchanged(t *testing.T) {
	d := &fakeDialer{}
	p := onePool(t, d)
	c := p.Get()
	d.last(t).doErr = redis.Error("ERR wrong type")
	_, err := c.Do("GET", "k")
	// redigo's Script asserts err.(redis.Error): it must not be wrapped.
	rerr, ok := err.(redis.Error)
	require.True(t, ok, "got %T", err)
	assert.Equal(t, redis.Error("ERR wrong type"), rerr)
	_, err = c.Do("GET", "k")
	assert.NoError(t, err, "the conn stays usable after an error reply")
	c.Close()
	assert.False(t, d.Conns()[0].IsClosed())
	p.Get().Close()
	assert.EqualValues(t, 1, d.dials.Load())
}

func TestABrokenConnFailsEveryLaterCallWithoutTouchingTheSocket(t *testing.T) {
	// A conn that keeps its socket after a timeout (Err stays nil) would hand
	// the late reply to the next command, even of the same borrower.
	d := &fakeDialer{}
	p := onePool(t, d)
	c := p.Get()
	fc := d.last(t)
	fc.doErr = os.ErrDeadlineExceeded
	_, err := c.Do("GET", "a")
	require.Error(t, err)
	fc.mu.Lock()
	fc.err = nil // naive: pretends to be fine
	fc.mu.Unlock()
	calls := len(fc.Calls())
	_, err = c.Do("GET", "b")
	assert.ErrorIs(t, err, os.ErrDeadlineExceeded)
	assert.ErrorIs(t, c.Send("GET", "c"), os.ErrDeadlineExceeded)
	_, err = c.Receive()
	assert.ErrorIs(t, err, os.ErrDeadlineExceeded)
	assert.ErrorIs(t, c.Err(), os.ErrDeadlineExceeded)
	assert.Len(t, fc.Calls(), calls, "no call reached the conn: %s", fmtCalls(fc))
	c.Close()
	assert.True(t, fc.IsClosed(), "discarded although its Err was nil")
}

func TestConnWhoseErrIsSetIsDiscarded(t *testing.T) {
	d := &fakeDialer{}
	p := onePool(t, d)
	c := p.Get()
	fc := d.last(t)
	fc.mu.Lock()
	fc.err = errors.New("protocol error")
	fc.mu.Unlock()
	c.Close()
	assert.True(t, fc.IsClosed())
	assert.EqualValues(t, 1, p.Stats().Discards.Broken)
}

func TestAClosedConnFailsEveryCallWithoutTouchingTheNextOwner(t *testing.T) {
	d := &fakeDialer{}
	p := onePool(t, d)
	old := p.Get()
	require.NoError(t, old.Close())
	next := p.Get() // the same pooled connection, now someone else's
	defer next.Close()
	fc := d.last(t)
	calls := len(fc.Calls())

	_, err := old.Do("GET", "k")
	assert.Equal(t, redispool.ErrConnClosed, err)
	assert.Equal(t, redispool.ErrConnClosed, old.Send("GET", "k"))
	assert.Equal(t, redispool.ErrConnClosed, old.Flush())
	_, err = old.Receive()
	assert.Equal(t, redispool.ErrConnClosed, err)
	_, err = redis.DoWithTimeout(old, time.Second, "GET", "k")
	assert.Equal(t, redispool.ErrConnClosed, err)
	_, err = redis.ReceiveWithTimeout(old, time.Second)
	assert.Equal(t, redispool.ErrConnClosed, err)
	_, err = redis.DoContext(old, context.Background(), "GET", "k")
	assert.Equal(t, redispool.ErrConnClosed, err)
	_, err = redis.ReceiveContext(old, context.Background())
	assert.Equal(t, redispool.ErrConnClosed, err)
	assert.Equal(t, redispool.ErrConnClosed, old.Err())
	assert.NoError(t, old.Close())
	assert.Len(t, fc.Calls(), calls, "the next owner's connection was touched")
	assert.NoError(t, next.Err())
}

func TestCloseWhileACallIsInFlightDiscardsTheConn(t *testing.T) {
	block := make(chan struct{})
	entered := make(chan struct{})
	d := &fakeDialer{setup: func(fc *fakeConn, _ int) {
		fc.reply = func(string, []any) (any, error) { close(entered); <-block; return "late", nil }
	}}
	p := onePool(t, d)
	c := p.Get()
	fc := d.last(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Do("GET", "k")
	}()
	<-entered
	require.NoError(t, c.Close())
	close(block)
	<-done
	assert.True(t, fc.IsClosed(), "a conn in use by another goroutine must not be reused")
	assert.EqualValues(t, 1, p.Stats().Discards.Broken)
}

func TestStateTheNextCallerMustNotInheritDiscardsTheConn(t *testing.T) {
	tests := []struct {
		name string
		cmds [][]any
	}{
		{"SUBSCRIBE", [][]any{{"SUBSCRIBE", "ch"}}},
		{"PSUBSCRIBE", [][]any{{"PSUBSCRIBE", "ch*"}}},
		{"SUBSCRIBE then UNSUBSCRIBE", [][]any{{"SUBSCRIBE", "ch"}, {"UNSUBSCRIBE"}}},
		{"MONITOR", [][]any{{"MONITOR"}}},
		{"CLIENT REPLY OFF", [][]any{{"CLIENT", "REPLY", "OFF"}}},
		{"CLIENT REPLY SKIP", [][]any{{"CLIENT", "REPLY", "SKIP"}}},
		{"SELECT 3", [][]any{{"SELECT", 3}}},
		{"SELECT unknown", [][]any{{"SELECT", "x"}}},
		{"READONLY", [][]any{{"READONLY"}}},
		{"HELLO", [][]any{{"HELLO", 3}}},
		{"CLIENT TRACKING ON", [][]any{{"CLIENT", "TRACKING", "ON"}}},
		{"AUTH", [][]any{{"AUTH", "pw"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &fakeDialer{}
			p := onePool(t, d)
			c := p.Get()
			for _, cmd := range tt.cmds {
				c.Do(cmd[0].(string), cmd[1:]...)
			}
			require.NoError(t, c.Close())
			assert.True(t, d.last(t).IsClosed())
			assert.EqualValues(t, 1, p.Stats().Discards.State)
		})
	}
}

func TestStateThatIsUndoneKeepsTheConn(t *testing.T) {
	tests := []struct {
		name     string
		cmds     [][]any
		wantSent string
	}{
		{"SELECT 3 then SELECT 0", [][]any{{"SELECT", 3}, {"SELECT", "0"}}, ""},
		{"MULTI is discarded", [][]any{{"MULTI"}, {"SET", "k", "v"}}, "SEND DISCARD"},
		{"WATCH is undone", [][]any{{"WATCH", "k"}}, "SEND UNWATCH"},
		{"MULTI EXEC", [][]any{{"WATCH", "k"}, {"MULTI"}, {"EXEC"}}, ""},
		{"CLIENT REPLY ON", [][]any{{"CLIENT", "REPLY", "ON"}}, ""},
		{"UNSUBSCRIBE without SUBSCRIBE", [][]any{{"UNSUBSCRIBE"}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &fakeDialer{}
			p := onePool(t, d)
			c := p.Get()
			for _, cmd := range tt.cmds {
				c.Do(cmd[0].(string), cmd[1:]...)
			}
			require.NoError(t, c.Close())
			fc := d.last(t)
			assert.False(t, fc.IsClosed(), fmtCalls(fc))
			if tt.wantSent != "" {
				assert.Contains(t, fc.Calls(), tt.wantSent)
				assert.Equal(t, "DO ", fc.Calls()[len(fc.Calls())-1], "the reply was read")
			}
			assert.EqualValues(t, 0, p.Stats().Discards.Total())
		})
	}
}

func TestPoolDBDeclaresTheDatabaseOfDialedConns(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, DB: 2}
	defer p.Close()
	c := p.Get()
	c.Do("SELECT", 2) // as throttled's redigostore does on every borrow
	c.Close()
	assert.False(t, d.last(t).IsClosed())
	c = p.Get()
	c.Do("SELECT", 0)
	c.Close()
	assert.True(t, d.last(t).IsClosed())
}

func TestPendingRepliesAreReadOnCloseAndTheConnKept(t *testing.T) {
	d := &fakeDialer{}
	p := onePool(t, d)
	c := p.Get()
	c.Send("SET", "k", "v")
	c.Send("INCR", "n")
	require.NoError(t, c.Close())
	fc := d.last(t)
	assert.Equal(t, []string{"SEND SET", "SEND INCR", "DO "}, fc.Calls(), "sent commands are flushed, their replies read")
	assert.Equal(t, []time.Duration{200 * time.Millisecond}, fc.Timeouts(), "drained within ReadTimeout")
	assert.False(t, fc.IsClosed())
}

func TestPendingRepliesThatCannotBeReadDiscardTheConn(t *testing.T) {
	d := &fakeDialer{}
	p := onePool(t, d)
	c := p.Get()
	c.Send("GET", "k")
	fc := d.last(t)
	fc.doErr = os.ErrDeadlineExceeded
	err := c.Close()
	assert.ErrorIs(t, err, os.ErrDeadlineExceeded, "Close reports the failed read")
	assert.True(t, fc.IsClosed())
	assert.EqualValues(t, 1, p.Stats().Discards.Broken)
}

func TestPendingBlockingCommandIsFlushedAndTheConnDiscarded(t *testing.T) {
	d := &fakeDialer{}
	p := onePool(t, d)
	c := p.Get()
	c.Send("BLPOP", "k", 0)
	start := time.Now()
	require.NoError(t, c.Close())
	assert.Less(t, time.Since(start), 100*time.Millisecond)
	fc := d.last(t)
	assert.Equal(t, []string{"SEND BLPOP", "FLUSH", "CLOSE"}, fc.Calls())
	assert.EqualValues(t, 1, p.Stats().Discards.State)
}

func TestDoContextCancelledMidCallReturnsCtxErrAndDiscards(t *testing.T) {
	entered := make(chan struct{})
	d := &fakeDialer{setup: func(fc *fakeConn, _ int) {
		fc.reply = func(string, []any) (any, error) {
			close(entered)
			// The read ends once its socket is closed, as a real one does.
			for deadline := time.Now().Add(3 * time.Second); !fc.IsClosed() && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
			}
			return nil, errors.New("use of closed network connection")
		}
	}}
	p := onePool(t, d)
	c := p.Get()
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-entered
		cancel()
	}()
	start := time.Now()
	_, err := redis.DoContext(c, ctx, "GET", "k")
	assert.Equal(t, context.Canceled, err)
	assert.Less(t, time.Since(start), 2*time.Second, "the cancellation closed the conn, which ended the read")
	c.Close()
	assert.True(t, d.last(t).IsClosed())
	assert.EqualValues(t, 1, p.Stats().Discards.Broken)
}

// TestDoContextKeepsAReplyReadAsCtxEnds: a reply read in full as ctx ends
// belongs to the caller (for BLPOP, the element has left the list); the
// connection, closed by ctx, is not used again.
func TestDoContextKeepsAReplyReadAsCtxEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	d := &fakeDialer{setup: func(fc *fakeConn, _ int) {
		fc.reply = func(string, []any) (any, error) {
			cancel()
			// ctx's hook starts and waits to close the conn, which the
			// read holds: the reply is read first.
			time.Sleep(20 * time.Millisecond)
			return "element", nil
		}
	}}
	p := onePool(t, d)
	c := p.Get()
	reply, err := redis.DoContext(c, ctx, "BLPOP", "k", 1)
	require.NoError(t, err)
	assert.Equal(t, "element", reply)
	_, err = c.Do("GET", "k")
	assert.Equal(t, context.Canceled, err, "the conn ctx closed is not used again")
	c.Close()
	require.Eventually(t, func() bool { return d.last(t).IsClosed() }, time.Second, time.Millisecond)
	assert.EqualValues(t, 1, p.Stats().Discards.Broken)
}

func TestDoContextWithAnExpiredContextSendsNothing(t *testing.T) {
	d := &fakeDialer{}
	p := onePool(t, d)
	c := p.Get()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := redis.DoContext(c, ctx, "GET", "k")
	assert.Equal(t, context.Canceled, err)
	_, err = redis.ReceiveContext(c, ctx)
	assert.Equal(t, context.Canceled, err)
	c.Close()
	fc := d.last(t)
	assert.Empty(t, fc.Calls())
	assert.False(t, fc.IsClosed(), "nothing was sent, the conn is clean")
}

func TestConnWithoutTimeoutsStillWorksAndIsNeverKeptDirty(t *testing.T) {
	d := &fakeDialer{plain: true} // conns without redis.ConnWithTimeout
	p := &redispool.Pool{MaxActive: 1, Dial: d.Dial}
	defer p.Close()
	c := p.Get()
	fc := d.last(t)
	_, err := c.Do("GET", "k")
	require.NoError(t, err)
	calls := len(fc.Calls())
	_, err = redis.DoWithTimeout(c, time.Second, "GET", "k")
	require.Error(t, err)
	_, err = redis.ReceiveWithTimeout(c, time.Second)
	require.Error(t, err)
	assert.Len(t, fc.Calls(), calls, "nothing was sent")
	_, err = c.Do("GET", "k")
	require.NoError(t, err, "the conn is still usable")
	c.Close()
	assert.False(t, fc.IsClosed(), "clean: kept")

	d2 := &fakeDialer{plain: true}
	p2 := &redispool.Pool{MaxActive: 1, Dial: d2.Dial}
	defer p2.Close()
	c = p2.Get()
	fc2 := d2.last(t)
	c.Send("SET", "k", "v")
	c.Close()
	assert.True(t, fc2.IsClosed(), "pending replies it cannot read within a deadline: discarded")
	assert.Contains(t, fc2.Calls(), "FLUSH", "but what was sent is written first")
}

func TestConnImplementsRedigosOptionalInterfaces(t *testing.T) {
	d := &fakeDialer{}
	p := onePool(t, d)
	c := p.Get()
	defer c.Close()
	_, ok := c.(redis.ConnWithTimeout)
	assert.True(t, ok)
	_, ok = c.(redis.ConnWithContext)
	assert.True(t, ok)
	var ec redis.Conn = (&redispool.Pool{MaxActive: -1}).Get()
	_, ok = ec.(redis.ConnWithTimeout)
	assert.True(t, ok, "the error conn too")
	_, ok = ec.(redis.ConnWithContext)
	assert.True(t, ok)
}

func TestDoWithEmptyCommandFlushesAndReadsPendingReplies(t *testing.T) {
	d := &fakeDialer{}
	p := onePool(t, d)
	c := p.Get()
	defer c.Close()
	r, err := c.Do("")
	assert.NoError(t, err)
	assert.Nil(t, r, "nothing pending: nil, nil as redigo")
	c.Send("SET", "a", 1)
	c.Send("SET", "b", 2)
	r, err = c.Do("")
	require.NoError(t, err)
	assert.Len(t, r, 2)
}

func TestAReadOnlyReplyRetiresEveryConnDialedBefore(t *testing.T) {
	for _, tt := range []struct {
		name string
		do   func(c redis.Conn)
	}{
		{"Do", func(c redis.Conn) { c.Do("SET", "k", "v") }},
		{"EXEC", func(c redis.Conn) { c.Do("EXEC") }},
		{"pipeline", func(c redis.Conn) { c.Send("SET", "k", "v"); c.Do("") }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			readOnly := redis.Error("READONLY You can't write against a read only replica.")
			d := &fakeDialer{}
			p := &redispool.Pool{Dial: d.Dial}
			defer p.Close()
			d.setup = func(fc *fakeConn, _ int) {
				fc.reply = func(cmd string, _ []any) (any, error) {
					if cmd == "SET" {
						return nil, readOnly
					}
					return []any{readOnly}, nil
				}
			}
			closeAll(getN(t, p, 3)) // dialed before the failover
			d.setup = nil
			c := p.Get()
			tt.do(c)
			assert.Equal(t, 0, p.IdleCount(), "idle conns dialed before are dropped at once")
			c.Close()
			for _, fc := range d.Conns() {
				assert.True(t, fc.IsClosed())
			}
			s := p.Stats()
			assert.EqualValues(t, 3, s.Discards.Retired+s.Discards.State)
			c = p.Get()
			require.NoError(t, c.Err())
			c.Close()
			assert.EqualValues(t, 4, d.dials.Load(), "a fresh conn is dialed")
		})
	}
}

func TestRetireDropsIdleConnsAndThoseInUseOnReturn(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial}
	defer p.Close()
	conns := getN(t, p, 3)
	conns[0].Close()
	p.Retire()
	assert.True(t, d.Conns()[0].IsClosed())
	conns[1].Close()
	assert.True(t, d.Conns()[1].IsClosed(), "a conn in use at Retire is not kept")
	fresh := p.Get()
	require.NoError(t, fresh.Err())
	fresh.Close()
	assert.False(t, d.last(t).IsClosed(), "conns dialed after Retire are kept")
	conns[2].Close()
	assert.EqualValues(t, 3, p.Stats().Discards.Retired)
	assert.Equal(t, 1, p.ActiveCount())
}

// TestACallThatOverlapsADoBreaksTheConn: redigo allows one goroutine to
// write (Send, Flush) while another reads (Receive), and no other overlap; Do
// both writes and reads. A call that overlaps a Do in progress fails with
// ErrConcurrentUse without reaching the conn, the Do goes on, every later
// call fails with ErrConcurrentUse, and Close discards the conn.
func TestACallThatOverlapsADoBreaksTheConn(t *testing.T) {
	for _, second := range []struct {
		name string
		call func(c redis.Conn) error
	}{
		{"Send", func(c redis.Conn) error { return c.Send("SET", "k", "v") }},
		{"Flush", func(c redis.Conn) error { return c.Flush() }},
		{"Receive", func(c redis.Conn) error { _, err := c.Receive(); return err }},
		{"Do", func(c redis.Conn) error { _, err := c.Do("GET", "k"); return err }},
	} {
		t.Run(second.name, func(t *testing.T) {
			d := &fakeDialer{}
			p := onePool(t, d)
			c := p.Get()
			fc := d.last(t)
			inDo, release := make(chan struct{}), make(chan struct{})
			var once sync.Once
			fc.reply = func(string, []any) (any, error) {
				once.Do(func() { close(inDo) })
				<-release
				return "first", nil
			}
			done := make(chan any, 1)
			go func() {
				r, _ := c.Do("GET", "k")
				done <- r
			}()
			select {
			case <-inDo:
			case <-time.After(5 * time.Second):
				t.Fatal("the first Do never reached the conn")
			}
			calls := len(fc.Calls())
			overlapping := make(chan error, 1)
			go func() { overlapping <- second.call(c) }()
			select {
			case err := <-overlapping:
				assert.Equal(t, redispool.ErrConcurrentUse, err)
			case <-time.After(5 * time.Second):
				close(release)
				t.Fatal("the overlapping call reached the conn and waits behind the Do")
			}
			assert.Len(t, fc.Calls(), calls, "the overlapping call reached the conn")
			close(release)
			select {
			case r := <-done:
				assert.Equal(t, "first", r, "the call in progress did not go on")
			case <-time.After(5 * time.Second):
				t.Fatal("the first Do never returned")
			}
			_, err := c.Do("GET", "k")
			assert.Equal(t, redispool.ErrConcurrentUse, err, "a later call")
			assert.Equal(t, redispool.ErrConcurrentUse, c.Err())
			require.NoError(t, c.Close())
			assert.True(t, fc.IsClosed(), "the conn was kept")
			assert.EqualValues(t, 1, p.Stats().Discards.Broken)
		})
	}
}
