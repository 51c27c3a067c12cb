package redistest

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
)

func TestSentinelConfig(t *testing.T) {
	got := sentinelConfig(26379, "/tmp/x", "mymaster", 6379, 2, 1500*time.Millisecond)
	for _, want := range []string{
		"port 26379\n",
		"bind 127.0.0.1\n",
		"sentinel monitor mymaster 127.0.0.1 6379 2\n",
		"sentinel down-after-milliseconds mymaster 1500\n",
		"sentinel failover-timeout mymaster 5000\n",
		"sentinel parallel-syncs mymaster 1\n",
		"sentinel resolve-hostnames no\n",
		"sentinel announce-ip 127.0.0.1\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("config lacks %q:\n%s", want, got)
		}
	}
}

func TestReplicasOf(t *testing.T) {
	info := "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n" +
		"slave0:ip=127.0.0.1,port=6380,state=online,offset=42,lag=0\r\n" +
		"slave1:ip=127.0.0.1,port=6381,state=wait_bgsave,offset=0,lag=0\r\n" +
		"master_failover_state:no-failover\r\n"
	got := fmt.Sprint(replicasOf(info))
	if want := "[127.0.0.1:6380 127.0.0.1:6381]"; got != want {
		t.Errorf("replicasOf = %s, want %s", got, want)
	}
	if got := infoValue(info, "role"); got != "master" {
		t.Errorf("infoValue(role) = %q", got)
	}
}

// TestSentinels starts a master, a replica and three sentinels, checks what
// they know, fails over with one sentinel while another is down, and checks
// that the others follow.
func TestSentinels(t *testing.T) {
	master := Start(t)
	replica := StartReplica(t, master)
	if got := replica.Role(t); got != "slave" {
		t.Fatalf("replica ROLE = %q, want slave", got)
	}
	if got := fmt.Sprint(master.Replicas(t)); got != fmt.Sprint([]string{replica.Addr()}) {
		t.Fatalf("master's replicas = %s, want [%s]", got, replica.Addr())
	}
	// Written on the master, read on the replica: replication works.
	master.Do(t, "SET", "k", "v")
	deadline := time.Now().Add(5 * time.Second)
	for {
		v, _ := redis.String(replica.Do(t, "GET", "k"), nil)
		if v == "v" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("write to the master not seen on the replica after 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}

	sentinels := StartSentinels(t, "mymaster", master, 3, time.Second)
	if len(sentinels) != 3 {
		t.Fatalf("got %d sentinels, want 3", len(sentinels))
	}
	ports := map[int]bool{}
	for _, s := range sentinels {
		ports[s.Port()] = true
		if got := s.Role(t); got != "sentinel" {
			t.Errorf("%s: ROLE = %q, want sentinel", s.Addr(), got)
		}
		if got := s.MasterAddr(t); got != master.Addr() {
			t.Errorf("%s: master = %q, want %q", s.Addr(), got, master.Addr())
		}
		if s.MasterName() != "mymaster" {
			t.Errorf("MasterName() = %q", s.MasterName())
		}
		// The sentinel rewrote its own file with what it learnt.
		b, err := os.ReadFile(s.ConfigFile())
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "sentinel known-replica mymaster 127.0.0.1 "+fmt.Sprint(replica.Port())) {
			t.Errorf("%s does not record the replica:\n%s", s.ConfigFile(), b)
		}
	}
	if len(ports) != 3 {
		t.Errorf("sentinels share ports: %v", ports)
	}

	// One sentinel down; the remaining two are a majority of three.
	sentinels[2].Kill(t)
	sentinels[0].Failover(t)
	deadline = time.Now().Add(15 * time.Second)
	for replica.Role(t) != "master" || sentinels[1].MasterAddr(t) != replica.Addr() {
		if time.Now().After(deadline) {
			t.Fatalf("after SENTINEL FAILOVER: replica role %q, sentinel 1 names %q; want master, %s",
				replica.Role(t), sentinels[1].MasterAddr(t), replica.Addr())
		}
		time.Sleep(discoveryPoll)
	}

	// A restarted sentinel reads back the configuration it rewrote and
	// learns the new master from the others.
	sentinels[2].Restart(t)
	deadline = time.Now().Add(15 * time.Second)
	for sentinels[2].MasterAddr(t) != replica.Addr() {
		if time.Now().After(deadline) {
			t.Fatalf("restarted sentinel names %q, want %s", sentinels[2].MasterAddr(t), replica.Addr())
		}
		time.Sleep(discoveryPoll)
	}
}

func TestMissingSentinelBinary(t *testing.T) {
	t.Setenv("PATH", t.TempDir()) // an empty directory: no redis-sentinel
	start := func(tb testing.TB) { StartSentinels(tb, "mymaster", nil, 3, 0) }
	t.Run("local", func(t *testing.T) {
		t.Setenv("CI", "")
		f := runFake(t, start)
		want := "redis-sentinel not found on PATH; install it (apt-get install redis-sentinel) or set CI=true to make this a failure"
		if f.skipped != want || f.fatal != "" {
			t.Errorf("skipped = %q, fatal = %q; want skipped = %q", f.skipped, f.fatal, want)
		}
	})
	t.Run("CI", func(t *testing.T) {
		t.Setenv("CI", "true")
		f := runFake(t, start)
		if f.skipped != "" || !strings.Contains(f.fatal, "redis-sentinel not found on PATH") {
			t.Errorf("skipped = %q, fatal = %q; want a fatal failure", f.skipped, f.fatal)
		}
	})
}
