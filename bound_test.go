package redispool_test

// The bound: at most MaxActive connections exist, counting those being
// dialed, also through RedigoPool; every permit a Get takes comes back; the
// configuration that sets the bound is checked on first use, and the zero
// value works; Close wakes every waiter, starts no dial and leaves nothing
// open. This file also holds the fake conn and the helpers that the
// package's tests share.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/internal/redistest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// ---------------------------------------------------------------------------
// MaxActive and MaxIdle.

func TestZeroMaxActiveIsTenTimesGOMAXPROCS(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, WaitTimeout: -1}
	defer p.Close()
	n := 10 * runtime.GOMAXPROCS(0)
	conns := getN(t, p, n)
	defer closeAll(conns)

	_, err := p.GetContext(context.Background())
	require.Error(t, err)
	assert.ErrorIs(t, err, redis.ErrPoolExhausted)
	assert.ErrorIs(t, err, redispool.ErrPoolExhausted)
	assert.Equal(t, n, p.ActiveCount())
	assert.EqualValues(t, n, d.dials.Load())
}

func TestZeroMaxActiveWithLargerMaxIdleUsesMaxIdle(t *testing.T) {
	d := &fakeDialer{}
	n := 10*runtime.GOMAXPROCS(0) + 5
	p := &redispool.Pool{Dial: d.Dial, MaxIdle: n, WaitTimeout: -1}
	defer p.Close()
	conns := getN(t, p, n)
	_, err := p.GetContext(context.Background())
	assert.ErrorIs(t, err, redis.ErrPoolExhausted)
	closeAll(conns)
	assert.Equal(t, n, p.IdleCount())
}

func TestMaxIdleAboveMaxActiveIsLoweredToMaxActive(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 2, MaxIdle: 5, WaitTimeout: -1}
	defer p.Close()
	conns := getN(t, p, 2)
	_, err := p.GetContext(context.Background())
	assert.ErrorIs(t, err, redis.ErrPoolExhausted, "MaxActive 2 still bounds")
	closeAll(conns)
	assert.Equal(t, 2, p.IdleCount())
}

func TestLargestPoolSizeIsAccepted(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1 << 16, MaxIdle: math.MaxInt32} // MaxIdle lowered to MaxActive
	defer p.Close()
	c, err := p.GetContext(context.Background())
	require.NoError(t, err)
	c.Close()
}

func TestConcurrentGetCloseNeverExceedsMaxActive(t *testing.T) {
	// The dialer counts the conns open at every dial: the pool must never
	// have more than MaxActive, dirty conns being discarded and redialed all
	// along.
	d := &fakeDialer{}
	p := &redispool.Pool{MaxActive: 5, WaitTimeout: 5 * time.Second, Dial: d.Dial}
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 200 {
				c := p.Get()
				if err := c.Err(); err != nil {
					t.Error(err)
					return
				}
				if (i+j)%7 == 0 {
					c.Do("SUBSCRIBE", "x") // dirty: discarded, a new dial follows
				}
				c.Close()
			}
		}()
	}
	wg.Wait()
	p.Close()
	assert.Greater(t, p.Stats().DialCount, int64(100), "dirty conns were redialed")
	assert.LessOrEqual(t, d.peak.Load(), int64(5), "more than MaxActive conns open at once")
	for _, c := range d.Conns() {
		assert.True(t, c.IsClosed(), "every conn closed after Close")
	}
	assert.Equal(t, 0, p.ActiveCount())
}

// TestTwoHundredCallersOpenAtMostMaxActiveConnections: 200 callers for 2 s
// on a pool with only Dial set open at most MaxActive connections, at once
// and in all, and every reply is theirs. Under this load redigo's pool opens
// 333 connections at once and 28,446 in all.
func TestTwoHundredCallersOpenAtMostMaxActiveConnections(t *testing.T) {
	srv := redistest.Start(t)
	d := 2 * time.Second
	if testing.Short() {
		d = 300 * time.Millisecond
	}
	var n netCounter
	p := &redispool.Pool{Dial: func() (redis.Conn, error) {
		return redis.Dial("tcp", srv.Addr(), redis.DialNetDial(n.dial))
	}}
	defer p.Close()
	before := srv.TotalConnectionsReceived(t)

	var cmds, errs, wrong atomic.Int64
	var peakClients atomic.Int64
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := fmt.Sprintf("k:%d", i)
			for j := 0; time.Now().Before(deadline); j++ {
				c := p.Get()
				want := fmt.Sprint(j)
				_, err := c.Do("SET", key, want)
				var got string
				if err == nil {
					got, err = redis.String(c.Do("GET", key))
				}
				c.Close()
				switch {
				case err != nil:
					errs.Add(1)
				case got != want:
					wrong.Add(1)
				default:
					cmds.Add(2)
				}
			}
		}()
	}
	// Sample the server's own count while the load runs.
	sampled := make(chan error, 1)
	go func() {
		for time.Now().Before(deadline.Add(-50 * time.Millisecond)) {
			c, err := srv.ConnectedClientsErr()
			if err != nil {
				sampled <- err
				return
			}
			if int64(c) > peakClients.Load() {
				peakClients.Store(int64(c))
			}
			time.Sleep(50 * time.Millisecond)
		}
		sampled <- nil
	}()
	wg.Wait()
	require.NoError(t, <-sampled, "sampling the server's client count")

	limit := int64(10 * runtime.GOMAXPROCS(0))
	opened := int64(srv.TotalConnectionsReceived(t) - before)
	t.Logf("%d commands in %v, %d errors, %d wrong replies; connections: %d open at once (server saw %d), %d opened (server saw %d), limit %d",
		cmds.Load(), d, errs.Load(), wrong.Load(), n.peak.Load(), peakClients.Load(), n.opened.Load(), opened, limit)
	assert.Zero(t, errs.Load())
	assert.Zero(t, wrong.Load())
	assert.Positive(t, cmds.Load())
	assert.LessOrEqual(t, n.peak.Load(), limit)
	assert.LessOrEqual(t, peakClients.Load(), limit)
	assert.LessOrEqual(t, n.opened.Load(), limit)
	assert.LessOrEqual(t, opened, limit)
}

