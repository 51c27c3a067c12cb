package clustertest

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/internal/cluster"
	"github.com/redispool/redispool/internal/redistest"
)

// keysPerWorker is how many keys of its own each worker of getSets uses.
const keysPerWorker = 20

// getSets runs 50 workers that SET their own keys and GET them back
// through p, one Get per pair, until stopped: worker w uses the keys
// keysPerWorker*w to keysPerWorker*(w+1)-1.
func getSets(p *redispool.Pool, keys []string, stop chan struct{}, res *tally) *sync.WaitGroup {
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key, val := keys[w*keysPerWorker+i%keysPerWorker], fmt.Sprintf("%d-%d", w, i)
				c := p.Get()
				_, err := c.Do("SET", key, val)
				var got string
				if err == nil {
					got, err = redis.String(c.Do("GET", key))
				}
				c.Close()
				switch {
				case err != nil:
					res.failed(err)
				case got != val:
					res.bad("GET %s = %q, want %q", key, got, val)
				default:
					res.good()
				}
			}
		}()
	}
	return &wg
}

// TestClusterReshardUnderLoad: 500 slots resharded under 50 GET/SET
// workers cost no error and no wrong reply, and no connection is discarded
// for the ASKING that follows an ASK redirect. Then a pool whose slot map
// the reshard made stale sends 10,000 GETs at once to keys of the moved
// slots, set before the reshard: each gets its key's value, and their MOVED
// replies cost the pool at most 2 slot-map refreshes, as do 10,000 MOVED
// replies to pipelined GETs (see pipelinedMovedStorm). All of
// it holds with AutoPipeline too, where an ASK moves the borrower from the
// shared connection to one of its own for ASKING.
func TestClusterReshardUnderLoad(t *testing.T) {
	for _, auto := range []bool{false, true} {
		t.Run(fmt.Sprintf("AutoPipeline=%v", auto), func(t *testing.T) {
			reshardUnderLoad(t, auto)
		})
	}
}

func reshardUnderLoad(t *testing.T, auto bool) {
	c := redistest.StartCluster(t)
	p := newPool(t, c, 8)
	p.AutoPipeline = auto
	ms := c.Masters(t)
	stale := newPool(t, c, 8)
	stale.AutoPipeline = auto
	piped := newPool(t, c, pipers)
	piped.AutoPipeline = auto
	drained := newPool(t, c, pipers)
	drained.AutoPipeline = auto
	for _, sp := range []*redispool.Pool{stale, piped, drained} {
		warm := sp.Get()
		if _, err := warm.Do("PING"); err != nil {
			t.Fatalf("PING: %v", err)
		}
		warm.Close()
	}

	candidates := make([]string, 6000)
	for i := range candidates {
		candidates[i] = fmt.Sprintf("storm:%d", i)
	}
	owned := servedBy(t, ms[0], candidates)
	setValues(t, ms[0], owned)
	// redis-cli moves the source's lowest 500 slots: the workers' keys are
	// in them, so that they meet slots being migrated.
	var hot []string
	for i := 0; len(hot) < writers*keysPerWorker; i++ {
		if k := fmt.Sprintf("{%d}", i); cluster.Slot(k) < 500 {
			hot = append(hot, k)
		}
	}
	if len(servedBy(t, ms[0], hot)) != len(hot) {
		t.Fatalf("%s does not serve slots 0 to 499", ms[0].Addr())
	}

	var res tally
	stop := make(chan struct{})
	wg := getSets(p, hot, stop, &res)
	asksBefore := c.ErrorCount(t, "ASK")
	start := time.Now()
	c.Reshard(t, ms[0], ms[1], 500)
	took := time.Since(start)
	close(stop)
	wg.Wait()
	st := p.Stats()
	p.Close() // its refreshes would count with the stale pool's
	t.Logf("500 slots resharded in %v under %d GET/SET workers: %s; %d ASK replies; discards %+v",
		took, writers, &res, c.ErrorCount(t, "ASK")-asksBefore, st.Discards)
	if res.wrong != 0 || res.errs != 0 {
		t.Errorf("want no wrong reply and no error: %s", &res)
	}
	if auto && st.PipelineCommandCount == 0 {
		t.Error("AutoPipeline on, but no command went through a shared connection")
	}
	if st.Discards.State != 0 {
		t.Errorf("%d connections discarded for their state: ASKING must not taint a connection", st.Discards.State)
	}

	// The keys of the slots that moved, which the stale pool still routes
	// to ms[0].
	stay := map[string]bool{}
	for _, k := range servedBy(t, ms[0], owned) {
		stay[k] = true
	}
	var moved []string
	for _, k := range owned {
		if !stay[k] {
			moved = append(moved, k)
		}
	}
	if len(moved) == 0 {
		t.Fatal("no candidate key in the slots that moved")
	}
	before := c.CommandCalls(t, "cluster|slots")
	movedBefore := c.ErrorCount(t, "MOVED")
	const storm = 10000
	var wgs sync.WaitGroup
	var stormRes tally
	for w := range writers {
		wgs.Add(1)
		go func() {
			defer wgs.Done()
			for i := w; i < storm; i += writers {
				key := moved[i%len(moved)]
				conn := stale.Get()
				got, err := redis.String(conn.Do("GET", key))
				conn.Close()
				switch {
				case err != nil:
					stormRes.failed(err)
				case got != valueOf(key):
					stormRes.bad("GET %s = %q, want %q", key, got, valueOf(key))
				default:
					stormRes.good()
				}
			}
		}()
	}
	wgs.Wait()
	time.Sleep(600 * time.Millisecond) // a refresh asked for runs at most refreshGap (500ms) on
	refreshes := c.CommandCalls(t, "cluster|slots") - before
	t.Logf("%d GETs at once on %d keys of moved slots through a stale map: %s; %d MOVED replies; %d CLUSTER SLOTS",
		storm, len(moved), &stormRes, c.ErrorCount(t, "MOVED")-movedBefore, refreshes)
	if stormRes.errs != 0 || stormRes.wrong != 0 {
		t.Errorf("want no error and no wrong value: %s", &stormRes)
	}
	if refreshes > 2 {
		t.Errorf("%d slot-map refreshes, want at most 2", refreshes)
	}
	pipelinedMovedStorm(t, c, piped, moved, false)
	pipelinedMovedStorm(t, c, drained, moved, true)
}

