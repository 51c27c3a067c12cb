package redispool_test

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/internal/redistest"
)

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

// TestXReadTakesTheLastBlock: the server reads every option of XREAD and
// keeps the last BLOCK, so the read deadline must allow for that one.
func TestXReadTakesTheLastBlock(t *testing.T) {
	srv := redistest.Start(t)
	p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: 300 * time.Millisecond}
	defer p.Close()
	c := p.Get()
	defer c.Close()
	start := time.Now()
	r, err := c.Do("XREAD", "BLOCK", 10, "BLOCK", 600, "STREAMS", "nb:s", "$")
	require.NoError(t, err, "XREAD BLOCK 10 BLOCK 600 failed after %v under ReadTimeout 300ms", time.Since(start))
	assert.Nil(t, r)
}

// timeoutSeconds is a caller's named type for a timeout: redigo writes it
// with fmt.Fprint, as the number it holds.
type timeoutSeconds int

// timeoutArg is a redis.Argument: redigo writes what RedisArg returns.
type timeoutArg struct{ v float64 }

func (a timeoutArg) RedisArg() any { return a.v }

// TestBlockingTimeoutOfAnotherType: a timeout that redigo writes with fmt (a
// named numeric type), a redis.Argument, or a string the server's strtold
// reads and Go's ParseFloat does not ("0x1") still extends the read deadline.
func TestBlockingTimeoutOfAnotherType(t *testing.T) {
	srv := redistest.Start(t)
	for _, tt := range []struct {
		name    string
		timeout any
	}{
		{"named int", timeoutSeconds(1)},
		{"redis.Argument", timeoutArg{0.5}},
		{"hex string (strtold reads it, strconv does not)", "0x1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: 300 * time.Millisecond}
			defer p.Close()
			c := p.Get()
			defer c.Close()
			start := time.Now()
			r, err := c.Do("BLPOP", "nb:none", tt.timeout)
			require.NoError(t, err, "BLPOP with a %v timeout failed after %v", tt.timeout, time.Since(start))
			assert.Nil(t, r)
		})
	}
}

// TestBlockingCommandInMultiKeepsReadTimeout: inside MULTI a blocking
// command is only queued, so its reply is bounded by ReadTimeout: with the
// server frozen, the call fails after ReadTimeout instead of hanging.
func TestBlockingCommandInMultiKeepsReadTimeout(t *testing.T) {
	srv := redistest.Start(t)
	const readTimeout = 200 * time.Millisecond
	p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: readTimeout}
	defer p.Close()
	c := p.Get()
	defer c.Close()
	_, err := c.Do("MULTI")
	require.NoError(t, err)
	srv.Stop(t)
	done := make(chan error, 1)
	go func() {
		_, err := c.Do("BLPOP", "nb:none", 0)
		done <- err
	}()
	select {
	case err := <-done:
		assert.Error(t, err) // the read deadline fired
	case <-time.After(readTimeout + 1500*time.Millisecond):
		srv.Cont(t)
		<-done
		t.Fatalf("BLPOP k 0 queued in MULTI waited more than ReadTimeout+1.5s on a stalled server: no read deadline")
	}
	srv.Cont(t)
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

// TestAskingIsNotInherited: in a cluster, ASKING lets the connection's next
// command run on a slot being imported; the next borrower must not inherit
// it.
func TestAskingIsNotInherited(t *testing.T) {
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

	p := &redispool.Pool{Addr: a.Addr(), MaxActive: 1, ReadTimeout: time.Second}
	defer p.Close()
	c := p.Get()
	_, err = c.Do("GET", key)
	require.ErrorContains(t, err, "MOVED", "without ASKING, A redirects")
	_, err = c.Do("ASKING")
	require.NoError(t, err)
	c.Close()

	c = p.Get()
	defer c.Close()
	_, err = c.Do("GET", key)
	assert.ErrorContains(t, err, "MOVED", "the next borrower's command ran under the previous borrower's ASKING")
}