func TestDialErrorReturnsTheToken(t *testing.T) {
	clk := newClock()
	defer redispool.SetNowFunc(clk.Now)()
	d := &fakeDialer{}
	dialErr := errors.New("connection refused")
	d.SetErr(dialErr)
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: -1}
	defer p.Close()
	_, err := p.GetContext(context.Background())
	assert.Equal(t, dialErr, err)
	assert.Equal(t, 0, p.ActiveCount())

	d.SetErr(nil)
	clk.Advance(redispool.BackoffCap)
	c, err := p.GetContext(context.Background())
	require.NoError(t, err, "the failed dial gave its token back")
	c.Close()
	s := p.Stats()
	assert.EqualValues(t, 2, s.DialCount)
	assert.EqualValues(t, 1, s.DialErrorCount)
}

func TestConcurrentCloseReturnsTheConnOnce(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: -1}
	defer p.Close()
	for range 100 {
		c := p.Get()
		var wg sync.WaitGroup
		for range 2 {
			wg.Add(1)
			go func() { defer wg.Done(); c.Close() }()
		}
		wg.Wait()
	}
	a, err := p.GetContext(context.Background())
	require.NoError(t, err)
	_, err = p.GetContext(context.Background())
	assert.ErrorIs(t, err, redis.ErrPoolExhausted, "a double Close must not free two slots")
	a.Close()
}

func TestRedigoPoolIsBoundedByThePool(t *testing.T) {
	srv := redistest.Start(t)
	p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 2, WaitTimeout: 100 * time.Millisecond, ReadTimeout: 500 * time.Millisecond}
	defer p.Close()
	rp := p.RedigoPool()
	assert.Zero(t, rp.MaxActive)
	assert.Zero(t, rp.MaxIdle)

	a, b := rp.Get(), rp.Get()
	require.NoError(t, a.Err())
	require.NoError(t, b.Err())
	c := rp.Get()
	assert.ErrorIs(t, c.Err(), redis.ErrPoolExhausted, "the third conn waits WaitTimeout, then fails")
	c.Close()

	// Through redigo's pool, a conn left in another database is put back
	// in DB and kept; a subscribed one is discarded.
	_, err := a.Do("SELECT", 4)
	require.NoError(t, err)
	psc := redis.PubSubConn{Conn: b}
	require.NoError(t, psc.Subscribe("ch"))
	_, ok := psc.Receive().(redis.Subscription)
	require.True(t, ok)
	start := time.Now()
	a.Close()
	b.Close()
	assert.Less(t, time.Since(start), time.Second)
	assert.EqualValues(t, 1, p.Stats().Discards.State)
	assert.EqualValues(t, 0, p.Stats().Discards.Total()-p.Stats().Discards.State)
	srv.Do(t, "SET", "db0:marker", "db0")
	borrowerSeesOnlyItsOwn(t, p)

	// Clean conns are kept by p, not by redigo's pool.
	for range 10 {
		c := rp.Get()
		_, err := c.Do("PING")
		require.NoError(t, err)
		c.Close()
	}
	assert.LessOrEqual(t, p.Stats().DialCount, int64(4))
	assert.NoError(t, rp.Close())
	c = p.Get()
	assert.NoError(t, c.Err(), "closing the redigo pool leaves p open")
	c.Close()
}

// TestRedigoPoolKeepsTheBoundAndTheDiscardRules: the *redis.Pool from
// RedigoPool waits within p's bound, and a conn broken through it is
// discarded by p; closing it does not close p.
func TestRedigoPoolKeepsTheBoundAndTheDiscardRules(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{MaxActive: 1, WaitTimeout: 20 * time.Millisecond, Dial: d.Dial}
	defer p.Close()
	rp := p.RedigoPool()

	c := rp.Get()
	require.NoError(t, c.Err())
	c2 := rp.Get()
	assert.ErrorIs(t, c2.Err(), redis.ErrPoolExhausted, "the adapter stays within MaxActive")
	c2.Close()
	_, err := c.Do("BREAK")
	require.Error(t, err)
	c.Close()
	assert.EqualValues(t, 1, p.Stats().Discards.Broken)
	assert.Equal(t, 0, p.ActiveCount())

	// Not SUBSCRIBE: redigo's own Close then reads until the reply to an
	// ECHO it sends, which the fake conn never gives.
	c = rp.Get()
	_, err = c.Do("CLIENT", "REPLY", "OFF")
	require.NoError(t, err)
	c.Close()
	assert.EqualValues(t, 1, p.Stats().Discards.State, "a conn left with CLIENT REPLY OFF through the adapter is discarded")

	require.NoError(t, rp.Close())
	c, err = p.GetContext(context.Background())
	require.NoError(t, err, "closing the adapter leaves p open")
	c.Close()
	checkAtRest(t, p, 0)
}