// valueOf is the value setValues gives key.
func valueOf(key string) string { return "value of " + key }

// setValues sets each of keys, all served by s, to its valueOf.
func setValues(t *testing.T, s *redistest.Server, keys []string) {
	t.Helper()
	conn := dialNode(t, s)
	defer conn.Close()
	for _, k := range keys {
		conn.Send("SET", k, valueOf(k))
	}
	if _, err := conn.Do(""); err != nil {
		t.Fatalf("SET on %s: %v", s.Addr(), err)
	}
}

// pipers is the number of goroutines of pipelinedMovedStorm.
const pipers = 10

// pipelinedMovedStorm: through p, whose slot map is stale, pipers
// goroutines each pipeline 1,000 GETs of keys in moved slots. A pipeline
// stays on its node, so every GET gets its MOVED reply as an error: 10,000
// MOVED replies in all, which refresh p's map once or twice, not more,
// whether they are read one by one with Receive or, with readAll, all at
// once with Do("").
func pipelinedMovedStorm(t *testing.T, c *redistest.Cluster, p *redispool.Pool, moved []string, readAll bool) {
	const each = 1000
	before := c.CommandCalls(t, "cluster|slots")
	var sent, wg sync.WaitGroup
	var movedReplies, other atomic.Int64
	sent.Add(pipers)
	for w := range pipers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn := p.Get()
			defer conn.Close()
			for i := range each {
				if err := conn.Send("GET", moved[(w*each+i)%len(moved)]); err != nil {
					other.Add(1)
				}
			}
			if err := conn.Flush(); err != nil {
				other.Add(1)
			}
			// Every pipeline is routed before any MOVED is read.
			sent.Done()
			sent.Wait()
			errs := make([]error, each)
			if readAll {
				replies, err := redis.Values(conn.Do(""))
				if err != nil || len(replies) != each {
					t.Errorf("Do(\"\"): %d replies, %v", len(replies), err)
				}
				for i, r := range replies {
					errs[i], _ = r.(error)
				}
			} else {
				for i := range errs {
					_, errs[i] = conn.Receive()
				}
			}
			for _, err := range errs {
				if e, ok := err.(redis.Error); ok && strings.HasPrefix(string(e), "MOVED ") {
					movedReplies.Add(1)
				} else {
					other.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	// The first MOVED asks for a refresh; one asked for after it runs at
	// most refreshGap (500ms) later: count that one too.
	waitCalls(t, c, "cluster|slots", before+1)
	time.Sleep(600 * time.Millisecond)
	refreshes := c.CommandCalls(t, "cluster|slots") - before
	read := "Receive"
	if readAll {
		read = `Do("")`
	}
	t.Logf("%d pipelined GETs on keys of moved slots through a stale map, read by %s: %d MOVED replies, %d other; %d CLUSTER SLOTS",
		pipers*each, read, movedReplies.Load(), other.Load(), refreshes)
	if movedReplies.Load() != pipers*each || other.Load() != 0 {
		t.Errorf("want %d MOVED replies and nothing else", pipers*each)
	}
	if refreshes < 1 || refreshes > 2 {
		t.Errorf("%d slot-map refreshes for %d MOVED replies, want 1 or 2", refreshes, movedReplies.Load())
	}
}

// servedBy returns the keys that s serves: those whose GET it answers
// without a redirect.
func servedBy(t *testing.T, s *redistest.Server, keys []string) []string {
	t.Helper()
	conn := dialNode(t, s)
	defer conn.Close()
	for _, k := range keys {
		conn.Send("GET", k)
	}
	if err := conn.Flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
	var served []string
	for _, k := range keys {
		_, err := conn.Receive()
		if _, redirected := err.(redis.Error); err != nil && !redirected {
			t.Fatalf("GET %s on %s: %v", k, s.Addr(), err)
		} else if err == nil {
			served = append(served, k)
		}
	}
	return served
}

// dialNode dials s directly, outside any pool.
func dialNode(t *testing.T, s *redistest.Server) redis.Conn {
	t.Helper()
	conn, err := redis.Dial("tcp", s.Addr(), redis.DialReadTimeout(5*time.Second))
	if err != nil {
		t.Fatalf("dial %s: %v", s.Addr(), err)
	}
	return conn
}
