package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/redispool/redispool/internal/redistest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// lockedBuffer is a bytes.Buffer that the example writes to while the test
// reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitOutput waits until out contains want, or fails t after timeout.
func waitOutput(t *testing.T, out *lockedBuffer, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(out.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("output lacks %q after %v:\n%s", want, timeout, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSentinelExample runs the example against a master, a replica and
// three sentinels, fails the master over with SENTINEL FAILOVER during the
// run, and checks that the example moved to the promoted replica and kept
// writing. It is skipped when redis-server or redis-sentinel is not
// installed, unless CI=true.
func TestSentinelExample(t *testing.T) {
	master := redistest.Start(t)
	replica := redistest.StartReplica(t, master)
	sentinels := redistest.StartSentinels(t, "mymaster", master, 3, time.Second)
	var addrs []string
	for _, s := range sentinels {
		addrs = append(addrs, s.Addr())
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out := &lockedBuffer{}
	type result struct {
		sum summary
		err error
	}
	done := make(chan result, 1)
	go func() {
		sum, err := run(ctx, out, config{sentinels: addrs, master: "mymaster", writers: 4, report: 500 * time.Millisecond})
		done <- result{sum, err}
	}()
	defer func() {
		cancel()
		<-done
		t.Logf("example output:\n%s", out.String())
	}()

	waitOutput(t, out, "master "+master.Addr(), 10*time.Second)
	waitOutput(t, out, " writes, ", 10*time.Second) // a progress report
	sentinels[0].Failover(t)
	// The sentinels announce the new master about a second after promoting
	// it, and the pool follows at once; give a slow machine more. (A pool
	// that waited for the old master to fail it would wait for the
	// sentinels to demote it: 10 to 20 s or more.)
	waitOutput(t, out, "master changed to "+replica.Addr(), 20*time.Second)
	// Keep writing to the new master for a moment.
	before := strings.Count(out.String(), " writes, ")
	waitOutputCount(t, out, " writes, ", before+2, 10*time.Second)

	cancel()
	res := <-done
	done <- res // for the deferred wait
	if res.err != nil {
		t.Fatalf("run: %v", res.err)
	}
	sum := res.sum
	if got := strings.Join(sum.Masters, " "); got != master.Addr()+" "+replica.Addr() {
		t.Errorf("masters used: %s, want %s then %s", got, master.Addr(), replica.Addr())
	}
	if sum.Writes == 0 {
		t.Errorf("no write succeeded")
	}
	if !strings.Contains(out.String(), "done: ") {
		t.Errorf("no summary line in the output")
	}
	// The writes did reach the new master.
	for w := range 4 {
		if n, ok := replica.Do(t, "GET", fmt.Sprint(keyPrefix, w)).([]byte); !ok || len(n) == 0 {
			t.Errorf("key %s%d not on the new master", keyPrefix, w)
		}
	}
}

// waitOutputCount waits until out contains want at least n times.
func waitOutputCount(t *testing.T, out *lockedBuffer, want string, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for strings.Count(out.String(), want) < n {
		if time.Now().After(deadline) {
			t.Fatalf("output has %q fewer than %d times after %v:\n%s", want, n, timeout, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