// TestClosingOneRedigoPoolLeavesTheOthersServing: each call to RedigoPool
// returns its own *redis.Pool, so that a library closing the one it was
// given (a session store's Close) breaks neither p nor the other libraries,
// and new adapters can still be made.
func TestClosingOneRedigoPoolLeavesTheOthersServing(t *testing.T) {
	srv := redistest.Start(t)
	p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 2}
	defer p.Close()
	store1, store2 := p.RedigoPool(), p.RedigoPool()
	require.NotSame(t, store1, store2)

	require.NoError(t, store1.Close())
	c := store1.Get()
	assert.Error(t, c.Err(), "the closed adapter refuses")
	c.Close()

	for i, rp := range []*redis.Pool{store2, p.RedigoPool()} {
		c := rp.Get()
		v, err := redis.String(c.Do("ECHO", i))
		require.NoError(t, err, "adapter %d", i)
		assert.Equal(t, strconv.Itoa(i), v)
		require.NoError(t, c.Close())
	}
	c = p.Get()
	_, err := c.Do("PING")
	assert.NoError(t, err, "p itself stays open")
	c.Close()
}

// ---------------------------------------------------------------------------
// Configuration and the zero value.

func TestInvalidConfigurationIsReportedByGet(t *testing.T) {
	dial := func() (redis.Conn, error) { return nil, errors.New("unused") }
	cl := func(nodes ...string) *redispool.Cluster {
		if len(nodes) == 0 {
			nodes = []string{"node-1:6379"}
		}
		return &redispool.Cluster{StartupNodes: nodes}
	}
	tests := []struct {
		name string
		pool *redispool.Pool
		want string
	}{
		{"negative MaxActive", &redispool.Pool{MaxActive: -1}, "MaxActive"},
		{"negative MaxIdle", &redispool.Pool{MaxIdle: -1}, "MaxIdle"},
		{"negative MaxConcurrentDials", &redispool.Pool{MaxConcurrentDials: -2}, "MaxConcurrentDials"},
		{"negative DB", &redispool.Pool{DB: -1}, "DB"},
		{"Dial and Addr", &redispool.Pool{Dial: dial, Addr: "localhost:6379"}, "Addr"},
		{"DialContext and Addr", &redispool.Pool{DialContext: func(context.Context) (redis.Conn, error) { return dial() }, Addr: "x:1"}, "Addr"},
		{"Dial and DialOptions", &redispool.Pool{Dial: dial, DialOptions: []redis.DialOption{redis.DialDatabase(1)}}, "DialOptions"},
		{"Dial and Password", &redispool.Pool{Dial: dial, Password: "pw"}, "Password"},
		{"Dial and DialTimeout", &redispool.Pool{Dial: dial, DialTimeout: time.Second}, "DialTimeout"},
		{"Dial and WriteTimeout", &redispool.Pool{Dial: dial, WriteTimeout: time.Second}, "WriteTimeout"},
		{"ReadTimeout without unit", &redispool.Pool{ReadTimeout: 5}, "ReadTimeout"},
		{"WriteTimeout without unit", &redispool.Pool{WriteTimeout: 3}, "WriteTimeout"},
		{"DialTimeout without unit", &redispool.Pool{DialTimeout: 10}, "DialTimeout"},
		{"WaitTimeout without unit", &redispool.Pool{WaitTimeout: 100}, "WaitTimeout"},
		{"IdleTimeout without unit", &redispool.Pool{IdleTimeout: 240}, "IdleTimeout"},
		{"MaxConnLifetime without unit", &redispool.Pool{MaxConnLifetime: 60}, "MaxConnLifetime"},
		{"negative IdleTimeout", &redispool.Pool{IdleTimeout: -time.Second}, "IdleTimeout"},
		{"negative MaxConnLifetime", &redispool.Pool{MaxConnLifetime: -time.Second}, "MaxConnLifetime"},
		{"Sentinel and Addr", &redispool.Pool{Addr: "x:1", Sentinel: &redispool.Sentinel{Addrs: []string{"s:26379"}, MasterName: "m"}}, "Sentinel"},
		{"Sentinel and Dial", &redispool.Pool{Dial: dial, Sentinel: &redispool.Sentinel{Addrs: []string{"s:26379"}, MasterName: "m"}}, "Sentinel"},
		{"Sentinel without Addrs", &redispool.Pool{Sentinel: &redispool.Sentinel{MasterName: "m"}}, "Sentinel.Addrs"},
		{"Sentinel without MasterName", &redispool.Pool{Sentinel: &redispool.Sentinel{Addrs: []string{"s:26379"}}}, "Sentinel.MasterName"},
		{"Addr without port", &redispool.Pool{Addr: "localhost"}, "Addr \"localhost\" is not host:port"},
		{"Addr with a port out of range", &redispool.Pool{Addr: "127.0.0.1:99999"}, "port \"99999\""},
		{"Username without Password", &redispool.Pool{Addr: "x:1", Username: "app"}, "Username is set without Password"},
		{"Sentinel.Username without Sentinel.Password", &redispool.Pool{Sentinel: &redispool.Sentinel{Addrs: []string{"s:26379"}, MasterName: "m", Username: "u"}}, "Sentinel.Username"},
		{"Sentinel address without port", &redispool.Pool{Sentinel: &redispool.Sentinel{Addrs: []string{"sentinel-1"}, MasterName: "m"}}, "host:port"},
		{"Cluster and Addr", &redispool.Pool{Addr: "x:1", Cluster: cl()}, "both Cluster and Addr"},
		{"Cluster and Dial", &redispool.Pool{Dial: dial, Cluster: cl()}, "both Cluster and Dial"},
		{"Cluster and DialContext", &redispool.Pool{DialContext: func(context.Context) (redis.Conn, error) { return dial() }, Cluster: cl()}, "both Cluster and Dial"},
		{"Cluster and Sentinel", &redispool.Pool{Cluster: cl(), Sentinel: &redispool.Sentinel{Addrs: []string{"s:26379"}, MasterName: "m"}}, "both Cluster and Sentinel"},
		{"Cluster and DB", &redispool.Pool{Cluster: cl(), DB: 2}, "Cluster is set and DB is 2"},
		{"Cluster without StartupNodes", &redispool.Pool{Cluster: &redispool.Cluster{}}, "Cluster.StartupNodes is empty"},
		{"Cluster node without port", &redispool.Pool{Cluster: cl("node-1")}, "Cluster.StartupNodes has \"node-1\""},
		{"Cluster node as a URL", &redispool.Pool{Cluster: cl("redis://u:secret@node-1:6379")}, "Cluster.StartupNodes has \"redis://xxxxx@node-1:6379\""},
		// The pool sets aside a permit per connection on first use: MaxActive
		// is bounded so that this stays small.
		{"MaxActive above 65536", &redispool.Pool{Dial: dial, MaxActive: 1<<16 + 1}, "MaxActive is 65537, above the 65536"},
		{"MaxIdle raising the default MaxActive above 65536", &redispool.Pool{Dial: dial, MaxIdle: 1<<16 + 1}, "MaxIdle is 65537"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer tt.pool.Close()
			c, err := tt.pool.GetContext(context.Background())
			require.Error(t, err)
			assert.ErrorIs(t, err, redispool.ErrInvalidConfig)
			assert.Contains(t, err.Error(), tt.want)
			_, err = c.Do("PING")
			assert.ErrorIs(t, err, redispool.ErrInvalidConfig)
			assert.ErrorIs(t, tt.pool.Get().Err(), redispool.ErrInvalidConfig)
			assert.Equal(t, 0, tt.pool.ActiveCount())
		})
	}
}

