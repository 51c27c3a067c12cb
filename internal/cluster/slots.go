package cluster

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
)

// Shard is a master and its replicas, by address.
type Shard struct {
	Master   string
	Replicas []string
}

// Map says which shard serves each slot. It is not changed once built.
type Map struct {
	shards []Shard
	slots  [SlotCount]int16 // index in shards; -1 when no shard serves the slot
}

// errNotSlots is wrapped by ParseSlots' errors.
var errNotSlots = errors.New("not a CLUSTER SLOTS reply")

// ParseSlots reads the reply to CLUSTER SLOTS, asked of the node at asked:
// an array of [start, end, master, replica...], each node [host, port,
// ...]. A node with an empty host is asked's host; one whose host is "?"
// (unknown to the node asked) is left out. A reply that leaves every slot
// unserved is an error.
func ParseSlots(reply any, asked string) (*Map, error) {
	ranges, ok := reply.([]any)
	if !ok {
		return nil, fmt.Errorf("%w: %T", errNotSlots, reply)
	}
	askedHost, _, _ := net.SplitHostPort(asked)
	m := &Map{}
	for i := range m.slots {
		m.slots[i] = -1
	}
	byMaster := map[string]int{}
	for _, r := range ranges {
		start, end, nodes, err := slotRange(r, askedHost)
		if err != nil {
			return nil, err
		}
		if len(nodes) == 0 {
			continue
		}
		i, ok := byMaster[nodes[0]]
		if !ok {
			i = len(m.shards)
			byMaster[nodes[0]] = i
			m.shards = append(m.shards, Shard{Master: nodes[0], Replicas: nodes[1:]})
		}
		for s := start; s <= end; s++ {
			m.slots[s] = int16(i)
		}
	}
	if len(m.shards) == 0 {
		return nil, fmt.Errorf("%w: no slot is served", errNotSlots)
	}
	return m, nil
}

// slotRange reads one entry of a CLUSTER SLOTS reply: its first and last
// slot and the addresses of its master and replicas, the unknown left out.
func slotRange(r any, askedHost string) (int, int, []string, error) {
	fields, ok := r.([]any)
	if !ok || len(fields) < 3 {
		return 0, 0, nil, fmt.Errorf("%w: a range is %v", errNotSlots, r)
	}
	start, ok1 := fields[0].(int64)
	end, ok2 := fields[1].(int64)
	if !ok1 || !ok2 || start < 0 || end < start || end >= SlotCount {
		return 0, 0, nil, fmt.Errorf("%w: a range is %v to %v", errNotSlots, fields[0], fields[1])
	}
	var nodes []string
	for j, n := range fields[2:] {
		addr, err := nodeAddr(n, askedHost)
		if err != nil {
			return 0, 0, nil, err
		}
		if addr == "" {
			if j == 0 {
				break // a master unknown: the range is not served
			}
			continue
		}
		nodes = append(nodes, addr)
	}
	return int(start), int(end), nodes, nil
}

// nodeAddr reads a node of a CLUSTER SLOTS reply, [host, port, ...]: its
// host:port, or "" when its host is unknown.
func nodeAddr(n any, askedHost string) (string, error) {
	f, ok := n.([]any)
	if !ok || len(f) < 2 {
		return "", fmt.Errorf("%w: a node is %v", errNotSlots, n)
	}
	host, ok1 := f[0].([]byte)
	port, ok2 := f[1].(int64)
	if !ok1 || !ok2 || port < 1 || port > 65535 {
		return "", fmt.Errorf("%w: a node is %v", errNotSlots, n)
	}
	switch string(host) {
	case "?":
		return "", nil
	case "":
		host = []byte(askedHost)
	}
	return net.JoinHostPort(string(host), strconv.Itoa(int(port))), nil
}

// Master is the address of slot's master, or "" when no shard serves it.
func (m *Map) Master(slot int) string {
	if i := m.slots[slot]; i >= 0 {
		return m.shards[i].Master
	}
	return ""
}

// Replica is the address of one of slot's replicas, the n-th modulo their
// number, or its master's when it has none.
func (m *Map) Replica(slot int, n uint32) string {
	i := m.slots[slot]
	if i < 0 {
		return ""
	}
	sh := m.shards[i]
	if len(sh.Replicas) == 0 {
		return sh.Master
	}
	return sh.Replicas[n%uint32(len(sh.Replicas))]
}

// AnyMaster is one of the masters, the n-th modulo their number.
func (m *Map) AnyMaster(n uint32) string {
	return m.shards[n%uint32(len(m.shards))].Master
}

// Addrs returns the address of every master and replica.
func (m *Map) Addrs() []string {
	var addrs []string
	for _, sh := range m.shards {
		addrs = append(addrs, sh.Master)
		addrs = append(addrs, sh.Replicas...)
	}
	return addrs
}

// Serves reports whether addr is slot's master or one of its replicas.
func (m *Map) Serves(slot int, addr string) bool {
	i := m.slots[slot]
	if i < 0 {
		return false
	}
	sh := m.shards[i]
	return sh.Master == addr || slices.Contains(sh.Replicas, addr)
}

// IsMaster reports whether addr is a master of the map.
func (m *Map) IsMaster(addr string) bool {
	return slices.ContainsFunc(m.shards, func(sh Shard) bool { return sh.Master == addr })
}

// Has reports whether addr is a master or a replica of the map.
func (m *Map) Has(addr string) bool {
	return slices.ContainsFunc(m.shards, func(sh Shard) bool {
		return sh.Master == addr || slices.Contains(sh.Replicas, addr)
	})
}
