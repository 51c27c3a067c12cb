// Command redsync increments counters in Redis from many goroutines, each
// increment a read and a write made safe by a go-redsync/redsync mutex, with
// every connection to Redis from one bounded redispool.Pool.
//
// redsync's redigo adapter takes any pool with Get and GetContext (its
// redigo.Pool interface), so the switch is one line, and the pool goes in as
// it is:
//
//	rs := redsync.New(redigo.NewPool(&redis.Pool{MaxIdle: 3, Dial: dial}))
//
// becomes
//
//	rs := redsync.New(redigo.NewPool(&redispool.Pool{Addr: addr, MaxActive: 8}))
//
// Run it against a redis-server:
//
//	cd examples && go run ./redsync -addr localhost:6379
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-redsync/redsync/v4"
	"github.com/go-redsync/redsync/v4/redis/redigo"
	"github.com/gomodule/redigo/redis"

	"github.com/redispool/redispool"
)

// maxConns is the most connections to Redis the example opens.
const maxConns = 8

// newPool returns the pool redsync and the increments share.
func newPool(addr string) *redispool.Pool {
	return &redispool.Pool{Addr: addr, MaxActive: maxConns}
}

// newRedsync is the one line that changes: redsync's redigo adapter takes
// the redispool.Pool itself.
func newRedsync(p *redispool.Pool) *redsync.Redsync {
	return redsync.New(redigo.NewPool(p))
}

// load is a run of increments.
type load struct {
	workers    int    // goroutines incrementing at once
	increments int    // increments in all, spread over the counters
	counters   int    // counters, each with its own mutex
	prefix     string // names of the counters' keys and mutexes
}

// counterKey is the key of counter i.
func (l load) counterKey(i int) string { return fmt.Sprintf("%scounter:%d", l.prefix, i) }

// run makes l.increments increments, increment i on counter i % l.counters.
// Each reads the counter with GET and writes it back plus one with SET, under
// the counter's mutex: without the mutex, concurrent increments would be
// lost. The counters are deleted first.
func run(ctx context.Context, p *redispool.Pool, rs *redsync.Redsync, l load) error {
	c, err := p.GetContext(ctx)
	if err != nil {
		return err
	}
	for i := range l.counters {
		c.Send("DEL", l.counterKey(i))
	}
	_, err = c.Do("")
	c.Close()
	if err != nil {
		return err
	}

	mutexes := make([]*redsync.Mutex, l.counters)
	for i := range mutexes {
		mutexes[i] = rs.NewMutex(l.prefix+"lock:"+fmt.Sprint(i),
			redsync.WithExpiry(5*time.Second),
			// Retry every 5 ms for up to 10 s instead of 32 times over
			// about 5 s: many goroutines share each mutex here.
			redsync.WithRetryDelay(5*time.Millisecond),
			redsync.WithTries(2000),
		)
	}
	var (
		next atomic.Int64
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for range l.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= l.increments {
					return
				}
				n := i % l.counters
				if err := increment(ctx, p, mutexes[n], l.counterKey(n)); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("increment %d: %w", i, err))
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// increment adds one to key, read and written back under m.
func increment(ctx context.Context, p *redispool.Pool, m *redsync.Mutex, key string) (err error) {
	if err := m.LockContext(ctx); err != nil {
		return fmt.Errorf("locking %s: %w", m.Name(), err)
	}
	defer func() {
		if ok, uerr := m.UnlockContext(ctx); !ok && err == nil {
			err = fmt.Errorf("unlocking %s: %v", m.Name(), uerr)
		}
	}()
	c, err := p.GetContext(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	n, err := redis.Int(c.Do("GET", key))
	if err != nil && !errors.Is(err, redis.ErrNil) {
		return err
	}
	_, err = c.Do("SET", key, n+1)
	return err
}

func main() {
	addr := flag.String("addr", envOr("REDIS_ADDR", "localhost:6379"), "Redis address `host:port`")
	l := load{prefix: "redispool-example:redsync:"}
	flag.IntVar(&l.workers, "workers", 32, "goroutines incrementing at once")
	flag.IntVar(&l.increments, "increments", 400, "increments in all")
	flag.IntVar(&l.counters, "counters", 4, "counters, each with its own mutex")
	flag.Parse()
	if l.workers < 1 || l.increments < 1 || l.counters < 1 {
		log.Fatal("-workers, -increments and -counters must be positive")
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := newPool(*addr)
	defer p.Close()
	start := time.Now()
	if err := run(ctx, p, newRedsync(p), l); err != nil {
		log.Fatal(err)
	}
	c := p.Get()
	defer c.Close()
	for i := range l.counters {
		n, err := redis.Int(c.Do("GET", l.counterKey(i)))
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s = %d\n", l.counterKey(i), n)
	}
	s := p.Stats()
	fmt.Printf("%d increments by %d goroutines in %v over %d connections\n",
		l.increments, l.workers, time.Since(start).Round(time.Millisecond), s.DialCount)
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
