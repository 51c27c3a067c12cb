package redispool_test

// The idle set: a clean connection given back is reused, the one idle
// longest first, up to MaxIdle; one idle past IdleTimeout, older than
// MaxConnLifetime, failing TestOnBorrow, or whose socket shows it was closed
// or holds unasked-for bytes is closed instead of handed out; and once per
// IdleTimeout the pool closes the idle connections nobody needed.

import (
	"context"
	"errors"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/redispool/redispool"
	"github.com/redispool/redispool/internal/redistest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// ---------------------------------------------------------------------------
// Reuse and MaxIdle.

func TestCleanConnIsReusedNotRedialed(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial}
	defer p.Close()
	for range 100 {
		c := p.Get()
		_, err := c.Do("SET", "k", "v")
		require.NoError(t, err)
		require.NoError(t, c.Close())
	}
	assert.EqualValues(t, 1, d.dials.Load())
	assert.Equal(t, 1, p.IdleCount())
	assert.Equal(t, 1, p.ActiveCount())
}

func TestIdleConnsAreReusedLongestIdleFirst(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial}
	defer p.Close()
	conns := getN(t, p, 2)
	conns[1].Close() // returned first
	conns[0].Close()
	c := p.Get()
	defer c.Close()
	c.Do("PING")
	assert.Contains(t, d.Conns()[1].Calls(), "DO PING")
	assert.NotContains(t, d.Conns()[0].Calls(), "DO PING")
}

func TestMaxIdleClosesConnsBeyondIt(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 4, MaxIdle: 1}
	defer p.Close()
	closeAll(getN(t, p, 3))
	assert.Equal(t, 1, p.IdleCount())
	assert.Equal(t, 1, p.ActiveCount())
	assert.EqualValues(t, 2, p.Stats().Discards.MaxIdle)
}

func TestMaxIdleHoldsWhenCloseRacesGet(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 8, MaxIdle: 1, WaitTimeout: 5 * time.Second}
	defer p.Close()
	for round := range 5000 {
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 3 {
					p.Get().Close()
				}
			}()
		}
		wg.Wait()
		if n := p.IdleCount(); n > 1 {
			t.Fatalf("round %d: %d idle conns at rest, MaxIdle 1", round, n)
		}
	}
	assert.Equal(t, 1, p.ActiveCount())
}

// ---------------------------------------------------------------------------
// IdleTimeout, shrinking and MaxConnLifetime.

func TestIdleTimeoutClosesStaleConns(t *testing.T) {
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)()
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, IdleTimeout: time.Minute}
	defer p.Close()
	closeAll(getN(t, p, 2))

	clk.Advance(59 * time.Second)
	c := p.Get()
	require.NoError(t, c.Err())
	c.Close()
	assert.EqualValues(t, 2, d.dials.Load(), "conns idle for less than IdleTimeout are kept")

	clk.Advance(61 * time.Second)
	c = p.Get()
	require.NoError(t, c.Err())
	c.Close()
	assert.EqualValues(t, 3, d.dials.Load(), "a stale conn is never handed out")
	assert.EqualValues(t, 2, p.Stats().Discards.IdleTimeout)
	for _, fc := range d.Conns()[:2] {
		assert.True(t, fc.IsClosed())
	}
	assert.Equal(t, 1, p.ActiveCount())
}

func TestIdleTimeoutDefaultsToFourMinutes(t *testing.T) {
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)()
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial}
	defer p.Close()
	p.Get().Close()
	clk.Advance(redispool.DefaultIdleTimeout - time.Second)
	p.Get().Close()
	assert.EqualValues(t, 1, d.dials.Load())
	clk.Advance(redispool.DefaultIdleTimeout)
	p.Get().Close()
	assert.EqualValues(t, 2, d.dials.Load())
}

