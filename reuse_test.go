package redispool_test

// What a connection carries to the next borrower: nothing. Close keeps a
// connection only when it is provably clean: no error other than a
// redis.Error, no reply left unread that cannot be read at once, no state
// the next borrower would inherit (subscriptions, MONITOR, CLIENT REPLY,
// MULTI, WATCH, READONLY or another database the server did not confirm
// undone, HELLO, tracking, a name, ASKING...), not retired, not used by two
// goroutines at once. A handle closed fails every call without touching the
// connection, now someone else's. The conn handed out is a redigo conn like
// any other.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/redispool/redispool"
	"github.com/redispool/redispool/internal/redistest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// ---------------------------------------------------------------------------
// Errors and broken conns.

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

// ---------------------------------------------------------------------------
// Pending replies and state, on the fake conn.

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

// The borrow counts its pending replies through every call: Close reads
// only those the borrower did not, a Receive with none pending reads
// nothing owed to a Close, and a pending blocking command lengthens the
// read that waits for its reply.
func TestCloseReadsOnlyTheRepliesTheBorrowerLeftUnread(t *testing.T) {
	d := &fakeDialer{}
	p := onePool(t, d)

	c := p.Get()
	require.NoError(t, c.Send("GET", "a"))
	require.NoError(t, c.Send("GET", "b"))
	require.NoError(t, c.Flush())
	for range 2 {
		_, err := c.Receive()
		require.NoError(t, err)
	}
	require.NoError(t, c.Close())
	fc := d.last(t)
	assert.Equal(t, []string{"SEND GET", "SEND GET", "FLUSH", "RECV", "RECV"}, fc.Calls(), "both replies read by Receive: nothing for Close")

	c = p.Get()
	require.NoError(t, c.Send("GET", "a"))
	_, err := c.Do("GET", "b") // reads GET a's reply too
	require.NoError(t, err)
	p.Retire()
	assert.NoError(t, c.Close(), "a retired conn with nothing unread closes without ErrConnRetired")
	assert.Equal(t, []string{"SEND GET", "DO GET", "CLOSE"}, fc.Calls()[5:])

	c = p.Get()
	require.NoError(t, c.Send("GET", "a"))
	require.NoError(t, c.Flush())
	_, err = c.Receive()
	require.NoError(t, err)
	_, err = c.Receive() // nothing pending: the fake conn answers, the count stays 0
	require.NoError(t, err)
	require.NoError(t, c.Send("GET", "b"))
	require.NoError(t, c.Close())
	fc = d.last(t)
	assert.Equal(t, []string{"SEND GET", "FLUSH", "RECV", "RECV", "SEND GET", "DO "}, fc.Calls(), "Close reads the one reply left")

	c = p.Get()
	require.NoError(t, c.Send("BLPOP", "k", 2))
	require.NoError(t, c.Send("GET", "a"))
	require.NoError(t, c.Flush())
	for range 2 {
		_, err = c.Receive()
		require.NoError(t, err)
	}
	require.NoError(t, c.Close())
	assert.Equal(t, []time.Duration{2200 * time.Millisecond, 2200 * time.Millisecond}, fc.Timeouts()[3:],
		"each read waits ReadTimeout plus the pending BLPOP's 2 s")
}

// A borrow counts its pending replies however many there are: past what
// the conn's claim word holds (65,535), the count goes on under the lock.
func TestABorrowCountsAnyNumberOfPendingReplies(t *testing.T) {
	const n = 70_000
	d := &fakeDialer{}
	p := onePool(t, d)

	c := p.Get()
	for i := range n {
		require.NoError(t, c.Send("GET", "a"), "Send %d", i)
	}
	require.NoError(t, c.Flush())
	for i := range n {
		_, err := c.Receive()
		require.NoError(t, err, "Receive %d", i)
	}
	require.NoError(t, c.Close())
	fc := d.last(t)
	calls := fc.Calls()
	assert.Len(t, calls, 2*n+1, "every reply read by Receive: nothing for Close")
	assert.Equal(t, "RECV", calls[len(calls)-1])
	assert.False(t, fc.IsClosed())

	c = p.Get()
	for i := range n {
		require.NoError(t, c.Send("GET", "a"), "Send %d", i)
	}
	_, err := c.Receive() // one read: n-1 left for Close
	require.NoError(t, err)
	require.NoError(t, c.Close())
	calls = fc.Calls()
	assert.Equal(t, "DO ", calls[len(calls)-1], "Close reads the replies left")
	assert.False(t, fc.IsClosed(), "the conn is kept")
	assert.Equal(t, 1, p.IdleCount())
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
		{"HELLO", [][]any{{"HELLO", 3}}},
		{"ASKING with no command after it", [][]any{{"GET", "k"}, {"ASKING"}}},
		// A Dial of the user's with DB zero may have selected another one.
		{"SELECT 3 on a Dial of the user's with DB zero", [][]any{{"SELECT", 3}}},
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
		{"READONLY is undone", [][]any{{"READONLY"}}, "SEND READWRITE"},
		{"READONLY then READWRITE", [][]any{{"READONLY"}, {"READWRITE"}}, ""},
		{"ASKING then a command", [][]any{{"ASKING"}, {"GET", "k"}}, ""},
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
			} else {
				for _, call := range fc.Calls() {
					assert.NotContains(t, call, "SEND", "Close sent an undo with nothing to undo")
				}
			}
			assert.EqualValues(t, 0, p.Stats().Discards.Total())
		})
	}
}

// TestPoolDBDeclaresTheDatabaseOfDialedConns: with a Dial of the user's,
// DB is the database Close puts a conn left in another back in.
func TestPoolDBDeclaresTheDatabaseOfDialedConns(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, DB: 2, MaxActive: 1}
	defer p.Close()
	c := p.Get()
	c.Do("SELECT", 2) // as throttled's redigostore does on every borrow
	c.Close()
	assert.NotContains(t, fmtCalls(d.last(t)), "SEND", "DB's own SELECT needs no undo")
	for _, db := range []any{0, "x"} {
		c = p.Get()
		c.Do("SELECT", db)
		c.Close()
		calls := d.last(t).Calls()
		assert.Equal(t, []string{"SEND SELECT", "DO "}, calls[len(calls)-2:], "a conn left in database %v is not put back in DB", db)
	}
	s := p.Stats()
	assert.EqualValues(t, 1, s.DialCount)
	assert.Zero(t, s.Discards.Total())
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

// ---------------------------------------------------------------------------
// The next borrower, on a real server.

func TestADirtyConnLeavesNothingForTheNextBorrower(t *testing.T) {
	srv := redistest.Start(t)
	srv.Do(t, "SET", "db0:marker", "db0")
	const readTimeout = 500 * time.Millisecond
	tests := []struct {
		name  string
		dirty func(t *testing.T, c redis.Conn)
		after func(t *testing.T) // checks on the server, when any
	}{
		{"pending pipeline", func(t *testing.T, c redis.Conn) {
			c.Send("ECHO", "late-1")
			c.Send("ECHO", "late-2")
			c.Flush()
			v, err := redis.String(c.Receive())
			require.NoError(t, err)
			require.Equal(t, "late-1", v)
		}, nil},
		{"unflushed Send", func(t *testing.T, c redis.Conn) {
			require.NoError(t, c.Send("SET", "sent:not:flushed", "1"))
		}, func(t *testing.T) {
			assert.Equal(t, []byte("1"), srv.Do(t, "GET", "sent:not:flushed"), "a command sent before Close is not lost")
		}},
		{"open MULTI", func(t *testing.T, c redis.Conn) {
			_, err := c.Do("MULTI")
			require.NoError(t, err)
			_, err = c.Do("SET", "multi:never", "1")
			require.NoError(t, err)
		}, func(t *testing.T) {
			assert.Nil(t, srv.Do(t, "GET", "multi:never"), "the open transaction was discarded")
		}},
		{"WATCH", func(t *testing.T, c redis.Conn) {
			_, err := c.Do("WATCH", "watched")
			require.NoError(t, err)
		}, func(t *testing.T) {
			srv.Do(t, "SET", "watched", "changed")
		}},
		{"SELECT 3", func(t *testing.T, c redis.Conn) {
			_, err := c.Do("SELECT", 3)
			require.NoError(t, err)
		}, nil},
		{"SUBSCRIBE", func(t *testing.T, c redis.Conn) {
			require.NoError(t, c.Send("SUBSCRIBE", "chatter"))
			require.NoError(t, c.Flush())
			srv.Do(t, "PUBLISH", "chatter", "unread message")
		}, nil},
		{"CLIENT REPLY OFF", func(t *testing.T, c redis.Conn) {
			require.NoError(t, c.Send("CLIENT", "REPLY", "OFF"))
			require.NoError(t, c.Flush())
		}, nil},
		{"MONITOR", func(t *testing.T, c redis.Conn) {
			_, err := c.Do("MONITOR")
			require.NoError(t, err)
			srv.Do(t, "SET", "seen:by:monitor", "1")
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: readTimeout}
			defer p.Close()
			c, err := p.GetContext(context.Background())
			require.NoError(t, err)
			tt.dirty(t, c)
			start := time.Now()
			c.Close()
			assert.Less(t, time.Since(start), readTimeout, "Close took longer than ReadTimeout")
			if tt.after != nil {
				tt.after(t)
			}
			borrowerSeesOnlyItsOwn(t, p)
			if tt.name == "WATCH" {
				// An inherited WATCH would make this transaction fail.
				c := p.Get()
				defer c.Close()
				c.Send("MULTI")
				c.Send("INCR", "tx:n")
				r, err := c.Do("EXEC")
				require.NoError(t, err)
				assert.NotNil(t, r, "EXEC aborted by a WATCH the borrower never made")
			}
		})
	}

	t.Run("a conn used after Close", func(t *testing.T) {
		p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: readTimeout}
		defer p.Close()
		old := p.Get()
		old.Close()
		next := p.Get()
		defer next.Close()
		_, err := old.Do("SET", "victim", "overwritten")
		assert.Equal(t, redispool.ErrConnClosed, err)
		assert.Equal(t, redispool.ErrConnClosed, old.Send("SELECT", 5))
		_, err = old.Do("")
		assert.Equal(t, redispool.ErrConnClosed, err)
		assert.Nil(t, srv.Do(t, "GET", "victim"))
		v, err := redis.String(next.Do("ECHO", "own"))
		require.NoError(t, err)
		assert.Equal(t, "own", v)
	})
}

