package redispool_test

import (
	"log/slog"
	"testing"
	"time"

	"github.com/redispool/redispool"
	"github.com/stretchr/testify/require"
)

// TestASentinelRecordWhoseHandlerPanicsIsLostAlone checks the Logger's
// promise for the records about the sentinels: a handler that panics on the
// failed subscription, which is logged on the pool's own goroutine, loses
// that record only. The goroutine keeps retrying, and Get keeps working.
// Before, the panic ended the program.
func TestASentinelRecordWhoseHandlerPanicsIsLostAlone(t *testing.T) {
	const failed = "subscription to a sentinel failed"
	master := startRoleServer(t, "master")
	sen := startAnsweringSentinel(t, master.addr)
	sen.refuseSubscribe.Store(true)
	h := newObsPanicHandler(failed)
	h.armed.Store(true)
	p := &redispool.Pool{
		Sentinel: &redispool.Sentinel{Addrs: []string{sen.addr}, MasterName: "mymaster"},
		Logger:   slog.New(h),
	}
	defer p.Close()

	c := p.Get()
	require.NoError(t, c.Err())
	require.NoError(t, c.Close())
	select {
	case <-h.panicked:
	case <-time.After(5 * time.Second):
		t.Fatal("the failed subscription was not logged within 5s")
	}
	// The first retry comes within watchBackoffBase.
	require.Eventually(t, func() bool { return h.count(failed) >= 2 }, 5*time.Second, 10*time.Millisecond,
		"the subscription was not retried after the handler panicked")

	c = p.Get()
	require.NoError(t, c.Err())
	_, err := c.Do("SET", "k", "v")
	require.NoError(t, err)
	require.NoError(t, c.Close())
}