func TestATrickleOfGetsLetsThePoolShrinkAfterABurst(t *testing.T) {
	// Idle conns are reused in turn, so each is used every 10 s here and
	// none reaches IdleTimeout; the pool still closes what nobody needed.
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)()
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 10, IdleTimeout: time.Minute}
	defer p.Close()
	closeAll(getN(t, p, 10))
	for range 600 { // 10 minutes at one Get a second
		clk.Advance(time.Second)
		c := p.Get()
		require.NoError(t, c.Err())
		c.Close()
	}
	assert.LessOrEqual(t, p.ActiveCount(), 2)
	assert.GreaterOrEqual(t, p.Stats().Discards.IdleTimeout, int64(8))
	assert.EqualValues(t, 10, d.dials.Load(), "a trickle needs no new dials")
}

func TestASteadyLoadKeepsTheConnsItNeeds(t *testing.T) {
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)()
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 10, IdleTimeout: time.Minute}
	defer p.Close()
	for range 600 { // 4 conns in use at once, every second, for 10 minutes
		clk.Advance(time.Second)
		closeAll(getN(t, p, 4))
	}
	assert.Equal(t, 4, p.ActiveCount())
	assert.EqualValues(t, 4, d.dials.Load(), "no churn under a steady load")
}

func TestMaxConnLifetimeClosesOldConns(t *testing.T) {
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)()
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxConnLifetime: time.Minute}
	defer p.Close()
	c := p.Get()
	clk.Advance(61 * time.Second)
	c.Close() // returned too old: closed, not kept idle
	assert.True(t, d.Conns()[0].IsClosed(), "given back older than MaxConnLifetime: closed")
	assert.Zero(t, p.IdleCount())
	assert.EqualValues(t, 1, p.Stats().Discards.Lifetime)
	c = p.Get()
	require.NoError(t, c.Err())
	c.Close()

	clk.Advance(30 * time.Second)
	p.Get().Close()
	assert.EqualValues(t, 2, d.dials.Load(), "younger than MaxConnLifetime: reused")
	clk.Advance(31 * time.Second)
	c = p.Get() // too old to hand out
	require.NoError(t, c.Err())
	c.Close()
	assert.True(t, d.Conns()[1].IsClosed())
	assert.EqualValues(t, 3, d.dials.Load())
	assert.EqualValues(t, 2, p.Stats().Discards.Lifetime)
}

// ---------------------------------------------------------------------------
// TestOnBorrow.

func TestFailedHealthCheckClosesTheConnAndDialsAnother(t *testing.T) {
	d := &fakeDialer{}
	var lastUsed time.Time
	fail := true
	p := &redispool.Pool{
		Dial:      d.Dial,
		MaxActive: 1,
		TestOnBorrow: func(c redis.Conn, t time.Time) error {
			lastUsed = t
			if fail {
				return errors.New("unhealthy")
			}
			return nil
		},
	}
	defer p.Close()
	before := time.Now()
	p.Get().Close()
	c := p.Get()
	require.NoError(t, c.Err())
	c.Close()
	assert.False(t, lastUsed.Before(before), "TestOnBorrow gets the time the conn was last handed out")
	assert.True(t, d.Conns()[0].IsClosed())
	assert.EqualValues(t, 2, d.dials.Load())
	assert.EqualValues(t, 1, p.Stats().Discards.HealthCheck)

	fail = false
	c = p.Get()
	c.Close()
	assert.EqualValues(t, 2, d.dials.Load())
}

func TestTestOnBorrowContextGetsTheCallersContext(t *testing.T) {
	d := &fakeDialer{}
	type key struct{}
	var got any
	p := &redispool.Pool{Dial: d.Dial, TestOnBorrowContext: func(ctx context.Context, c redis.Conn, _ time.Time) error {
		got = ctx.Value(key{})
		return nil
	}}
	defer p.Close()
	p.Get().Close()
	c, err := p.GetContext(context.WithValue(context.Background(), key{}, "v"))
	require.NoError(t, err)
	c.Close()
	assert.Equal(t, "v", got)
}

// ---------------------------------------------------------------------------
// The peek at the socket of a conn the pool dialed.