// TestNextBorrowerInheritsNothing runs sequences through the public API
// on a pool of one connection and checks that the next borrower inherits
// nothing, and that the connection is kept exactly where that is safe.
func TestNextBorrowerInheritsNothing(t *testing.T) {
	srv := redistest.Start(t)
	const readTimeout = 200 * time.Millisecond
	const (
		keep    = "keep"
		discard = "discard"
	)
	cases := []struct {
		name  string
		steps []borrowStep
		want  string
	}{
		// Kept: nothing is left, or Close undoes it.
		{"EVAL that SELECTs", []borrowStep{pDo("EVAL", "redis.call('SELECT', 3) return redis.call('SET', 'k', 'v')", 0)}, keep},
		{"FCALL that SELECTs", []borrowStep{
			pDo("FUNCTION", "LOAD", "REPLACE", "#!lua name=probelib\nredis.register_function('probesel', function(k, a) redis.call('SELECT', 5) return 1 end)"),
			pDo("FCALL", "probesel", 0)}, keep},
		{"redis.Script", []borrowStep{func(t *testing.T, c redis.Conn) {
			_, err := redis.NewScript(1, "return redis.call('EXISTS', KEYS[1])").Do(c, "k")
			require.NoError(t, err)
		}}, keep},
		{"nested MULTI left open", []borrowStep{pDo("MULTI"), pDo("MULTI"), pDo("SET", "a", 1)}, keep},
		{"WATCH inside MULTI, EXEC", []borrowStep{pDo("MULTI"), pDo("WATCH", "w"), pDo("EXEC")}, keep},
		{"EXECABORT after WATCH", []borrowStep{pDo("WATCH", "w"), pDo("MULTI"), pDo("SET", "a"), pDo("EXEC")}, keep},
		{"SELECT 3 then SELECT 0", []borrowStep{pDo("SELECT", 3), pDo("select", []byte("0"))}, keep},
		{"SELECT as []byte", []borrowStep{pDo("select", []byte("4"))}, keep},
		{"SELECT true (redigo sends 1)", []borrowStep{pDo("SELECT", true)}, keep},
		{"SELECT pipelined, unread", []borrowStep{pSend("SELECT", 5), pSend("SET", "k", "v"), pFlush}, keep},
		{"UNSUBSCRIBE from one channel, not subscribed", []borrowStep{pDo("UNSUBSCRIBE", "a")}, keep},
		{"SCRIPT EXISTS", []borrowStep{pDo("SCRIPT", "EXISTS", "0123456789012345678901234567890123456789")}, keep},
		{"pipeline with an error reply mid-way, unread", []borrowStep{pSend("SET", "s", "x"), pSend("INCR", "s"), pSend("ECHO", "late"), pFlush, pRecv}, keep},
		{"SELECT 3 then SELECT 0, pipelined", []borrowStep{pSend("SELECT", 3), pSend("select", []byte("0")), pFlush}, keep},
		{"CLIENT NO-EVICT off", []borrowStep{pDo("CLIENT", "NO-EVICT", "off")}, keep},
		{"BLPOP k 0.2 times out", []borrowStep{pDo("BLPOP", "probe:none", 0.2)}, keep},
		{"BLMPOP 0.1 times out", []borrowStep{pDo("BLMPOP", "0.1", 1, "probe:none", "LEFT")}, keep},
		{"XREAD BLOCK 100 times out", []borrowStep{pDo("xread", "block", 100, "STREAMS", "probe:none", "$")}, keep},
		{"ReceiveContext with a cancelled ctx reads nothing", []borrowStep{pSend("ECHO", "late"), pFlush, func(t *testing.T, c redis.Conn) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			_, err := redis.ReceiveContext(c, ctx)
			require.Equal(t, context.Canceled, err)
		}}, keep},

		// Discarded: state the next borrower must not inherit.
		{"HELLO 2", []borrowStep{pDo("HELLO", 2)}, discard},
		{"HELLO 3", []borrowStep{pDo("hello", "3")}, discard},
		{"RESET", []borrowStep{pDo("RESET")}, discard},
		{"SSUBSCRIBE", []borrowStep{pSend("SSUBSCRIBE", "s"), pFlush, pRecv}, discard},
		{"SSUBSCRIBE, SUNSUBSCRIBE", []borrowStep{pSend("SSUBSCRIBE", "s"), pSend("SUNSUBSCRIBE"), pFlush, pRecv, pRecv}, discard},
		{"PSUBSCRIBE without arguments", []borrowStep{pDo("PSUBSCRIBE")}, discard},
		{"SUBSCRIBE queued in MULTI", []borrowStep{pDo("MULTI"), pDo("SUBSCRIBE", "a"), pDo("EXEC")}, discard},
		{"PubSubConn subscribe and unsubscribe", []borrowStep{func(t *testing.T, c redis.Conn) {
			psc := redis.PubSubConn{Conn: c}
			require.NoError(t, psc.Subscribe("x"))
			psc.Receive()
			require.NoError(t, psc.Unsubscribe())
			psc.Receive()
		}}, discard},
		{"CLIENT TRACKING on BCAST", []borrowStep{pDo("CLIENT", "TRACKING", "on", "BCAST")}, discard},
		{"CLIENT NO-EVICT on", []borrowStep{pDo("client", []byte("no-evict"), "ON")}, discard},
		{"CLIENT REPLY SKIP, pipelined", []borrowStep{pSend("client", []byte("reply"), "skip"), pSend("SET", "skip", 1), pSend("ECHO", "after"), pFlush}, discard},
		{"MONITOR", []borrowStep{pDo("MONITOR")}, discard},
		// Without cluster support the server refuses READWRITE as it
		// refused READONLY: nothing says the connection is read-write.
		{"READONLY without cluster support", []borrowStep{pDo("READONLY")}, discard},
		{"Receive with nothing pending", []borrowStep{pRecv}, discard},
		{"DoWithTimeout shorter than the blocking command", []borrowStep{func(t *testing.T, c redis.Conn) {
			_, err := redis.DoWithTimeout(c, 20*time.Millisecond, "BLPOP", "probe:none", 0.2)
			require.Error(t, err)
		}}, discard},
		{"DoContext deadline during BLPOP", []borrowStep{func(t *testing.T, c redis.Conn) {
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			_, err := redis.DoContext(c, ctx, "BLPOP", "probe:none", 2)
			require.Equal(t, context.DeadlineExceeded, err)
		}}, discard},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: readTimeout}
			defer p.Close()
			c, err := p.GetContext(context.Background())
			require.NoError(t, err)
			for _, s := range tt.steps {
				s(t, c)
			}
			c.Close()
			nextBorrowerIsClean(t, p)
			s := p.Stats()
			switch tt.want {
			case keep:
				assert.EqualValues(t, 1, s.DialCount, "a clean connection was not reused")
				assert.Zero(t, s.Discards.Total(), "a clean connection was discarded: %+v", s.Discards)
			case discard:
				assert.EqualValues(t, 1, s.Discards.Total(), "the connection was not discarded")
			}
		})
	}
}

// TestSequencesKeepOrDiscardAsTheyShould runs further sequences
// through the public API and checks the next borrower, and whether the conn
// was kept where keeping it is safe.
func TestSequencesKeepOrDiscardAsTheyShould(t *testing.T) {
	srv := redistest.Start(t)
	const (
		keep    = "keep"
		discard = "discard"
	)
	for _, tt := range []struct {
		name  string
		steps []borrowStep
		want  string
	}{
		{"pipelined MULTI, EXEC, all read", []borrowStep{pSend("MULTI"), pSend("INCR", "nb:n"), pSend("EXEC"), pFlush, pRecv, pRecv, pRecv}, keep},
		{"pipelined WATCH, MULTI, EXEC, none read", []borrowStep{pSend("WATCH", "nb:w"), pSend("MULTI"), pSend("INCR", "nb:n"), pSend("EXEC"), pFlush}, keep},
		{"Send without Flush of WATCH", []borrowStep{pSend("WATCH", "nb:w")}, keep},
		{"MULTI then EXEC with an error queued (EXECABORT)", []borrowStep{pDo("WATCH", "nb:w"), pDo("MULTI"), pDo("INCR"), pDo("EXEC")}, keep},
		{"WATCH, MULTI, DISCARD via Do(\"\")", []borrowStep{pSend("WATCH", "nb:w"), pSend("MULTI"), pSend("DISCARD"), pDo("")}, keep},
		{"nested MULTI error then DISCARD", []borrowStep{pDo("MULTI"), pDo("MULTI"), pDo("DISCARD")}, keep},
		{"SELECT inside EXEC", []borrowStep{pDo("MULTI"), pDo("SELECT", 2), pDo("EXEC")}, keep},
		{"SELECT inside a MULTI left open", []borrowStep{pDo("SELECT", 3), pDo("MULTI"), pDo("SELECT", 2)}, keep},
		{"HELLO 3 sent, not flushed", []borrowStep{pSend("HELLO", 3)}, discard},
		{"CLIENT REPLY OFF, flushed, Close", []borrowStep{pSend("CLIENT", "REPLY", "OFF"), pSend("SET", "nb:x", 1), pFlush}, discard},
		{"CLIENT REPLY SKIP via Do, then ECHO", []borrowStep{pSend("CLIENT", "REPLY", "SKIP"), pDo("ECHO", "skipped")}, discard},
		{"UNSUBSCRIBE of one channel, lower case", []borrowStep{pDo("unsubscribe", []byte("a"))}, keep},
		{"PSUBSCRIBE, PUNSUBSCRIBE", []borrowStep{pSend("PSUBSCRIBE", "p*"), pSend("PUNSUBSCRIBE"), pFlush, pRecv, pRecv}, discard},
		{"MONITOR pipelined", []borrowStep{pSend("monitor"), pFlush}, discard},
		{"SELECT of a typed nil, rejected", []borrowStep{pDo("SELECT", (*int)(nil))}, keep},
		{"BZPOPMIN times out", []borrowStep{pDo("BZPOPMIN", "nb:z", "0.1")}, keep},
		{"WAIT 1 100 on a master without replicas", []borrowStep{pDo("WAIT", 1, 100)}, keep},
		{"EVAL that SELECTs then fails", []borrowStep{pDo("EVAL", "redis.call('SELECT', 4) return redis.error_reply('x')", 0)}, keep},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: 300 * time.Millisecond}
			defer p.Close()
			c := p.Get()
			for _, s := range tt.steps {
				s(t, c)
			}
			c.Close()
			nextBorrowerIsClean(t, p)
			nextTransactionRuns(t, srv, p, "nb:w")
			s := p.Stats()
			switch tt.want {
			case keep:
				assert.EqualValues(t, 1, s.DialCount, "a clean connection was not reused: %+v", s.Discards)
			case discard:
				assert.EqualValues(t, 1, s.Discards.Total(), "the connection was not discarded")
			}
		})
	}
}

