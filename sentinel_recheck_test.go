package redispool_test

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/redispool/redispool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// While the pool waits for the sentinels' answer after an announcement that
// did not fit, it keeps using its connections to the master in use. A
// READONLY on one of them must retire the others, as it does at any other
// time ("ROLE, READONLY and the other failures guard them as ever"): forget
// used to see no master cached and do nothing.
func TestSentinelReadOnlyWhileRecheckingRetiresTheOtherConns(t *testing.T) {
	x := startRoleServer(t, "master")
	y := startRoleServer(t, "slave")
	z := startRoleServer(t, "master")
	z.readOnly.Store(true)
	s := startAnsweringSentinel(t, z.addr)
	p := stalePool(t, s, nil)

	announceSwitch(p, x.addr, y.addr)
	announceSwitch(p, y.addr, z.addr)
	c1, c2, c3 := p.Get(), p.Get(), p.Get()
	defer c1.Close()
	defer c2.Close()
	require.NoError(t, c1.Err())
	require.NoError(t, c2.Err())
	require.NoError(t, c3.Err())
	c3.Close() // idle
	require.Equal(t, 1, p.Stats().IdleCount)

	announceSwitch(p, x.addr, y.addr) // a late duplicate: the pool rechecks
	require.Empty(t, p.Sentinel.Master())
	require.NoError(t, c2.Err(), "a late duplicate does not retire the conns to the master in use")

	_, err := c1.Do("SET", "k", "v")
	require.ErrorContains(t, err, "READONLY")
	assert.ErrorIs(t, c2.Err(), redispool.ErrConnRetired, "a READONLY from the master in use did not retire the other conns to it")
	assert.Zero(t, p.Stats().IdleCount, "a READONLY from the master in use did not close the idle conns to it")
}

// A real failover announced while the pool rechecks (a late duplicate came
// first, and the pool has not dialed since: it may stay so for hours) starts
// from the master in use. The pool retires its connections but, unlike any
// other time, does not follow the announcement: its next dial asks the
// sentinels, first the one that answered last, which may not have heard of
// the failover yet and names the old master, still writable for seconds
// after SENTINEL FAILOVER. The sentinel that announced the failover knows
// it, and must be asked first.
func TestSentinelFailoverWhileRecheckingDoesNotGoBackToTheOldMaster(t *testing.T) {
	x := startRoleServer(t, "master")
	y := startRoleServer(t, "slave")
	z := startRoleServer(t, "master") // the master in use, soon replaced but still writable
	w := startRoleServer(t, "master")
	slow := startAnsweringSentinel(t, z.addr)      // asked first: it answered last
	announcer := startAnsweringSentinel(t, z.addr) // publishes the failover
	p := &redispool.Pool{
		Sentinel:    &redispool.Sentinel{Addrs: []string{slow.addr, announcer.addr}, MasterName: "mymaster"},
		DialTimeout: 5 * time.Second,
	}
	p.Stats() // first use: the Sentinel serves p
	defer p.Close()

	held := p.Get()
	defer held.Close()
	require.NoError(t, held.Err())
	require.Equal(t, z.addr, p.Sentinel.Master())
	require.EqualValues(t, 1, z.conns.Load())

	announceSwitch(p, x.addr, y.addr) // a late duplicate of an earlier failover
	require.NoError(t, held.Err())

	// SENTINEL FAILOVER: z to w. The announcer switched and says so; the
	// slow sentinel has not heard yet.
	announcer.setAnswer(w.addr)
	zh, zp, _ := net.SplitHostPort(z.addr)
	wh, wp, _ := net.SplitHostPort(w.addr)
	p.Sentinel.Announce(announcer.addr, fmt.Sprintf("mymaster %s %s %s %s", zh, zp, wh, wp))
	require.ErrorIs(t, held.Err(), redispool.ErrConnRetired, "the announcement says z was replaced")

	c := p.Get()
	defer c.Close()
	require.NoError(t, c.Err())
	assert.EqualValues(t, 1, z.conns.Load(), "after the announcement of its replacement, the pool dialed the old master again")
	assert.EqualValues(t, 1, w.conns.Load(), "the new dial went to the master announced")
	assert.Equal(t, w.addr, p.Sentinel.Master())
}

// The query a recheck makes may be under way when the failover of the
// master in use is announced: the sentinel asked answers with the master it
// knew when asked, the one just replaced. The epoch check that protects a
// query from such a stale answer (see masterAddr) did not apply, since the
// announcement, made while the pool rechecks, neither raised the epoch nor
// cached its master: the pool dialed the old master again, with a fresh
// generation, so nothing retired those connections before a READONLY.
func TestSentinelFailoverDuringTheRecheckQueryIsNotUndoneByItsAnswer(t *testing.T) {
	x := startRoleServer(t, "master")
	y := startRoleServer(t, "slave")
	z := startRoleServer(t, "master") // replaced, still writable for seconds
	w := startRoleServer(t, "master")
	slow := startGatedSentinel(t, z.addr, 2) // the recheck's query waits
	announcer := startAnsweringSentinel(t, w.addr)
	p := &redispool.Pool{
		Sentinel:    &redispool.Sentinel{Addrs: []string{slow.addr, announcer.addr}, MasterName: "mymaster"},
		DialTimeout: 5 * time.Second,
	}
	p.Stats() // first use: the Sentinel serves p
	defer p.Close()

	held := p.Get()
	defer held.Close()
	require.NoError(t, held.Err())
	require.Equal(t, z.addr, p.Sentinel.Master())
	announceSwitch(p, x.addr, y.addr) // a late duplicate: the pool rechecks

	type result struct {
		c   interface{ Close() error }
		err error
	}
	got := make(chan result, 1)
	go func() {
		c := p.Get()
		got <- result{c, c.Err()}
	}()
	select {
	case <-slow.asked:
	case <-time.After(5 * time.Second):
		t.Fatal("the recheck did not ask the sentinel")
	}
	// The failover, as the query is under way.
	zh, zp, _ := net.SplitHostPort(z.addr)
	wh, wp, _ := net.SplitHostPort(w.addr)
	p.Sentinel.Announce(announcer.addr, fmt.Sprintf("mymaster %s %s %s %s", zh, zp, wh, wp))
	require.ErrorIs(t, held.Err(), redispool.ErrConnRetired)
	close(slow.release) // the slow sentinel answers z: it had not heard yet when asked

	var r result
	select {
	case r = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("Get still waits")
	}
	defer r.c.Close()
	require.NoError(t, r.err)
	assert.EqualValues(t, 1, z.conns.Load(), "the stale answer sent the pool back to the master just replaced")
	assert.EqualValues(t, 1, w.conns.Load())
	assert.Equal(t, w.addr, p.Sentinel.Master())
}