func TestNilPoolDoesNotPanic(t *testing.T) {
	var p *redispool.Pool
	assert.Error(t, p.Get().Err())
	_, err := p.GetContext(context.Background())
	assert.Error(t, err)
	assert.NoError(t, p.Close())
	assert.Equal(t, redispool.PoolStats{}, p.Stats())
	assert.Equal(t, 0, p.ActiveCount())
	assert.Equal(t, 0, p.IdleCount())
	assert.Error(t, p.RedigoPool().Get().Err())
}

// TestZeroValuePoolTalksToLocalhost6379 starts a redis-server on 6379 and uses
// a Pool declared with var and nothing else.
func TestZeroValuePoolTalksToLocalhost6379(t *testing.T) {
	_, err := redistest.StartOnPort(t, 6379)
	if errors.Is(err, redistest.ErrPortInUse) {
		if os.Getenv("CI") == "true" {
			t.Fatalf("port 6379 is in use, so the zero-value pool cannot be tested: %v", err)
		}
		t.Skipf("port 6379 is in use by another process: %v", err)
	}
	require.NoError(t, err)

	var p redispool.Pool
	defer p.Close()
	c := p.Get()
	defer c.Close()
	key := fmt.Sprintf("redispool:zero:%d", time.Now().UnixNano())
	_, err = c.Do("SET", key, "v", "EX", 10)
	require.NoError(t, err)
	v, err := redis.String(c.Do("GET", key))
	require.NoError(t, err)
	assert.Equal(t, "v", v)
}

// TestZeroValueInitFromManyGoroutines: the first uses of a zero Pool race
// to initialise it.
func TestZeroValueInitFromManyGoroutines(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			switch i % 4 {
			case 0:
				c := p.Get()
				assert.NoError(t, c.Err())
				c.Close()
			case 1:
				p.Stats()
			case 2:
				p.IdleCount()
			case 3:
				p.RedigoPool()
			}
		}()
	}
	close(start)
	wg.Wait()
	require.NoError(t, p.Close())
	assert.Zero(t, d.open.Load())
	assert.Equal(t, 0, p.ActiveCount())
}

func TestConnPoolInterfaceAcceptsBothPools(t *testing.T) {
	use := func(cp redispool.ConnPool) error {
		c := cp.Get()
		defer c.Close()
		_, err := c.Do("PING")
		return err
	}
	d := &fakeDialer{}
	ours := &redispool.Pool{Dial: d.Dial}
	theirs := &redis.Pool{Dial: d.Dial}
	assert.NoError(t, use(ours))
	assert.NoError(t, use(theirs))
	assert.NoError(t, ours.Close())
	assert.NoError(t, theirs.Close())
}

func TestGoVetReportsACopiedPool(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go vet")
	}
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goTool); err != nil {
		t.Skipf("go tool not found at %s", goTool)
	}
	out, err := exec.Command(goTool, "vet", "./testdata/copiedpool").CombinedOutput()
	require.Error(t, err, "go vet accepted a copied Pool:\n%s", out)
	assert.Contains(t, string(out), "passes lock by value: github.com/redispool/redispool.Pool")
}

// ---------------------------------------------------------------------------
// Close.

