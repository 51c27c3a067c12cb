// Package bound measures, for the examples' tests, how many connections a
// redispool.Pool opens to a real redis-server while a library uses it, and
// runs a fixed number of requests on a fixed number of goroutines.
package bound

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/gomodule/redigo/redis"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/internal/redistest"
)

// The load every example's test drives, and the bound it checks.
const (
	// Requests is how many requests each example's test sends.
	Requests = 400
	// Workers is how many goroutines send them at once: more than MaxConns,
	// so that callers wait for connections.
	Workers = 32
	// MaxConns is the pool's MaxActive in the tests, and so the most
	// connections the pool may open over the whole run.
	MaxConns = 8
)

// Meter counts the TCP connections a pool dials and how many of them are
// open at once, as the client sees them: a connection counts as open from
// its dial until its Close, so the peak is exact, not sampled.
type Meter struct {
	open, peak, opened atomic.Int64
}

// Attach makes p dial through m. p must dial Addr itself (no Dial or
// DialContext) and must not have been used yet. It replaces the pool's own
// dialer, which only loses the pool's peek at idle sockets.
func (m *Meter) Attach(p *redispool.Pool) {
	var d net.Dialer
	p.DialOptions = append(p.DialOptions, redis.DialContextFunc(func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		m.opened.Add(1)
		n := m.open.Add(1)
		for {
			peak := m.peak.Load()
			if n <= peak || m.peak.CompareAndSwap(peak, n) {
				break
			}
		}
		return &meteredConn{Conn: c, m: m}, nil
	}))
}

// Opened is the number of connections dialed.
func (m *Meter) Opened() int { return int(m.opened.Load()) }

// Open is the number of connections dialed and not yet closed.
func (m *Meter) Open() int { return int(m.open.Load()) }

// Peak is the most connections open at once.
func (m *Meter) Peak() int { return int(m.peak.Load()) }

type meteredConn struct {
	net.Conn
	m    *Meter
	once sync.Once
}

func (c *meteredConn) Close() error {
	c.once.Do(func() { c.m.open.Add(-1) })
	return c.Conn.Close()
}

// Run calls fn(i) for i in [0, n) on workers goroutines and returns every
// error, joined.
func Run(workers, n int, fn func(i int) error) error {
	var (
		next atomic.Int64
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("request %d: %w", i, err))
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Result is what Measure saw.
type Result struct {
	// Opened is the number of connections the server accepted during the
	// run (total_connections_received, without the test harness's own).
	Opened int
	// Peak is the most connections the pool had open at once.
	Peak int
	// Stats are the pool's statistics after the run.
	Stats redispool.PoolStats
}

func (r Result) String() string {
	return fmt.Sprintf("server accepted %d connections, at most %d open at once; pool dialed %d, waited %d times (%v), discarded %d (%+v)",
		r.Opened, r.Peak, r.Stats.DialCount, r.Stats.WaitCount, r.Stats.WaitDuration, r.Stats.Discards.Total(), r.Stats.Discards)
}

// Measure attaches a Meter to p, which must not have been used yet, runs
// run, and returns how many connections the server accepted meanwhile and
// the most the pool had open at once.
func Measure(t testing.TB, srv *redistest.Server, p *redispool.Pool, run func()) Result {
	t.Helper()
	var m Meter
	m.Attach(p)
	before := srv.TotalConnectionsReceived(t)
	run()
	return Result{
		Opened: srv.TotalConnectionsReceived(t) - before,
		Peak:   m.Peak(),
		Stats:  p.Stats(),
	}
}

// Check logs r and fails t unless the run opened at most MaxConns
// connections in all, and at least one, the pool counted the same dials,
// discarded none and no Get failed.
func Check(t testing.TB, r Result) {
	t.Helper()
	t.Logf("pool of %d: %v", MaxConns, r)
	if r.Opened < 1 || r.Opened > MaxConns {
		t.Errorf("the server accepted %d connections during the run; want 1 to %d", r.Opened, MaxConns)
	}
	if r.Peak > MaxConns {
		t.Errorf("the pool had %d connections open at once; want at most %d", r.Peak, MaxConns)
	}
	if r.Stats.DialCount != int64(r.Opened) {
		t.Errorf("the pool counted %d dials and the server %d connections; want the same", r.Stats.DialCount, r.Opened)
	}
	if r.Stats.Discards.Total() != 0 {
		t.Errorf("the pool discarded %d connections (%+v); want none", r.Stats.Discards.Total(), r.Stats.Discards)
	}
	if r.Stats.WaitTimeoutCount != 0 || r.Stats.DialErrorCount != 0 {
		t.Errorf("%d Gets timed out waiting and %d dials failed; want none", r.Stats.WaitTimeoutCount, r.Stats.DialErrorCount)
	}
}
