package redispool_test

// Dialing: Dial, DialContext, or the pool's own dial of Addr (an address or
// a URL, with credentials, a database and TLS); at most MaxConcurrentDials
// at once; while the server refuses, one probe at a time with backoff and
// the last error for everyone else; a dial whose caller gave up serves the
// next one. And the deadlines: DialTimeout bounds a dial as a whole,
// ReadTimeout and WriteTimeout each command (a blocking command gets its own
// timeout on top), on sockets that move their deadlines lazily.

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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

// ---------------------------------------------------------------------------
// Dial and DialContext.

func TestDialReturningNilConnIsAnError(t *testing.T) {
	p := &redispool.Pool{Dial: func() (redis.Conn, error) { return nil, nil }}
	defer p.Close()
	_, err := p.GetContext(context.Background())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "nil connection")
	assert.Equal(t, 0, p.ActiveCount())
}

// NewPool builds a pool as redigo's redis.NewPool does: it dials with
// newFn and keeps at most maxIdle idle; a nil newFn or a negative maxIdle
// makes Get fail with an error that names it.
func TestNewPoolDialsWithNewFnAndKeepsMaxIdle(t *testing.T) {
	d := &fakeDialer{}
	p := redispool.NewPool(d.Dial, 1) //nolint:staticcheck // the redigo-compatible constructor under test
	defer p.Close()
	conns := getN(t, p, 2)
	closeAll(conns)
	s := p.Stats()
	assert.EqualValues(t, 2, d.dials.Load())
	assert.Equal(t, 1, s.MaxIdle)
	assert.Equal(t, 1, s.IdleCount)
	assert.EqualValues(t, 1, s.Discards.MaxIdle)

	nilFn := redispool.NewPool(nil, 1) //nolint:staticcheck
	defer nilFn.Close()
	_, err := nilFn.GetContext(context.Background())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "nil dial function")

	negative := redispool.NewPool(d.Dial, -1) //nolint:staticcheck
	defer negative.Close()
	_, err = negative.GetContext(context.Background())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "MaxIdle is -1")
}

func TestDialContextTakesPrecedenceOverDial(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{
		Dial:        func() (redis.Conn, error) { return nil, errors.New("Dial used") },
		DialContext: func(context.Context) (redis.Conn, error) { return d.Dial() },
	}
	defer p.Close()
	c, err := p.GetContext(context.Background())
	require.NoError(t, err)
	c.Close()
}

func TestDialContextIsNotCancelledWhenTheCallerGivesUp(t *testing.T) {
	d := &fakeDialer{}
	type key struct{}
	dialCtx := make(chan context.Context, 1)
	entered := make(chan struct{})
	release := make(chan struct{})
	p := &redispool.Pool{DialContext: func(ctx context.Context) (redis.Conn, error) {
		dialCtx <- ctx
		close(entered)
		<-release
		return d.Dial()
	}}
	defer p.Close()
	ctx, cancel := context.WithCancel(context.WithValue(context.Background(), key{}, "v"))
	go func() { <-entered; cancel() }() // the caller gives up during the dial
	_, err := p.GetContext(ctx)
	assert.Equal(t, context.Canceled, err)
	dctx := <-dialCtx
	assert.NoError(t, dctx.Err(), "the dial goes on for the next caller")
	assert.Equal(t, "v", dctx.Value(key{}), "the dial keeps the caller's values")
	close(release)
	require.Eventually(t, func() bool { return p.IdleCount() == 1 }, 5*time.Second, time.Millisecond)
}

func TestADialTheCallerGaveUpOnServesTheNextCaller(t *testing.T) {
	d := &fakeDialer{}
	release := make(chan struct{})
	entered := make(chan struct{})
	p := &redispool.Pool{MaxActive: 1, WaitTimeout: 5 * time.Second, Dial: func() (redis.Conn, error) {
		close(entered)
		<-release
		return d.Dial()
	}}
	defer p.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { <-entered; cancel() }() // the caller gives up during the dial
	start := time.Now()
	_, err := p.GetContext(ctx)
	assert.Equal(t, context.Canceled, err)
	assert.Less(t, time.Since(start), 2*time.Second, "the caller does not wait for the dial")
	assert.Equal(t, 1, p.ActiveCount(), "the dial in progress counts against MaxActive")

	got := goGet(p, context.Background())
	close(release)
	r := awaitGet(t, got, 5*time.Second)
	require.NoError(t, r.err)
	r.c.Close()
	assert.EqualValues(t, 1, d.dials.Load(), "the abandoned dial's conn was handed on")
	assert.Equal(t, 1, p.ActiveCount())
}

// A conn whose dial finishes as the caller's context ends goes to the pool,
// not to the caller, as one handed to a waiter does.
func TestADialThatFinishesAsTheContextEndsGoesBack(t *testing.T) {
	d := &fakeDialer{}
	ctx := redispool.NewLateContext()
	errEnded := errors.New("caller gave up")
	p := &redispool.Pool{MaxActive: 1, WaitTimeout: time.Second, DialContext: func(context.Context) (redis.Conn, error) {
		ctx.End(errEnded) // the caller gives up as the dial finishes
		return d.Dial()
	}}
	defer p.Close()
	c, err := p.GetContext(ctx)
	if err == nil {
		c.Close()
	}
	assert.Equal(t, errEnded, err, "a caller whose context ended got a conn")
	assert.Equal(t, 1, p.IdleCount(), "the dialed conn serves the next caller")
	assert.Equal(t, 1, p.ActiveCount())
}

