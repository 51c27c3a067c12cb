package clustertest

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/internal/redistest"
)

// clientName names the pool's connections in CLIENT LIST.
const clientName = "clustertest"

// newPool returns a pool on cluster c, closed when the test ends.
func newPool(t *testing.T, c *redistest.Cluster, maxActive int) *redispool.Pool {
	t.Helper()
	p := &redispool.Pool{
		Cluster:     &redispool.Cluster{StartupNodes: c.Addrs()[:2]},
		MaxActive:   maxActive,
		DialOptions: []redis.DialOption{redis.DialClientName(clientName)},
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// poolConns counts the pool's connections on s in CLIENT LIST, or -1 when
// s does not answer.
func poolConns(s *redistest.Server) int {
	c, err := redis.Dial("tcp", s.Addr(), redis.DialConnectTimeout(time.Second), redis.DialReadTimeout(time.Second))
	if err != nil {
		return -1
	}
	defer c.Close()
	list, err := redis.String(c.Do("CLIENT", "LIST"))
	if err != nil {
		return -1
	}
	return strings.Count(list, "name="+clientName+" ")
}

// sampler samples the pool's connections on every node until stopped, and
// keeps the most seen on one node.
type sampler struct {
	stop    chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	most    int
	samples int
}

func sample(c *redistest.Cluster) *sampler {
	s := &sampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			for _, n := range c.Nodes {
				k := poolConns(n)
				s.mu.Lock()
				s.most = max(s.most, k)
				s.samples++
				s.mu.Unlock()
			}
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

// end stops the sampler and returns the most connections seen on one node
// and the number of samples.
func (s *sampler) end() (int, int) {
	close(s.stop)
	<-s.done
	return s.most, s.samples
}

// tally counts a run's outcomes, safe for concurrent use.
type tally struct {
	mu        sync.Mutex
	ok        int
	wrong     int
	errs      int
	wrongEx   []string
	errEx     []string
	errsAfter map[string]time.Time // the last error seen by each group
}

func (t *tally) good() {
	t.mu.Lock()
	t.ok++
	t.mu.Unlock()
}

func (t *tally) bad(format string, args ...any) {
	t.mu.Lock()
	t.wrong++
	if len(t.wrongEx) < 5 {
		t.wrongEx = append(t.wrongEx, fmt.Sprintf(format, args...))
	}
	t.mu.Unlock()
}

func (t *tally) failed(err error) {
	t.mu.Lock()
	t.errs++
	if len(t.errEx) < 5 {
		t.errEx = append(t.errEx, err.Error())
	}
	t.mu.Unlock()
}

func (t *tally) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return fmt.Sprintf("%d ok, %d wrong %q, %d errors %q", t.ok, t.wrong, t.wrongEx, t.errs, t.errEx)
}

// waitCalls waits until the cluster ran the command at least want times,
// or fails t after 5s.
func waitCalls(t *testing.T, c *redistest.Cluster, name string, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for c.CommandCalls(t, name) < want {
		if time.Now().After(deadline) {
			t.Fatalf("%s ran %d times after 5s, want %d", name, c.CommandCalls(t, name), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitSteady waits until the cluster sends no more MOVED replies than
// from: none in 100ms, or fails t after 5s.
func waitSteady(t *testing.T, c *redistest.Cluster, from int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	last := from
	for {
		time.Sleep(100 * time.Millisecond)
		n := c.ErrorCount(t, "MOVED")
		if n == last {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("MOVED replies still coming 5s on: %d", n-from)
		}
		last = n
	}
}