func TestCloseWakesWaitersWithErrPoolClosed(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: 10 * time.Second}
	held := p.Get()
	const waiters = 5
	errs := make(chan error, waiters)
	for range waiters {
		go func() {
			_, err := p.GetContext(context.Background())
			errs <- err
		}()
	}
	require.Eventually(t, func() bool { return p.Stats().WaitingCount == waiters }, 5*time.Second, time.Millisecond)
	require.NoError(t, p.Close())
	for range waiters {
		select {
		case err := <-errs:
			assert.Equal(t, redispool.ErrPoolClosed, err)
		case <-time.After(5 * time.Second):
			t.Fatal("waiter not woken by Close")
		}
	}
	// The conn still in use is closed when its holder is done with it.
	require.NoError(t, held.Close())
	assert.True(t, d.last(t).IsClosed())
	assert.Equal(t, 0, p.ActiveCount())
	assert.EqualValues(t, 1, p.Stats().Discards.PoolClosed)
}

// TestCloseWakesEveryKindOfWaiterAndIsIdempotent: Close, called from many
// goroutines at once, wakes callers waiting for a conn and for a dial
// slot with ErrPoolClosed, closes the conn of a dial in progress when it
// finishes and those still out when they are given back.
func TestCloseWakesEveryKindOfWaiterAndIsIdempotent(t *testing.T) {
	d := &fakeDialer{}
	release := make(chan struct{})
	var inDial atomic.Int32
	p := &redispool.Pool{MaxActive: 3, MaxConcurrentDials: 1, WaitTimeout: 5 * time.Second, Dial: func() (redis.Conn, error) {
		if inDial.Add(1) == 2 {
			<-release
		}
		return d.Dial()
	}}
	ctx := context.Background()
	out, err := p.GetContext(ctx)
	require.NoError(t, err)
	dialing := goGet(p, ctx)
	require.Eventually(t, func() bool { return inDial.Load() == 2 }, 5*time.Second, 50*time.Microsecond)
	slotWaiter := queueGet(t, p, ctx)
	queued := queueGet(t, p, ctx)

	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() { defer wg.Done(); assert.NoError(t, p.Close()) }()
	}
	wg.Wait()
	for _, ch := range []<-chan getResult{dialing, slotWaiter, queued} {
		r := awaitGet(t, ch, 5*time.Second)
		assert.Nil(t, r.panicked)
		assert.ErrorIs(t, r.err, redispool.ErrPoolClosed)
	}
	close(release)
	require.Eventually(t, func() bool { return p.ActiveCount() == 1 }, 5*time.Second, time.Millisecond,
		"the dial in progress closes its conn when it finishes")
	out.Close()
	assert.Equal(t, 0, p.ActiveCount())
	assert.Zero(t, d.open.Load())
	_, err = p.GetContext(ctx)
	assert.ErrorIs(t, err, redispool.ErrPoolClosed)
	assert.ErrorIs(t, p.Get().Err(), redispool.ErrPoolClosed)
	p.Retire() // after Close: nothing to do, no panic
	assert.NoError(t, p.Close())
	assert.Equal(t, p.Stats().Discards.PoolClosed, int64(2))
}

func TestCloseIsIdempotentAndClosesIdleConns(t *testing.T) {
	d := &fakeDialer{}
	p := &redispool.Pool{Dial: d.Dial}
	closeAll(getN(t, p, 3))
	require.Equal(t, 3, p.IdleCount())

	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() { defer wg.Done(); assert.NoError(t, p.Close()) }()
	}
	wg.Wait()
	assert.NoError(t, p.Close())
	for _, c := range d.Conns() {
		assert.True(t, c.IsClosed())
	}
	assert.Equal(t, 0, p.IdleCount())
	assert.Equal(t, 0, p.ActiveCount())
	_, err := p.GetContext(context.Background())
	assert.Equal(t, redispool.ErrPoolClosed, err)
	assert.Equal(t, redispool.ErrPoolClosed, p.Get().Err())
}

func TestClosingAPoolNeverUsedWorks(t *testing.T) {
	var p redispool.Pool
	require.NoError(t, p.Close())
	_, err := p.GetContext(context.Background())
	assert.Equal(t, redispool.ErrPoolClosed, err)
}

func TestAWaiterThatGivesUpAsThePoolClosesLeavesNoOpenConn(t *testing.T) {
	// A conn handed to a parked waiter whose context ends meanwhile goes
	// back through the same checks as any returned conn: after Close, it is
	// closed, not parked in the idle set.
	for i := range 300 {
		d := &fakeDialer{}
		p := &redispool.Pool{Dial: d.Dial, MaxActive: 1, WaitTimeout: 5 * time.Second}
		held := p.Get()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			if c, err := p.GetContext(ctx); err == nil {
				c.Close()
			}
		}()
		require.Eventually(t, func() bool { return p.Stats().WaitingCount == 1 }, 5*time.Second, 10*time.Microsecond)
		held.Close()
		cancel()
		p.Close()
		<-done
		require.Equal(t, 0, p.IdleCount(), "round %d", i)
		require.True(t, d.last(t).IsClosed(), "round %d: an open conn was left in a closed pool", i)
		require.Equal(t, 0, p.ActiveCount())
	}
}