func TestStateThatIsOnlyQueuedOrRejectedIsNotTakenForUndone(t *testing.T) {
	srv := redistest.Start(t)
	srv.Do(t, "SET", "db0:marker", "db0")
	for _, tt := range []struct {
		name  string
		dirty func(c redis.Conn)
	}{
		{"SELECT 0 queued in MULTI, then Close", func(c redis.Conn) { c.Do("SELECT", 3); c.Do("MULTI"); c.Do("SELECT", 0) }},
		{"SELECT 0 queued in MULTI, then DISCARD", func(c redis.Conn) { c.Do("SELECT", 3); c.Do("MULTI"); c.Do("SELECT", 0); c.Do("DISCARD") }},
		{"WATCH, then DISCARD without MULTI", func(c redis.Conn) { c.Do("WATCH", "w"); c.Do("DISCARD") }},
		{"WATCH, then EXEC without MULTI", func(c redis.Conn) { c.Do("WATCH", "w"); c.Do("EXEC") }},
		{"WATCH, then UNWATCH queued in MULTI", func(c redis.Conn) { c.Do("WATCH", "w"); c.Do("MULTI"); c.Do("UNWATCH") }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: time.Second}
			defer p.Close()
			c := p.Get()
			tt.dirty(c)
			c.Close()
			borrowerSeesOnlyItsOwn(t, p)
			nextTransactionRuns(t, srv, p, "w")
		})
	}
}

// TestARejectedSelectLeavesTheDatabaseUnknown checks that a SELECT back to
// Pool.DB that the server rejects does not count as done: the connection,
// still in another database, is not kept.
func TestARejectedSelectLeavesTheDatabaseUnknown(t *testing.T) {
	srv := redistest.Start(t, "--busy-reply-threshold", "50")
	srv.Do(t, "SET", "db0:marker", "db0")

	t.Run("argument Redis does not parse", func(t *testing.T) {
		p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: time.Second}
		defer p.Close()
		c := p.Get()
		_, err := c.Do("SELECT", 3)
		require.NoError(t, err)
		_, err = c.Do("SELECT", "00") // strconv.ParseInt says 0; Redis says ERR
		require.Error(t, err)
		c.Close()
		borrowerSeesOnlyItsOwn(t, p)
	})

	t.Run("BUSY while a script runs", func(t *testing.T) {
		p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: 2 * time.Second}
		defer p.Close()
		c := p.Get()
		_, err := c.Do("SELECT", 3)
		require.NoError(t, err)
		script, err := redis.Dial("tcp", srv.Addr())
		require.NoError(t, err)
		defer script.Close()
		// Busy for 500 ms; past busy-reply-threshold, other clients get BUSY.
		require.NoError(t, script.Send("EVAL", `local t = redis.call('TIME')
			while true do
				local n = redis.call('TIME')
				if (n[1]-t[1])*1000000 + (n[2]-t[2]) > 500000 then return 1 end
			end`, 0))
		require.NoError(t, script.Flush())
		time.Sleep(100 * time.Millisecond)
		_, err = c.Do("SELECT", 0)
		require.ErrorContains(t, err, "BUSY")
		c.Close()
		_, err = script.Receive()
		require.NoError(t, err)
		borrowerSeesOnlyItsOwn(t, p)
	})
}

// TestDBWinsOverDialDatabaseInDialOptions: the pool dials into DB whatever
// DialOptions say, so that it knows the database its connections start in
// and puts one a caller left in another back in DB.
func TestDBWinsOverDialDatabaseInDialOptions(t *testing.T) {
	srv := redistest.Start(t)
	p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, DB: 2, DialOptions: []redis.DialOption{redis.DialDatabase(3)}}
	defer p.Close()
	c := p.Get()
	assert.Equal(t, "2", clientInfo(t, c)["db"], "a new connection is in DB")
	_, err := c.Do("SELECT", 3)
	require.NoError(t, err)
	c.Close()
	c = p.Get()
	defer c.Close()
	assert.Equal(t, "2", clientInfo(t, c)["db"], "the next borrower is in DB")
	assert.EqualValues(t, 1, p.Stats().DialCount, "the connection left in database 3 was not reused")
}

// TestAConnLeftInAnotherDatabaseIsPutBackInDB: a borrower that SELECTs
// another database gives back a connection that Close selects DB on again
// and keeps, on every path a borrower may take; the next borrower works in
// DB and sees none of the other database's keys.
func TestAConnLeftInAnotherDatabaseIsPutBackInDB(t *testing.T) {
	srv := redistest.Start(t)
	for _, tt := range []struct {
		name    string
		adapter bool // through RedigoPool
		steps   []borrowStep
	}{
		{"Do", false, []borrowStep{pDo("SELECT", 3), pDo("SET", "db3:k", "v")}},
		{"DoContext", false, []borrowStep{func(t *testing.T, c redis.Conn) {
			_, err := redis.DoContext(c, context.Background(), "SELECT", 3)
			require.NoError(t, err)
		}, pDo("SET", "db3:k", "v")}},
		{"Send, no reply read", false, []borrowStep{pSend("SELECT", 3), pSend("SET", "db3:k", "v")}},
		{"Send and Flush, one reply read", false, []borrowStep{pSend("SELECT", 3), pSend("SET", "db3:k", "v"), pFlush, pRecv}},
		{"SELECT of DB queued in a MULTI left open", false, []borrowStep{pDo("SELECT", 3), pDo("SET", "db3:k", "v"), pDo("MULTI"), pDo("SELECT", 1)}},
		{"through RedigoPool", true, []borrowStep{pDo("SELECT", 3), pDo("SET", "db3:k", "v")}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv.Do(t, "FLUSHALL")
			p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, DB: 1, ReadTimeout: time.Second}
			defer p.Close()
			var c redis.Conn
			if tt.adapter {
				c = p.RedigoPool().Get()
			} else {
				c = p.Get()
			}
			for _, s := range tt.steps {
				s(t, c)
			}
			require.NoError(t, c.Close())

			c = p.Get()
			defer c.Close()
			assert.Equal(t, "1", clientInfo(t, c)["db"], "the next borrower is not in DB")
			v, err := c.Do("GET", "db3:k")
			require.NoError(t, err)
			assert.Nil(t, v, "the next borrower sees database 3")
			s := p.Stats()
			assert.EqualValues(t, 1, s.DialCount, "the connection was not reused")
			assert.Zero(t, s.Discards.Total(), "discarded: %+v", s.Discards)
		})
	}
	check, err := redis.Dial("tcp", srv.Addr(), redis.DialDatabase(3))
	require.NoError(t, err)
	defer check.Close()
	v, err := redis.String(check.Do("GET", "db3:k"))
	require.NoError(t, err, "the borrower's SET did not reach database 3")
	assert.Equal(t, "v", v)
}

// TestARefusedSelectBackToDBDiscardsTheConn: when the server refuses
// Close's SELECT <DB>, the connection, still in the other database, is
// discarded for its state and the next borrower gets a new one in DB.
func TestARefusedSelectBackToDBDiscardsTheConn(t *testing.T) {
	// The user may SELECT 3 and no other database.
	srv := redistest.Start(t, "--user", "app", "on", ">pw", "~*", "&*", "+@all", "-select", "+select|3")
	srv.Do(t, "SET", "db0:marker", "db0")
	p := &redispool.Pool{Addr: srv.Addr(), Username: "app", Password: "pw", MaxActive: 1, ReadTimeout: time.Second}
	defer p.Close()
	c := p.Get()
	_, err := c.Do("SELECT", 3)
	require.NoError(t, err)
	require.NoError(t, c.Close())
	s := p.Stats()
	assert.EqualValues(t, 1, s.Discards.State, "discards: %+v", s.Discards)
	assert.EqualValues(t, 1, s.Discards.Total(), "discards: %+v", s.Discards)
	borrowerSeesOnlyItsOwn(t, p)
}

// TestSendOfAnEmptyCommandCountsItsReply: Send("") writes an empty command,
// which the server answers with an error; that reply is pending like any
// other, not left for the next borrower.
func TestSendOfAnEmptyCommandCountsItsReply(t *testing.T) {
	srv := redistest.Start(t)
	p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: time.Second}
	defer p.Close()
	c := p.Get()
	require.NoError(t, c.Send(""))
	require.NoError(t, c.Flush())
	c.Close()

	c = p.Get()
	defer c.Close()
	require.NoError(t, c.Send("ECHO", "mine"))
	require.NoError(t, c.Flush())
	v, err := redis.String(c.Receive())
	require.NoError(t, err, "the next borrower read the previous borrower's reply")
	assert.Equal(t, "mine", v)
}

// TestUnsubscribeFromSeveralChannelsIsNotKept: UNSUBSCRIBE, PUNSUBSCRIBE
// and SUNSUBSCRIBE with n channels get n replies even on a connection that
// is not subscribed, where Do reads one.
func TestUnsubscribeFromSeveralChannelsIsNotKept(t *testing.T) {
	srv := redistest.Start(t)
	for _, cmd := range []string{"UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE"} {
		t.Run(cmd, func(t *testing.T) {
			p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: time.Second}
			defer p.Close()
			c := p.Get()
			_, err := c.Do(cmd, "a", "b")
			require.NoError(t, err)
			c.Close()
			nextBorrowerIsClean(t, p)
		})
	}
}

// TestScriptDebugIsNotInherited: SCRIPT DEBUG YES|SYNC turns on the Lua
// debugger for the connection's next EVAL.
func TestScriptDebugIsNotInherited(t *testing.T) {
	srv := redistest.Start(t)
	p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: time.Second}
	defer p.Close()
	c := p.Get()
	_, err := c.Do("SCRIPT", "DEBUG", "YES")
	require.NoError(t, err)
	c.Close()
	nextBorrowerIsClean(t, p)
}

// TestClientSetnameAndKillAreNotInherited: a name set with CLIENT SETNAME
// would pass to the next borrower, and CLIENT KILL of the connection itself
// would hand it a dead connection.
func TestClientSetnameAndKillAreNotInherited(t *testing.T) {
	srv := redistest.Start(t)
	t.Run("CLIENT SETNAME", func(t *testing.T) {
		p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: time.Second}
		defer p.Close()
		c := p.Get()
		_, err := c.Do("CLIENT", "SETNAME", "previous-borrower")
		require.NoError(t, err)
		c.Close()
		nextBorrowerIsClean(t, p)
	})
	t.Run("CLIENT KILL SKIPME no", func(t *testing.T) {
		p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: time.Second}
		defer p.Close()
		c := p.Get()
		id, err := redis.Int(c.Do("CLIENT", "ID"))
		require.NoError(t, err)
		_, err = c.Do("CLIENT", "KILL", "ID", id, "SKIPME", "no")
		require.NoError(t, err)
		c.Close()
		nextBorrowerIsClean(t, p) // QUIT, which does the same, is discarded
	})
}

