package redistest

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
)

// clusterReadyTimeout bounds the wait for a new cluster to be ready, and for
// one to settle after a failover or a reshard.
const clusterReadyTimeout = 30 * time.Second

// Cluster is a Redis Cluster of redis-server processes started by
// [StartCluster]: three masters, each with one replica.
type Cluster struct {
	Nodes []*Server
}

// StartCluster starts six cluster nodes on loopback (see
// [StartClusterNode]) with a node timeout of one second, joins them with
// redis-cli --cluster create and one replica per master, and returns once
// every node says cluster_state:ok and knows the six, and every replica's
// link to its master is up. extraArgs go to every redis-server. The nodes
// are killed when the test ends.
func StartCluster(t testing.TB, extraArgs ...string) *Cluster {
	t.Helper()
	args := append([]string{"--cluster-node-timeout", "1000", "--repl-diskless-sync-delay", "0"}, extraArgs...)
	c := &Cluster{}
	addrs := make([]string, 6)
	for i := range addrs {
		s := StartClusterNode(t, args...)
		c.Nodes = append(c.Nodes, s)
		addrs[i] = s.Addr()
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Fatalf("redistest: redis-cli not found on PATH (%v): install redis-tools", err)
	}
	cmd := exec.Command(cli, append(append([]string{"--cluster", "create"}, addrs...),
		"--cluster-replicas", "1", "--cluster-yes")...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("redistest: redis-cli --cluster create: %v\n%s", err, out)
	}
	c.touchMasters(t)
	c.WaitReady(t)
	return c
}

// touchMasters writes a key on each master: CLUSTER SLOTS leaves out a
// replica whose replication offset is still 0. A master refuses writes
// (CLUSTERDOWN) until it sees every slot served.
func (c *Cluster) touchMasters(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(clusterReadyTimeout)
	for _, s := range c.Masters(t) {
		for i := 0; ; {
			r := s.Do(t, "SET", fmt.Sprintf("redistest:touch:%d", i), "1")
			e, failed := r.(redis.Error)
			switch {
			case !failed:
			case strings.HasPrefix(string(e), "MOVED "):
				i++
				continue
			case time.Now().Before(deadline):
				time.Sleep(pollInterval)
				continue
			default:
				t.Fatalf("redistest: no write on %s within %v: %v", s.Addr(), clusterReadyTimeout, e)
			}
			break
		}
	}
}

// Addrs returns the nodes' addresses.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.Nodes))
	for i, s := range c.Nodes {
		addrs[i] = s.Addr()
	}
	return addrs
}