// No dial begins once Close has returned: a waiter granted a conn it may
// not reuse, as Close runs, gets ErrPoolClosed instead of dialing a conn
// that the closed pool then closes.
func TestNoDialBeginsAfterClose(t *testing.T) {
	d := &fakeDialer{}
	var closed atomic.Bool
	var dialsAfterClose atomic.Int64
	var p *redispool.Pool
	p = &redispool.Pool{MaxActive: 1, WaitTimeout: 5 * time.Second,
		Dial: func() (redis.Conn, error) {
			if closed.Load() {
				dialsAfterClose.Add(1)
			}
			return d.Dial()
		},
		TestOnBorrow: func(redis.Conn, time.Time) error {
			// The pool closes as the waiter's turn comes.
			p.Close()
			closed.Store(true)
			return errUnhealthy
		},
	}
	held, err := p.GetContext(context.Background()) // dialed: no health check
	require.NoError(t, err)
	waiter := queueGet(t, p, context.Background())
	held.Close() // to the waiter, whose health check closes the pool
	r := awaitGet(t, waiter, 5*time.Second)
	r.close()
	assert.Equal(t, redispool.ErrPoolClosed, r.err)
	require.Eventually(t, func() bool { return d.inDial.Load() == 0 && p.ActiveCount() == 0 }, 5*time.Second, time.Millisecond)
	assert.Zero(t, dialsAfterClose.Load(), "dials begun after Close returned")
	assert.Zero(t, d.open.Load())
}

// TestNoDialBeginsAfterCloseForADialSlotWaiter: a caller waiting for a
// dial slot that is handed one as the pool closes must not dial. On one P,
// the caller handed the slot runs only once this goroutine blocks, after
// Close has returned.
func TestNoDialBeginsAfterCloseForADialSlotWaiter(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	d := &fakeDialer{}
	var closed atomic.Bool
	var dialsAfterClose atomic.Int64
	p := &redispool.Pool{MaxActive: 2, MaxConcurrentDials: 1, WaitTimeout: 5 * time.Second,
		Dial: func() (redis.Conn, error) {
			if closed.Load() {
				dialsAfterClose.Add(1)
			}
			return d.Dial()
		}}
	release := p.HoldDialSlot()                    // the one dial slot, as a dial in progress holds it
	waiter := queueGet(t, p, context.Background()) // for the slot
	release()                                      // the dial ends: its slot goes to the waiter
	p.Close()
	closed.Store(true)
	r := awaitGet(t, waiter, 5*time.Second)
	r.close()
	assert.Equal(t, redispool.ErrPoolClosed, r.err)
	require.Eventually(t, func() bool { return d.inDial.Load() == 0 && p.ActiveCount() == 0 }, 5*time.Second, time.Millisecond)
	assert.Zero(t, dialsAfterClose.Load(), "dials begun after Close returned")
	assert.Zero(t, d.open.Load())
}

// TestRedigoPoolAgainstARealServer: through the adapter, redigo's own
// Close of a subscribed conn (UNSUBSCRIBE, PUNSUBSCRIBE, then reading up
// to an ECHO) returns, and p discards the conn; the adapter's own counters
// see only its conns out; after p.Close the adapter's Get fails with
// ErrPoolClosed.
func TestRedigoPoolAgainstARealServer(t *testing.T) {
	srv := redistest.Start(t)
	p := &redispool.Pool{Addr: srv.Addr(), MaxActive: 2}
	defer p.Close()
	rp := p.RedigoPool()

	c := rp.Get()
	_, err := c.Do("SUBSCRIBE", "ch")
	require.NoError(t, err)
	assert.Equal(t, 1, rp.ActiveCount())
	assert.Equal(t, 0, rp.IdleCount())
	closed := make(chan struct{})
	go func() { defer close(closed); c.Close() }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the adapter's Close of a subscribed conn did not return")
	}
	assert.Equal(t, 0, rp.ActiveCount())
	assert.EqualValues(t, 1, p.Stats().Discards.State)

	c = rp.Get()
	_, err = redis.String(c.Do("SET", "k", "v"))
	require.NoError(t, err)
	c.Close()
	assert.Equal(t, 1, p.IdleCount(), "a clean conn given back through the adapter is kept by p")
	assert.Equal(t, 0, rp.IdleCount(), "and not by the adapter")

	require.NoError(t, p.Close())
	c = rp.Get()
	assert.ErrorIs(t, c.Err(), redispool.ErrPoolClosed)
	c.Close()
}

// ---------------------------------------------------------------------------
// The fake conn and its dialer, shared by the package's tests.

var (
	errRefused   = errors.New("fake: dial refused")
	errBroken    = errors.New("fake: connection broken")
	errClosed    = errors.New("fake: closed")
	errUnhealthy = errors.New("fake: health check failed")
)

// fakeConn is the tests' redis.ConnWithTimeout. It is safe for concurrent
// use, records what it is asked, and answers "OK" to every command but
// these: "" returns the replies pending; BREAK fails with errBroken and
// breaks the conn, as a network error does; SLOW n waits n µs, or until
// the conn is closed; WHOAMI returns the conn itself. A fakeDialer counts
// the conns it dials, and the STALE commands that reach them. Its options
// are set before it is used (fakeDialer.setup sets them on the conns it
// dials).
type fakeConn struct {
	// doErr, when set, is returned by the next Do or Receive, and breaks
	// the conn unless it is a redis.Error.
	doErr error
	// reply, when set, answers Do. It runs unlocked, so that a reply that
	// blocks lets Close proceed.
	reply func(cmd string, args []any) (any, error)

	d        *fakeDialer            // that dialed it, if any
	gone     chan struct{}          // closed by Close, when set
	panicIn  atomic.Pointer[string] // see panicsIn
	borrowed atomic.Bool            // a borrower holds it (see useConn)

	mu       sync.Mutex
	calls    []string        // "DO GET", "SEND SET", "FLUSH", "RECV", "CLOSE"
	timeouts []time.Duration // the read timeout of each Do or Receive given one
	pending  int
	err      error // set by Close or by a failing call, as redigo's conn does
	closed   bool
}