// TestSubcommandsOfAnotherTypeAreClassified: a subcommand or option word
// that redigo writes through fmt (a named string type) or through
// redis.Argument reaches the server as the same word, so it must count the
// same: CLIENT SETNAME, CLIENT TRACKING ON, CLIENT NO-EVICT ON and SCRIPT
// DEBUG YES leave state for the next borrower, and XREAD BLOCK needs its own
// timeout added to ReadTimeout.
func TestSubcommandsOfAnotherTypeAreClassified(t *testing.T) {
	srv := redistest.Start(t)
	for _, tt := range []struct {
		name string
		cmd  string
		args []any
	}{
		{"CLIENT SETNAME, named string type", "CLIENT", []any{word("SETNAME"), "previous-borrower"}},
		{"CLIENT SETNAME, redis.Argument", "CLIENT", []any{wordArg("setname"), "previous-borrower"}},
		{"CLIENT TRACKING ON, named string type", "CLIENT", []any{word("TRACKING"), "ON"}},
		{"CLIENT NO-EVICT ON, redis.Argument", "CLIENT", []any{wordArg("NO-EVICT"), "ON"}},
		{"SCRIPT DEBUG YES, redis.Argument", "SCRIPT", []any{wordArg("DEBUG"), "YES"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: time.Second}
			defer p.Close()
			c := p.Get()
			_, err := c.Do(tt.cmd, tt.args...)
			require.NoError(t, err)
			c.Close()
			nextBorrowerIsClean(t, p)
		})
	}

	t.Run("XREAD BLOCK, redis.Argument", func(t *testing.T) {
		p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: 200 * time.Millisecond}
		defer p.Close()
		c := p.Get()
		r, err := c.Do("XREAD", wordArg("BLOCK"), 500, "STREAMS", "nb:s", "$")
		require.NoError(t, err, "XREAD BLOCK 500 failed under ReadTimeout 200ms")
		assert.Nil(t, r)
		c.Close()
		assert.Zero(t, p.Stats().Discards.Total(), "a healthy conn was discarded")
	})
}

// TestAskingIsUsedUpByTheNextCommandAndNeverInherited: in a cluster, ASKING
// lets the connection's next command run on a slot being imported. The
// next borrower must not inherit it: a connection whose borrower sent a
// command after ASKING, or left the MULTI that keeps it open for Close to
// discard, is kept; one whose last command was ASKING is not.
func TestAskingIsUsedUpByTheNextCommandAndNeverInherited(t *testing.T) {
	args := []string{"--cluster-require-full-coverage", "no", "--cluster-node-timeout", "1000"}
	a := redistest.StartClusterNode(t, args...)
	b := redistest.StartClusterNode(t, args...)
	key := "nb:asking"
	slot, ok := a.Do(t, "CLUSTER", "KEYSLOT", key).(int64)
	require.True(t, ok)
	bID, err := redis.String(b.Do(t, "CLUSTER", "MYID"), nil)
	require.NoError(t, err)
	require.Equal(t, "OK", a.Do(t, "CLUSTER", "MEET", "127.0.0.1", fmt.Sprint(b.Port())))
	require.Equal(t, "OK", b.Do(t, "CLUSTER", "ADDSLOTS", slot))
	// A answers MOVED once it knows B serves the slot and its cluster state
	// is ok (a new master waits 2 s for that; gossip is slower on a loaded
	// machine). Only then may A import the slot: a node importing a slot
	// ignores another's claim to it.
	require.Eventually(t, func() bool {
		e, _ := a.Do(t, "GET", key).(redis.Error)
		return strings.HasPrefix(string(e), "MOVED")
	}, 30*time.Second, 50*time.Millisecond)
	require.Equal(t, "OK", a.Do(t, "CLUSTER", "SETSLOT", slot, "IMPORTING", bID))

	for _, tt := range []struct {
		name  string
		steps []borrowStep
		kept  bool
	}{
		{"ASKING last", []borrowStep{pDo("ASKING")}, false},
		{"ASKING sent last", []borrowStep{pDo("ECHO", "x"), pSend("ASKING")}, false},
		{"ASKING then a command", []borrowStep{pDo("ASKING"), pDo("GET", key)}, true},
		{"ASKING then a command, pipelined and unread", []borrowStep{pSend("ASKING"), pSend("GET", key), pFlush}, true},
		{"ASKING then a MULTI left open", []borrowStep{pDo("ASKING"), pDo("MULTI"), pDo("GET", key)}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := &redispool.Pool{Addr: a.Addr(), MaxActive: 1, ReadTimeout: time.Second}
			defer p.Close()
			c := p.Get()
			_, err := c.Do("GET", key)
			require.ErrorContains(t, err, "MOVED", "without ASKING, A redirects")
			for _, s := range tt.steps {
				s(t, c)
			}
			require.NoError(t, c.Close())

			c = p.Get()
			defer c.Close()
			_, err = c.Do("GET", key)
			assert.ErrorContains(t, err, "MOVED", "the next borrower's command ran under the previous borrower's ASKING")
			s := p.Stats()
			if tt.kept {
				assert.EqualValues(t, 1, s.DialCount, "the connection was not reused: %+v", s.Discards)
			} else {
				assert.EqualValues(t, 1, s.Discards.State, "the connection was not discarded: %+v", s.Discards)
			}
		})
	}
}

// TestReadOnlyIsUndoneWithReadWriteOnClose: a connection a borrower left
// READONLY on a cluster node is made read-write again by Close and kept;
// one the borrower made read-write again itself is kept without a second
// READWRITE.
func TestReadOnlyIsUndoneWithReadWriteOnClose(t *testing.T) {
	srv := redistest.StartClusterNode(t)
	for _, tt := range []struct {
		name      string
		adapter   bool // through RedigoPool
		steps     []borrowStep
		readWrite int // READWRITE commands the server runs, the borrower's and Close's
	}{
		{"Do", false, []borrowStep{pDo("READONLY"), pDo("ECHO", "x")}, 1},
		{"Send, no reply read", false, []borrowStep{pSend("READONLY"), pSend("ECHO", "x")}, 1},
		{"queued in a MULTI left open", false, []borrowStep{pDo("MULTI"), pDo("READONLY")}, 1},
		{"through RedigoPool", true, []borrowStep{pDo("READONLY")}, 1},
		{"READONLY then READWRITE", false, []borrowStep{pDo("READONLY"), pDo("READWRITE")}, 1},
		{"READONLY then READWRITE, sent and unread", false, []borrowStep{pDo("READONLY"), pSend("READWRITE")}, 1},
		// Close's DISCARD drops the queued READWRITE; its own runs.
		{"READWRITE queued in MULTI", false, []borrowStep{pDo("READONLY"), pDo("MULTI"), pDo("READWRITE")}, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv.Do(t, "CONFIG", "RESETSTAT")
			p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: time.Second}
			defer p.Close()
			var c redis.Conn
			if tt.adapter {
				c = p.RedigoPool().Get()
			} else {
				c = p.Get()
			}
			for _, s := range tt.steps {
				s(t, c)
			}
			require.NoError(t, c.Close())

			c = p.Get()
			defer c.Close()
			assert.Equal(t, "N", clientInfo(t, c)["flags"], "the next borrower is READONLY")
			s := p.Stats()
			assert.EqualValues(t, 1, s.DialCount, "the connection was not reused: %+v", s.Discards)
			assert.Zero(t, s.Discards.Total(), "discarded: %+v", s.Discards)
			stats, err := redis.String(srv.Do(t, "INFO", "commandstats"), nil)
			require.NoError(t, err)
			assert.Contains(t, stats, fmt.Sprintf("cmdstat_readwrite:calls=%d,", tt.readWrite))
		})
	}
}

// TestBlockingCommandQueuedInMultiIsDrained: the same pipelined and left
// unread: Close reads the replies and keeps the connection.
func TestBlockingCommandQueuedInMultiIsDrained(t *testing.T) {
	srv := redistest.Start(t)
	srv.Do(t, "SET", "db0:marker", "db0")
	p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: time.Second}
	defer p.Close()
	c := p.Get()
	require.NoError(t, c.Send("MULTI"))
	require.NoError(t, c.Send("BLPOP", "nb:none", 0))
	require.NoError(t, c.Send("EXEC"))
	require.NoError(t, c.Flush())
	c.Close()
	borrowerSeesOnlyItsOwn(t, p)
	s := p.Stats()
	assert.Zero(t, s.Discards.Total(), "a conn whose pending replies were all readable was discarded: %+v", s.Discards)
}

// ---------------------------------------------------------------------------
// MULTI and WATCH: undone only when the server says so.

// TestUnwatchWithArgumentsUndoesNothing: "UNWATCH k" is rejected (UNWATCH
// takes no argument) and the keys stay watched, so the pool must still undo
// the WATCH: the next borrower's transaction is not aborted by it.
func TestUnwatchWithArgumentsUndoesNothing(t *testing.T) {
	srv := redistest.Start(t)
	p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: time.Second}
	defer p.Close()
	c := p.Get()
	_, err := c.Do("WATCH", "nb:w")
	require.NoError(t, err)
	_, err = c.Do("UNWATCH", "nb:w")
	require.ErrorContains(t, err, "wrong number of arguments")
	c.Close()
	nextTransactionRuns(t, srv, p, "nb:w")
}

// TestDiscardWithArgumentsEndsNoTransaction: "DISCARD x" is rejected and the
// MULTI stays open, so the pool must still end it: the next borrower's
// commands are not queued in it.
func TestDiscardWithArgumentsEndsNoTransaction(t *testing.T) {
	srv := redistest.Start(t)
	p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: time.Second}
	defer p.Close()
	c := p.Get()
	_, err := c.Do("MULTI")
	require.NoError(t, err)
	_, err = c.Do("DISCARD", "now")
	require.ErrorContains(t, err, "wrong number of arguments")
	c.Close()

	c = p.Get()
	defer c.Close()
	v, err := redis.String(c.Do("ECHO", "mine"))
	require.NoError(t, err)
	assert.Equal(t, "mine", v, "the next borrower's command was queued in the previous borrower's MULTI")
}

// TestARejectedMultiDoesNotHideAWatch: "MULTI x" is rejected (MULTI takes no
// argument), so the WATCH sent after it runs, and the EXEC after that fails
// with "EXEC without MULTI", which unwatches nothing. The pool must not take
// that EXEC for the end of a transaction that undid the WATCH: the next
// borrower's transaction would be aborted by a key it never watched.
func TestARejectedMultiDoesNotHideAWatch(t *testing.T) {
	srv := redistest.Start(t)
	p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: time.Second}
	defer p.Close()
	c := p.Get()
	_, err := c.Do("MULTI", "now")
	require.ErrorContains(t, err, "wrong number of arguments")
	_, err = c.Do("WATCH", "nb:w")
	require.NoError(t, err)
	_, err = c.Do("EXEC")
	require.ErrorContains(t, err, "EXEC without MULTI")
	c.Close()
	nextTransactionRuns(t, srv, p, "nb:w")
}

