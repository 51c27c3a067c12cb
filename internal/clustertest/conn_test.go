package clustertest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/internal/cluster"
	"github.com/redispool/redispool/internal/redistest"
)

// keyOn returns a key, with prefix, that master m serves.
func keyOn(t *testing.T, m *redistest.Server, prefix string) string {
	t.Helper()
	var keys []string
	for i := range 64 {
		keys = append(keys, fmt.Sprintf("%s:%d", prefix, i))
	}
	served := servedBy(t, m, keys)
	if len(served) == 0 {
		t.Fatalf("none of 64 keys on %s", m.Addr())
	}
	return served[0]
}

// isRedirect reports whether err is the error reply kind ("MOVED", ...).
func isRedirect(err error, kind string) bool {
	var e redis.Error
	return errors.As(err, &e) && strings.HasPrefix(string(e), kind+" ")
}

// TestClusterConn holds the promises of a conn from a cluster pool, each
// a subtest on one cluster.
func TestClusterConn(t *testing.T) {
	c := redistest.StartCluster(t)
	ms := c.Masters(t)
	k1, k2 := keyOn(t, ms[0], "a"), keyOn(t, ms[1], "b")

	// A conn moves to the node of each command's key while it holds
	// nothing the next command would inherit.
	t.Run("MovesBetweenNodesWhileClean", func(t *testing.T) {
		p := newPool(t, c, 2)
		conn := p.Get()
		defer conn.Close()
		for _, k := range []string{k1, k2, k1} {
			if _, err := conn.Do("SET", k, "v-"+k); err != nil {
				t.Fatalf("SET %s: %v", k, err)
			}
			if got, err := redis.String(conn.Do("GET", k)); err != nil || got != "v-"+k {
				t.Fatalf("GET %s = %q, %v", k, got, err)
			}
		}
	})

	// MULTI on a clean conn goes to the node of the command after it, so
	// that MULTI, SET k, EXEC works whatever node the conn was on.
	t.Run("TransactionGoesToItsFirstKeysNode", func(t *testing.T) {
		p := newPool(t, c, 2)
		conn := p.Get()
		defer conn.Close()
		if _, err := conn.Do("GET", k1); err != nil {
			t.Fatal(err)
		}
		conn.Do("MULTI")
		conn.Do("SET", k2, "tx")
		conn.Do("GET", k2)
		reply, err := redis.Values(conn.Do("EXEC"))
		if err != nil || len(reply) != 2 || fmt.Sprint(reply[1]) != "[116 120]" {
			t.Fatalf("EXEC = %q, %v; want [OK tx]", reply, err)
		}
	})

	// A second MULTI is refused as without a cluster, by Do or in a
	// pipeline, whose replies stay one per command sent.
	t.Run("NestedMultiIsRefused", func(t *testing.T) {
		p := newPool(t, c, 2)
		conn := p.Get()
		defer conn.Close()
		if _, err := conn.Do("MULTI"); err != nil {
			t.Fatalf("MULTI: %v", err)
		}
		if _, err := conn.Do("MULTI"); err == nil || !strings.Contains(err.Error(), "nested") {
			t.Errorf("a second MULTI: %v, want the server's refusal", err)
		}
		conn.Do("DISCARD")
		for _, cmd := range [][]any{{"MULTI"}, {"MULTI"}, {"SET", k1, "nested"}, {"EXEC"}} {
			conn.Send(cmd[0].(string), cmd[1:]...)
		}
		replies, err := redis.Values(conn.Do(""))
		if err != nil || len(replies) != 4 {
			t.Fatalf("pipelined MULTI, MULTI, SET, EXEC: %d replies (%v), %v; want 4", len(replies), replies, err)
		}
		if e, ok := replies[1].(redis.Error); !ok || !strings.Contains(string(e), "nested") {
			t.Errorf("the second MULTI's reply: %v, want the server's refusal", replies[1])
		}
	})

	// Inside a transaction a command of another node's slot gets its
	// MOVED reply as an error: nothing is replayed elsewhere, and EXEC
	// aborts the whole transaction.
	t.Run("TransactionGetsRedirectsAsErrors", func(t *testing.T) {
		p := newPool(t, c, 2)
		conn := p.Get()
		defer conn.Close()
		conn.Do("DEL", k1)
		conn.Do("DEL", k2)
		conn.Do("MULTI")
		if _, err := conn.Do("SET", k1, "in-tx"); err != nil {
			t.Fatalf("SET %s in MULTI: %v", k1, err)
		}
		if _, err := conn.Do("SET", k2, "in-tx"); !isRedirect(err, "MOVED") {
			t.Fatalf("SET %s in a MULTI on another node: %v, want its MOVED", k2, err)
		}
		if _, err := conn.Do("EXEC"); err == nil || !strings.HasPrefix(err.Error(), "EXECABORT") {
			t.Fatalf("EXEC: %v, want EXECABORT", err)
		}
		for _, k := range []string{k1, k2} {
			if n, err := redis.Int(conn.Do("EXISTS", k)); err != nil || n != 0 {
				t.Errorf("%s exists (%d, %v) after an aborted transaction", k, n, err)
			}
		}
	})

	// A pipeline stays on the node of its first command: the reply of a
	// command of another node's slot is its MOVED, and it does not run.
	t.Run("PipelineStaysOnItsNode", func(t *testing.T) {
		p := newPool(t, c, 2)
		conn := p.Get()
		defer conn.Close()
		conn.Do("DEL", k2)
		conn.Send("SET", k1, "piped")
		conn.Send("SET", k2, "piped")
		if err := conn.Flush(); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Receive(); err != nil {
			t.Fatalf("first reply: %v", err)
		}
		if _, err := conn.Receive(); !isRedirect(err, "MOVED") {
			t.Fatalf("second reply: %v, want MOVED", err)
		}
		if n, _ := redis.Int(conn.Do("EXISTS", k2)); n != 0 {
			t.Errorf("%s was set by a pipelined command sent to another node", k2)
		}
	})

	// WATCH binds the conn to the watched key's node until EXEC.
	t.Run("WatchKeepsTheTransactionOnItsNode", func(t *testing.T) {
		p := newPool(t, c, 2)
		conn := p.Get()
		defer conn.Close()
		conn.Do("WATCH", k2)
		conn.Do("MULTI")
		conn.Do("SET", k2, "watched")
		if reply, err := redis.Values(conn.Do("EXEC")); err != nil || len(reply) != 1 {
			t.Fatalf("EXEC = %v, %v", reply, err)
		}
	})

	// TRYAGAIN, which a multi-key command gets while its slot migrates,
	// is retried until the slot is stable again.
	t.Run("TryAgainIsRetried", func(t *testing.T) {
		p := newPool(t, c, 2)
		p.WaitTimeout = 10 * time.Second
		a, b := "{try}a", "{try}b"
		src := ms[0]
		for _, m := range ms {
			if len(servedBy(t, m, []string{a})) == 1 {
				src = m
			}
		}
		dst := ms[0]
		if dst == src {
			dst = ms[1]
		}
		src.Do(t, "SET", a, "1")
		src.Do(t, "DEL", b)
		slot := cluster.Slot(a)
		tries := src.ErrorCount(t, "TRYAGAIN")
		if got := src.Do(t, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst.NodeID(t)); got != "OK" {
			t.Fatalf("SETSLOT MIGRATING: %v", got)
		}
		done := make(chan error, 1)
		go func() {
			conn := p.Get()
			defer conn.Close()
			vs, err := redis.Values(conn.Do("MGET", a, b))
			if err == nil && (len(vs) != 2 || vs[1] != nil) {
				err = fmt.Errorf("MGET = %q", vs)
			}
			done <- err
		}()
		deadline := time.Now().Add(5 * time.Second)
		for src.ErrorCount(t, "TRYAGAIN") == tries && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		src.Do(t, "CLUSTER", "SETSLOT", slot, "STABLE")
		if err := <-done; err != nil {
			t.Fatalf("MGET while the slot migrated: %v", err)
		}
		if src.ErrorCount(t, "TRYAGAIN") == tries {
			t.Fatal("the slot's node never answered TRYAGAIN")
		}
	})

	// With ReadOnly, reads on a fresh conn go to replicas, which each
	// connection tells READONLY once, when dialed, never undone with
	// READWRITE; writes still go to masters.
	t.Run("ReadOnlyReadsFromReplicas", func(t *testing.T) {
		p := newPool(t, c, 2)
		p.Cluster.ReadOnly = true
		gets := func(masters bool) int {
			n := 0
			for _, s := range c.Nodes {
				if s.IsMaster(t) == masters {
					n += s.CommandCalls(t, "get")
				}
			}
			return n
		}
		onMasters, onReplicas := gets(true), gets(false)
		readonly, readwrite := c.CommandCalls(t, "readonly"), c.CommandCalls(t, "readwrite")
		for i := range 100 {
			k := []string{k1, k2}[i%2]
			conn := p.Get()
			if _, err := conn.Do("SET", k, "ro"); err != nil {
				t.Fatalf("SET: %v", err)
			}
			conn.Close()
			conn = p.Get() // one that read on from the master would stay there
			if _, err := conn.Do("GET", k); err != nil {
				t.Fatalf("GET: %v", err)
			}
			conn.Close()
		}
		dials := p.Stats().DialCount
		if n := gets(false) - onReplicas; n != 100 {
			t.Errorf("%d GETs on replicas, want all 100", n)
		}
		if n := gets(true) - onMasters; n != 0 {
			t.Errorf("%d GETs on masters, want none", n)
		}
		if n := c.CommandCalls(t, "readonly") - readonly; int64(n) != dials {
			t.Errorf("%d READONLY for %d dials, want one per dial", n, dials)
		}
		if n := c.CommandCalls(t, "readwrite") - readwrite; n != 0 {
			t.Errorf("%d READWRITE: READONLY was undone", n)
		}
	})

	// With ReadOnly, a transaction goes to its master even when its first
	// command reads, and a keyless write on a conn that reads bound to a
	// replica goes to a master.
	t.Run("ReadOnlyWritesGoToMasters", func(t *testing.T) {
		p := newPool(t, c, 2)
		p.Cluster.ReadOnly = true
		conn := p.Get()
		defer conn.Close()
		if _, err := conn.Do("SET", k1, "1"); err != nil {
			t.Fatalf("SET: %v", err)
		}
		conn.Close()

		conn = p.Get()
		conn.Do("MULTI")
		conn.Do("GET", k1)
		conn.Do("INCR", k1)
		reply, err := redis.Values(conn.Do("EXEC"))
		if err != nil || len(reply) != 2 {
			t.Fatalf("MULTI, GET, INCR, EXEC: %v, %v; want the transaction run on the master", reply, err)
		}
		if n, _ := redis.Int(reply[1], nil); n != 2 {
			t.Errorf("INCR in the transaction = %v, want 2", reply[1])
		}
		conn.Close()

		conn = p.Get()
		if _, err := conn.Do("GET", k1); err != nil {
			t.Fatalf("GET: %v", err)
		}
		lib := "#!lua name=roroute\nredis.register_function('roroute', function() return 1 end)"
		if _, err := conn.Do("FUNCTION", "LOAD", "REPLACE", lib); err != nil {
			t.Errorf("FUNCTION LOAD after a read from a replica: %v; want it on a master", err)
		}
		conn.Close()
		if st := p.Stats(); st.Discards.State != 0 || st.Discards.Retired != 0 {
			t.Errorf("discards %+v, want none", st.Discards)
		}
	})

	// A conn from RedigoPool is routed like one from Get, and the pool's
	// Stats sum its nodes.
	t.Run("RedigoPoolAndStats", func(t *testing.T) {
		p := newPool(t, c, 2)
		rp := p.RedigoPool()
		defer rp.Close()
		for _, k := range []string{k1, k2} {
			conn := rp.Get()
			if _, err := conn.Do("SET", k, "redigo"); err != nil {
				t.Fatalf("SET %s through RedigoPool: %v", k, err)
			}
			conn.Close()
		}
		st := p.Stats()
		if st.DialCount < 2 || st.ActiveCount != p.ActiveCount() || st.IdleCount != p.IdleCount() || st.ActiveCount < 2 {
			t.Errorf("Stats %+v, ActiveCount %d, IdleCount %d: want the nodes' sums", st, p.ActiveCount(), p.IdleCount())
		}
	})

	// After Close every call fails with ErrConnClosed; a second Close is
	// nil; a DoContext whose ctx ended sends nothing.
	t.Run("ClosedConnAndEndedContext", func(t *testing.T) {
		p := newPool(t, c, 2)
		conn := p.Get()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := redis.DoContext(conn, ctx, "SET", k1, "x"); !errors.Is(err, context.Canceled) {
			t.Errorf("DoContext with a cancelled ctx: %v", err)
		}
		conn.Close()
		if _, err := conn.Do("GET", k1); !errors.Is(err, redispool.ErrConnClosed) {
			t.Errorf("Do after Close: %v", err)
		}
		if err := conn.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})

	// A command whose reply timed out after it was written is not sent
	// again: it may have run. The caller gets the timeout and the
	// connection is discarded. (Last: it stops a master for a moment.)
	t.Run("TimeoutAfterWriteIsNotRetried", func(t *testing.T) {
		p := newPool(t, c, 2)
		p.ReadTimeout = 200 * time.Millisecond
		k := keyOn(t, ms[2], "timeout")
		ms[2].Do(t, "DEL", k)
		conn := p.Get()
		if _, err := conn.Do("GET", k); err != nil { // dialed before the stop
			t.Fatal(err)
		}
		incrs := ms[2].CommandCalls(t, "incr")
		ms[2].Stop(t)
		start := time.Now()
		_, err := conn.Do("INCR", k)
		took := time.Since(start)
		ms[2].Cont(t)
		conn.Close()
		var re redis.Error
		if err == nil || errors.As(err, &re) {
			t.Fatalf("INCR on a stopped master: %v, want a timeout", err)
		}
		if took > time.Second {
			t.Errorf("INCR took %v: retried past its timeout", took)
		}
		deadline := time.Now().Add(5 * time.Second)
		for ms[2].CommandCalls(t, "incr") == incrs && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if n := ms[2].CommandCalls(t, "incr") - incrs; n != 1 {
			t.Errorf("INCR ran %d times, want once", n)
		}
		if st := p.Stats(); st.Discards.Broken != 1 {
			t.Errorf("discards %+v: want the timed-out conn discarded", st.Discards)
		}
		c.WaitReady(t)
	})
}

// TestAClusterServesOnePool: a *Cluster given to a second Pool makes that
// pool's Get fail with ErrInvalidConfig naming Cluster, and the first
// keeps serving.
func TestAClusterServesOnePool(t *testing.T) {
	c := redistest.StartCluster(t)
	cl := &redispool.Cluster{StartupNodes: c.Addrs()[:1]}
	first := &redispool.Pool{Cluster: cl}
	defer first.Close()
	second := &redispool.Pool{Cluster: cl}
	defer second.Close()
	do := func(cmd string, args ...any) error {
		conn := first.Get()
		defer conn.Close()
		_, err := conn.Do(cmd, args...)
		return err
	}
	if err := do("SET", "one", "pool"); err != nil {
		t.Fatalf("first pool: %v", err)
	}
	_, err := second.GetContext(context.Background())
	if !errors.Is(err, redispool.ErrInvalidConfig) || !strings.Contains(err.Error(), "Cluster is already used by another Pool") {
		t.Errorf("second pool's Get: %v, want ErrInvalidConfig naming Cluster", err)
	}
	if err := do("GET", "one"); err != nil {
		t.Errorf("first pool after the second was refused: %v", err)
	}
}
