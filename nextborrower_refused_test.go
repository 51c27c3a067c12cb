package redispool_test

import (
	"testing"
	"time"

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

// TestARejectedMultiDoesNotStopBlockingCommandsFromBlocking: after a
// rejected "MULTI x" the connection is not in a transaction, so a BLPOP
// blocks for its own timeout and needs ReadTimeout plus it; taking it for
// queued fails the call at ReadTimeout and throws a healthy conn away.
func TestARejectedMultiDoesNotStopBlockingCommandsFromBlocking(t *testing.T) {
	srv := redistest.Start(t)
	p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: 200 * time.Millisecond}
	defer p.Close()
	c := p.Get()
	_, err := c.Do("MULTI", "now")
	require.ErrorContains(t, err, "wrong number of arguments")
	r, err := c.Do("BLPOP", "nb:none", 0.5)
	require.NoError(t, err, "BLPOP k 0.5 outside a transaction failed under ReadTimeout 200ms")
	assert.Nil(t, r)
	c.Close()
	assert.Zero(t, p.Stats().Discards.Total(), "a healthy conn was discarded")
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
