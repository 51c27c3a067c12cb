package redistest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
)

const (
	// syncTimeout bounds the wait for a replica to finish its initial sync.
	syncTimeout = 10 * time.Second
	// discoveryTimeout bounds the wait for sentinels to discover the
	// replicas and each other. Sentinels learn replicas from the master's
	// INFO (asked every 10 s, and at once on connecting) and each other from
	// hello messages published every 2 s.
	discoveryTimeout = 20 * time.Second
	// discoveryPoll separates two looks at what the sentinels know.
	discoveryPoll = 50 * time.Millisecond
	// failoverTimeout is the sentinels' failover-timeout.
	failoverTimeout = 5 * time.Second
)

// Sentinel is a redis-sentinel process started by [StartSentinels]. It
// embeds a [Server], whose methods work on it too: Addr, Port, Do, Kill,
// Stop, Cont and Restart (a restarted sentinel reads back the configuration
// it rewrote, so it remembers what it had learnt).
type Sentinel struct {
	*Server
	masterName string
	conf       string // the sentinel's own, writable configuration file
}

// MasterName returns the name under which the sentinel monitors the master.
func (s *Sentinel) MasterName() string { return s.masterName }

// ConfigFile returns the path of the sentinel's configuration file, which
// the sentinel rewrites as it learns about the replicas, the other
// sentinels and failovers.
func (s *Sentinel) ConfigFile() string { return s.conf }

// MasterAddr returns the master's address as the sentinel names it
// (SENTINEL get-master-addr-by-name), or "" if it names none.
func (s *Sentinel) MasterAddr(t testing.TB) string {
	t.Helper()
	reply := s.Do(t, "SENTINEL", "get-master-addr-by-name", s.masterName)
	hp, err := redis.Strings(reply, nil)
	if err != nil || len(hp) != 2 {
		return ""
	}
	return net.JoinHostPort(hp[0], hp[1])
}

// Failover runs SENTINEL FAILOVER on this sentinel, which promotes a
// replica without asking the other sentinels, and fails t if the sentinel
// refuses (for example with NOGOODSLAVE or INPROG).
func (s *Sentinel) Failover(t testing.TB) {
	t.Helper()
	if reply := s.Do(t, "SENTINEL", "FAILOVER", s.masterName); reply != "OK" {
		t.Fatalf("redistest: SENTINEL FAILOVER %s on %s: %v%s", s.masterName, s.Addr(), reply, s.current().tail())
	}
}

// StartReplica starts a fresh redis-server, as [Start] does, replicating
// master (--replicaof 127.0.0.1 PORT), and waits until its initial sync is
// done (master_link_status:up). extraArgs are appended to the command line.
func StartReplica(t testing.TB, master *Server, extraArgs ...string) *Server {
	t.Helper()
	args := append([]string{"--replicaof", "127.0.0.1", strconv.Itoa(master.Port())}, extraArgs...)
	r := Start(t, args...)
	WaitReplicaSynced(t, r, syncTimeout)
	return r
}

// WaitReplicaSynced waits until r is a replica whose link to its master is
// up, or fails t after timeout.
func WaitReplicaSynced(t testing.TB, r *Server, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		info := r.infoText(t, "replication")
		if infoValue(info, "role") == "slave" && infoValue(info, "master_link_status") == "up" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("redistest: replica %s not in sync after %v:\n%s%s", r.Addr(), timeout, info, r.current().tail())
		}
		time.Sleep(discoveryPoll)
	}
}

// Role returns the first element of ROLE on s: "master", "slave" or
// "sentinel".
func (s *Server) Role(t testing.TB) string {
	t.Helper()
	reply, err := redis.Values(s.Do(t, "ROLE"), nil)
	if err != nil || len(reply) == 0 {
		t.Fatalf("redistest: ROLE on %s: %v %v", s.Addr(), reply, err)
	}
	role, _ := redis.String(reply[0], nil)
	return role
}

// Replicas returns the addresses of the replicas connected to s, from
// INFO replication.
func (s *Server) Replicas(t testing.TB) []string {
	t.Helper()
	return replicasOf(s.infoText(t, "replication"))
}