// TestAnUndoTheServerRefusesIsNotTakenForDone: Close undoes an open MULTI
// with DISCARD and a WATCH with UNWATCH. A server can refuse them, here an
// ACL that lists the commands the application uses and not these two (both
// refusals leave the transaction open and the keys watched). The reply to
// the pool's own DISCARD or UNWATCH must say it ran before the conn is kept.
func TestAnUndoTheServerRefusesIsNotTakenForDone(t *testing.T) {
	srv := redistest.Start(t)
	srv.Do(t, "ACL", "SETUSER", "app", "on", ">pw", "~*", "&*", "+@all", "-discard", "-unwatch")
	srv.Do(t, "SET", "db0:marker", "db0")
	newPool := func() *redispool.Pool {
		return &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: time.Second, Username: "app", Password: "pw"}
	}

	t.Run("open MULTI", func(t *testing.T) {
		p := newPool()
		defer p.Close()
		c := p.Get()
		_, err := c.Do("MULTI")
		require.NoError(t, err)
		_, err = c.Do("SET", "nb:never", "1")
		require.NoError(t, err)
		c.Close()
		borrowerSeesOnlyItsOwn(t, p) // inside the MULTI, ECHO answers QUEUED
	})

	t.Run("WATCH", func(t *testing.T) {
		p := newPool()
		defer p.Close()
		c := p.Get()
		_, err := c.Do("WATCH", "nb:w2")
		require.NoError(t, err)
		c.Close()
		nextTransactionRuns(t, srv, p, "nb:w2")
	})

	t.Run("the borrower's own DISCARD, refused", func(t *testing.T) {
		p := newPool()
		defer p.Close()
		c := p.Get()
		_, err := c.Do("MULTI")
		require.NoError(t, err)
		_, err = c.Do("DISCARD")
		require.ErrorContains(t, err, "NOPERM")
		c.Close()
		borrowerSeesOnlyItsOwn(t, p)
	})
}

// TestAnUndoSentWithSendCountsOnlyOnceItsReplySaysItRan: an EXEC, DISCARD
// or UNWATCH pipelined with Send undoes MULTI or WATCH only if the server
// runs it, which an ACL without it refuses. However its reply is read (by
// Do(""), by Receive, by a Do of another command, or by Close), a refusal
// must keep the transaction and the watched keys from the next borrower.
func TestAnUndoSentWithSendCountsOnlyOnceItsReplySaysItRan(t *testing.T) {
	srv := redistest.Start(t)
	srv.Do(t, "ACL", "SETUSER", "app", "on", ">pw", "~*", "&*", "+@all", "-discard", "-unwatch")
	srv.Do(t, "ACL", "SETUSER", "noexec", "on", ">pw", "~*", "&*", "+@all", "-exec")
	srv.Do(t, "SET", "db0:marker", "db0")
	multi := []borrowStep{pSend("MULTI"), pSend("SET", "nb:never", "1")}
	watch := []borrowStep{pSend("WATCH", "nb:w3")}
	// Each way reads the n replies pending.
	ways := []struct {
		name string
		read func(n int) []borrowStep
	}{
		{"Do(\"\")", func(int) []borrowStep { return []borrowStep{pDo("")} }},
		{"Flush and Receive", func(n int) []borrowStep {
			steps := []borrowStep{pFlush}
			for range n {
				steps = append(steps, pRecv)
			}
			return steps
		}},
		{"Do of another command", func(int) []borrowStep { return []borrowStep{pDo("ECHO", "after")} }},
		{"left for Close", func(int) []borrowStep { return nil }},
	}
	for _, w := range ways {
		t.Run("DISCARD refused, "+w.name, func(t *testing.T) {
			p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: time.Second, Username: "app", Password: "pw"}
			defer p.Close()
			borrow(t, p, multi, []borrowStep{pSend("DISCARD")}, w.read(3))
			borrowerSeesOnlyItsOwn(t, p) // inside the MULTI, ECHO answers QUEUED
			assert.EqualValues(t, 1, p.Stats().Discards.State)
		})
		t.Run("UNWATCH refused, "+w.name, func(t *testing.T) {
			p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: time.Second, Username: "app", Password: "pw"}
			defer p.Close()
			borrow(t, p, watch, []borrowStep{pSend("UNWATCH")}, w.read(2))
			nextTransactionRuns(t, srv, p, "nb:w3")
			assert.EqualValues(t, 1, p.Stats().Discards.State)
		})
		t.Run("DISCARD run, "+w.name, func(t *testing.T) {
			p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: time.Second}
			defer p.Close()
			borrow(t, p, multi, []borrowStep{pSend("DISCARD")}, w.read(3))
			borrowerSeesOnlyItsOwn(t, p)
			assert.Zero(t, p.Stats().Discards.Total(), "a conn whose DISCARD ran was not kept")
		})
		// EXECABORT ends the transaction: EXEC answers it after a command
		// refused as it was queued (INCR without a key), and when it is
		// refused itself, here by the ACL.
		for _, user := range []string{"default", "noexec"} {
			t.Run("EXECABORT, user "+user+", "+w.name, func(t *testing.T) {
				p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: time.Second}
				if user != "default" {
					p.Username, p.Password = user, "pw"
				}
				defer p.Close()
				borrow(t, p, []borrowStep{pSend("MULTI"), pSend("INCR")}, []borrowStep{pSend("EXEC")}, w.read(3))
				borrowerSeesOnlyItsOwn(t, p)
				if w.name != "Do of another command" { // which returns only the first error reply: the pool cannot tell whose
					assert.Zero(t, p.Stats().Discards.Total(), "a conn whose EXEC ended the transaction was not kept")
				}
			})
		}
	}

	t.Run("MULTI by Do, DISCARD refused by Send, Do(\"\")", func(t *testing.T) {
		p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: time.Second, Username: "app", Password: "pw"}
		defer p.Close()
		borrow(t, p, []borrowStep{pDo("MULTI")}, []borrowStep{pSend("DISCARD")}, []borrowStep{pDo("")})
		borrowerSeesOnlyItsOwn(t, p)
	})
	t.Run("two transactions pipelined, the second's DISCARD refused and left for Close", func(t *testing.T) {
		p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: time.Second, Username: "app", Password: "pw"}
		defer p.Close()
		borrow(t, p, []borrowStep{pSend("MULTI"), pSend("INCR", "nb:n"), pSend("EXEC")}, multi,
			[]borrowStep{pSend("DISCARD"), pFlush, pRecv, pRecv, pRecv, pRecv, pRecv})
		borrowerSeesOnlyItsOwn(t, p)
	})
}

// TestRedigoPoolConnsUndoOnlyWhatTheServerUndid: redigo's pooled conn, from
// RedigoPool, ends an open MULTI or WATCH on Close with a DISCARD or UNWATCH
// sent with Send and read by Do(""). When the server refuses it, the next
// borrower, through the adapter or p, must not inherit the transaction or
// the watched keys; when it runs, the conn is kept.
func TestRedigoPoolConnsUndoOnlyWhatTheServerUndid(t *testing.T) {
	srv := redistest.Start(t)
	srv.Do(t, "ACL", "SETUSER", "app", "on", ">pw", "~*", "&*", "+@all", "-discard", "-unwatch")
	srv.Do(t, "SET", "db0:marker", "db0")
	newPool := func(user string) *redispool.Pool {
		p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: time.Second}
		if user != "" {
			p.Username, p.Password = user, "pw"
		}
		return p
	}
	openMulti := func(t *testing.T, c redis.Conn) {
		_, err := c.Do("MULTI")
		require.NoError(t, err)
		r, err := c.Do("SET", "nb:never", "1")
		require.NoError(t, err)
		require.Equal(t, "QUEUED", r)
	}

	t.Run("open MULTI, DISCARD refused", func(t *testing.T) {
		p := newPool("app")
		defer p.Close()
		c := p.RedigoPool().Get()
		openMulti(t, c)
		c.Close()
		c = p.RedigoPool().Get()
		v, err := redis.String(c.Do("ECHO", "mine"))
		c.Close()
		require.NoError(t, err)
		require.Equal(t, "mine", v, "the next borrower's command was queued in an earlier MULTI")
		borrowerSeesOnlyItsOwn(t, p)
	})

	t.Run("WATCH, UNWATCH refused", func(t *testing.T) {
		p := newPool("app")
		defer p.Close()
		c := p.RedigoPool().Get()
		_, err := c.Do("WATCH", "nb:w4")
		require.NoError(t, err)
		c.Close()
		srv.Do(t, "SET", "nb:w4", time.Now().String())
		c = p.RedigoPool().Get()
		defer c.Close()
		require.NoError(t, c.Send("MULTI"))
		require.NoError(t, c.Send("INCR", "nb:n"))
		r, err := c.Do("EXEC")
		require.NoError(t, err)
		assert.NotNil(t, r, "the next borrower's EXEC was aborted by a WATCH it never made")
	})

	t.Run("open MULTI, DISCARD run", func(t *testing.T) {
		p := newPool("")
		defer p.Close()
		c := p.RedigoPool().Get()
		openMulti(t, c)
		c.Close()
		borrowerSeesOnlyItsOwn(t, p)
		s := p.Stats()
		assert.EqualValues(t, 1, s.DialCount, "a conn whose DISCARD ran was not kept: %+v", s.Discards)
	})
}

// ---------------------------------------------------------------------------
// Conns the server closed.

// TestAConnRefusedAtMaxClientsIsNotKept: a server at maxclients accepts the
// connection, answers its first command with an error reply and closes it.
// A Dial of the user's sends nothing, so the borrower's command gets that
// reply. It is a redis.Error, but the connection is dead and must not reach
// the next borrower (the peek on borrow would not see it: the pool did not
// dial the socket).
func TestAConnRefusedAtMaxClientsIsNotKept(t *testing.T) {
	srv := redistest.Start(t, "--maxclients", "2")
	var others []redis.Conn
	for range 2 {
		other, err := redis.Dial("tcp", srv.Addr())
		require.NoError(t, err)
		_, err = other.Do("PING")
		require.NoError(t, err)
		others = append(others, other)
	}
	p := &redispool.Pool{MaxActive: 1, Dial: func() (redis.Conn, error) {
		return redis.Dial("tcp", srv.Addr(), redis.DialReadTimeout(time.Second))
	}}
	defer p.Close()
	c := p.Get()
	_, err := c.Do("PING")
	require.ErrorContains(t, err, "max number of clients")
	c.Close()
	for _, other := range others {
		other.Close()
	}
	// Until the server has seen them go, a probe may be refused too; once
	// it runs alone, one slot is left for the next borrower whether or not
	// the probe's own close has been seen.
	require.Eventually(t, func() bool {
		probe, err := redis.Dial("tcp", srv.Addr())
		if err != nil {
			return false
		}
		defer probe.Close()
		info, err := redis.String(probe.Do("INFO", "clients"))
		return err == nil && strings.Contains(info, "connected_clients:1\r\n")
	}, 5*time.Second, 10*time.Millisecond)
	// The refusal counts as a failed dial: the pool backs off briefly.
	assert.EqualValues(t, 1, p.Stats().DialErrorCount, "the refused conn counts as a failed dial")
	require.Eventually(t, func() bool {
		c, err := p.GetContext(context.Background())
		if err == nil {
			c.Close()
		}
		return err == nil
	}, 5*time.Second, 10*time.Millisecond)
	nextBorrowerIsClean(t, p)
}

