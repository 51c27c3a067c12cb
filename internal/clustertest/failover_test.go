package clustertest

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/internal/redistest"
)

// writers is how many goroutines INCR their own counters.
const writers = 50

// incrs runs writers goroutines, each INCRing its own counter "ctr:{w}" on
// a conn of its own from p, one Get per INCR, and checking that each
// reply is one more than the last, until stopped.
type incrs struct {
	p      *redispool.Pool
	stop   chan struct{}
	once   sync.Once
	wg     sync.WaitGroup
	res    [writers]tally
	lastOK [writers]atomic.Int64 // when writer w last succeeded, in ns since the Unix epoch
	// okBegan is when writer w began the INCR that last succeeded, in ns
	// since the Unix epoch. It is stored after lastOK: lastOK is never
	// older than the end of that INCR.
	okBegan [writers]atomic.Int64
	// resync, when set for writer w, takes its counter's next value as it
	// comes, for writes a dead master acknowledged and lost.
	resync [writers]atomic.Bool
}

func startIncrs(p *redispool.Pool) *incrs {
	r := &incrs{p: p, stop: make(chan struct{})}
	for w := range writers {
		r.wg.Add(1)
		go r.write(w)
	}
	return r
}

func counterKey(w int) string { return fmt.Sprintf("ctr:{%d}", w) }

func (r *incrs) write(w int) {
	defer r.wg.Done()
	var last int64
	for {
		select {
		case <-r.stop:
			return
		default:
		}
		began := time.Now()
		c := r.p.Get()
		n, err := redis.Int64(c.Do("INCR", counterKey(w)))
		c.Close()
		switch {
		case err != nil:
			r.res[w].failed(err)
			time.Sleep(time.Millisecond) // a dead shard fails fast: do not spin
		case n != last+1 && !r.resync[w].Load():
			r.res[w].bad("INCR %s = %d after %d", counterKey(w), n, last)
			last = n
		default:
			last = n
			r.res[w].good()
			r.lastOK[w].Store(time.Now().UnixNano())
			r.okBegan[w].Store(began.UnixNano())
		}
	}
}

// finish stops the writers and waits for them; it is idempotent.
func (r *incrs) finish() {
	r.once.Do(func() { close(r.stop) })
	r.wg.Wait()
}

