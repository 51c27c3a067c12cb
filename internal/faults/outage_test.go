package faults

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/internal/redistest"
)

// The outage workload: outageCallers goroutines loop on Get, ECHO of a unique
// token, Close; a caller whose command failed waits a random 5-15 ms
// (outageFailPause on average) before its next one, as the next request of a
// service would come later and not in step with the others. The server is
// killed for outageDown, then restarted on the same port.
const (
	outageCallers   = 200
	outageMaxActive = 20
	outageDown      = 3 * time.Second
	outageFailPause = 10 * time.Millisecond
	// Done-when thresholds.
	maxOutageDials     = 50
	maxFailingGetP99   = 50 * time.Millisecond
	maxRecoveryAfterUp = time.Second
)

// Phases of the outage run.
const (
	phaseUp   = iota // before the kill
	phaseDown        // killed
	phaseBack        // restarting and after
)

// outageWorker is one caller's view of the outage run.
type outageWorker struct {
	failLat   []time.Duration // failed Get+command started while the server was down
	firstBack time.Time       // first good reply after the restart began
}

// failKinds sorts the failures seen while the server is down.
type failKinds struct {
	fastFail, refused, other atomic.Int64
	firstOther               atomic.Pointer[string]
}

func (k *failKinds) add(err error) {
	switch {
	case errors.Is(err, redispool.ErrDialBackoff):
		k.fastFail.Add(1)
	case errors.Is(err, syscall.ECONNREFUSED):
		k.refused.Add(1)
	default:
		k.other.Add(1)
		s := err.Error()
		k.firstOther.CompareAndSwap(nil, &s)
	}
}

// failPause is a failed caller's pause before its next command: 5-15 ms.
func failPause() {
	time.Sleep(outageFailPause/2 + rand.N(outageFailPause))
}

// outageRound is one caller's Get, ECHO and Close, judged; it returns the
// error of a failed round.
func outageRound(pool interface {
	GetContext(context.Context) (redis.Conn, error)
}, tl *tally, w, n int) (outcome, error) {
	want := fmt.Sprintf("w%d.n%d", w, n)
	c, err := pool.GetContext(context.Background())
	var reply any
	if err == nil {
		reply, err = c.Do("ECHO", want)
		c.Close()
	}
	return tl.count(reply, err, want), err
}