// ---------------------------------------------------------------------------
// Dial slots and backoff.

func TestAtMostMaxConcurrentDialsRunAtOnce(t *testing.T) {
	d := &fakeDialer{}
	var mu sync.Mutex
	inDial, most := 0, 0
	release := make(chan struct{})
	p := &redispool.Pool{MaxActive: 20, MaxConcurrentDials: 3, WaitTimeout: 5 * time.Second, Dial: func() (redis.Conn, error) {
		mu.Lock()
		inDial++
		most = max(most, inDial)
		mu.Unlock()
		<-release
		mu.Lock()
		inDial--
		mu.Unlock()
		return d.Dial()
	}}
	defer p.Close()
	gets := make([]<-chan getResult, 10)
	for i := range gets {
		gets[i] = goGet(p, context.Background())
	}
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return inDial == 3
	}, 5*time.Second, time.Millisecond)
	assert.EqualValues(t, 3, p.Stats().DialCount, "the other callers wait for a dial slot")
	close(release)
	for _, got := range gets {
		r := awaitGet(t, got, 5*time.Second)
		assert.NoError(t, r.err)
		r.close()
	}
	assert.Equal(t, 3, most)
}

func TestCallersWaitingForADialSlotFailFastWhenTheDialsFail(t *testing.T) {
	release := make(chan struct{})
	dialErr := errors.New("connection refused")
	var mu sync.Mutex
	inDial := 0
	p := &redispool.Pool{MaxActive: 20, MaxConcurrentDials: 2, WaitTimeout: 5 * time.Second, Dial: func() (redis.Conn, error) {
		mu.Lock()
		inDial++
		mu.Unlock()
		<-release
		return nil, dialErr
	}}
	defer p.Close()
	gets := make([]<-chan getResult, 20)
	for i := range gets {
		gets[i] = goGet(p, context.Background())
	}
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return inDial == 2
	}, 5*time.Second, time.Millisecond)
	close(release)
	for _, got := range gets {
		assert.ErrorIs(t, awaitGet(t, got, 5*time.Second).err, dialErr)
	}
	s := p.Stats()
	assert.EqualValues(t, 2, s.DialCount, "the waiting callers did not dial into a dead server")
	assert.EqualValues(t, 18, s.FastFailCount)
}

func TestWhileDialsFailCallersGetTheLastDialErrorAtOnce(t *testing.T) {
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)()
	d := &fakeDialer{}
	dialErr := errors.New("connection refused")
	d.SetErr(dialErr)
	p := &redispool.Pool{Dial: d.Dial}
	defer p.Close()

	_, err := p.GetContext(context.Background())
	require.Equal(t, dialErr, err)
	for range 100 {
		_, err := p.GetContext(context.Background())
		require.ErrorIs(t, err, dialErr)
		require.ErrorIs(t, err, redispool.ErrDialBackoff)
	}
	assert.EqualValues(t, 1, d.dials.Load(), "no dial during the backoff")
	assert.EqualValues(t, 100, p.Stats().FastFailCount)

	// Each failure doubles the backoff, up to its cap.
	for i := 2; i <= 10; i++ {
		clk.Advance(redispool.BackoffCap)
		_, err := p.GetContext(context.Background())
		require.Equal(t, dialErr, err)
		require.EqualValues(t, i, d.dials.Load(), "one probe per backoff period")
		_, err = p.GetContext(context.Background())
		require.ErrorIs(t, err, dialErr)
		require.EqualValues(t, i, d.dials.Load())
	}

	// One success resets the backoff.
	d.SetErr(nil)
	clk.Advance(redispool.BackoffCap)
	conns := getN(t, p, 3)
	closeAll(conns)
	assert.EqualValues(t, 13, d.dials.Load())
	assert.Equal(t, 3, p.ActiveCount())
}

// TestWithAutoPipelineACommandNoConnCouldCarryLeavesTheBorrowUsable: with
// AutoPipeline, a Get takes no connection, and a command that fails because
// none could be dialed was never written: it gets the dial's error, and the
// borrow, having done nothing, stays usable; once dials succeed, its next
// command runs.
func TestWithAutoPipelineACommandNoConnCouldCarryLeavesTheBorrowUsable(t *testing.T) {
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)()
	d := &fakeDialer{}
	dialErr := errors.New("connection refused")
	d.SetErr(dialErr)
	p := &redispool.Pool{Dial: d.Dial, AutoPipeline: true}
	defer p.Close()
	c := p.Get()
	defer c.Close()
	require.NoError(t, c.Err(), "Get takes no connection")

	_, err := c.Do("GET", "k")
	require.ErrorIs(t, err, dialErr)
	_, err = c.Do("GET", "k")
	require.ErrorIs(t, err, redispool.ErrDialBackoff, "the next command fails fast during the backoff")
	require.NoError(t, c.Err(), "nothing was written: the borrow is not broken")

	d.SetErr(nil)
	clk.Advance(redispool.BackoffCap)
	reply, err := c.Do("GET", "k")
	require.NoError(t, err)
	assert.Equal(t, "OK", reply)
	assert.EqualValues(t, 2, d.dials.Load())
}

