package sentineltest

import (
	"fmt"
	"testing"
	"time"

	"github.com/redispool/redispool"
)

// warmUp makes the pool find the master and checks that it did.
func warmUp(t *testing.T, p *redispool.Pool, want string) {
	t.Helper()
	c := p.Get()
	defer c.Close()
	if _, err := c.Do("SET", "warm", "up"); err != nil {
		t.Fatalf("first write through the pool: %v", err)
	}
	if got := p.Sentinel.Master(); got != want {
		t.Fatalf("pool uses master %q, want %q", got, want)
	}
}

// TestSentinelFailover writes from 50 goroutines through one pool while a
// sentinel fails the master over with SENTINEL FAILOVER. The old master
// stays up: it keeps being a master for a while after the promotion, then
// the sentinels turn it into a replica of the new one.
func TestSentinelFailover(t *testing.T) {
	c := startCluster(t)
	p := newPool(t, c.sentinelAddrs(t, true)) // the first sentinel listed is down
	warmUp(t, p, c.master.Addr())
	checkSubscribed(t, c)

	r := newRun(t, p)
	r.monitor(c, true)
	r.startWriters()
	time.Sleep(time.Second)

	before := r.counters(r.now())
	cmd := r.now()
	c.sentinels[1].Failover(t)
	promoted := r.waitFor("promoted", 10*time.Second)
	announced := r.waitFor("announced", 10*time.Second)
	// The sentinels turn the old master into a replica some 10 s after
	// the promotion; keep writing until then, and a while after.
	demoted := r.waitFor("demoted", 30*time.Second)
	time.Sleep(time.Second)
	r.finish()

	res := r.check(t, c.replica, promoted, promoted)
	after := r.counters(r.now())
	dialsPerSec, queriesPerSec, bothPerSec := r.rates(cmd)
	r.mu.Lock()
	oldSeen, oldLast := r.oldClientsSeen, r.oldClients
	r.mu.Unlock()
	st := p.Stats()
	span := ""
	if res.lostBefore > 0 {
		span = fmt.Sprintf(" (acknowledged %v to %v before it was seen)", promoted-res.lostBeforeSpan[0], promoted-res.lostBeforeSpan[1])
	}

	t.Logf("SENTINEL FAILOVER: promoted %v after the command; sentinels announced it %v after the promotion; "+
		"first write kept by the new master %v after the promotion, all %d writers %v after; "+
		"old master demoted %v after the promotion, last pool conn on it %v after the promotion; "+
		"writes: %d acknowledged, %d refused (error reply), %d not sent, %d unknown; "+
		"lost acknowledged writes: %d before the promotion%s, %d after; wrong replies: %d; "+
		"sentinel queries during the failover: %d; dials: %d (%d failed); per second at most: %d dials, %d queries, %d both; "+
		"retired conns %d; errors seen: %q",
		promoted-cmd, announced-promoted,
		res.firstAfter-promoted, writers, res.allAfter-promoted,
		demoted-promoted, oldLast-promoted,
		res.acks, res.refused, res.notSent, res.unknown,
		res.lostBefore, span, res.lostAfter, res.wrong,
		after.qs-before.qs, after.dials-before.dials, after.dialErrs-before.dialErrs, dialsPerSec, queriesPerSec, bothPerSec,
		st.Discards.Retired, res.errorsEx)

	if res.wrong != 0 {
		t.Errorf("%d wrong replies: %q", res.wrong, res.wrongEx)
	}
	if res.lostAfter != 0 {
		t.Errorf("%d writes acknowledged after the promotion are not on the new master (the old master accepted them): %q",
			res.lostAfter, res.lostAfterEx)
	}
	if res.firstAfter < 0 || res.firstAfter-promoted > 5*time.Second {
		t.Errorf("first write kept by the new master %v after the promotion, want within 5s", res.firstAfter-promoted)
	}
	if res.allAfter < 0 || res.allAfter-promoted > 5*time.Second {
		t.Errorf("every writer wrote to the new master %v after the promotion, want within 5s", res.allAfter-promoted)
	}
	if oldSeen && oldLast >= demoted {
		t.Errorf("the pool still had a connection to the old master %v after it was demoted", oldLast-demoted)
	}
	if q := after.qs - before.qs; q > 10 {
		t.Errorf("%d sentinel queries during the failover, want a handful (at most 10)", q)
	}
	if dialsPerSec > maxActive || queriesPerSec > maxActive {
		t.Errorf("%d dials and %d sentinel queries in one second, want at most MaxActive (%d) each", dialsPerSec, queriesPerSec, maxActive)
	}
	if got := p.Sentinel.Master(); got != c.replica.Addr() {
		t.Errorf("pool uses master %q at the end, want the promoted replica %s", got, c.replica.Addr())
	}
}

