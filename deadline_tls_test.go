package redispool_test

import (
	"bufio"
	"context"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/internal/redistest"
)

// startTLSRedis starts a redis-server that listens with TLS on a loopback
// port, and returns its TLS address.
func startTLSRedis(t *testing.T) (*redistest.Server, string) {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile := selfSignedCert(t, dir)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	tlsPort := l.Addr().(*net.TCPAddr).Port
	l.Close()
	srv := redistest.Start(t, "--tls-port", strconv.Itoa(tlsPort), "--tls-cert-file", certFile,
		"--tls-key-file", keyFile, "--tls-ca-cert-file", certFile, "--tls-auth-clients", "no")
	return srv, net.JoinHostPort("127.0.0.1", strconv.Itoa(tlsPort))
}

// TestATLSCommandAfterAPeekStillTimesOut: over TLS, the socket the
// pool peeks at (the deadlineConn's inner one) is under the tls.Conn; the
// peek clears the read deadline through the wrapper, and a command to a
// server that stopped answering still times out, never before ReadTimeout.
func TestATLSCommandAfterAPeekStillTimesOut(t *testing.T) {
	srv, addr := startTLSRedis(t)
	commandAfterAPeekTimesOut(t, srv, addr, redis.DialUseTLS(true), redis.DialTLSSkipVerify(true))
}

// TestTLSContextCancellationRacingCommandsLeavesThePoolServing: contexts cancelled while
// commands run close the TLS conn from context.AfterFunc's goroutine
// (tls.Conn.Close sends close_notify with its own write deadlines, through
// the deadlineConn) while the command's goroutine moves the read and write
// deadlines. Run with -race: no race, no hang, and the pool keeps serving.
func TestTLSContextCancellationRacingCommandsLeavesThePoolServing(t *testing.T) {
	_, addr := startTLSRedis(t)
	p := &redispool.Pool{Addr: addr, MaxActive: 4,
		DialOptions: []redis.DialOption{redis.DialUseTLS(true), redis.DialTLSSkipVerify(true)}}
	defer p.Close()

	var wg sync.WaitGroup
	var mu sync.Mutex
	cancelled := 0
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			for range 50 {
				ctx, cancel := context.WithCancel(context.Background())
				stop := time.AfterFunc(time.Duration(rng.Int64N(int64(300*time.Microsecond))), cancel)
				c, err := p.GetContext(context.Background())
				if !assert.NoError(t, err) {
					cancel()
					return
				}
				start := time.Now()
				_, err = c.(redis.ConnWithContext).DoContext(ctx, "ECHO", "x")
				assert.Less(t, time.Since(start), 2*time.Second, "DoContext did not return promptly: %v", err)
				if err != nil {
					assert.ErrorIs(t, err, context.Canceled)
					mu.Lock()
					cancelled++
					mu.Unlock()
				}
				c.Close()
				stop.Stop()
				cancel()
			}
		}()
	}
	wg.Wait()
	t.Logf("%d of 200 commands cancelled mid-call", cancelled)

	c := p.Get()
	defer c.Close()
	reply, err := redis.String(c.Do("ECHO", "after"))
	require.NoError(t, err)
	assert.Equal(t, "after", reply)
}

// TestThePoolsOwnSocketsMoveTheirDeadlinesLazily: a socket the pool dials
// itself keeps its deadlines within the slack; with no timeouts it has
// nothing to keep and is left as dialed.
func TestThePoolsOwnSocketsMoveTheirDeadlinesLazily(t *testing.T) {
	addr := serveLoopback(t, answerOK)
	for _, tc := range []struct {
		name      string
		p         *redispool.Pool
		wantSlack time.Duration
	}{
		{"default timeouts", &redispool.Pool{Addr: addr}, 5 * time.Millisecond},
		{"ReadTimeout 64ms", &redispool.Pool{Addr: addr, ReadTimeout: 64 * time.Millisecond}, time.Millisecond},
		{"no timeouts", &redispool.Pool{Addr: addr, ReadTimeout: -1}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer tc.p.Close()
			c, err := tc.p.GetContext(t.Context())
			require.NoError(t, err)
			defer c.Close()
			slack, readCleared := redispool.SocketDeadlines(c)
			assert.Equal(t, tc.wantSlack, slack, "the slack of the socket's deadlines (none: not wrapped)")
			if tc.wantSlack != 0 {
				assert.True(t, readCleared, "the dial's deadline is cleared through the wrapper")
			}
		})
	}
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

// answerOK answers every command read from c with +OK, as a server that
// serves but is not looked at.
func answerOK(c net.Conn) {
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "*")))
		if err != nil || !strings.HasPrefix(line, "*") {
			return
		}
		for range 2 * n { // $len, then the argument
			if _, err := r.ReadString('\n'); err != nil {
				return
			}
		}
		if _, err := c.Write([]byte("+OK\r\n")); err != nil {
			return
		}
	}
}