// TestADialWhoseAnswerRedigoCannotHoldFails: the pool's own dial reads
// the answer to its PING, or to SELECT of its DB, on the caller's
// goroutine, where a reply redigo cannot hold is the dial's error; on a
// goroutine of redigo's own (redis.DoContext), its panic would end the
// program.
func TestADialWhoseAnswerRedigoCannotHoldFails(t *testing.T) {
	addr := replyServer(t, func([]string) string { return unholdable })
	for _, tc := range []struct {
		name string
		pool *redispool.Pool
	}{
		{"PING", &redispool.Pool{Addr: addr}},
		{"SELECT", &redispool.Pool{Addr: addr, DB: 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer tc.pool.Close()
			_, err := tc.pool.GetContext(context.Background())
			require.ErrorContains(t, err, "unreadable reply")
			assert.ErrorContains(t, err, tc.name)
			assert.Zero(t, tc.pool.ActiveCount())
		})
	}
}

// TestAReplyRedigoCannotHoldBreaksTheConn: on a connection the pool
// dialed, a reply redigo cannot hold is the call's error, by Do, by
// Receive, or on a shared connection of AutoPipeline, and the connection
// is discarded: the program goes on, and no one reads after it.
func TestAReplyRedigoCannotHoldBreaksTheConn(t *testing.T) {
	addr := replyServer(t, func(args []string) string {
		if strings.EqualFold(args[0], "GET") {
			return unholdable
		}
		return "+PONG\r\n"
	})
	for _, tc := range []struct {
		name string
		auto bool
		get  func(c redis.Conn) error
	}{
		{"Do", false, func(c redis.Conn) error { _, err := c.Do("GET", "k"); return err }},
		{"Receive", false, func(c redis.Conn) error {
			c.Send("GET", "k")
			c.Flush()
			_, err := c.Receive()
			return err
		}},
		{"AutoPipeline", true, func(c redis.Conn) error { _, err := c.Do("GET", "k"); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &redispool.Pool{Addr: addr, MaxActive: 1, AutoPipeline: tc.auto}
			defer p.Close()
			c := p.Get()
			err := tc.get(c)
			require.ErrorContains(t, err, "unreadable reply")
			c.Close()
			require.Eventually(t, func() bool { return p.Stats().Discards.Broken == 1 }, 5*time.Second, time.Millisecond)

			c = p.Get()
			defer c.Close()
			reply, err := c.Do("PING")
			require.NoError(t, err, "a new connection serves the next borrower")
			assert.Equal(t, "PONG", reply)
		})
	}
}

// TestASlotMapRefreshWhoseReplyRedigoCannotHoldFails: a refresh of a
// Cluster's slot map runs on a goroutine of its own, after a MOVED that
// disagrees with the map; a CLUSTER SLOTS reply redigo cannot hold fails
// the refresh, and the program goes on.
func TestASlotMapRefreshWhoseReplyRedigoCannotHoldFails(t *testing.T) {
	addr, slotsAsked := oneNodeCluster(t, func(n int64, own string) string {
		if n > 1 {
			return unholdable
		}
		return own
	})
	p := &redispool.Pool{Cluster: &redispool.Cluster{StartupNodes: []string{addr}}, WaitTimeout: -1}
	defer p.Close()
	c := p.Get()
	_, err := c.Do("GET", "k") // MOVED elsewhere: refresh, then a failed dial to 127.0.0.1:1
	c.Close()
	require.Error(t, err)
	require.Eventually(t, func() bool { return slotsAsked.Load() >= 2 }, 5*time.Second, time.Millisecond,
		"the MOVED asked for a refresh")
	require.Eventually(t, func() bool { return p.Stats().Discards.Broken >= 1 }, 5*time.Second, time.Millisecond,
		"the refresh failed, and its node conn was discarded")
}