// WaitReady waits until every running node says cluster_state:ok and
// knows every other running node, and every running replica's link to its
// master is up; it calls t.Fatal after 30 s with what is not ready.
func (c *Cluster) WaitReady(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(clusterReadyTimeout)
	for {
		err := c.ready()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("redistest: cluster not ready after %v: %v", clusterReadyTimeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ready reports the first running node that is not ready.
func (c *Cluster) ready() error {
	running, replicas := 0, 0
	for _, s := range c.Nodes {
		if s.current().exited() {
			continue
		}
		running++
		if repl, err := s.adminString("INFO", "replication"); err != nil {
			return err
		} else if strings.Contains(repl, "role:slave") {
			replicas++
		}
	}
	for _, s := range c.Nodes {
		if s.current().exited() {
			continue
		}
		if err := s.clusterReady(running, replicas); err != nil {
			return fmt.Errorf("%s: %w", s.Addr(), err)
		}
	}
	return nil
}

// adminString runs a command on a connection of its own and returns its
// reply as a string.
func (s *Server) adminString(cmd string, args ...any) (string, error) {
	conn, err := dialTimeout(s.Addr(), adminTimeout)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	return redis.String(conn.Do(cmd, args...))
}

// slotsReplicas counts the replicas that CLUSTER SLOTS lists (those not
// failed, and with some replication offset), each once.
func slotsReplicas(conn redis.Conn) (int, error) {
	ranges, err := redis.Values(conn.Do("CLUSTER", "SLOTS"))
	if err != nil {
		return 0, err
	}
	seen := map[string]bool{}
	for _, r := range ranges {
		fields, _ := r.([]any)
		for i := 3; i < len(fields); i++ {
			node, _ := fields[i].([]any)
			if len(node) > 2 {
				id, _ := node[2].([]byte)
				seen[string(id)] = true
			}
		}
	}
	return len(seen), nil
}

// clusterReady reports what this node lacks: cluster_state:ok, a view of
// at least want nodes and of the replicas in CLUSTER SLOTS, or a
// replica's link up.
func (s *Server) clusterReady(want, replicas int) error {
	conn, err := dialTimeout(s.Addr(), adminTimeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	info, err := redis.String(conn.Do("CLUSTER", "INFO"))
	if err != nil {
		return err
	}
	if !strings.Contains(info, "cluster_state:ok") {
		return fmt.Errorf("cluster_state is not ok")
	}
	if n, _ := fieldOf(info, "cluster_known_nodes"); n < want {
		return fmt.Errorf("knows %d nodes, not %d", n, want)
	}
	s.current().harnessSlots.Add(1)
	if seen, err := slotsReplicas(conn); err != nil || seen != replicas {
		return fmt.Errorf("CLUSTER SLOTS lists %d replicas, not %d (%v)", seen, replicas, err)
	}
	repl, err := redis.String(conn.Do("INFO", "replication"))
	if err != nil {
		return err
	}
	if strings.Contains(repl, "role:slave") && !strings.Contains(repl, "master_link_status:up") {
		return fmt.Errorf("replica's link to its master is not up")
	}
	return nil
}

// fieldOf reads an integer field "name:value" from INFO-style text.
func fieldOf(info, name string) (int, bool) {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			n, err := strconv.Atoi(v)
			return n, err == nil
		}
	}
	return 0, false
}

// IsMaster reports whether s is a master now (INFO replication).
func (s *Server) IsMaster(t testing.TB) bool {
	t.Helper()
	repl, err := redis.String(s.Do(t, "INFO", "replication"), nil)
	if err != nil {
		t.Fatalf("redistest: INFO replication on %s: %v", s.Addr(), err)
	}
	return strings.Contains(repl, "role:master")
}

// Masters returns the running nodes that are masters now.
func (c *Cluster) Masters(t testing.TB) []*Server {
	t.Helper()
	var ms []*Server
	for _, s := range c.Nodes {
		if !s.current().exited() && s.IsMaster(t) {
			ms = append(ms, s)
		}
	}
	return ms
}

// ReplicaOf returns the running replica of master m.
func (c *Cluster) ReplicaOf(t testing.TB, m *Server) *Server {
	t.Helper()
	for _, s := range c.Nodes {
		if s == m || s.current().exited() {
			continue
		}
		repl, err := redis.String(s.Do(t, "INFO", "replication"), nil)
		if err != nil {
			t.Fatalf("redistest: INFO replication on %s: %v", s.Addr(), err)
		}
		if strings.Contains(repl, "role:slave") && strings.Contains(repl, "master_port:"+strconv.Itoa(m.Port())+"\r") {
			return s
		}
	}
	t.Fatalf("redistest: %s has no running replica", m.Addr())
	return nil
}

// CommandCalls returns how many times s ran a command since it started,
// from INFO commandstats, less the CLUSTER SLOTS of WaitReady; name is as
// INFO writes it, such as "cluster|slots".
func (s *Server) CommandCalls(t testing.TB, name string) int {
	t.Helper()
	stats, err := redis.String(s.Do(t, "INFO", "commandstats"), nil)
	if err != nil {
		t.Fatalf("redistest: INFO commandstats on %s: %v", s.Addr(), err)
	}
	prefix := "cmdstat_" + name + ":calls="
	for _, line := range strings.Split(stats, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), prefix); ok {
			n, _ := strconv.Atoi(v[:strings.IndexByte(v, ',')])
			if name == "cluster|slots" {
				n -= int(s.current().harnessSlots.Load())
			}
			return n
		}
	}
	return 0
}

// CommandCalls sums Server.CommandCalls over the running nodes.
func (c *Cluster) CommandCalls(t testing.TB, name string) int {
	t.Helper()
	n := 0
	for _, s := range c.Nodes {
		if !s.current().exited() {
			n += s.CommandCalls(t, name)
		}
	}
	return n
}

// ErrorCount returns how many error replies of the kind (such as "MOVED")
// s sent since it started, from INFO errorstats.
func (s *Server) ErrorCount(t testing.TB, kind string) int {
	t.Helper()
	stats, err := redis.String(s.Do(t, "INFO", "errorstats"), nil)
	if err != nil {
		t.Fatalf("redistest: INFO errorstats on %s: %v", s.Addr(), err)
	}
	n, _ := fieldOf(strings.ReplaceAll(stats, "count=", ""), "errorstat_"+kind)
	return n
}

// ErrorCount sums Server.ErrorCount over the running nodes.
func (c *Cluster) ErrorCount(t testing.TB, kind string) int {
	t.Helper()
	n := 0
	for _, s := range c.Nodes {
		if !s.current().exited() {
			n += s.ErrorCount(t, kind)
		}
	}
	return n
}

// NodeID returns s's cluster node ID (CLUSTER MYID).
func (s *Server) NodeID(t testing.TB) string {
	t.Helper()
	id, err := redis.String(s.Do(t, "CLUSTER", "MYID"), nil)
	if err != nil {
		t.Fatalf("redistest: CLUSTER MYID on %s: %v", s.Addr(), err)
	}
	return id
}

// Reshard moves n slots, with their keys, from master from to master to,
// with redis-cli --cluster reshard, and waits until the cluster is ready.
func (c *Cluster) Reshard(t testing.TB, from, to *Server, n int) {
	t.Helper()
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Fatalf("redistest: redis-cli not found on PATH (%v): install redis-tools", err)
	}
	cmd := exec.Command(cli, "--cluster", "reshard", from.Addr(),
		"--cluster-from", from.NodeID(t), "--cluster-to", to.NodeID(t),
		"--cluster-slots", strconv.Itoa(n), "--cluster-yes")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("redistest: redis-cli --cluster reshard: %v\n%s", err, out)
	}
	c.WaitReady(t)
}
