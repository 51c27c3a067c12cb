package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gomodule/redigo/redis"
	goredis "github.com/redis/go-redis/v9"

	"github.com/redispool/redispool"
)

// The connection-cost part: connClients goroutines share a pool, each running
// commands (Get, GET or SET on a random key, Close) until the run's count of
// commands is done.
const (
	connClients = 200
	// longFactor is how much longer the one long run of each pool is.
	longFactor = 5
)

// Names of the connection-cost configurations.
const (
	nameRedispoolDefault = "redispool (only Dial set)"
	nameRedistore        = "redigo (as boj/redistore sets it)"
	nameGoRedisDefault   = "go-redis (defaults)"
)

var connNames = []string{nameRedispoolDefault, nameRedistore, nameGoRedisDefault}

// ConnRow is one configuration's connection cost, one entry per round.
type ConnRow struct {
	Pool string
	// Limit is the most connections the configuration keeps open at once; 0
	// means none.
	Limit int
	// Opened is the TCP connections its dialer opened per run, ServerConns
	// the connections the server received meanwhile (the same unless
	// another client used a shared server), Peak the most open at once.
	Opened, ServerConns, Peak []int64
	// CmdsPerSec is the commands completed per second; Errors the failed ones.
	CmdsPerSec []float64
	Errors     []int64
	// Commands is the length of each round's run.
	Commands int
	// LongOpened and LongCommands are the one run longFactor times longer.
	LongOpened, LongCommands int64
}

// connPool is a pool as the connection-cost part drives it.
type connPool interface {
	do(ctx context.Context, set bool, key string) error
	close()
}

// redispoolDefaultMaxActive is redispool's documented MaxActive when left at
// zero: 10 x GOMAXPROCS.
func redispoolDefaultMaxActive() int { return 10 * runtime.GOMAXPROCS(0) }

func newConnPool(name, addr string, cc *connCounter) (connPool, int) {
	switch name {
	case nameRedispoolDefault:
		return redigoE2E{&redispool.Pool{Dial: cc.redigoDial(addr)}}, redispoolDefaultMaxActive()
	case nameRedistore:
		// boj/redistore v1.4's NewRediStore(10, ...).
		return redigoE2E{&redis.Pool{
			MaxIdle:     10,
			IdleTimeout: 240 * time.Second,
			TestOnBorrow: func(c redis.Conn, _ time.Time) error {
				_, err := c.Do("PING")
				return err
			},
			Dial: cc.redigoDial(addr),
		}}, 0
	case nameGoRedisDefault:
		return goRedisE2E{goredis.NewClient(&goredis.Options{Addr: addr, Dialer: cc.dialContext})}, 10 * runtime.GOMAXPROCS(0)
	}
	panic("unknown pool " + name)
}

type connRun struct {
	opened, serverConns, peak int64
	cmdsPerSec                float64
	errors                    int64
	firstErr                  error
}

// connLoop runs commands commands on a fresh pool of the named configuration
// and counts the connections it opened.
func connLoop(ctx context.Context, s *server, name string, commands int) (connRun, error) {
	cc := newConnCounter()
	p, _ := newConnPool(name, s.addr, cc)
	before, err := s.connectionsReceived()
	if err != nil {
		p.close()
		return connRun{}, err
	}
	var remaining atomic.Int64
	remaining.Store(int64(commands))
	var errCount atomic.Int64
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range connClients {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			<-start
			for remaining.Add(-1) >= 0 {
				set := rng.IntN(2) == 0
				if err := p.do(ctx, set, keys[rng.IntN(keySpace)]); err != nil {
					errCount.Add(1)
					firstErr.CompareAndSwap(nil, &err)
				}
			}
		})
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	elapsed := time.Since(t0)
	p.close()
	var errs []error
	if err := cc.waitClosed(10 * time.Second); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w", name, err))
	}
	if err := s.waitClients(0, 10*time.Second); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w", name, err))
	}
	after, err := s.connectionsReceived()
	if err != nil {
		return connRun{}, err
	}
	out := connRun{
		opened:      cc.opened.Load(),
		serverConns: after - before,
		peak:        cc.peak.Load(),
		cmdsPerSec:  float64(commands) / elapsed.Seconds(),
		errors:      errCount.Load(),
	}
	if e := firstErr.Load(); e != nil {
		out.firstErr = *e
	}
	return out, errors.Join(errs...)
}

// runConnCost is poolbench's part 4 (item 5 of the build list).
func (r *runner) runConnCost(ctx context.Context, s *server) ([]ConnRow, error) {
	rows := make([]ConnRow, len(connNames))
	for i, name := range connNames {
		p, limit := newConnPool(name, s.addr, newConnCounter())
		p.close() // built for its limit only
		rows[i] = ConnRow{Pool: name, Limit: limit, Commands: r.commands}
	}
	record := func(name string, res connRun) {
		if res.firstErr != nil {
			r.note("connection cost: %s: %d errors, the first: %v", name, res.errors, res.firstErr)
		}
	}
	for round := range r.rounds {
		for _, pi := range rotation(len(connNames), round) {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			res, err := connLoop(ctx, s, connNames[pi], r.commands)
			if err != nil {
				r.note("connection cost: %v", err)
			}
			record(connNames[pi], res)
			row := &rows[pi]
			row.Opened = append(row.Opened, res.opened)
			row.ServerConns = append(row.ServerConns, res.serverConns)
			row.Peak = append(row.Peak, res.peak)
			row.CmdsPerSec = append(row.CmdsPerSec, res.cmdsPerSec)
			row.Errors = append(row.Errors, res.errors)
			r.progress("conncost round %d/%d %s: opened %d, peak %d, %.0f cmds/s", round+1, r.rounds, connNames[pi], res.opened, res.peak, res.cmdsPerSec)
		}
	}
	for pi, name := range connNames {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n := r.commands * longFactor
		res, err := connLoop(ctx, s, name, n)
		if err != nil {
			r.note("connection cost: %v", err)
		}
		record(name, res)
		rows[pi].LongOpened, rows[pi].LongCommands = res.opened, int64(n)
		r.progress("conncost long run %s: opened %d in %d commands", name, res.opened, n)
	}
	return rows, nil
}