// TestTheFirstSlotMapIsAskedForAtMostTwiceASecond: while no node gives a
// Cluster its first slot map, callers within 500 ms of the last attempt's
// start get its error at once; each waits for an attempt in progress no
// longer than its context; and Close ends an attempt in progress.
func TestTheFirstSlotMapIsAskedForAtMostTwiceASecond(t *testing.T) {
	t.Run("refused", func(t *testing.T) {
		var asked atomic.Int64
		addr := replyServer(t, func(args []string) string {
			if strings.EqualFold(args[0], "CLUSTER") {
				asked.Add(1)
				return "-ERR This instance has cluster support disabled\r\n"
			}
			return "+PONG\r\n"
		})
		p := &redispool.Pool{Cluster: &redispool.Cluster{StartupNodes: []string{addr}}}
		defer p.Close()
		gets := 0
		for start := time.Now(); time.Since(start) < time.Second; gets++ {
			_, err := p.GetContext(context.Background())
			require.ErrorContains(t, err, "cluster support disabled")
		}
		t.Logf("%d failed Gets in 1 s asked for CLUSTER SLOTS %d times", gets, asked.Load())
		assert.LessOrEqual(t, asked.Load(), int64(3), "at most 2 a second, plus the one at the start")
	})
	t.Run("silent", func(t *testing.T) {
		addr := silentServer(t)
		p := &redispool.Pool{Cluster: &redispool.Cluster{StartupNodes: []string{addr}}, DialTimeout: 10 * time.Second}
		defer p.Close()
		first := make(chan error, 1)
		go func() { _, err := p.GetContext(context.Background()); first <- err }()
		time.Sleep(50 * time.Millisecond) // the first Get reads, or waits for, the map
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := p.GetContext(ctx)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Less(t, time.Since(start), time.Second, "a waiting Get ends with its context")

		start = time.Now()
		p.Close()
		assert.Less(t, time.Since(start), time.Second, "Close ends the read in progress")
		select {
		case err := <-first:
			require.Error(t, err)
		case <-time.After(5 * time.Second):
			t.Fatal("the Get reading the map did not return after Close")
		}
	})
}

func TestBackoffGrowsFromBaseToCap(t *testing.T) {
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)()
	d := &fakeDialer{}
	d.SetErr(errors.New("refused"))
	p := &redispool.Pool{Dial: d.Dial}
	defer p.Close()
	p.Get() // first failure: backoff in [base/2, base]
	clk.Advance(redispool.BackoffBase/2 - time.Millisecond)
	p.Get()
	assert.EqualValues(t, 1, d.dials.Load(), "no retry before half the base backoff")
	clk.Advance(redispool.BackoffBase/2 + time.Millisecond)
	p.Get()
	assert.EqualValues(t, 2, d.dials.Load(), "a retry by the base backoff")

	// After the k-th failure in a row the backoff is base<<(k-1), less up to
	// half of it in jitter, up to the cap: no retry before half of it, one
	// by all of it.
	for k := 3; k <= 10; k++ {
		b := min(redispool.BackoffBase<<(k-2), redispool.BackoffCap) // after failure k-1
		clk.Advance(b/2 - time.Millisecond)
		p.Get()
		require.EqualValues(t, k-1, d.dials.Load(), "no retry before half of %v", b)
		clk.Advance(b/2 + time.Millisecond)
		p.Get()
		require.EqualValues(t, k, d.dials.Load(), "a retry by %v", b)
	}
}

func TestOnlyOneProbeDialsWhileTheServerIsDown(t *testing.T) {
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)()
	release := make(chan struct{})
	dialErr := errors.New("refused")
	var n int
	var mu sync.Mutex
	p := &redispool.Pool{Dial: func() (redis.Conn, error) {
		mu.Lock()
		n++
		first := n == 1
		mu.Unlock()
		if !first {
			<-release
		}
		return nil, dialErr
	}}
	defer p.Close()
	p.Get()
	clk.Advance(redispool.BackoffCap)
	probe := goGet(p, context.Background()) // blocked in Dial
	require.Eventually(t, func() bool { return p.Stats().DialCount == 2 }, 5*time.Second, time.Millisecond)
	for range 50 {
		_, err := p.GetContext(context.Background())
		require.ErrorIs(t, err, dialErr)
	}
	close(release)
	awaitGet(t, probe, 5*time.Second)
	assert.EqualValues(t, 2, p.Stats().DialCount)
}