// TestProtocolErrorBreaksTheConn: after "ERR Protocol error" (here an
// argument longer than proto-max-bulk-len) the server closes the
// connection, so the pool must not hand it on.
func TestProtocolErrorBreaksTheConn(t *testing.T) {
	srv := redistest.Start(t, "--proto-max-bulk-len", "1mb")
	// With a Dial of its own the pool has no socket to peek at on borrow
	// (with Addr, only a conn handed out 100 ms or more before is peeked at).
	p := &redispool.Pool{
		Dial:        func() (redis.Conn, error) { return redis.Dial("tcp", srv.Addr()) },
		MaxActive:   1,
		ReadTimeout: time.Second,
	}
	defer p.Close()
	c := p.Get()
	_, err := c.Do("PING")
	require.NoError(t, err)
	// Frozen, the server reads nothing until the whole command is in the
	// socket buffers; it then answers the error and closes the connection.
	srv.Stop(t)
	done := make(chan error, 1)
	go func() {
		_, err := c.Do("SET", "nb:big", strings.Repeat("x", 1<<20+1))
		done <- err
	}()
	time.Sleep(300 * time.Millisecond)
	srv.Cont(t)
	err = <-done
	require.ErrorContains(t, err, "Protocol error")
	c.Close()
	require.Eventually(t, func() bool { return srv.ConnectedClients(t) == 0 }, 2*time.Second, 5*time.Millisecond)

	c = p.Get()
	defer c.Close()
	_, err = c.Do("PING")
	assert.NoError(t, err, "the next borrower got the conn the server closed")
}

func TestQuitDoesNotLeaveADeadConnForTheNextBorrower(t *testing.T) {
	srv := redistest.Start(t)
	p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1}
	defer p.Close()
	c := p.Get()
	c.Do("QUIT")
	c.Close()
	c = p.Get()
	defer c.Close()
	_, err := c.Do("PING")
	assert.NoError(t, err)
}

func TestAGetToAStoppedServerFailsWithinReadTimeoutAndTheNextBorrowerGetsAWorkingConn(t *testing.T) {
	srv := redistest.Start(t)
	const readTimeout = 200 * time.Millisecond
	p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 2, ReadTimeout: readTimeout}
	defer p.Close()
	c := p.Get()
	_, err := c.Do("SET", "a", "value-a")
	require.NoError(t, err)
	c.Close()

	srv.Stop(t)
	c = p.Get()
	start := time.Now()
	_, err = c.Do("GET", "a")
	elapsed := time.Since(start)
	require.Error(t, err)
	assert.ErrorIs(t, err, os.ErrDeadlineExceeded)
	assert.Less(t, elapsed, readTimeout+300*time.Millisecond)
	c.Close()
	srv.Cont(t)

	// The late reply to GET a is on the discarded conn, not on the next one.
	for range 20 {
		c = p.Get()
		v, err := redis.String(c.Do("ECHO", "b"))
		c.Close()
		require.NoError(t, err)
		require.Equal(t, "b", v)
	}
	assert.EqualValues(t, 1, p.Stats().Discards.Broken)
}

// ---------------------------------------------------------------------------
// Retired conns: READONLY and Retire.

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

func TestAReplicaReplyRetiresTheConnsToTheOldMaster(t *testing.T) {
	primary := redistest.Start(t)
	srv := redistest.Start(t)
	p := &redispool.Pool{Addr: srv.Addr()}
	defer p.Close()
	closeAll(getN(t, p, 3))
	srv.Do(t, "REPLICAOF", "127.0.0.1", fmt.Sprint(primary.Port()))
	c := p.Get()
	_, err := c.Do("SET", "k", "v")
	var rerr redis.Error
	require.ErrorAs(t, err, &rerr)
	assert.Contains(t, err.Error(), "READONLY")
	c.Close()
	assert.Equal(t, 0, p.IdleCount())
	assert.Equal(t, 0, p.ActiveCount())
}

// TestExecAbortedByReadOnlyRetires: on a server that became a replica, EXEC
// answers "EXECABORT Transaction discarded because of: READONLY ...", which
// retires the pool's connections as a READONLY reply does.
func TestExecAbortedByReadOnlyRetires(t *testing.T) {
	srv := redistest.Start(t)
	// A master that is never reachable: the server stays a read-only replica.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 3, ReadTimeout: time.Second}
	defer p.Close()
	closeAll(getN(t, p, 2)) // two idle conns to the old master
	c := p.Get()
	_, err = c.Do("MULTI")
	require.NoError(t, err)
	_, err = c.Do("SET", "nb:k", "v")
	require.NoError(t, err)
	srv.Do(t, "REPLICAOF", "127.0.0.1", fmt.Sprint(port))
	defer srv.Do(t, "REPLICAOF", "NO", "ONE")
	_, err = c.Do("EXEC")
	require.ErrorContains(t, err, "READONLY")
	t.Logf("EXEC: %v", err)
	c.Close()
	assert.Equal(t, 0, p.IdleCount(), "conns to the server that became a replica are kept")
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

// TestAConnRetiredWhileInUseWritesNothingMoreOnClose: a conn in use when the
// pool retires its connections reaches a server the pool no longer trusts to
// keep writes (after a failover the old master takes them and loses them).
// Its Close writes nothing more, whatever it would otherwise have done first
// (read the pending replies, undo a WATCH, or write what was sent before
// discarding the conn for its state): a command sent with Send never reaches
// the server, and Close returns ErrConnRetired to say so.
func TestAConnRetiredWhileInUseWritesNothingMoreOnClose(t *testing.T) {
	srv := redistest.Start(t)
	for _, tt := range []struct {
		name   string
		before []borrowStep
		reason func(redispool.DiscardStats) int64
	}{
		{"replies pending", nil, func(d redispool.DiscardStats) int64 { return d.Retired }},
		{"a WATCH to undo", []borrowStep{pDo("WATCH", "nb:rw")}, func(d redispool.DiscardStats) int64 { return d.Retired }},
		{"state the conn is discarded for", []borrowStep{pDo("CLIENT", "SETNAME", "retired")}, func(d redispool.DiscardStats) int64 { return d.State }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: time.Second}
			defer p.Close()
			key := "nb:retired:" + tt.name
			c := p.Get()
			for _, s := range tt.before {
				s(t, c)
			}
			require.NoError(t, c.Send("SET", key, "written"))
			p.Retire()
			assert.Equal(t, redispool.ErrConnRetired, c.Close())
			assert.Nil(t, srv.Do(t, "GET", key), "a retired conn wrote to its server on Close")
			assert.EqualValues(t, 1, tt.reason(p.Stats().Discards))
		})
	}
}

// ---------------------------------------------------------------------------
// Concurrent use, and redigo's own uses of a conn.

// TestAConnUsedByTwoGoroutinesAtOnceNeverReachesTheNextBorrower: redigo
// allows one goroutine to write (Send, Flush) while one reads (Receive), and
// no other concurrent use. A borrower whose two goroutines Send and Do("")
// on one conn at once breaks that rule; the conn must not be kept, so the
// next borrower of the same pool reads its own replies only.
func TestAConnUsedByTwoGoroutinesAtOnceNeverReachesTheNextBorrower(t *testing.T) {
	srv := redistest.Start(t)
	srv.Do(t, "SET", "nb:mine", "mine")
	p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: 200 * time.Millisecond}
	defer p.Close()
	const rounds = 5000
	deadline := time.Now().Add(time.Minute)
	var n, stale, failed, overlaps int
	for ; n < rounds && time.Now().Before(deadline); n++ {
		c := p.Get()
		var wg sync.WaitGroup
		var caught atomic.Bool
		for g := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				key := fmt.Sprint("nb:g", g)
				c.Send("SET", key, n)
				c.Send("GET", key)
				if _, err := c.Do(""); errors.Is(err, redispool.ErrConcurrentUse) {
					caught.Store(true)
				}
			}()
		}
		wg.Wait()
		if caught.Load() {
			overlaps++
		}
		c.Close()
		next := p.Get()
		v, err := redis.String(next.Do("GET", "nb:mine"))
		next.Close()
		switch {
		case err != nil:
			failed++
		case v != "mine":
			stale++
		}
	}
	t.Logf("%d rounds: the next borrower read %d stale replies and failed %d times; %d rounds saw ErrConcurrentUse from Do; discards %+v",
		n, stale, failed, overlaps, p.Stats().Discards)
	assert.Equal(t, rounds, n, "the rounds did not finish in time")
	assert.Zero(t, stale, "the next borrower read a reply that was not its own")
	assert.Zero(t, failed, "the next borrower's GET failed")
}