// infoText runs INFO section on an admin connection and returns its text.
func (s *Server) infoText(t testing.TB, section string) string {
	t.Helper()
	c, p := s.admin(t)
	defer c.Close()
	text, err := redis.String(c.Do("INFO", section))
	if err != nil {
		t.Fatalf("redistest: INFO %s on %s: %v%s", section, s.Addr(), err, p.tail())
	}
	return text
}

// infoValue returns the value of field in the text of INFO.
func infoValue(info, field string) string {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return v
		}
	}
	return ""
}

// replicasOf returns the replicas listed in the text of INFO replication
// ("slave0:ip=127.0.0.1,port=6380,state=online,...").
func replicasOf(info string) []string {
	var addrs []string
	for _, line := range strings.Split(info, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "slave") || !strings.Contains(line, ":ip=") {
			continue
		}
		_, fields, _ := strings.Cut(line, ":")
		var ip, port string
		for _, kv := range strings.Split(fields, ",") {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "ip":
				ip = v
			case "port":
				port = v
			}
		}
		if ip != "" && port != "" {
			addrs = append(addrs, net.JoinHostPort(ip, port))
		}
	}
	return addrs
}

// StartSentinels starts n redis-sentinel processes on free 127.0.0.1 ports
// monitoring master under masterName, with a quorum of n/2+1, the given
// down-after-milliseconds (1 s when zero), a failover-timeout of 5 s and
// parallel-syncs 1, and registers t.Cleanup to kill them. Each sentinel
// gets its own configuration file in a temporary directory, since
// sentinels rewrite theirs.
//
// It returns once every sentinel names master, knows every replica that
// master has now (with their link up) and knows the n-1 other sentinels,
// so that a failover can start at once; see [WaitSentinels].
//
// When redis-sentinel is not on PATH, StartSentinels calls t.Fatal if the
// environment variable CI is "true", and t.Skip otherwise.
func StartSentinels(t testing.TB, masterName string, master *Server, n int, downAfter time.Duration) []*Sentinel {
	t.Helper()
	if n < 1 {
		t.Fatalf("redistest: StartSentinels: n is %d, want at least 1", n)
	}
	if downAfter <= 0 {
		downAfter = time.Second
	}
	bin := lookupSentinelBinary(t)
	sentinels := make([]*Sentinel, 0, n)
	for range n {
		sentinels = append(sentinels, startSentinel(t, bin, masterName, master, n/2+1, downAfter))
	}
	WaitSentinels(t, sentinels, master.Addr(), master.Replicas(t))
	return sentinels
}

// lookupSentinelBinary returns the path of redis-sentinel, or skips or fails t.
func lookupSentinelBinary(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("redis-sentinel")
	if err == nil {
		return bin
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("redistest: redis-sentinel not found on PATH (%v); CI=true makes this a failure: install it (apt-get install redis-sentinel)", err)
	}
	t.Skip("redis-sentinel not found on PATH; install it (apt-get install redis-sentinel) or set CI=true to make this a failure")
	return ""
}

func startSentinel(t testing.TB, bin, masterName string, master *Server, quorum int, downAfter time.Duration) *Sentinel {
	t.Helper()
	dir := t.TempDir()
	conf := filepath.Join(dir, "sentinel.conf")
	var errs []error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		port, err := freePort()
		if err != nil {
			errs = append(errs, fmt.Errorf("attempt %d: %w", attempt, err))
			continue
		}
		text := sentinelConfig(port, dir, masterName, master.Port(), quorum, downAfter)
		if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
			t.Fatalf("redistest: writing %s: %v", conf, err)
		}
		s := &Server{bin: bin, port: port, args: []string{conf}, dir: dir}
		p, err := s.launch()
		if err != nil {
			errs = append(errs, fmt.Errorf("attempt %d: %w", attempt, err))
			continue
		}
		s.proc = p
		s.registerCleanup(t)
		return &Sentinel{Server: s, masterName: masterName, conf: conf}
	}
	t.Fatalf("redistest: redis-sentinel did not start after %d attempts:\n%v", startAttempts, errors.Join(errs...))
	return nil
}