// TestADialCountsOnlyOnceTheServerHasAnswered: a server at maxclients, or
// a port that speaks only TLS, accepts the TCP connection and then refuses
// or closes it. Such a dial is a failed dial, which backs off: 32 callers
// for 1.5 s make at most 20 dials, and get an error that says what
// happened.
func TestADialCountsOnlyOnceTheServerHasAnswered(t *testing.T) {
	const (
		callers  = 32
		period   = 1500 * time.Millisecond
		maxDials = 20
	)
	t.Run("server at maxclients", func(t *testing.T) {
		srv := redistest.Start(t, "--maxclients", "1")
		other, err := redis.Dial("tcp", srv.Addr())
		require.NoError(t, err)
		defer other.Close()
		_, err = other.Do("PING")
		require.NoError(t, err)

		p := &redispool.Pool{Addr: srv.Addr()}
		defer p.Close()
		err = hammer(p, callers, period)
		s := p.Stats()
		t.Logf("%d dials, %d failed, %d Gets failed fast, in %v; last error: %v", s.DialCount, s.DialErrorCount, s.FastFailCount, period, err)
		assert.LessOrEqual(t, s.DialCount, int64(maxDials))
		assert.Equal(t, s.DialCount, s.DialErrorCount, "every dial failed")
		require.Error(t, err)
		assert.Contains(t, err.Error(), "max number of clients reached")
	})
	t.Run("a Dial of the user's to a server at maxclients", func(t *testing.T) {
		// The Dial sends nothing: the refusal comes as the first reply,
		// which counts as the dial's failure.
		srv := redistest.Start(t, "--maxclients", "1")
		other, err := redis.Dial("tcp", srv.Addr())
		require.NoError(t, err)
		defer other.Close()
		_, err = other.Do("PING")
		require.NoError(t, err)

		p := &redispool.Pool{Dial: func() (redis.Conn, error) { return redis.Dial("tcp", srv.Addr()) }}
		defer p.Close()
		err = hammer(p, callers, period)
		s := p.Stats()
		t.Logf("%d dials, %d failed, %d Gets failed fast, in %v; last error: %v", s.DialCount, s.DialErrorCount, s.FastFailCount, period, err)
		// Before the first refusal is read, every caller may dial once.
		assert.LessOrEqual(t, s.DialCount, int64(callers+maxDials))
		assert.Positive(t, s.FastFailCount, "the pool backs off")
		require.Error(t, err)
		assert.Contains(t, err.Error(), "max number of clients reached")
	})
	t.Run("plain client to a TLS port", func(t *testing.T) {
		certFile, keyFile := selfSignedCert(t, t.TempDir())
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		tlsPort := l.Addr().(*net.TCPAddr).Port
		l.Close()
		redistest.Start(t, "--tls-port", strconv.Itoa(tlsPort), "--tls-cert-file", certFile,
			"--tls-key-file", keyFile, "--tls-ca-cert-file", certFile, "--tls-auth-clients", "no")

		p := &redispool.Pool{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(tlsPort))}
		defer p.Close()
		err = hammer(p, callers, period)
		s := p.Stats()
		t.Logf("%d dials, %d failed, %d Gets failed fast, in %v; last error: %v", s.DialCount, s.DialErrorCount, s.FastFailCount, period, err)
		assert.LessOrEqual(t, s.DialCount, int64(maxDials))
		assert.Equal(t, s.DialCount, s.DialErrorCount, "every dial failed")
		require.Error(t, err)
		assert.Contains(t, err.Error(), "TLS")
	})
}

// ---------------------------------------------------------------------------
// Addr, URLs, credentials and TLS.

func TestPoolDialsAddrWithDBAndCredentials(t *testing.T) {
	srv := redistest.Start(t)
	srv.Do(t, "ACL", "SETUSER", "app", "on", ">s3cret", "~*", "&*", "+@all")
	p := &redispool.Pool{Addr: srv.Addr(), Username: "app", Password: "s3cret", DB: 2}
	defer p.Close()
	c := p.Get()
	_, err := c.Do("SET", "in:db2", "yes")
	require.NoError(t, err)
	who, err := redis.String(c.Do("ACL", "WHOAMI"))
	require.NoError(t, err)
	assert.Equal(t, "app", who)
	c.Do("SELECT", 2) // the pool's own database: the conn is kept
	c.Close()
	assert.Zero(t, p.Stats().Discards.Total())

	check, err := redis.Dial("tcp", srv.Addr(), redis.DialDatabase(2))
	require.NoError(t, err)
	defer check.Close()
	got, err := redis.String(check.Do("GET", "in:db2"))
	require.NoError(t, err)
	assert.Equal(t, "yes", got)

	bad := &redispool.Pool{Addr: srv.Addr(), Username: "app", Password: "wrong"}
	defer bad.Close()
	_, err = bad.GetContext(context.Background())
	require.Error(t, err)
	var rerr redis.Error
	assert.ErrorAs(t, err, &rerr, "the server's AUTH error comes back to the caller")
	assert.Equal(t, 0, bad.ActiveCount())
}

// TestAURLInAddrGivesTheUserPasswordAndDatabase: a redis:// URL in Addr
// authenticates as its user, or with its password alone, and selects its
// database, which the pool takes as its DB: a connection a borrower left
// in another database is not handed out again.
func TestAURLInAddrGivesTheUserPasswordAndDatabase(t *testing.T) {
	s := redistest.Start(t, "--user", "alice", "on", ">Hunter2pw", "~*", "&*", "+@all")
	p := &redispool.Pool{Addr: "redis://alice:Hunter2pw@" + s.Addr() + "/3", MaxActive: 1}
	defer p.Close()

	clientInfo := func() string {
		c, err := p.GetContext(context.Background())
		require.NoError(t, err)
		defer c.Close()
		info, err := redis.String(c.Do("CLIENT", "INFO"))
		require.NoError(t, err)
		_, err = c.Do("SELECT", 0) // left in database 0
		require.NoError(t, err)
		return info
	}
	first := clientInfo()
	assert.Contains(t, first, " user=alice ")
	assert.Contains(t, first, " db=3 ")
	assert.Contains(t, clientInfo(), " db=3 ", "a conn left in database 0 was handed out")

	for _, addr := range []string{"redis://:Tiger3pw@", "redis://Tiger3pw@"} {
		t.Run(addr, func(t *testing.T) {
			s := redistest.Start(t)
			s.Do(t, "CONFIG", "SET", "requirepass", "Tiger3pw")
			p := &redispool.Pool{Addr: addr + s.Addr(), MaxActive: 1}
			defer p.Close()
			c, err := p.GetContext(context.Background())
			require.NoError(t, err)
			defer c.Close()
			_, err = c.Do("SET", "k", "v") // NOAUTH without the password
			require.NoError(t, err)
		})
	}
}