func TestIdleConnsClosedByTheServerAreNotHandedOut(t *testing.T) {
	srv := redistest.Start(t, "--timeout", "1")
	p := &redispool.Pool{Addr: srv.Addr(), ReadTimeout: time.Second}
	defer p.Close()
	closeAll(getN(t, p, 3))
	// The server closes connections idle for more than a second.
	require.Eventually(t, func() bool { return srv.ConnectedClients(t) == 0 }, 10*time.Second, 50*time.Millisecond)
	for range 3 {
		c := p.Get()
		_, err := c.Do("PING")
		require.NoError(t, err, "the peek on borrow spares the caller a dead conn")
		c.Close()
	}
	assert.EqualValues(t, 3, p.Stats().Discards.Broken)

	// Killed behind the pool's back.
	closeAll(getN(t, p, 2))
	srv.Do(t, "CLIENT", "KILL", "TYPE", "normal")
	time.Sleep(150 * time.Millisecond) // the peek looks at conns idle this long
	c := p.Get()
	_, err := c.Do("PING")
	require.NoError(t, err)
	c.Close()
}

func TestAHealthyConnIdleLongerThanReadTimeoutIsReused(t *testing.T) {
	// The last command's read deadline has passed by the next Get: the peek
	// must not take that for a dead socket.
	srv := redistest.Start(t)
	p := &redispool.Pool{Addr: srv.Addr(), ReadTimeout: 200 * time.Millisecond}
	defer p.Close()
	for range 3 {
		c := p.Get()
		_, err := c.Do("PING")
		require.NoError(t, err)
		c.Close()
		time.Sleep(300 * time.Millisecond)
	}
	s := p.Stats()
	assert.EqualValues(t, 1, s.DialCount)
	assert.Zero(t, s.Discards.Total())
}

// TestAHealthyTLSConnReturnedUnreadIsNotDiscardedAsBroken checks peek on a
// TLS conn. Over TLS 1.3 the server sends session tickets after the
// handshake, and they stay in the socket until the client's first read. A
// conn the pool dialed that went back idle before any read (a Get closed
// without a command, or the conn of a dial whose caller gave up) must still
// be reused after PeekAfterIdle: the ticket's bytes are not an unasked-for
// reply.
func TestAHealthyTLSConnReturnedUnreadIsNotDiscardedAsBroken(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := selfSignedCert(t, dir)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	tlsPort := l.Addr().(*net.TCPAddr).Port
	l.Close()
	redistest.Start(t, "--tls-port", strconv.Itoa(tlsPort), "--tls-cert-file", certFile,
		"--tls-key-file", keyFile, "--tls-ca-cert-file", certFile, "--tls-auth-clients", "no")
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(tlsPort))

	p := &redispool.Pool{Addr: addr, MaxActive: 2,
		DialOptions: []redis.DialOption{redis.DialUseTLS(true), redis.DialTLSSkipVerify(true)}}
	defer p.Close()
	c, err := p.GetContext(context.Background())
	require.NoError(t, err)
	c.Close() // no command: nothing read since the handshake

	time.Sleep(2 * redispool.PeekAfterIdle)
	c, err = p.GetContext(context.Background())
	require.NoError(t, err)
	_, err = c.Do("PING")
	require.NoError(t, err)
	c.Close()
	s := p.Stats()
	assert.Zero(t, s.Discards.Broken, "a healthy TLS conn was discarded as broken")
	assert.EqualValues(t, 1, s.DialCount, "the idle conn was not reused")
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

// TestATLSCommandAfterAPeekStillTimesOut: over TLS, the socket the
// pool peeks at (the deadlineConn's inner one) is under the tls.Conn; the
// peek clears the read deadline through the wrapper, and a command to a
// server that stopped answering still times out, never before ReadTimeout.
func TestATLSCommandAfterAPeekStillTimesOut(t *testing.T) {
	srv, addr := startTLSRedis(t)
	commandAfterAPeekTimesOut(t, srv, addr, redis.DialUseTLS(true), redis.DialTLSSkipVerify(true))
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