// TestPubSubConnReceivesWhileAnotherGoroutineSubscribesAndPings: redigo lets
// one goroutine Receive while another writes, which is how PubSubConn is
// used: a goroutine waits in Receive while the program subscribes, pings and
// unsubscribes.
func TestPubSubConnReceivesWhileAnotherGoroutineSubscribesAndPings(t *testing.T) {
	srv := redistest.Start(t)
	pool := &redispool.Pool{Addr: srv.Addr(), MaxActive: 2, ReadTimeout: time.Second}
	defer pool.Close()
	c := pool.Get()
	defer c.Close()
	psc := redis.PubSubConn{Conn: c}
	require.NoError(t, psc.Subscribe("first"))
	got := make(chan any, 16)
	go func() {
		defer close(got)
		for {
			m := psc.Receive()
			got <- m
			switch m := m.(type) {
			case error:
				return
			case redis.Subscription:
				if m.Count == 0 {
					return
				}
			}
		}
	}()
	next := func() any {
		select {
		case m := <-got:
			return m
		case <-time.After(5 * time.Second):
			t.Fatal("no message within 5s")
			return nil
		}
	}
	require.Equal(t, redis.Subscription{Kind: "subscribe", Channel: "first", Count: 1}, next())
	// The other goroutine waits in Receive, without a deadline, as this one writes.
	require.NoError(t, psc.Subscribe("second"))
	require.Equal(t, redis.Subscription{Kind: "subscribe", Channel: "second", Count: 2}, next())
	pub := pool.Get()
	_, err := pub.Do("PUBLISH", "second", "hello")
	pub.Close()
	require.NoError(t, err)
	require.Equal(t, redis.Message{Channel: "second", Data: []byte("hello")}, next())
	require.NoError(t, psc.Ping("p"))
	require.Equal(t, redis.Pong{Data: "p"}, next())
	require.NoError(t, psc.Unsubscribe("first"))
	require.Equal(t, redis.Subscription{Kind: "unsubscribe", Channel: "first", Count: 1}, next())
	require.NoError(t, psc.Unsubscribe("second"))
	require.Equal(t, redis.Subscription{Kind: "unsubscribe", Channel: "second", Count: 0}, next())
	require.NoError(t, c.Err())
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

// TestRedigoDocumentedUsageWorksWithOnlyTheTypeNameChanged is redigo's own
// documented Pool usage (its package doc and examples) with redis.Pool
// replaced by redispool.Pool.
func TestRedigoDocumentedUsageWorksWithOnlyTheTypeNameChanged(t *testing.T) {
	srv := redistest.Start(t)
	server := srv.Addr()
	newPool := func(addr string) *redispool.Pool {
		return &redispool.Pool{
			MaxIdle:     3,
			IdleTimeout: 240 * time.Second,
			// Dial or DialContext must be set. When both are set, DialContext takes precedence over Dial.
			Dial: func() (redis.Conn, error) { return redis.Dial("tcp", addr) },
			TestOnBorrow: func(c redis.Conn, t time.Time) error {
				if time.Since(t) < time.Minute {
					return nil
				}
				_, err := c.Do("PING")
				return err
			},
		}
	}
	pool := newPool(server)
	defer pool.Close()

	t.Run("Do and reply helpers", func(t *testing.T) {
		conn := pool.Get()
		defer conn.Close()
		_, err := conn.Do("SET", "hello", "world")
		require.NoError(t, err)
		s, err := redis.String(conn.Do("GET", "hello"))
		require.NoError(t, err)
		assert.Equal(t, "world", s)
		_, err = conn.Do("HSET", "album:1", "title", "Red", "rating", 5)
		require.NoError(t, err)
		var album struct {
			Title  string `redis:"title"`
			Rating int    `redis:"rating"`
		}
		v, err := redis.Values(conn.Do("HGETALL", "album:1"))
		require.NoError(t, err)
		require.NoError(t, redis.ScanStruct(v, &album))
		assert.Equal(t, 5, album.Rating)
	})

	t.Run("pipelining", func(t *testing.T) {
		c := pool.Get()
		defer c.Close()
		c.Send("SET", "foo", "bar")
		c.Send("GET", "foo")
		c.Flush()
		_, err := c.Receive()
		require.NoError(t, err)
		v, err := redis.String(c.Receive())
		require.NoError(t, err)
		assert.Equal(t, "bar", v)
	})

	t.Run("transaction", func(t *testing.T) {
		c := pool.Get()
		defer c.Close()
		c.Send("MULTI")
		c.Send("INCR", "foo:n")
		c.Send("INCR", "bar:n")
		r, err := redis.Ints(c.Do("EXEC"))
		require.NoError(t, err)
		assert.Equal(t, []int{1, 1}, r)
	})

	t.Run("DoContext and DoWithTimeout", func(t *testing.T) {
		c := pool.Get()
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		v, err := redis.String(redis.DoContext(c, ctx, "ECHO", "ctx"))
		require.NoError(t, err)
		assert.Equal(t, "ctx", v)
		v, err = redis.String(redis.DoWithTimeout(c, time.Second, "ECHO", "timeout"))
		require.NoError(t, err)
		assert.Equal(t, "timeout", v)
		r, err := redis.ReceiveWithTimeout(c, time.Second)
		assert.Nil(t, r)
		assert.Error(t, err, "nothing to receive: times out")
	})

	t.Run("Script with NOSCRIPT fallback", func(t *testing.T) {
		c := pool.Get()
		defer c.Close()
		_, err := c.Do("SCRIPT", "FLUSH")
		require.NoError(t, err)
		script := redis.NewScript(1, `return redis.call("INCRBY", KEYS[1], ARGV[1])`)
		n, err := redis.Int(script.Do(c, "script:n", 2)) // EVALSHA fails with NOSCRIPT, EVAL follows
		require.NoError(t, err)
		assert.Equal(t, 2, n)
		n, err = redis.Int(script.Do(c, "script:n", 3)) // now loaded
		require.NoError(t, err)
		assert.Equal(t, 5, n)
		ctx := context.Background()
		_, err = c.Do("SCRIPT", "FLUSH")
		require.NoError(t, err)
		n, err = redis.Int(script.DoContext(ctx, c, "script:n", 1)) // asserts err.(redis.Error)
		require.NoError(t, err)
		assert.Equal(t, 6, n)
	})

	t.Run("PubSubConn over a pooled conn", func(t *testing.T) {
		c := pool.Get()
		defer c.Close()
		psc := redis.PubSubConn{Conn: c}
		require.NoError(t, psc.Subscribe("news"))
		sub, ok := psc.Receive().(redis.Subscription)
		require.True(t, ok)
		assert.Equal(t, "subscribe", sub.Kind)

		go func() {
			pc := pool.Get()
			defer pc.Close()
			pc.Do("PUBLISH", "news", "hello")
		}()
		// Receive waits for the message without a read deadline.
		msg, ok := psc.Receive().(redis.Message)
		require.True(t, ok)
		assert.Equal(t, "hello", string(msg.Data))
		require.NoError(t, psc.Unsubscribe())
		sub, ok = psc.Receive().(redis.Subscription)
		require.True(t, ok)
		assert.Equal(t, 0, sub.Count)
	})

}

// ---------------------------------------------------------------------------
// A user's conn that implements redis.ConnWithContext.

// traceKey is the key of the value a caller's context carries to a
// tracingConn.
type traceKey struct{}

// ctxSeen is what a tracingConn's context method saw of its context.
type ctxSeen struct {
	value       any // the traceKey value
	hasDeadline bool
}

// tracingConn wraps a redigo conn as tracing and metrics wrappers do: its
// context methods record what the context carries, then call the conn's.
// timeouts makes it implement redis.ConnWithTimeout as well.
type tracingConn struct {
	redis.Conn
	mu   sync.Mutex
	seen []ctxSeen
}

func (c *tracingConn) record(ctx context.Context) {
	_, ok := ctx.Deadline()
	c.mu.Lock()
	c.seen = append(c.seen, ctxSeen{ctx.Value(traceKey{}), ok})
	c.mu.Unlock()
}

func (c *tracingConn) Seen() []ctxSeen {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]ctxSeen(nil), c.seen...)
}

func (c *tracingConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	c.record(ctx)
	return redis.DoContext(c.Conn, ctx, cmd, args...)
}

func (c *tracingConn) ReceiveContext(ctx context.Context) (any, error) {
	c.record(ctx)
	return redis.ReceiveContext(c.Conn, ctx)
}

// tracingConnWithTimeout is a tracingConn that implements
// redis.ConnWithTimeout too.
type tracingConnWithTimeout struct{ *tracingConn }

func (c tracingConnWithTimeout) DoWithTimeout(d time.Duration, cmd string, args ...any) (any, error) {
	return redis.DoWithTimeout(c.Conn, d, cmd, args...)
}

func (c tracingConnWithTimeout) ReceiveWithTimeout(d time.Duration) (any, error) {
	return redis.ReceiveWithTimeout(c.Conn, d)
}

// tracingPool is a pool of one connection from a Dial of the user's that
// returns a tracingConn, with redis.ConnWithTimeout when timeouts is set.
func tracingPool(t *testing.T, srv *redistest.Server, timeouts bool) (*redispool.Pool, func() *tracingConn) {
	t.Helper()
	var last atomic.Pointer[tracingConn]
	p := &redispool.Pool{MaxActive: 1, ReadTimeout: 300 * time.Millisecond, Dial: func() (redis.Conn, error) {
		c, err := redis.Dial("tcp", srv.Addr())
		if err != nil {
			return nil, err
		}
		tc := &tracingConn{Conn: c}
		last.Store(tc)
		if timeouts {
			return tracingConnWithTimeout{tc}, nil
		}
		return tc, nil
	}}
	t.Cleanup(func() { p.Close() })
	return p, last.Load
}

// TestAUserConnWithContextGetsTheCallersContext: a conn from a Dial of the
// user's that implements redis.ConnWithContext is called through DoContext
// and ReceiveContext with the context the caller gave, so that a tracing
// wrapper sees what it carries; a call that ends with the caller's context
// still discards the connection.
func TestAUserConnWithContextGetsTheCallersContext(t *testing.T) {
	srv := redistest.Start(t)
	for _, timeouts := range []bool{true, false} {
		t.Run(fmt.Sprintf("ConnWithTimeout=%v", timeouts), func(t *testing.T) {
			p, conn := tracingPool(t, srv, timeouts)
			ctx := context.WithValue(context.Background(), traceKey{}, "span-1")
			c, err := p.GetContext(ctx)
			require.NoError(t, err)
			v, err := redis.String(redis.DoContext(c, ctx, "ECHO", "a"))
			require.NoError(t, err)
			assert.Equal(t, "a", v)
			require.NoError(t, c.Send("ECHO", "b"))
			require.NoError(t, c.Flush())
			v, err = redis.String(redis.ReceiveContext(c, ctx))
			require.NoError(t, err)
			assert.Equal(t, "b", v)
			require.NoError(t, c.Close())
			seen := conn().Seen()
			require.Len(t, seen, 2, "DoContext and ReceiveContext of the user's conn")
			for _, s := range seen {
				assert.Equal(t, "span-1", s.value, "the user's conn did not get the caller's context")
				assert.True(t, s.hasDeadline, "the pool's ReadTimeout does not bound the call")
			}

			c = p.Get()
			short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
			defer cancel()
			_, err = redis.DoContext(c, short, "BLPOP", "tracing:none", 2)
			assert.Equal(t, context.DeadlineExceeded, err)
			require.NoError(t, c.Close())
			s := p.Stats()
			assert.EqualValues(t, 1, s.Discards.Broken, "the conn whose call the context ended was not discarded: %+v", s.Discards)
			assert.Equal(t, "span-1", conn().Seen()[0].value)
		})
	}
}

// strictCtxConn is a user's conn whose DoContext fails with its context's
// error whenever the context has ended by the time the reply is read, as
// redigo's may: reply returns the reply.
type strictCtxConn struct {
	redis.Conn
	reply func() any
}

func (c *strictCtxConn) DoContext(ctx context.Context, _ string, _ ...any) (any, error) {
	r := c.reply()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return r, nil
}

func (c *strictCtxConn) ReceiveContext(ctx context.Context) (any, error) {
	return c.DoContext(ctx, "")
}

// TestAUserConnWithContextKeepsAReplyReadAsCtxEnds: as on the pool's own
// conns, a reply read in full as the caller's ctx ends belongs to the
// caller (for BLPOP, the element has left the list), whatever the user's
// conn does with a context that ended; the conn is not used again.
func TestAUserConnWithContextKeepsAReplyReadAsCtxEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	d := &fakeDialer{}
	p := &redispool.Pool{MaxActive: 1, ReadTimeout: time.Second, Dial: func() (redis.Conn, error) {
		c, err := d.Dial()
		return &strictCtxConn{Conn: c, reply: func() any { cancel(); return "element" }}, err
	}}
	defer p.Close()
	c := p.Get()
	reply, err := redis.DoContext(c, ctx, "BLPOP", "k", 1)
	require.NoError(t, err)
	assert.Equal(t, "element", reply)
	_, err = c.Do("GET", "k")
	assert.Equal(t, context.Canceled, err, "the conn ctx closed is not used again")
	c.Close()
	assert.EqualValues(t, 1, p.Stats().Discards.Broken)
}

