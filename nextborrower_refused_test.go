package redispool_test

import (
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/internal/redistest"
)

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

// word is a caller's named string type: redigo writes it with fmt.Fprint,
// as the text it holds, so the server sees the same word.
type word string

// wordArg is a redis.Argument: redigo writes what RedisArg returns.
type wordArg string

func (a wordArg) RedisArg() any { return string(a) }

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

// TestSequencesKeepOrDiscardAsTheyShould runs further sequences
// through the public API and checks the next borrower, and whether the conn
// was kept where keeping it is safe.
func TestSequencesKeepOrDiscardAsTheyShould(t *testing.T) {
	srv := redistest.Start(t)
	const (
		keep    = "keep"
		discard = "discard"
		either  = ""
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
		{"SELECT inside EXEC", []borrowStep{pDo("MULTI"), pDo("SELECT", 2), pDo("EXEC")}, either},
		{"HELLO 3 sent, not flushed", []borrowStep{pSend("HELLO", 3)}, discard},
		{"CLIENT REPLY OFF, flushed, Close", []borrowStep{pSend("CLIENT", "REPLY", "OFF"), pSend("SET", "nb:x", 1), pFlush}, discard},
		{"CLIENT REPLY SKIP via Do, then ECHO", []borrowStep{pSend("CLIENT", "REPLY", "SKIP"), pDo("ECHO", "skipped")}, discard},
		{"UNSUBSCRIBE of one channel, lower case", []borrowStep{pDo("unsubscribe", []byte("a"))}, keep},
		{"PSUBSCRIBE, PUNSUBSCRIBE", []borrowStep{pSend("PSUBSCRIBE", "p*"), pSend("PUNSUBSCRIBE"), pFlush, pRecv, pRecv}, discard},
		{"MONITOR pipelined", []borrowStep{pSend("monitor"), pFlush}, discard},
		{"SELECT of a typed nil, rejected", []borrowStep{pDo("SELECT", (*int)(nil))}, either},
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
