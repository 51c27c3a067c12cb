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
	// Distinct config epochs, B's the newest, before the nodes meet: two new
	// masters both start at epoch 0, and should A win their collision, it
	// ignores B's claim to the slot made at the older epoch.
	require.Equal(t, "OK", a.Do(t, "CLUSTER", "SET-CONFIG-EPOCH", 1))
	require.Equal(t, "OK", b.Do(t, "CLUSTER", "SET-CONFIG-EPOCH", 2))
	require.Equal(t, "OK", a.Do(t, "CLUSTER", "MEET", "127.0.0.1", fmt.Sprint(b.Port())))
	require.Equal(t, "OK", b.Do(t, "CLUSTER", "ADDSLOTS", slot))
	// A must know B before it can import from it.
	require.Eventually(t, func() bool {
		r := a.Do(t, "CLUSTER", "SETSLOT", slot, "IMPORTING", bID)
		return r == "OK"
	}, 30*time.Second, 50*time.Millisecond)
	// A answers MOVED once it knows B serves the slot and its cluster state
	// is ok (a new master waits 2 s for that; gossip is slower on a loaded
	// machine).
	require.Eventually(t, func() bool {
		e, _ := a.Do(t, "GET", key).(redis.Error)
		return strings.HasPrefix(string(e), "MOVED")
	}, 30*time.Second, 50*time.Millisecond)

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