// TestAUserConnWithContextAloneGetsDoForDo: a conn from a Dial of the
// user's that implements redis.ConnWithContext but not
// redis.ConnWithTimeout gets Do for a Do and Receive for a Receive, as
// under redigo's pool (its own dial options bound them), and a context
// with a deadline for DoWithTimeout and ReceiveWithTimeout, which time
// out on a stalled server and discard the conn.
func TestAUserConnWithContextAloneGetsDoForDo(t *testing.T) {
	srv := redistest.Start(t)
	srv.Do(t, "SET", "db0:marker", "db0")
	p, conn := tracingPool(t, srv, false)
	c := p.Get()
	v, err := redis.String(c.Do("ECHO", "a"))
	require.NoError(t, err)
	assert.Equal(t, "a", v)
	require.NoError(t, c.Send("ECHO", "b"))
	require.NoError(t, c.Flush())
	v, err = redis.String(c.Receive())
	require.NoError(t, err)
	assert.Equal(t, "b", v)
	assert.Empty(t, conn().Seen(), "Do and Receive reached the user's DoContext or ReceiveContext")

	v, err = redis.String(redis.DoWithTimeout(c, time.Second, "ECHO", "c"))
	require.NoError(t, err)
	assert.Equal(t, "c", v)
	require.NoError(t, c.Send("ECHO", "d"))
	require.NoError(t, c.Flush())
	v, err = redis.String(redis.ReceiveWithTimeout(c, time.Second))
	require.NoError(t, err)
	assert.Equal(t, "d", v)

	srv.Stop(t)
	start := time.Now()
	_, err = redis.DoWithTimeout(c, 300*time.Millisecond, "GET", "k")
	took := time.Since(start)
	srv.Cont(t)
	assert.ErrorIs(t, err, os.ErrDeadlineExceeded)
	assert.Less(t, took, 2*time.Second, "DoWithTimeout(300ms) on a stalled server took %v", took)
	require.NoError(t, c.Close())
	assert.EqualValues(t, 1, p.Stats().Discards.Broken)
	seen := conn().Seen()
	require.Len(t, seen, 3, "DoWithTimeout twice and ReceiveWithTimeout through the user's context methods")
	for _, s := range seen {
		assert.True(t, s.hasDeadline, "a call with a timeout got no deadline: %+v", seen)
	}
	borrowerSeesOnlyItsOwn(t, p)
}

// TestAUserConnWithContextIsCleanedOnClose: Close undoes MULTI and WATCH on
// a conn from a Dial of the user's that implements redis.ConnWithContext but
// not redis.ConnWithTimeout, and reads its pending replies, within the
// drain timeout, as it does on the pool's own conns, and keeps it; one the
// server does not answer in time is discarded.
func TestAUserConnWithContextIsCleanedOnClose(t *testing.T) {
	srv := redistest.Start(t)
	srv.Do(t, "SET", "db0:marker", "db0")
	for _, tt := range []struct {
		name  string
		steps []borrowStep
	}{
		{"WATCH", []borrowStep{pDo("WATCH", "ctx:w")}},
		{"open MULTI", []borrowStep{pDo("MULTI"), pDo("SET", "ctx:never", 1)}},
		{"unread replies", []borrowStep{pSend("ECHO", "late"), pSend("ECHO", "later"), pFlush}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, _ := tracingPool(t, srv, false)
			c := p.Get()
			for _, s := range tt.steps {
				s(t, c)
			}
			require.NoError(t, c.Close())
			borrowerSeesOnlyItsOwn(t, p)
			nextTransactionRuns(t, srv, p, "ctx:w")
			assert.Nil(t, srv.Do(t, "GET", "ctx:never"), "the open transaction ran")
			s := p.Stats()
			assert.EqualValues(t, 1, s.DialCount, "the conn was not kept: %+v", s.Discards)
		})
	}

	t.Run("a server that does not answer", func(t *testing.T) {
		p, _ := tracingPool(t, srv, false)
		c := p.Get()
		srv.Stop(t)
		require.NoError(t, c.Send("ECHO", "late"))
		require.NoError(t, c.Flush())
		start := time.Now()
		c.Close()
		took := time.Since(start)
		srv.Cont(t)
		assert.Less(t, took, 2*time.Second, "Close waited %v for a stalled server", took)
		assert.EqualValues(t, 1, p.Stats().Discards.Broken)
		borrowerSeesOnlyItsOwn(t, p)
	})
}

// ---------------------------------------------------------------------------
// Helpers.

// onePool is a pool of at most one fake conn.
func onePool(t *testing.T, d *fakeDialer) *redispool.Pool {
	t.Helper()
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: time.Second, ReadTimeout: 200 * time.Millisecond}
	t.Cleanup(func() { p.Close() })
	return p
}

// clientInfo returns the fields of CLIENT INFO for c's connection.
func clientInfo(t *testing.T, c redis.Conn) map[string]string {
	t.Helper()
	s, err := redis.String(c.Do("CLIENT", "INFO"))
	require.NoError(t, err)
	m := map[string]string{}
	for _, f := range strings.Fields(s) {
		k, v, _ := strings.Cut(f, "=")
		m[k] = v
	}
	return m
}

// nextBorrowerIsClean checks, on the next connection p hands out, that
// replies are the borrower's own and that the server holds no state for the
// connection: database 0, no MULTI, no subscription, RESP2, no name, no
// tracking, no special flags, and EVAL runs a script (no debugger session).
func nextBorrowerIsClean(t *testing.T, p *redispool.Pool) {
	t.Helper()
	c, err := p.GetContext(context.Background())
	require.NoError(t, err)
	defer c.Close()
	for i := range 2 {
		want := fmt.Sprintf("mine-%d-%d", time.Now().UnixNano(), i)
		v, err := redis.String(c.Do("ECHO", want))
		require.NoError(t, err, "the next borrower's ECHO failed")
		require.Equal(t, want, v, "the next borrower got a reply that was not its own")
	}
	v, err := redis.String(c.Do("EVAL", "return 'script'", 0))
	require.NoError(t, err)
	require.Equal(t, "script", v, "the next borrower's EVAL did not run as a script")
	m := clientInfo(t, c)
	for k, want := range map[string]string{"db": "0", "flags": "N", "multi": "-1", "sub": "0", "psub": "0", "ssub": "0", "resp": "2", "name": ""} {
		assert.Equal(t, want, m[k], "the next borrower inherits CLIENT INFO %s", k)
	}
	ti, err := redis.Values(c.Do("CLIENT", "TRACKINGINFO"))
	require.NoError(t, err)
	flags, err := redis.Strings(ti[1], nil)
	require.NoError(t, err)
	assert.Equal(t, []string{"off"}, flags, "the next borrower inherits tracking")
}

// borrowerSeesOnlyItsOwn checks that a new borrower of p reads database 0 and
// gets replies to its own commands only.
func borrowerSeesOnlyItsOwn(t *testing.T, p *redispool.Pool) {
	t.Helper()
	c, err := p.GetContext(context.Background())
	require.NoError(t, err)
	defer c.Close()
	for i := range 3 {
		want := fmt.Sprintf("mine-%d-%d", time.Now().UnixNano(), i)
		v, err := redis.String(c.Do("ECHO", want))
		require.NoError(t, err)
		require.Equal(t, want, v, "the next borrower got a reply that was not its own")
	}
	marker, err := redis.String(c.Do("GET", "db0:marker"))
	require.NoError(t, err, "the next borrower is not in database 0")
	require.Equal(t, "db0", marker)
	n, err := redis.Int(c.Do("INCR", "borrower:n"))
	require.NoError(t, err)
	require.Positive(t, n)
}

// nextTransactionRuns changes key behind the pool's back, then runs a
// transaction as p's next borrower: a WATCH on key that an earlier
// borrower left on the connection would abort it.
func nextTransactionRuns(t *testing.T, srv *redistest.Server, p *redispool.Pool, key string) {
	t.Helper()
	srv.Do(t, "SET", key, time.Now().String())
	c := p.Get()
	defer c.Close()
	require.NoError(t, c.Send("MULTI"))
	require.NoError(t, c.Send("INCR", "nb:n"))
	r, err := c.Do("EXEC")
	require.NoError(t, err)
	assert.NotNil(t, r, "the next borrower's EXEC was aborted by a WATCH it never made")
}

type borrowStep func(t *testing.T, c redis.Conn)

func pDo(cmd string, args ...any) borrowStep {
	return func(t *testing.T, c redis.Conn) { c.Do(cmd, args...) }
}

func pSend(cmd string, args ...any) borrowStep {
	return func(t *testing.T, c redis.Conn) { require.NoError(t, c.Send(cmd, args...)) }
}

func pFlush(t *testing.T, c redis.Conn) { require.NoError(t, c.Flush()) }

func pRecv(t *testing.T, c redis.Conn) { c.Receive() }

// borrow runs the steps of each part in turn on a conn from p, then closes it.
func borrow(t *testing.T, p *redispool.Pool, parts ...[]borrowStep) {
	t.Helper()
	c := p.Get()
	for _, part := range parts {
		for _, s := range part {
			s(t, c)
		}
	}
	c.Close()
}

// word is a caller's named string type: redigo writes it with fmt.Fprint,
// as the text it holds, so the server sees the same word.
type word string

// wordArg is a redis.Argument: redigo writes what RedisArg returns.
type wordArg string

func (a wordArg) RedisArg() any { return string(a) }

// TestARetiredConnWritesNothingMoreOnAnyPath: after Retire, a conn in use
// fails its next call with ErrConnRetired, so nothing more reaches its
// server: not a command, not a Do("") that would flush what it sent, and
// not the Close of redigo's own pooled conn through RedigoPool, which
// flushes with Do("").
func TestARetiredConnWritesNothingMoreOnAnyPath(t *testing.T) {
	srv := redistest.Start(t)
	for _, tt := range []struct {
		name    string
		adapter bool
		end     func(c redis.Conn) error
	}{
		{"a command", false, func(c redis.Conn) error {
			_, err := c.Do("SET", "nb:retired:other", "written")
			c.Close()
			return err
		}},
		{"Do of no command", false, func(c redis.Conn) error {
			_, err := c.Do("")
			c.Close()
			return err
		}},
		{"Close through RedigoPool", true, func(c redis.Conn) error { c.Close(); return redispool.ErrConnRetired }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv.Do(t, "FLUSHALL")
			p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: time.Second}
			defer p.Close()
			var c redis.Conn
			if tt.adapter {
				c = p.RedigoPool().Get()
			} else {
				c = p.Get()
			}
			require.NoError(t, c.Send("SET", "nb:retired", "written"))
			p.Retire()
			assert.ErrorIs(t, tt.end(c), redispool.ErrConnRetired)
			assert.Nil(t, srv.Do(t, "GET", "nb:retired"), "a retired conn wrote to its server")
			assert.Nil(t, srv.Do(t, "GET", "nb:retired:other"), "a retired conn wrote to its server")
			c = p.Get()
			_, err := c.Do("PING")
			assert.NoError(t, err, "a new conn serves")
			c.Close()
		})
	}
}
