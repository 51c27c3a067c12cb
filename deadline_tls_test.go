package redispool

import (
	"context"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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

// TestTheDialsDeadlineIsSetExactly: the socket of a dial carries the dial's
// context deadline (DialTimeout), which bounds the TLS handshake, exactly:
// not with the slack, which comes from ReadTimeout and WriteTimeout. The
// deadlineConn then takes the socket's deadlines for unknown, so that
// clearing them at the end of the dial reaches the socket.
func TestTheDialsDeadlineIsSetExactly(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	dl, _ := ctx.Deadline()
	sock := &deadlineSocket{}
	c, err := dialedSocket(ctx, sock, maxDeadlineSlack)
	require.NoError(t, err)
	assert.Equal(t, dl, sock.read, "the dial's read deadline is %v late", sock.read.Sub(dl))
	assert.Equal(t, dl, sock.write, "the dial's write deadline is %v late", sock.write.Sub(dl))
	require.IsType(t, &deadlineConn{}, c)
	require.NoError(t, c.SetDeadline(time.Time{}))
	assert.True(t, sock.read.IsZero() && sock.write.IsZero(), "clearing the dial's deadline did not reach the socket")

	plain, err := dialedSocket(ctx, sock, 0)
	require.NoError(t, err)
	assert.Same(t, sock, plain, "with no slack the socket is not wrapped")
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
	p := &Pool{Addr: addr, MaxActive: 4,
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
