package redispool_test

import (
	"net"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/internal/redistest"
)

// TestATLSCommandAfterAPeekStillTimesOut: over TLS, the socket the
// pool peeks at (the deadlineConn's inner one) is under the tls.Conn; the
// peek clears the read deadline through the wrapper, and a command to a
// server that stopped answering still times out, never before ReadTimeout.
func TestATLSCommandAfterAPeekStillTimesOut(t *testing.T) {
	srv, addr := startTLSRedis(t)
	commandAfterAPeekTimesOut(t, srv, addr, redis.DialUseTLS(true), redis.DialTLSSkipVerify(true))
}

// TestACommandAfterAPeekStillTimesOut: the peek on borrow clears the
// socket's read deadline. Cleared behind the deadlineConn's back, the next
// command's deadline, within the slack of the one the deadlineConn takes for
// set, would not be set, and a server that stopped answering would hold the
// command for ever.
func TestACommandAfterAPeekStillTimesOut(t *testing.T) {
	srv := redistest.Start(t)
	commandAfterAPeekTimesOut(t, srv, srv.Addr())
}

// commandAfterAPeekTimesOut runs a command on a connection to addr, has the
// next Get peek at it with srv stopped, and checks that the peek cleared the
// read deadline through the deadlineConn, kept the connection, and that a
// command then times out, never before ReadTimeout.
func commandAfterAPeekTimesOut(t *testing.T, srv *redistest.Server, addr string, opts ...redis.DialOption) {
	t.Helper()
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)()
	const readTimeout = 300 * time.Millisecond
	p := &redispool.Pool{Addr: addr, ReadTimeout: readTimeout, DialOptions: opts}
	defer p.Close()
	c := p.Get()
	_, err := c.Do("PING")
	require.NoError(t, err)
	require.NoError(t, c.Close())

	clk.Advance(time.Minute) // idle long enough to be peeked at
	srv.Stop(t)
	defer srv.Cont(t)
	c = p.Get()
	require.NoError(t, c.Err())
	defer c.Close()
	slack, readCleared := redispool.SocketDeadlines(c)
	require.NotZero(t, slack, "the socket does not move its deadlines lazily")
	assert.True(t, readCleared, "the peek cleared the read deadline behind the wrapper's back")
	assert.Zero(t, p.Stats().Discards.Broken, "the peek discarded a healthy connection")

	done := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := c.Do("PING")
		done <- err
	}()
	select {
	case err = <-done:
	case <-time.After(readTimeout + 5*time.Second):
		t.Fatal("a command to a stopped server did not time out")
	}
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	assert.True(t, ne.Timeout(), "%v", err)
	assert.GreaterOrEqual(t, time.Since(start), readTimeout, "timed out before ReadTimeout")
}
