package redispool_test

import (
	"context"
	"errors"
	"fmt"
	"os"
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