// progressed waits until every writer succeeded after since, or fails t.
func (r *incrs) progressed(t *testing.T, since time.Time, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for w := range writers {
		for r.lastOK[w].Load() < since.UnixNano() {
			if time.Now().After(deadline) {
				t.Fatalf("writer %d made no INCR in the %v after %v: %s", w, within, since.Format(time.StampMilli), &r.res[w])
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// sum adds up the tallies of the writers for which in is true.
func (r *incrs) sum(in func(w int) bool) *tally {
	var s tally
	for w := range writers {
		if !in(w) {
			continue
		}
		t := &r.res[w]
		t.mu.Lock()
		s.ok += t.ok
		s.wrong += t.wrong
		s.errs += t.errs
		s.wrongEx = append(s.wrongEx, t.wrongEx...)
		s.errEx = append(s.errEx, t.errEx...)
		t.mu.Unlock()
	}
	return &s
}

// TestClusterFailoverLosesNoIncr: CLUSTER FAILOVER of each master in turn,
// under 50 writers INCRing their own counters, costs no error and no
// wrong reply, and at most 2 slot-map refreshes (CLUSTER SLOTS) each; with
// AutoPipeline too, where the MOVED replies come to many writers at once.
func TestClusterFailoverLosesNoIncr(t *testing.T) {
	for _, auto := range []bool{false, true} {
		t.Run(fmt.Sprintf("AutoPipeline=%v", auto), func(t *testing.T) {
			failoverLosesNoIncr(t, auto)
		})
	}
}

func failoverLosesNoIncr(t *testing.T, auto bool) {
	c := redistest.StartCluster(t)
	p := newPool(t, c, 8)
	p.AutoPipeline = auto
	r := startIncrs(p)
	defer r.finish()
	r.progressed(t, time.Now(), 10*time.Second)

	for i, m := range c.Masters(t) {
		replica := c.ReplicaOf(t, m)
		before := c.CommandCalls(t, "cluster|slots")
		movedBefore := c.ErrorCount(t, "MOVED")
		start := time.Now()
		if got := replica.Do(t, "CLUSTER", "FAILOVER"); got != "OK" {
			t.Fatalf("CLUSTER FAILOVER on %s: %v", replica.Addr(), got)
		}
		waitRole(t, replica, true)
		waitRole(t, m, false)
		c.WaitReady(t)
		promoted := time.Since(start)
		r.progressed(t, time.Now(), 10*time.Second)
		// The MOVED replies make the pool refresh its map, at most
		// refreshGap (500ms) after the last refresh; then routing is right
		// again and nothing asks for more.
		waitCalls(t, c, "cluster|slots", before+1)
		moved := c.ErrorCount(t, "MOVED")
		r.progressed(t, time.Now(), 10*time.Second)
		waitSteady(t, c, moved)
		// A refresh the last MOVED asked for runs at most refreshGap
		// after the one before it: count it here, not in the next
		// failover.
		time.Sleep(600 * time.Millisecond)
		refreshes := c.CommandCalls(t, "cluster|slots") - before
		t.Logf("failover %d: %s promoted in %v; %d MOVED replies followed; %d CLUSTER SLOTS",
			i+1, replica.Addr(), promoted, c.ErrorCount(t, "MOVED")-movedBefore, refreshes)
		if refreshes > 2 {
			t.Errorf("failover %d cost %d slot-map refreshes, want at most 2", i+1, refreshes)
		}
	}
	r.finish()
	all := r.sum(func(int) bool { return true })
	st := p.Stats()
	t.Logf("3 failovers under %d writers: %s; stats %+v", writers, all, st)
	if auto && st.PipelineCommandCount == 0 {
		t.Error("AutoPipeline on, but no command went through a shared connection")
	}
	if all.wrong != 0 || all.errs != 0 {
		t.Errorf("want no wrong reply and no error: %s", all)
	}
}

// waitRole waits until s is a master (or a replica), or fails t.
func waitRole(t *testing.T, s *redistest.Server, master bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for s.IsMaster(t) != master {
		if time.Now().After(deadline) {
			t.Fatalf("%s is not a master=%v after 15s", s.Addr(), master)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestClusterMasterKilledStopsOnlyItsShard: a master killed under 50
// writers costs the writers on other shards no error and no wrong reply;
// the dead shard's writers succeed again within node-timeout + 3 s, once
// its replica is promoted; dials to the dead address are paced by the
// backoff, and the slot map is asked for at most twice a second.
//
// With cluster-require-full-coverage yes (the default) every node answers
// CLUSTERDOWN until the replica is promoted, which the pool retries; with
// no, the other shards go on and only the failed dials tell the pool to
// refresh its map. On the dead shard, only the INCRs in flight at the kill
// fail: those a failed dial kept from being written are retried. Each
// holds with AutoPipeline too, where the writers of a shard share its
// connections, and the kill cuts them all at once. Every variant kills a
// master, so each has a cluster of its own.
func TestClusterMasterKilledStopsOnlyItsShard(t *testing.T) {
	for _, full := range []string{"yes", "no"} {
		t.Run("full-coverage="+full, func(t *testing.T) {
			for _, auto := range []bool{false, true} {
				t.Run(fmt.Sprintf("AutoPipeline=%v", auto), func(t *testing.T) {
					masterKilled(t, redistest.StartCluster(t, "--cluster-require-full-coverage", full), auto)
				})
			}
		})
	}
}

func masterKilled(t *testing.T, c *redistest.Cluster, auto bool) {
	p := newPool(t, c, 8)
	p.AutoPipeline = auto
	r := startIncrs(p)
	defer r.finish()
	r.progressed(t, time.Now(), 10*time.Second)

	dead := c.Masters(t)[0]
	onDead := map[int]bool{}
	for w := range writers {
		if n, _ := redis.Int(dead.Do(t, "EXISTS", counterKey(w)), nil); n == 1 {
			onDead[w] = true
			r.resync[w].Store(true) // the replica may lack the last INCRs acknowledged
		}
	}
	if len(onDead) == 0 || len(onDead) == writers {
		t.Fatalf("%d of %d writers on the master to kill; want some, not all", len(onDead), writers)
	}
	before := c.CommandCalls(t, "cluster|slots") - dead.CommandCalls(t, "cluster|slots")
	dialErrs := p.Stats().DialErrorCount
	killed := time.Now()
	dead.Kill(t)
	// The dead shard's writers are back once each INCR begun after the
	// master was reaped succeeded: a reply the master sent before it died,
	// read after the kill, is not one (with AutoPipeline one batch of such
	// replies reaches every writer of the shard).
	reaped := time.Now()
	var back time.Duration
	for w := range onDead {
		for r.okBegan[w].Load() < reaped.UnixNano() {
			if time.Since(killed) > 20*time.Second {
				t.Fatalf("writer %d on the dead shard not back 20s after the kill: %s", w, &r.res[w])
			}
			time.Sleep(5 * time.Millisecond)
		}
		back = max(back, time.Duration(r.lastOK[w].Load()-killed.UnixNano()))
	}
	c.WaitReady(t)
	r.progressed(t, time.Now(), 10*time.Second)
	elapsed := time.Since(killed)
	r.finish()
	queries := c.CommandCalls(t, "cluster|slots") - before
	dials := p.Stats().DialErrorCount - dialErrs
	others := r.sum(func(w int) bool { return !onDead[w] })
	deadShard := r.sum(func(w int) bool { return onDead[w] })
	st := p.Stats()
	t.Logf("master %s killed: dead shard's %d writers all back %v after the kill; other shards: %s; dead shard: %s; "+
		"over %v: %d failed dials, %d CLUSTER SLOTS (%.1f/s); stats %+v",
		dead.Addr(), len(onDead), back, others, deadShard, elapsed.Round(time.Millisecond), dials, queries, float64(queries)/elapsed.Seconds(), st)
	if auto && st.PipelineCommandCount == 0 {
		t.Error("AutoPipeline on, but no command went through a shared connection")
	}
	if others.wrong != 0 || others.errs != 0 {
		t.Errorf("writers on other shards: %s", others)
	}
	// A writer has one INCR at a time: only those in flight at the kill
	// may fail. One never written (a failed dial) is retried.
	if deadShard.wrong != 0 || deadShard.errs > len(onDead) {
		t.Errorf("dead shard's %d writers: %s; want no wrong reply and at most one error each", len(onDead), deadShard)
	}
	if back > 4*time.Second {
		t.Errorf("dead shard's writers back %v after the kill, want within node-timeout (1s) + 3s", back)
	}
	if limit := 2*elapsed.Seconds() + 1; float64(queries) > limit {
		t.Errorf("%d CLUSTER SLOTS in %v, above 2 a second", queries, elapsed)
	}
	if limit := int64(4*elapsed.Seconds()) + 8; dials > limit {
		t.Errorf("%d failed dials to the dead master in %v: the backoff does not pace them", dials, elapsed)
	}
}
