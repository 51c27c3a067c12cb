package cluster_test

import (
	"strings"
	"testing"

	"github.com/redispool/redispool/internal/cluster"
)

// node is a node of a CLUSTER SLOTS reply as redigo reads it.
func node(host string, port int64) []any { return []any{[]byte(host), port, []byte("id")} }

// TestParseSlotsMapsEachSlotToItsShard: every slot of a range goes to the
// range's master and replicas, and slots outside every range to none.
func TestParseSlotsMapsEachSlotToItsShard(t *testing.T) {
	reply := []any{
		[]any{int64(0), int64(99), node("10.0.0.1", 7000), node("10.0.0.4", 7003)},
		[]any{int64(100), int64(199), node("10.0.0.2", 7001)},
		[]any{int64(300), int64(16383), node("10.0.0.1", 7000), node("10.0.0.4", 7003)},
	}
	m, err := cluster.ParseSlots(reply, "10.0.0.9:7000")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		slot            int
		master, replica string
	}{
		{0, "10.0.0.1:7000", "10.0.0.4:7003"},
		{99, "10.0.0.1:7000", "10.0.0.4:7003"},
		{100, "10.0.0.2:7001", "10.0.0.2:7001"}, // no replica: the master serves reads
		{199, "10.0.0.2:7001", "10.0.0.2:7001"},
		{200, "", ""},
		{299, "", ""},
		{16383, "10.0.0.1:7000", "10.0.0.4:7003"},
	} {
		if got := m.Master(tt.slot); got != tt.master {
			t.Errorf("Master(%d) = %q, want %q", tt.slot, got, tt.master)
		}
		if got := m.Replica(tt.slot, 7); got != tt.replica {
			t.Errorf("Replica(%d) = %q, want %q", tt.slot, got, tt.replica)
		}
	}
	if !m.Serves(5, "10.0.0.4:7003") || m.Serves(150, "10.0.0.4:7003") {
		t.Error("Serves does not follow the shards")
	}
	if got := strings.Join(m.Addrs(), " "); got != "10.0.0.1:7000 10.0.0.4:7003 10.0.0.2:7001" {
		t.Errorf("Addrs() = %q: want each node once", got)
	}
}

// TestParseSlotsReadsHostsAsTheServerMeansThem: an empty host is the host
// of the node asked, and a node whose host is "?" is left out.
func TestParseSlotsReadsHostsAsTheServerMeansThem(t *testing.T) {
	reply := []any{
		[]any{int64(0), int64(16383), node("", 7000), node("?", 7003), node("10.0.0.5", 7004)},
	}
	m, err := cluster.ParseSlots(reply, "10.0.0.9:7000")
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Master(42); got != "10.0.0.9:7000" {
		t.Errorf("master %q, want the host asked", got)
	}
	if got := m.Replica(42, 0) + " " + m.Replica(42, 1); got != "10.0.0.5:7004 10.0.0.5:7004" {
		t.Errorf("replicas %q, want the unknown one left out", got)
	}
}

// TestParseSlotsRejectsWhatIsNotASlotMap: a reply of another shape, or one
// where no slot is served, is an error that says so, never a panic.
func TestParseSlotsRejectsWhatIsNotASlotMap(t *testing.T) {
	for name, reply := range map[string]any{
		"not an array":        []byte("OK"),
		"empty":               []any{},
		"short range":         []any{[]any{int64(0), int64(5)}},
		"range beyond 16383":  []any{[]any{int64(0), int64(16384), node("h", 1)}},
		"range backwards":     []any{[]any{int64(9), int64(5), node("h", 1)}},
		"slot not a number":   []any{[]any{[]byte("0"), int64(5), node("h", 1)}},
		"node not an array":   []any{[]any{int64(0), int64(5), []byte("h:1")}},
		"port out of range":   []any{[]any{int64(0), int64(5), node("h", 70000)}},
		"only unknown master": []any{[]any{int64(0), int64(5), node("?", 1)}},
	} {
		if _, err := cluster.ParseSlots(reply, "h:1"); err == nil || !strings.Contains(err.Error(), "CLUSTER SLOTS") {
			t.Errorf("%s: error %v, want one naming CLUSTER SLOTS", name, err)
		}
	}
}