// panicsIn makes method ("Close", "Err", "Flush", "DoWithTimeout", which
// Do calls, or "ReceiveWithTimeout", which Receive calls) panic with
// "<method> panics" from now on, or no method when it is empty. Close
// closes the conn before it panics.
func (c *fakeConn) panicsIn(method string) { c.panicIn.Store(&method) }

func (c *fakeConn) maybePanic(method string) {
	if m := c.panicIn.Load(); m != nil && *m == method {
		panic(method + " panics")
	}
}

// setErr sets the conn's Err, as redigo's conn does when it breaks.
func (c *fakeConn) setErr(err error) {
	c.mu.Lock()
	c.err = err
	c.mu.Unlock()
}

func (c *fakeConn) record(s string, timeout time.Duration) {
	c.calls = append(c.calls, s)
	if timeout >= 0 {
		c.timeouts = append(c.timeouts, timeout)
	}
	if c.d != nil && strings.HasSuffix(s, " STALE") {
		c.d.staleTouches.Add(1)
	}
}

// takeDoErr returns doErr once, breaking the conn unless it is a redis.Error.
func (c *fakeConn) takeDoErr() error {
	err := c.doErr
	if err == nil {
		return nil
	}
	c.doErr = nil
	if _, ok := err.(redis.Error); !ok {
		c.err = err
	}
	return err
}

func (c *fakeConn) Close() error {
	c.mu.Lock()
	c.calls = append(c.calls, "CLOSE")
	if !c.closed {
		c.closed = true
		if c.err == nil {
			c.err = errClosed
		}
		if c.gone != nil {
			close(c.gone)
		}
		if c.d != nil {
			c.d.open.Add(-1)
			c.d.closed.Add(1)
		}
	}
	c.mu.Unlock()
	c.maybePanic("Close")
	return nil
}

func (c *fakeConn) Err() error {
	c.maybePanic("Err")
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *fakeConn) Do(cmd string, args ...any) (any, error) {
	return c.DoWithTimeout(-1, cmd, args...)
}

func (c *fakeConn) DoWithTimeout(timeout time.Duration, cmd string, args ...any) (any, error) {
	c.maybePanic("DoWithTimeout")
	c.mu.Lock()
	c.record("DO "+cmd, timeout)
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	if cmd == "" && c.pending == 0 {
		c.mu.Unlock()
		return nil, nil
	}
	if err := c.takeDoErr(); err != nil {
		c.mu.Unlock()
		return nil, err
	}
	n := c.pending
	c.pending = 0
	reply, gone := c.reply, c.gone
	switch {
	case reply != nil:
		c.mu.Unlock()
		return reply(cmd, args)
	case cmd == "BREAK":
		c.err = errBroken
		c.mu.Unlock()
		return nil, errBroken
	}
	c.mu.Unlock()
	switch cmd {
	case "":
		return make([]any, n), nil
	case "WHOAMI":
		return c, nil
	case "SLOW":
		select {
		case <-time.After(time.Duration(args[0].(int)) * time.Microsecond):
			return "OK", nil
		case <-gone:
			return nil, errClosed
		}
	}
	return "OK", nil
}

func (c *fakeConn) Send(cmd string, args ...any) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.record("SEND "+cmd, -1)
	if c.err != nil {
		return c.err
	}
	c.pending++
	return nil
}

func (c *fakeConn) Flush() error {
	c.maybePanic("Flush")
	c.mu.Lock()
	defer c.mu.Unlock()
	c.record("FLUSH", -1)
	return c.err
}

func (c *fakeConn) Receive() (any, error) { return c.ReceiveWithTimeout(-1) }

func (c *fakeConn) ReceiveWithTimeout(timeout time.Duration) (any, error) {
	c.maybePanic("ReceiveWithTimeout")
	c.mu.Lock()
	defer c.mu.Unlock()
	c.record("RECV", timeout)
	if c.err != nil {
		return nil, c.err
	}
	if err := c.takeDoErr(); err != nil {
		return nil, err
	}
	if c.pending > 0 {
		c.pending--
	}
	return "OK", nil
}

// Calls returns a copy of the calls recorded so far.
func (c *fakeConn) Calls() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.calls...)
}

// Timeouts returns the read timeouts recorded so far.
func (c *fakeConn) Timeouts() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.timeouts...)
}

func (c *fakeConn) IsClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// fmtCalls helps failure messages.
func fmtCalls(c *fakeConn) string { return strings.Join(c.Calls(), ", ") }

// fakeDialer dials fakeConns and counts them. Its options are set before
// its first Dial, but for faults and SetErr.
type fakeDialer struct {
	// setup, when set, prepares the n-th conn dialed (from 1).
	setup func(c *fakeConn, n int)
	// plain makes Dial return conns that implement redis.Conn alone, not
	// redis.ConnWithTimeout, as some hand-written Dials do.
	plain bool
	// faults, while set, makes one Dial in about seven slow, and a few in
	// a thousand fail, slowly or at once, or panic.
	faults atomic.Bool

	mu    sync.Mutex
	conns []*fakeConn
	err   error // returned by Dial while set

	dials, inDial    atomic.Int64 // Dial calls; those in progress
	made, open, peak atomic.Int64 // conns dialed; those not closed yet; the most open at once
	closed           atomic.Int64 // conns closed
	staleTouches     atomic.Int64 // STALE commands that reached a conn: only stale handles send them
}