// sentinelConfig is the configuration file of a sentinel listening on port.
func sentinelConfig(port int, dir, masterName string, masterPort, quorum int, downAfter time.Duration) string {
	lines := []string{
		"port " + strconv.Itoa(port),
		"bind 127.0.0.1",
		"protected-mode no",
		"daemonize no",
		`logfile ""`,
		"dir " + strconv.Quote(dir),
		"sentinel resolve-hostnames no",
		"sentinel announce-ip 127.0.0.1",
		fmt.Sprintf("sentinel monitor %s 127.0.0.1 %d %d", masterName, masterPort, quorum),
		fmt.Sprintf("sentinel down-after-milliseconds %s %d", masterName, max(downAfter.Milliseconds(), 1)),
		fmt.Sprintf("sentinel failover-timeout %s %d", masterName, failoverTimeout.Milliseconds()),
		fmt.Sprintf("sentinel parallel-syncs %s 1", masterName),
	}
	return strings.Join(lines, "\n") + "\n"
}

// WaitSentinels waits until every sentinel names master as the master, lists
// every address in replicas as a replica whose link to the master is up,
// and lists all the other sentinels, or fails t after 20 s. Use it after a
// failover, with the new master and the replicas it should have, before
// starting another one.
func WaitSentinels(t testing.TB, sentinels []*Sentinel, master string, replicas []string) {
	t.Helper()
	deadline := time.Now().Add(discoveryTimeout)
	for {
		var missing []string
		for _, s := range sentinels {
			missing = append(missing, s.lacks(t, master, replicas, len(sentinels)-1)...)
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("redistest: sentinels not ready after %v:\n%s%s", discoveryTimeout, strings.Join(missing, "\n"), sentinels[0].current().tail())
		}
		time.Sleep(discoveryPoll)
	}
}

// lacks lists what s does not know yet: the master, a replica, or some of
// the other sentinels.
func (s *Sentinel) lacks(t testing.TB, master string, replicas []string, others int) []string {
	t.Helper()
	var missing []string
	if got := s.MasterAddr(t); got != master {
		missing = append(missing, fmt.Sprintf("sentinel %s names master %q, want %q", s.Addr(), got, master))
	}
	known := map[string]bool{}
	for _, r := range s.table(t, "replicas") {
		if r["flags"] == "slave" && r["master-link-status"] == "ok" && r["runid"] != "" &&
			net.JoinHostPort(r["master-host"], r["master-port"]) == master {
			known[net.JoinHostPort(r["ip"], r["port"])] = true
		}
	}
	for _, r := range replicas {
		if !known[r] {
			missing = append(missing, fmt.Sprintf("sentinel %s does not list replica %s (of %s) with its link up", s.Addr(), r, master))
		}
	}
	n := 0
	for _, r := range s.table(t, "sentinels") {
		if r["flags"] == "sentinel" {
			n++
		}
	}
	if n < others {
		missing = append(missing, fmt.Sprintf("sentinel %s knows %d other sentinels, want %d", s.Addr(), n, others))
	}
	return missing
}

// table runs SENTINEL what NAME (replicas or sentinels) and returns each
// entry as a map of its fields.
func (s *Sentinel) table(t testing.TB, what string) []map[string]string {
	t.Helper()
	reply := s.Do(t, "SENTINEL", what, s.masterName)
	entries, err := redis.Values(reply, nil)
	if err != nil {
		t.Fatalf("redistest: SENTINEL %s %s on %s: %v %v", what, s.masterName, s.Addr(), reply, err)
	}
	var out []map[string]string
	for _, e := range entries {
		m, err := redis.StringMap(e, nil)
		if err != nil {
			t.Fatalf("redistest: SENTINEL %s %s on %s: entry %v: %v", what, s.masterName, s.Addr(), e, err)
		}
		out = append(out, m)
	}
	return out
}