// TestOutageDialsAreLimitedAndThePoolRecovers kills the server under 200
// callers for 3 s and restarts it: few dials while it is down, callers fail
// fast, work is back within a second of its return, and the server never sees
// more than MaxActive clients.
func TestOutageDialsAreLimitedAndThePoolRecovers(t *testing.T) {
	checkLeaks(t)
	srv := redistest.Start(t)
	p := &redispool.Pool{Addr: srv.Addr(), MaxActive: outageMaxActive, ReadTimeout: time.Second}
	defer p.Close()

	var tl tally
	var kinds failKinds
	var phase atomic.Int32
	var stop atomic.Bool
	var wg sync.WaitGroup
	workers := make([]outageWorker, outageCallers)
	start := time.Now()
	for w := range outageCallers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ow := &workers[w]
			for n := 0; n < maxCommandsPerWorker && !stop.Load(); n++ {
				ph := phase.Load()
				t0 := time.Now()
				o, err := outageRound(p, &tl, w, n)
				d := time.Since(t0)
				switch {
				case o == good && ow.firstBack.IsZero() && phase.Load() == phaseBack:
					ow.firstBack = time.Now()
				case o == failed:
					if ph == phaseDown {
						ow.failLat = append(ow.failLat, d)
						kinds.add(err)
					}
					failPause()
				}
			}
		}()
	}
	var peakActive atomic.Int64
	samplerDone := make(chan struct{})
	go func() {
		defer close(samplerDone)
		for !stop.Load() {
			peakActive.Store(max(peakActive.Load(), int64(p.ActiveCount())))
			time.Sleep(time.Millisecond)
		}
	}()
	stopAll := sync.OnceFunc(func() {
		stop.Store(true)
		wg.Wait()
		<-samplerDone
	})
	defer stopAll()

	// The server's own count of clients, sampled while it is up.
	peakClients := 0
	sampleClients := func(d time.Duration) {
		for end := time.Now().Add(d); time.Now().Before(end); {
			peakClients = max(peakClients, srv.ConnectedClients(t))
			time.Sleep(20 * time.Millisecond)
		}
	}
	sampleClients(time.Second)

	before := p.Stats()
	srv.Kill(t)
	killedAt := time.Now()
	phase.Store(phaseDown)
	killed := p.Stats()
	time.Sleep(outageDown) // the outage
	down := p.Stats()
	downFor := time.Since(killedAt)
	goodDown := tl.good.Load() // no reply can come while the server is down
	phase.Store(phaseBack)
	restartAt := time.Now()
	srv.Restart(t)
	readyAt := time.Now()
	backOK := waitFor(5*time.Second, func() bool { return tl.good.Load() > goodDown })
	sampleClients(1500 * time.Millisecond)
	stopAll()
	wall := time.Since(start)
	after := p.Stats()

	var failLat []time.Duration
	var firstBack, allBack time.Time
	served := 0
	for _, ow := range workers {
		failLat = append(failLat, ow.failLat...)
		if ow.firstBack.IsZero() {
			continue
		}
		served++
		if firstBack.IsZero() || ow.firstBack.Before(firstBack) {
			firstBack = ow.firstBack
		}
		if ow.firstBack.After(allBack) {
			allBack = ow.firstBack
		}
	}
	dials := down.DialCount - before.DialCount
	p50, p99, pmax := percentile(failLat, 0.5), percentile(failLat, 0.99), percentile(failLat, 1)
	recovery := max(firstBack.Sub(readyAt), 0)
	other := ""
	if s := kinds.firstOther.Load(); s != nil {
		other = fmt.Sprintf(" (first: %q)", *s)
	}
	t.Logf("outage: %d callers, MaxActive %d, server killed for %v: %d dials (%d failed; %d while SIGKILL took effect), %d failing Gets (%d fast-failed with the last dial error, %d refused dials, %d other%s) p50 %s p99 %s max %s; restart took %v, first good reply %s after the server was ready (%s after the restart began), %d/%d callers served again within %v; peak connected_clients %d, peak ActiveCount %d; in all %v in %v",
		outageCallers, outageMaxActive, downFor.Round(time.Millisecond), dials, down.DialErrorCount-before.DialErrorCount, killed.DialCount-before.DialCount,
		len(failLat), kinds.fastFail.Load(), kinds.refused.Load(), kinds.other.Load(), other, ms(p50), ms(p99), ms(pmax),
		readyAt.Sub(restartAt).Round(time.Millisecond), ms(recovery), ms(firstBack.Sub(restartAt)),
		served, outageCallers, allBack.Sub(readyAt).Round(time.Millisecond), peakClients, peakActive.Load(), &tl, wall.Round(time.Millisecond))
	record("outage", &tl, wall)

	assert.Zero(t, tl.wrong.Load(), "replies handed to the wrong caller")
	require.True(t, backOK, "no good reply within 5 s of the restart")
	assert.NotEmpty(t, failLat, "callers must fail while the server is down")
	assert.LessOrEqual(t, dials, int64(maxOutageDials), "dial attempts while the server was down")
	assert.LessOrEqual(t, p99, maxFailingGetP99, "p99 of a failing Get while the server was down")
	assert.LessOrEqual(t, recovery, maxRecoveryAfterUp, "time from the server's return to the first good reply")
	assert.LessOrEqual(t, peakClients, outageMaxActive)
	assert.LessOrEqual(t, peakActive.Load(), int64(outageMaxActive))
	assert.Greater(t, after.DialCount, down.DialCount, "the pool dials again once the server is back")
}

// TestOutageRedigoPoolStormsTheServer is the comparison: redigo's pool with
// only Dial set, under the same 200 callers, while nothing listens on the
// port. Every Get dials. The run is bounded in time and in dials; refused
// dials leave no socket in TIME_WAIT.
func TestOutageRedigoPoolStormsTheServer(t *testing.T) {
	checkLeaks(t)
	srv := redistest.Start(t)
	srv.Kill(t)
	const maxDials = 2_000_000
	var dials atomic.Int64
	rp := &redis.Pool{Dial: func() (redis.Conn, error) {
		if dials.Add(1) > maxDials {
			return nil, errors.New("dial budget spent")
		}
		return redis.Dial("tcp", srv.Addr(), redis.DialConnectTimeout(time.Second))
	}}
	defer rp.Close()

	var tl tally
	var stop atomic.Bool
	var wg sync.WaitGroup
	failLat := make([][]time.Duration, outageCallers)
	start := time.Now()
	for w := range outageCallers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < maxCommandsPerWorker && !stop.Load(); n++ {
				t0 := time.Now()
				if o, _ := outageRound(rp, &tl, w, n); o == failed {
					failLat[w] = append(failLat[w], time.Since(t0))
					failPause() // the same pause
				}
			}
		}()
	}
	time.Sleep(outageDown) // the outage
	stop.Store(true)
	wg.Wait()
	wall := time.Since(start)
	var lat []time.Duration
	for _, l := range failLat {
		lat = append(lat, l...)
	}
	t.Logf("redigo pool (only Dial set), outage: %d callers, server down for %v: %d dials, %d failing Gets p50 %s p99 %s; %v",
		outageCallers, wall.Round(time.Millisecond), dials.Load(), len(lat), ms(percentile(lat, 0.5)), ms(percentile(lat, 0.99)), &tl)
	assert.Greater(t, dials.Load(), int64(maxOutageDials), "the comparison must show the storm")
}