// TestAURLInAddrKeepsThePoolsTimeouts: a URL gives the address, not the
// timeouts: DialTimeout bounds the dial (AUTH to a server that never
// answers) and ReadTimeout each reply (from a server frozen after the dial).
func TestAURLInAddrKeepsThePoolsTimeouts(t *testing.T) {
	p := &redispool.Pool{Addr: "redis://:Hunter2pw@" + silentServer(t), DialTimeout: 300 * time.Millisecond}
	defer p.Close()
	r := awaitGet(t, goGet(p, context.Background()), 2*time.Second)
	r.close()
	err := r.err
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	assert.True(t, ne.Timeout(), "the dial failed other than by timing out: %v", err)

	s := redistest.Start(t)
	p = &redispool.Pool{Addr: "redis://" + s.Addr() + "/1", ReadTimeout: 200 * time.Millisecond}
	defer p.Close()
	c := p.Get()
	defer c.Close()
	_, err = c.Do("PING")
	require.NoError(t, err)
	s.Stop(t)
	defer s.Cont(t)
	start := time.Now()
	_, err = c.Do("PING")
	took := time.Since(start)
	require.ErrorAs(t, err, &ne)
	assert.True(t, ne.Timeout(), "PING to a frozen server failed other than by timing out: %v", err)
	assert.Less(t, took, 2*time.Second, "ReadTimeout 200ms, PING returned after %v", took)
}

// TestARedissURLInAddrDialsWithTLS: rediss:// turns TLS on, with the URL's
// host as the server name the certificate is checked against, and
// DialOptions still apply (here, the CA to trust).
func TestARedissURLInAddrDialsWithTLS(t *testing.T) {
	certFile, keyFile := selfSignedCert(t, t.TempDir())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	tlsPort := l.Addr().(*net.TCPAddr).Port
	l.Close()
	redistest.Start(t, "--tls-port", strconv.Itoa(tlsPort), "--tls-cert-file", certFile,
		"--tls-key-file", keyFile, "--tls-ca-cert-file", certFile, "--tls-auth-clients", "no")
	pem, err := os.ReadFile(certFile)
	require.NoError(t, err)
	roots := x509.NewCertPool()
	require.True(t, roots.AppendCertsFromPEM(pem))

	p := &redispool.Pool{Addr: "rediss://127.0.0.1:" + strconv.Itoa(tlsPort) + "/2",
		DialOptions: []redis.DialOption{redis.DialTLSConfig(&tls.Config{RootCAs: roots})}}
	defer p.Close()
	c, err := p.GetContext(context.Background())
	require.NoError(t, err)
	defer c.Close()
	info, err := redis.String(c.Do("CLIENT", "INFO"))
	require.NoError(t, err)
	assert.Contains(t, info, " db=2 ")
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

// ---------------------------------------------------------------------------
// DialTimeout, ReadTimeout and WriteTimeout.

// TestDialTimeoutBoundsEveryStep checks that DialTimeout bounds the whole
// dial against a server that accepts and never answers: the TLS handshake
// (redigo's own default for it is 10 s) and AUTH.
func TestDialTimeoutBoundsEveryStep(t *testing.T) {
	addr := silentServer(t)
	for _, tc := range []struct {
		name string
		pool *redispool.Pool
	}{
		{"TLS handshake", &redispool.Pool{Addr: addr, DialOptions: []redis.DialOption{redis.DialUseTLS(true)}}},
		{"AUTH", &redispool.Pool{Addr: addr, Password: "secret"}},
		{"SELECT", &redispool.Pool{Addr: addr, DB: 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.pool
			p.DialTimeout = 300 * time.Millisecond
			defer p.Close()
			start := time.Now()
			c := p.Get()
			took := time.Since(start)
			require.Error(t, c.Err())
			c.Close()
			assert.Less(t, took, 2*time.Second, "Get with DialTimeout %v returned after %v: %v", p.DialTimeout, took, c.Err())
		})
	}
}

func TestNegativeTimeoutsDisableThem(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, ReadTimeout: -1}
	defer p.Close()
	c := p.Get()
	defer c.Close()
	_, err := c.Do("GET", "k")
	require.NoError(t, err)
	assert.Equal(t, []time.Duration{0}, d.last(t).Timeouts())
}

func TestReadTimeoutIsAppliedPerCommandToConnsFromDial(t *testing.T) {
	d := &fakeDialer{}
	p := onePool(t, d)
	c := p.Get()
	defer c.Close()
	fc := d.last(t)
	c.Do("GET", "k")
	c.Do("BLPOP", "k", 1)
	c.Do("blpop", "k", "0")
	c.Do("XREAD", "BLOCK", 500, "STREAMS", "s", "$")
	c.Do("WAIT", 1, 0)
	c.Send("BLPOP", "k", 2)
	c.Flush()
	c.Receive()
	c.Receive() // nothing pending: ReadTimeout
	c.Send("BRPOP", "k", 0)
	c.Do("")
	c.Send("BRPOP", "k", 1)
	c.Do("GET", "k")
	redis.DoWithTimeout(c, 5*time.Second, "GET", "k")
	ms := time.Millisecond
	assert.Equal(t, []time.Duration{
		200 * ms, 1200 * ms, 0, 700 * ms, 0,
		2200 * ms, 200 * ms,
		0,
		1200 * ms,
		5 * time.Second,
	}, fc.Timeouts())
}

