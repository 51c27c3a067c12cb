package redispool_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/internal/redistest"
)

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

type borrowStep func(t *testing.T, c redis.Conn)

func pDo(cmd string, args ...any) borrowStep {
	return func(t *testing.T, c redis.Conn) { c.Do(cmd, args...) }
}

func pSend(cmd string, args ...any) borrowStep {
	return func(t *testing.T, c redis.Conn) { require.NoError(t, c.Send(cmd, args...)) }
}

func pFlush(t *testing.T, c redis.Conn) { require.NoError(t, c.Flush()) }

func pRecv(t *testing.T, c redis.Conn) { c.Receive() }

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
		{"UNSUBSCRIBE from one channel, not subscribed", []borrowStep{pDo("UNSUBSCRIBE", "a")}, keep},
		{"SCRIPT EXISTS", []borrowStep{pDo("SCRIPT", "EXISTS", "0123456789012345678901234567890123456789")}, keep},
		{"pipeline with an error reply mid-way, unread", []borrowStep{pSend("SET", "s", "x"), pSend("INCR", "s"), pSend("ECHO", "late"), pFlush, pRecv}, keep},
		// Either way, as long as the next borrower is clean: a SELECT 0 whose
		// reply is read later may fail.
		{"SELECT 3 then SELECT 0, pipelined", []borrowStep{pSend("SELECT", 3), pSend("select", []byte("0")), pFlush}, ""},
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
		{"SELECT as []byte", []borrowStep{pDo("select", []byte("4"))}, discard},
		{"SELECT true (redigo sends 1)", []borrowStep{pDo("SELECT", true)}, discard},
		{"MONITOR", []borrowStep{pDo("MONITOR")}, discard},
		{"READONLY", []borrowStep{pDo("READONLY")}, discard},
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

// TestDBWinsOverDialDatabaseInDialOptions: the pool dials into DB whatever
// DialOptions say, so that it knows the database its connections start in
// and tells one a caller left in another.
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
	assert.EqualValues(t, 1, p.Stats().Discards.State, "the connection left in database 3 was not kept")
}

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
	nextBorrowerIsClean(t, p)
}
