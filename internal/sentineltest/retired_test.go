package sentineltest

import (
	"testing"
	"time"

	"github.com/redispool/redispool"
)

// TestAConnHeldAcrossAFailoverStopsWritingToTheOldMaster holds a conn while
// the sentinels promote the replica: the old master stays writable for
// seconds after that, so the held conn must fail instead of writing there.
func TestAConnHeldAcrossAFailoverStopsWritingToTheOldMaster(t *testing.T) {
	c := startCluster(t)
	p := newPool(t, c.sentinelAddrs(t, false))
	warmUp(t, p, c.master.Addr())
	checkSubscribed(t, c)

	held := p.Get()
	if _, err := held.Do("SET", "held", "before"); err != nil {
		t.Fatal(err)
	}
	c.sentinels[0].Failover(t)
	deadline := time.Now().Add(15 * time.Second)
	for p.Sentinel.Master() != c.replica.Addr() {
		if time.Now().After(deadline) {
			t.Fatalf("the pool did not move to the new master %s; it uses %q", c.replica.Addr(), p.Sentinel.Master())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := held.Do("SET", "held", "after"); err != redispool.ErrConnRetired {
		t.Fatalf("a write on a conn to the old master returned %v, want ErrConnRetired", err)
	}
	held.Close()

	fresh := p.Get()
	defer fresh.Close()
	if _, err := fresh.Do("SET", "fresh", "1"); err != nil {
		t.Fatalf("a new conn after the failover: %v", err)
	}
	if got := c.replica.Do(t, "GET", "fresh"); string(got.([]byte)) != "1" {
		t.Fatalf("the write went elsewhere than the new master: GET there = %q", got)
	}
}