func TestDoContextDeadlineShortensTheReadTimeout(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, ReadTimeout: 10 * time.Second}
	defer p.Close()
	c := p.Get()
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := redis.DoContext(c, ctx, "GET", "k")
	require.NoError(t, err)
	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Hour)
	defer cancel2()
	redis.DoContext(c, ctx2, "GET", "k")
	ts := d.last(t).Timeouts()
	require.Len(t, ts, 2)
	assert.LessOrEqual(t, ts[0], 2*time.Second, "the context's deadline, shorter than ReadTimeout")
	assert.Greater(t, ts[0], time.Duration(0))
	assert.Equal(t, 10*time.Second, ts[1], "ReadTimeout, shorter than the context's")
}

func TestAWriteTimeoutUnderDoContextIsNotStretchedToTheContextsDeadline(t *testing.T) {
	srv := redistest.Start(t)
	p := &redispool.Pool{Addr: srv.Addr(), ReadTimeout: 5 * time.Second, WriteTimeout: 200 * time.Millisecond}
	defer p.Close()
	c := p.Get()
	defer c.Close()
	_, err := c.Do("PING")
	require.NoError(t, err)
	srv.Stop(t)
	defer srv.Cont(t)
	// Larger than the socket buffers: the write blocks until its deadline.
	value := strings.Repeat("x", 32<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	_, err = redis.DoContext(c, ctx, "SET", "k", value)
	require.Error(t, err)
	assert.ErrorIs(t, err, os.ErrDeadlineExceeded, "the write deadline's own error")
	assert.Less(t, time.Since(start), 2*time.Second)
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

// ---------------------------------------------------------------------------
// Blocking commands and subscriptions.

func TestBlockingCommandWaitsItsOwnTimeoutAndKeepsItsConn(t *testing.T) {
	srv := redistest.Start(t, "--enable-debug-command", "yes")
	p := &redispool.Pool{Addr: srv.Addr(), ReadTimeout: 200 * time.Millisecond}
	defer p.Close()
	c := p.Get()
	start := time.Now()
	r, err := c.Do("BLPOP", "empty:list", 1)
	elapsed := time.Since(start)
	require.NoError(t, err, "BLPOP k 1 must not time out under ReadTimeout 200ms")
	assert.Nil(t, r)
	assert.GreaterOrEqual(t, elapsed, 900*time.Millisecond)
	assert.Less(t, elapsed, 1200*time.Millisecond)
	c.Close()

	c = p.Get()
	_, err = c.Do("PING")
	require.NoError(t, err)
	c.Close()
	s := p.Stats()
	assert.EqualValues(t, 1, s.DialCount, "the connection was kept")
	assert.Zero(t, s.Discards.Total())

	// A plain command still gets only ReadTimeout.
	c = p.Get()
	defer c.Close()
	_, err = c.Do("DEBUG", "SLEEP", "0.5")
	require.Error(t, err)
	assert.ErrorIs(t, err, os.ErrDeadlineExceeded)
}

// TestBlockingTimeoutsThatOverflowMeanNoDeadline checks that pending
// blocking commands whose timeouts add up past what a time.Duration holds
// leave the read without a deadline, rather than with one that wrapped
// around, and that a bool timeout counts as redigo sends it (true is 1).
func TestBlockingTimeoutsThatOverflowMeanNoDeadline(t *testing.T) {
	d := &fakeDialer{}
	p := onePool(t, d)
	c := p.Get()
	defer c.Close()
	fc := d.last(t)
	for range 3 {
		c.Send("BLPOP", "k", 4e9) // 126 years each
	}
	c.Do("")
	c.Do("BLPOP", "k", true)
	assert.Equal(t, []time.Duration{0, 1200 * time.Millisecond}, fc.Timeouts())
}

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

// TestXReadGroupConsumerNamedStreamsBlocks: the names after GROUP are not
// options, so a consumer named STREAMS does not hide BLOCK: the command gets
// ReadTimeout plus its own timeout.
func TestXReadGroupConsumerNamedStreamsBlocks(t *testing.T) {
	srv := redistest.Start(t)
	srv.Do(t, "XGROUP", "CREATE", "probe:s", "g", "$", "MKSTREAM")
	// 250 ms of slack over the BLOCK, for a loaded machine: a BLOCK missed
	// fails at 250 ms.
	p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 1, ReadTimeout: 250 * time.Millisecond}
	defer p.Close()
	c := p.Get()
	defer c.Close()
	r, err := c.Do("XREADGROUP", "GROUP", "g", "STREAMS", "BLOCK", 600, "STREAMS", "probe:s", ">")
	require.NoError(t, err, "XREADGROUP ... BLOCK 600 timed out under ReadTimeout 250ms")
	assert.Nil(t, r)
}

func TestReceiveOnASubscribedConnHasNoDeadlineUntilUnsubscribe(t *testing.T) {
	d := &fakeDialer{}
	p := onePool(t, d)
	c := p.Get()
	defer c.Close()
	fc := d.last(t)
	psc := redis.PubSubConn{Conn: c}
	psc.Subscribe("ch")
	psc.Receive()
	psc.Receive()
	psc.Unsubscribe()
	psc.Receive()
	assert.Equal(t, []time.Duration{0, 0, 200 * time.Millisecond}, fc.Timeouts())
}

func TestLeavingOneKindOfSubscriptionKeepsReceiveDeadlineFreeForTheOthers(t *testing.T) {
	d := &fakeDialer{}
	p := onePool(t, d)
	c := p.Get()
	defer c.Close()
	psc := redis.PubSubConn{Conn: c}
	psc.Subscribe("ch")
	psc.PSubscribe("p*")
	psc.PUnsubscribe()
	psc.Receive() // still subscribed to ch: waits for messages
	psc.Unsubscribe()
	psc.Receive() // nothing left: the confirmation comes within ReadTimeout
	assert.Equal(t, []time.Duration{0, 200 * time.Millisecond}, d.last(t).Timeouts())
}

// ---------------------------------------------------------------------------
// Helpers: servers on loopback, TLS, and argument types.

// serveLoopback accepts connections on a loopback port and runs serve on
// each, until the test ends, when it closes the listener and every
// connection and waits for serve to return. It returns the address.
func serveLoopback(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var mu sync.Mutex
	var conns []net.Conn
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				serve(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// replyServer answers each command read from its clients with what reply
// returns for it.
func replyServer(t *testing.T, reply func(args []string) string) string {
	return serveLoopback(t, func(c net.Conn) {
		r := bufio.NewReader(c)
		for {
			args, err := readCommand(r)
			if err != nil {
				return
			}
			if _, err := c.Write([]byte(reply(args))); err != nil {
				return
			}
		}
	})
}

// oneNodeCluster starts a fake cluster of one node, which serves every
// slot and answers GET with a MOVED to 127.0.0.1:1, where no one listens.
// Its n-th CLUSTER SLOTS (from 1) is answered with slots(n, own), own
// being its true slot map. It returns the node's address and the count of
// CLUSTER SLOTS asked.
func oneNodeCluster(t *testing.T, slots func(n int64, own string) string) (string, *atomic.Int64) {
	var asked atomic.Int64
	var addr string
	addr = replyServer(t, func(args []string) string {
		switch strings.ToUpper(args[0]) {
		case "CLUSTER":
			host, port, _ := net.SplitHostPort(addr)
			own := fmt.Sprintf("*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$%d\r\n%s\r\n:%s\r\n", len(host), host, port)
			return slots(asked.Add(1), own)
		case "GET":
			return "-MOVED 0 127.0.0.1:1\r\n"
		}
		return "+PONG\r\n"
	})
	return addr, &asked
}

// unholdable is a reply redigo cannot hold: a bulk string longer than any
// slice, on which its reader panics.
const unholdable = "$9223372036854775807\r\n"

// silentServer reads what its clients send and never answers, as a server
// hung after accept does.
func silentServer(t *testing.T) string {
	return serveLoopback(t, func(c net.Conn) { io.Copy(io.Discard, c) })
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

// readCommand reads one RESP array of bulk strings.
func readCommand(r *bufio.Reader) ([]string, error) {
	var n int
	if _, err := fmt.Fscanf(r, "*%d\r\n", &n); err != nil {
		return nil, err
	}
	args := make([]string, n)
	for i := range args {
		var size int
		if _, err := fmt.Fscanf(r, "$%d\r\n", &size); err != nil {
			return nil, err
		}
		b := make([]byte, size+2)
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, err
		}
		args[i] = string(b[:size])
	}
	return args, nil
}

// refusedAddr returns a loopback address nobody listens on.
func refusedAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// selfSignedCert writes a self-signed certificate for 127.0.0.1 and
// its key to dir.
func selfSignedCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(crand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	kder, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600))
	return certFile, keyFile
}

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

// hammer runs callers goroutines that Get, PING and Close in a loop for d,
// and returns the last error a Get or its PING returned.
func hammer(p *redispool.Pool, callers int, d time.Duration) error {
	var mu sync.Mutex
	var last error
	var wg sync.WaitGroup
	end := time.Now().Add(d)
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				c := p.Get()
				_, err := c.Do("PING")
				c.Close()
				if err != nil {
					mu.Lock()
					last = err
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return last
}

// timeoutSeconds is a caller's named type for a timeout: redigo writes it
// with fmt.Fprint, as the number it holds.
type timeoutSeconds int

// timeoutArg is a redis.Argument: redigo writes what RedisArg returns.
type timeoutArg struct{ v float64 }

func (a timeoutArg) RedisArg() any { return a.v }