func (d *fakeDialer) Dial() (redis.Conn, error) {
	d.dials.Add(1)
	d.inDial.Add(1)
	defer d.inDial.Add(-1)
	if d.faults.Load() {
		if err := dialFault(); err != nil {
			return nil, err
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.err != nil {
		return nil, d.err
	}
	c := &fakeConn{d: d, gone: make(chan struct{})}
	d.conns = append(d.conns, c)
	if d.setup != nil {
		d.setup(c, len(d.conns))
	}
	d.made.Add(1)
	if n := d.open.Add(1); n > d.peak.Load() {
		d.peak.Store(n) // under d.mu
	}
	if d.plain {
		return struct{ redis.Conn }{c}, nil
	}
	return c, nil
}

// dialFault is what a Dial with faults does before it dials: usually
// nothing, sometimes wait up to 2 ms, and now and then fail or panic.
func dialFault() error {
	switch r := rand.IntN(1000); {
	case r < 2:
		return errRefused
	case r < 4: // slow to fail: the caller may have given up
		time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
		return errRefused
	case r < 6:
		panic("fake: dial panicked")
	case r < 150:
		time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
	}
	return nil
}

// SetErr makes Dial fail with err, or no longer fail when err is nil.
func (d *fakeDialer) SetErr(err error) {
	d.mu.Lock()
	d.err = err
	d.mu.Unlock()
}

// Conns returns the conns dialed so far.
func (d *fakeDialer) Conns() []*fakeConn {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]*fakeConn(nil), d.conns...)
}

// last returns the most recently dialed conn.
func (d *fakeDialer) last(t testing.TB) *fakeConn {
	t.Helper()
	cs := d.Conns()
	if len(cs) == 0 {
		t.Fatal("no connection was dialed")
	}
	return cs[len(cs)-1]
}

// ---------------------------------------------------------------------------
// Helpers shared by the package's tests.

// getResult is what a Get ended with: a conn, an error, or a panic.
type getResult struct {
	c        redis.Conn
	err      error
	panicked any
}

// close closes the conn, if the Get got one.
func (r getResult) close() {
	if r.c != nil && r.err == nil {
		r.c.Close()
	}
}

// tryGet is p.GetContext(ctx), with a panic recovered into the result.
func tryGet(p *redispool.Pool, ctx context.Context) (r getResult) {
	defer func() { r.panicked = recover() }()
	r.c, r.err = p.GetContext(ctx)
	return r
}

// goGet runs tryGet on a goroutine of its own and returns the channel its
// result arrives on.
func goGet(p *redispool.Pool, ctx context.Context) <-chan getResult {
	ch := make(chan getResult, 1)
	go func() { ch <- tryGet(p, ctx) }()
	return ch
}

// queueGet is goGet that returns once the Get waits in p's queue, as
// counted in WaitingCount.
func queueGet(t testing.TB, p *redispool.Pool, ctx context.Context) <-chan getResult {
	t.Helper()
	before := p.Stats().WaitingCount
	ch := goGet(p, ctx)
	require.Eventually(t, func() bool { return p.Stats().WaitingCount == before+1 }, 5*time.Second, 50*time.Microsecond,
		"the Get did not queue")
	return ch
}

// awaitGet receives a Get's result, and fails the test, saying why, when it
// does not come within d.
func awaitGet(t testing.TB, ch <-chan getResult, d time.Duration, why ...any) getResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(d):
		t.Fatalf("the Get did not return within %v: %s", d, fmt.Sprintln(why...))
		return getResult{}
	}
}

// getN borrows n conns and fails the test on any error.
func getN(t *testing.T, p *redispool.Pool, n int) []redis.Conn {
	t.Helper()
	conns := make([]redis.Conn, n)
	for i := range conns {
		c, err := p.GetContext(context.Background())
		require.NoError(t, err, "Get #%d", i)
		conns[i] = c
	}
	return conns
}

func closeAll(conns []redis.Conn) {
	for _, c := range conns {
		c.Close()
	}
}

func newClock() *redispool.TestClock { return redispool.NewTestClock() }

// checkAtRest checks the pool's accounting when no Get is in progress and
// held conns are checked out: every permit is in its channel, in an idle
// conn or in a held conn; nobody waits; every dial slot is back.
func checkAtRest(t *testing.T, p *redispool.Pool, held int) {
	t.Helper()
	a := p.Accounting()
	assert.Zero(t, a.Waiters, "waiters counted at rest")
	assert.Zero(t, a.Queued, "a waiter left in the queue")
	assert.Equal(t, a.MaxActive, a.Permits+a.Idle+held,
		"permits %d + idle %d + held %d != MaxActive", a.Permits, a.Idle, held)
	assert.Equal(t, a.Idle+held, a.Active, "ActiveCount at rest")
	assert.Equal(t, a.MaxDials, a.Slots, "dial slots lost")
	assert.False(t, a.Probing, "a probe left set")
}

// waitGroupWithin waits for wg, and fails the test with every goroutine's
// stack when it takes longer than d: a hang means a lost wake-up or a full
// permits channel.
func waitGroupWithin(t *testing.T, wg *sync.WaitGroup, d time.Duration, what string) {
	t.Helper()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		t.Fatalf("%s did not finish within %v:\n%s", what, d, buf)
	}
}

// netCounter counts the TCP connections a Dial opens and how many are open.
type netCounter struct {
	opened, open, peak atomic.Int64
}

func (n *netCounter) dial(network, addr string) (net.Conn, error) {
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	n.opened.Add(1)
	now := n.open.Add(1)
	for {
		peak := n.peak.Load()
		if now <= peak || n.peak.CompareAndSwap(peak, now) {
			break
		}
	}
	return &countedConn{Conn: c, n: n}, nil
}

type countedConn struct {
	net.Conn
	n    *netCounter
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.n.open.Add(-1) })
	return c.Conn.Close()
}