// TestSentinelMasterKilled writes from 50 goroutines through one pool and
// kills the master. Writes acknowledged before the kill may be lost (Redis
// replicates asynchronously); none acknowledged after it may be.
func TestSentinelMasterKilled(t *testing.T) {
	c := startCluster(t)
	p := newPool(t, c.sentinelAddrs(t, false))
	// The first sentinel listed hangs: the pool gives it its share of the
	// dial timeout (5 s / 3), then asks the next.
	c.sentinels[0].Stop(t)
	start := time.Now()
	warmUp(t, p, c.master.Addr())
	found := time.Since(start)
	c.sentinels[0].Cont(t)
	if found > 3*time.Second {
		t.Errorf("found the master %v after the first dial began, with the first sentinel hung; want the next sentinel asked after about 1.7s", found)
	}

	r := newRun(t, p)
	r.monitor(c, false)
	r.startWriters()
	time.Sleep(time.Second)

	before := r.counters(r.now())
	killed := r.now()
	c.master.Kill(t)
	// Kill returns once the process has exited. A write it ran before the
	// signal landed may be acknowledged in between, and lost with the
	// rest of the asynchronous replication; one acknowledged after can
	// only come from the new master.
	dead := r.now()
	promoted := r.waitFor("promoted", downAfter+15*time.Second)
	announced := r.waitFor("announced", 10*time.Second)
	// Keep writing until the deadline of the done-when, and a second more.
	if wait := killed + downAfter + 6*time.Second - r.now(); wait > 0 {
		time.Sleep(wait)
	}
	r.finish()

	res := r.check(t, c.replica, dead, promoted)
	after := r.counters(r.now())
	dialsPerSec, queriesPerSec, bothPerSec := r.rates(killed)
	st := p.Stats()

	t.Logf("first sentinel hung: master found in %v; master killed: promoted %v after the kill, announced %v after that; "+
		"first write kept by the new master %v after the kill (%v after the promotion), all %d writers %v after the kill; "+
		"writes: %d acknowledged, %d refused (error reply), %d not sent, %d unknown; "+
		"lost acknowledged writes: %d before the old master exited (async replication), %d after; wrong replies: %d; "+
		"sentinel queries during the failover: %d; dials: %d (%d failed); per second at most: %d dials to the new master, %d queries, %d both; "+
		"fast fails %d; errors seen: %q",
		found.Round(time.Millisecond), promoted-killed, announced-promoted,
		res.firstAfter-killed, res.firstAfter-promoted, writers, res.allAfter-killed,
		res.acks, res.refused, res.notSent, res.unknown,
		res.lostBefore, res.lostAfter, res.wrong,
		after.qs-before.qs, after.dials-before.dials, after.dialErrs-before.dialErrs, dialsPerSec, queriesPerSec, bothPerSec,
		st.FastFailCount, res.errorsEx)

	if res.wrong != 0 {
		t.Errorf("%d wrong replies: %q", res.wrong, res.wrongEx)
	}
	if res.lostAfter != 0 {
		t.Errorf("%d writes acknowledged after the old master exited are not on the new master: %q", res.lostAfter, res.lostAfterEx)
	}
	limit := downAfter + 5*time.Second
	if res.firstAfter < 0 || res.firstAfter-killed > limit {
		t.Errorf("writes resumed %v after the kill, want within %v", res.firstAfter-killed, limit)
	}
	if res.allAfter < 0 || res.allAfter-killed > limit {
		t.Errorf("every writer wrote to the new master %v after the kill, want within %v", res.allAfter-killed, limit)
	}
	// One query per 500 ms while the old master is down, and a few more.
	outage := promoted - killed
	if q, most := after.qs-before.qs, int64(outage/(500*time.Millisecond))+4; q > most {
		t.Errorf("%d sentinel queries during a %v outage, want at most %d", q, outage, most)
	}
	if dialsPerSec > maxActive || queriesPerSec > maxActive {
		t.Errorf("%d dials to the new master and %d sentinel queries in one second, want at most MaxActive (%d) each", dialsPerSec, queriesPerSec, maxActive)
	}
	if got := p.Sentinel.Master(); got != c.replica.Addr() {
		t.Errorf("pool uses master %q at the end, want the promoted replica %s", got, c.replica.Addr())
	}
}
