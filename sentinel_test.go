package redispool_test

// Redis Sentinel: the pool asks the sentinels for the master, at most twice
// a second, each within its share of DialTimeout and the ones that failed
// last; it checks the master's ROLE on every dial; it follows the
// +switch-master announcements that start from the master in use, retiring
// the connections to the old one, and asks the sentinels again about those
// that do not fit; it believes no address that is not one; a frame it cannot
// read fails a query or a subscription, never the program; and a Sentinel
// serves one Pool.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/internal/redistest"
)

// ---------------------------------------------------------------------------
// Announcements.

// The announcements that follow the master in use are followed at once, as
// is the first one when no master is known yet; a duplicate of the one
// followed changes nothing. None makes the pool ask the sentinels.
func TestSentinelAnnouncementsThatFollowTheMasterAreFollowed(t *testing.T) {
	x := startRoleServer(t, "master")
	z := startRoleServer(t, "master")
	s := startAnsweringSentinel(t, x.addr)
	p := stalePool(t, s, nil)

	announceSwitch(p, "127.0.0.1:1", x.addr) // nothing known yet
	assert.Equal(t, x.addr, p.Sentinel.Master(), "the first announcement is followed")
	held := p.Get()
	defer held.Close()
	require.NoError(t, held.Err())
	assert.EqualValues(t, 1, x.conns.Load())

	gen := p.Generation()
	announceSwitch(p, x.addr, z.addr) // the normal case
	assert.Equal(t, z.addr, p.Sentinel.Master(), "an announcement from the master in use is followed at once")
	assert.Equal(t, gen+1, p.Generation())
	assert.ErrorIs(t, held.Err(), redispool.ErrConnRetired, "the conn to the old master is retired")

	c := p.Get()
	defer c.Close()
	require.NoError(t, c.Err())
	assert.EqualValues(t, 1, z.conns.Load())

	announceSwitch(p, x.addr, z.addr) // the same, from another sentinel
	assert.Equal(t, z.addr, p.Sentinel.Master())
	assert.Equal(t, gen+1, p.Generation(), "a duplicate of the announcement followed retired the conns")
	require.NoError(t, c.Err())
	assert.Zero(t, p.Sentinel.Queries(), "the sentinels were asked")
}

// After two failovers X->Y and Y->Z, a late duplicate of "X->Y" from a slow
// sentinel must not send the pool back to Y, a demoted master, nor retire
// its connections to Z.
func TestSentinelLateDuplicateAnnouncementIsNotFollowed(t *testing.T) {
	x := startRoleServer(t, "master")
	y := startRoleServer(t, "slave") // demoted by the second failover
	z := startRoleServer(t, "master")
	s := startAnsweringSentinel(t, z.addr) // the sentinels' truth
	rec := &recorder{}
	p := stalePool(t, s, slog.New(rec))

	announceSwitch(p, x.addr, y.addr)
	announceSwitch(p, y.addr, z.addr)
	require.Equal(t, z.addr, p.Sentinel.Master())
	idle := p.Get()
	require.NoError(t, idle.Err())
	idle.Close() // kept idle
	require.EqualValues(t, 1, z.conns.Load())
	gen, retired := p.Generation(), p.Stats().Discards.Retired

	announceSwitch(p, x.addr, y.addr) // the late duplicate

	assert.Equal(t, gen, p.Generation(), "a stale announcement retired the connections to the master in use")
	assert.Equal(t, retired, p.Stats().Discards.Retired, "a stale announcement closed idle connections")
	assert.NotEqual(t, y.addr, p.Sentinel.Master(), "a stale announcement was followed back to a demoted master")

	c1 := p.Get() // the idle conn to Z, still usable
	defer c1.Close()
	require.NoError(t, c1.Err())
	_, err := c1.Do("SET", "k", "v")
	require.NoError(t, err, "the idle conn to the master in use must survive a stale announcement")
	c2 := p.Get() // a new dial
	defer c2.Close()
	require.NoError(t, c2.Err())
	assert.EqualValues(t, 2, z.conns.Load(), "the new dial went to Z")
	assert.Zero(t, y.conns.Load(), "nothing dialed the demoted master")
	assert.Equal(t, z.addr, p.Sentinel.Master())
	assert.Equal(t, gen, p.Generation(), "the sentinels named Z again: nothing to retire")

	ms := rec.find("ignored")
	require.NotEmpty(t, ms, "the ignored announcement is logged")
	m := ms[0]
	assert.Equal(t, "INFO", m["level"])
	assert.Equal(t, y.addr, m["master"])
	assert.Equal(t, x.addr, m["previous"])
	assert.Equal(t, z.addr, m["current"])
	assert.Equal(t, "test", m["sentinel"])
}

// An announcement whose old master is not the one in use (one was missed:
// the pool is on X and hears "Y->Z") is not followed blindly: the next dial
// asks the sentinels, even moments after the last query or a failed one, and
// the pool follows their answer and retires its connections to X.
func TestSentinelAnnouncementFromAnotherMasterMakesThePoolAsk(t *testing.T) {
	t.Run("after a query", func(t *testing.T) {
		x := startRoleServer(t, "master")
		y := startRoleServer(t, "slave")
		z := startRoleServer(t, "master")
		w := startRoleServer(t, "master")
		s := startAnsweringSentinel(t, x.addr)
		p := stalePool(t, s, nil)

		held := p.Get()
		defer held.Close()
		require.NoError(t, held.Err())
		require.Equal(t, x.addr, p.Sentinel.Master())
		queries := p.Sentinel.Queries()

		// The sentinels have moved on past Z, to W: the pool must take
		// their answer, not the announcement's.
		s.setAnswer(w.addr)
		p.Sentinel.SetLastQuery("", nil) // asked now: within the half second a query's answer is reused, whatever the machine's speed
		announceSwitch(p, y.addr, z.addr)
		assert.NotEqual(t, z.addr, p.Sentinel.Master(), "an announcement from another master was followed blindly")

		c := p.Get()
		defer c.Close()
		require.NoError(t, c.Err())
		assert.Greater(t, p.Sentinel.Queries(), queries, "the next dial did not ask the sentinels")
		assert.Equal(t, w.addr, p.Sentinel.Master(), "the pool follows the sentinels' answer")
		assert.EqualValues(t, 1, w.conns.Load(), "the new dial went to the master the sentinels named")
		assert.Zero(t, z.conns.Load())
		assert.Zero(t, y.conns.Load())
		assert.ErrorIs(t, held.Err(), redispool.ErrConnRetired, "the conn to X, which the sentinels no longer name, is retired")
	})

	t.Run("after a failed query", func(t *testing.T) {
		x := startRoleServer(t, "master")
		y := startRoleServer(t, "slave")
		z := startRoleServer(t, "master")
		s := startAnsweringSentinel(t, z.addr)
		p := stalePool(t, s, nil)

		// The state after a failure on X and a query that failed moments
		// ago: the address forgotten, the last answer X, the error kept.
		p.Sentinel.SetLastQuery(x.addr, errors.New("sentinels down"))

		announceSwitch(p, y.addr, z.addr)
		c := p.Get()
		defer c.Close()
		require.NoError(t, c.Err(), "the next dial reused the failed query's error")
		assert.EqualValues(t, 1, p.Sentinel.Queries(), "the next dial did not ask the sentinels")
		assert.Equal(t, z.addr, p.Sentinel.Master())
		assert.EqualValues(t, 1, z.conns.Load())
		assert.Zero(t, x.conns.Load())
	})
}

// While the pool waits to ask the sentinels after an announcement that did
// not fit, the late announcement it missed ("X->Y" after "Y->Z", on X)
// starts from the master in use: it is followed, and retires the
// connections to X at once. Y has been replaced since: its ROLE check fails
// the next dial, and the one after asks the sentinels and reaches Z.
func TestSentinelMissedAnnouncementArrivingLateIsFollowedUntilRoleFails(t *testing.T) {
	x := startRoleServer(t, "master")
	y := startRoleServer(t, "slave")
	z := startRoleServer(t, "master")
	s := startAnsweringSentinel(t, x.addr)
	p := stalePool(t, s, nil)

	held := p.Get()
	defer held.Close()
	require.NoError(t, held.Err())
	require.Equal(t, x.addr, p.Sentinel.Master())
	queries := p.Sentinel.Queries()
	s.setAnswer(z.addr)

	announceSwitch(p, y.addr, z.addr) // does not fit: ask
	require.NoError(t, held.Err(), "not yet known to be replaced")
	announceSwitch(p, x.addr, y.addr) // the one missed, late
	assert.ErrorIs(t, held.Err(), redispool.ErrConnRetired, "the announcement says X was replaced")
	assert.Equal(t, y.addr, p.Sentinel.Master(), "an announcement from the master in use is followed")

	_, err := p.GetContext(context.Background())
	require.ErrorIs(t, err, redispool.ErrNotMaster, "Y's ROLE check")
	assert.Empty(t, p.Sentinel.Master(), "a failed ROLE check forgets Y")
	var c interface{ Err() error }
	require.Eventually(t, func() bool { // past the pool's dial backoff
		got, err := p.GetContext(context.Background())
		if err == nil {
			c = got
			t.Cleanup(func() { got.Close() })
		}
		return err == nil
	}, 5*time.Second, 10*time.Millisecond)
	require.NoError(t, c.Err())
	assert.Greater(t, p.Sentinel.Queries(), queries, "the dial asked the sentinels")
	assert.Equal(t, z.addr, p.Sentinel.Master())
	assert.EqualValues(t, 1, z.conns.Load())
	assert.EqualValues(t, 1, y.conns.Load(), "Y was dialed once, for its ROLE check")
}

// While the pool waits for the sentinels' answer after an announcement that
// did not fit, it keeps using its connections to the master in use. A
// READONLY on one of them retires the others, as it does at any other time
// ("ROLE, READONLY and the other failures guard them as ever").
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
	p.Sentinel.Announce(announcer.addr, switchMsg(z.addr, w.addr))
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
// knew when asked, the one just replaced. That answer, older than the
// announcement, does not send the pool back to the old master: it dials the
// master announced, and the old one not again.
func TestSentinelFailoverDuringTheRecheckQueryIsNotUndoneByItsAnswer(t *testing.T) {
	x := startRoleServer(t, "master")
	y := startRoleServer(t, "slave")
	z := startRoleServer(t, "master") // replaced, still writable for seconds
	w := startRoleServer(t, "master")
	slow := startSentinel(t, &fakeSentinel{master: z.addr, gateAt: 2}) // the recheck's query waits
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
	p.Sentinel.Announce(announcer.addr, switchMsg(z.addr, w.addr))
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

func TestAConnDialedAsANewMasterIsAnnouncedServesTheNewMaster(t *testing.T) {
	oldMaster := redistest.Start(t)
	newMaster := redistest.Start(t)
	sentinel := startAnsweringSentinel(t, oldMaster.Addr()) // has not heard of the failover

	// The first query to the sentinels waits until the test has announced
	// the new master: the dial began before the announcement and reads the
	// master's address after it.
	dial, querying, proceed := gatedDial()
	p := &redispool.Pool{
		Sentinel: &redispool.Sentinel{
			Addrs:       []string{sentinel.addr},
			MasterName:  "mymaster",
			DialOptions: []redis.DialOption{dial},
		},
		DialTimeout: 5 * time.Second,
	}
	defer p.Close()

	got := make(chan redis.Conn, 1)
	go func() { got <- p.Get() }()
	<-querying
	announceSwitch(p, oldMaster.Addr(), newMaster.Addr())
	close(proceed)

	c := <-got
	defer c.Close()
	require.NoError(t, c.Err())
	_, err := c.Do("SET", "k", "v")
	require.NoError(t, err, "a conn to the master announced before its address was read must not be retired")
	v, err := redis.String(newMaster.Do(t, "GET", "k"), nil)
	require.NoError(t, err)
	assert.Equal(t, "v", v, "the write reached the new master")
	assert.EqualValues(t, 1, p.Stats().DialCount, "no dial wasted")
}

func TestAConnToTheOldMasterDialedAsANewMasterIsAnnouncedIsRetired(t *testing.T) {
	oldMaster := redistest.Start(t)
	newMaster := redistest.Start(t)
	sentinel := startAnsweringSentinel(t, oldMaster.Addr())

	// The dial to the master the sentinel named waits until the test has
	// announced another: the address was read before the announcement.
	dial, dialing, proceed := gatedDial()
	p := &redispool.Pool{
		Sentinel:    &redispool.Sentinel{Addrs: []string{sentinel.addr}, MasterName: "mymaster"},
		DialOptions: []redis.DialOption{dial},
	}
	defer p.Close()

	got := make(chan redis.Conn, 1)
	go func() { got <- p.Get() }()
	<-dialing
	announceSwitch(p, oldMaster.Addr(), newMaster.Addr())
	close(proceed)

	c := <-got
	defer c.Close()
	require.ErrorIs(t, c.Err(), redispool.ErrConnRetired, "Err tells of a retired conn before any command fails")
	_, err := c.Do("SET", "k", "v")
	require.ErrorIs(t, err, redispool.ErrConnRetired, "a conn to the old master must not write")
	n, err := redis.Int(oldMaster.Do(t, "EXISTS", "k"), nil)
	require.NoError(t, err)
	assert.Zero(t, n, "nothing was written to the old master")
}

// A master name may hold a space (SENTINEL MONITOR "my master" ...): the
// announcements for it are followed.
func TestSentinelMasterNameWithSpaceFollowsAnnouncements(t *testing.T) {
	p := &redispool.Pool{Sentinel: &redispool.Sentinel{Addrs: []string{"127.0.0.1:1"}, MasterName: "my master"}}
	p.Stats() // first use: the Sentinel serves p
	defer p.Close()
	p.Sentinel.Announce("test", "my master 127.0.0.1 6379 127.0.0.1 6380")
	assert.Equal(t, "127.0.0.1:6380", p.Sentinel.Master(),
		"an announcement for the configured MasterName was ignored (or check should reject the name)")
}

// A +switch-master announcement whose new port is not a port is ignored: the
// pool keeps its working master and its connections.
func TestSentinelGarbageSwitchMasterIsIgnored(t *testing.T) {
	defer redispool.SetWatchPing(100 * time.Millisecond)()
	master := startFakeMaster(t)
	s := startAnsweringSentinel(t, master)
	p := &redispool.Pool{
		Sentinel:    &redispool.Sentinel{Addrs: []string{s.addr}, MasterName: "mymaster"},
		DialTimeout: 500 * time.Millisecond,
	}
	defer p.Close()
	held := p.Get()
	defer held.Close()
	require.NoError(t, held.Err())
	require.Eventually(t, func() bool { return s.subscribes.Load() == 1 }, 3*time.Second, 10*time.Millisecond)

	gen := p.Generation()
	host, port, _ := net.SplitHostPort(master)
	s.push <- switchMessage(fmt.Sprintf("mymaster %s %s 127.0.0.1 not-a-port", host, port))
	s.push <- switchMessage("mymaster garbage garbage garbage 99999999")
	// A valid announcement after them, in order on the same connection:
	// once it is followed, the two before it were read.
	other := startFakeMaster(t)
	s.push <- switchMessage(switchMsg(master, other))
	require.Eventually(t, func() bool { return p.Sentinel.Master() == other }, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, gen+1, p.Generation(), "only the valid announcement retired the conns")
}

// ---------------------------------------------------------------------------
// Hostile and malformed replies.

// A sentinel reply that announces a huge bulk length makes redigo's reader
// panic (makeslice: len out of range); Get must return an error instead.
func TestSentinelHugeLengthInReplyIsAnError(t *testing.T) {
	s := startSentinel(t, &fakeSentinel{reply: "*2\r\n$9223372036854775807\r\n"})
	p := &redispool.Pool{
		Sentinel:    &redispool.Sentinel{Addrs: []string{s.addr}, MasterName: "mymaster"},
		DialTimeout: 500 * time.Millisecond,
	}
	defer p.Close()
	r := tryGet(p, context.Background())
	r.close()
	require.Nil(t, r.panicked, "Get panicked on a sentinel's malformed reply: %v", r.panicked)
	require.Error(t, r.err)
}

// The same frame pushed on a +switch-master subscription must not end the
// program: the subscription fails and is dialed again. Run in a child
// process, since the panic would end this one.
func TestSentinelHugeLengthInSubscriptionIsAnError(t *testing.T) {
	if os.Getenv("REDISPOOL_SENTINEL_CHILD") == "1" {
		master := startFakeMaster(t)
		s := startAnsweringSentinel(t, master)
		s.push <- "*3\r\n$7\r\nmessage\r\n$14\r\n+switch-master\r\n$9223372036854775807\r\n"
		p := &redispool.Pool{
			Sentinel:    &redispool.Sentinel{Addrs: []string{s.addr}, MasterName: "mymaster"},
			DialTimeout: 500 * time.Millisecond,
		}
		c := p.Get()
		c.Close()
		require.Eventually(t, func() bool { return s.subscribes.Load() >= 2 }, 5*time.Second, 10*time.Millisecond,
			"the subscription is dialed again after the unreadable frame")
		p.Close()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 9*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestSentinelHugeLengthInSubscriptionIsAnError$", "-test.count=1")
	cmd.Env = append(os.Environ(), "REDISPOOL_SENTINEL_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		// The failure and the stack of the goroutine that failed.
		first := string(out)
		if i := strings.Index(first, "goroutine "); i > 0 {
			if j := strings.Index(first[i+1:], "\n\ngoroutine "); j > 0 {
				first = first[:i+1+j]
			}
		}
		t.Fatalf("after a sentinel's malformed +switch-master frame, the child process failed (%v):\n%s", err, first)
	}
}

// A sentinel that names an address that cannot be a master (no port, a port
// that is not a number or out of range, no host) is not believed: the next
// sentinel is asked, and the bogus one is not moved to the front.
func TestSentinelBogusAddressIsNotBelieved(t *testing.T) {
	good := startFakeMaster(t)
	local := startFakeMaster(t) // a server on this machine that is not the master
	_, lPort, _ := net.SplitHostPort(local)

	for _, tc := range []struct{ name, host, port string }{
		{"empty port", "127.0.0.1", ""},
		{"port not a number", "127.0.0.1", "sixthree"},
		{"port out of range", "127.0.0.1", "99999"},
		{"empty host", "", lPort},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := startAnsweringSentinel(t, net.JoinHostPort(tc.host, tc.port))
			ok := startAnsweringSentinel(t, good)
			p := &redispool.Pool{
				Sentinel:    &redispool.Sentinel{Addrs: []string{bad.addr, ok.addr}, MasterName: "mymaster"},
				DialTimeout: 500 * time.Millisecond,
			}
			defer p.Close()
			var errs []error
			for i := 0; i < 3; i++ {
				c := p.Get()
				err := c.Err()
				c.Close()
				if err == nil && p.Sentinel.Master() == good {
					return
				}
				errs = append(errs, fmt.Errorf("master %q: %v", p.Sentinel.Master(), err))
				time.Sleep(600 * time.Millisecond) // past the dial backoff and the query interval
			}
			t.Fatalf("sentinel named %q; the pool never used the master %s that the other sentinel names:\n%v",
				net.JoinHostPort(tc.host, tc.port), good, errors.Join(errs...))
		})
	}
}

// A sentinel whose answer fails (the server it names refuses the dial,
// does not answer, refuses AUTH or is a replica), or that does not answer
// within its share of DialTimeout, is asked after the other sentinels next
// time: writes resume within 2 s on the master that the next sentinel names.
func TestSentinelWhoseAnswerFailedIsAskedAfterTheOthers(t *testing.T) {
	for _, tc := range []struct {
		name  string
		named func(t *testing.T) string // the address the first sentinel names
		delay time.Duration             // how long the first sentinel takes to answer
	}{
		{"replica", func(t *testing.T) string { return startRoleServer(t, "slave").addr }, 0},
		{"refused", refusedAddr, 0},
		{"silent", silentServer, 0},
		{"wrong password", wrongPasswordServer, 0},
		{"slow sentinel", func(t *testing.T) string { return startFakeMaster(t) }, 400 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			master := startFakeMaster(t)
			sentinels := []*fakeSentinel{
				startSentinel(t, &fakeSentinel{master: tc.named(t), delay: tc.delay}),
				startAnsweringSentinel(t, master),
				startAnsweringSentinel(t, master),
			}
			p := &redispool.Pool{
				Sentinel: &redispool.Sentinel{
					Addrs:      []string{sentinels[0].addr, sentinels[1].addr, sentinels[2].addr},
					MasterName: "mymaster",
				},
				Password:    "secret",
				DialTimeout: 500 * time.Millisecond,
			}
			defer p.Close()

			start := time.Now()
			var err error
			for i := 0; i < 1000 && time.Since(start) < 3*time.Second; i++ {
				c := p.Get()
				_, err = c.Do("SET", "k", "v")
				c.Close()
				if err == nil {
					break
				}
				time.Sleep(5 * time.Millisecond) // paces the writer; Get fails fast during the dial backoff
			}
			took := time.Since(start)
			asked := fmt.Sprintf("sentinels asked %d, %d, %d times", sentinels[0].queries.Load(), sentinels[1].queries.Load(), sentinels[2].queries.Load())
			require.NoError(t, err, "no write succeeded in %v; %s", took, asked)
			assert.Less(t, took, 2*time.Second, "writes resumed only after %v; %s", took, asked)
			assert.Equal(t, master, p.Sentinel.Master())
			assert.Positive(t, sentinels[1].queries.Load(), "the second sentinel, which names the master, was asked")
			t.Logf("writes resumed after %v; %s", took.Round(time.Millisecond), asked)
		})
	}
}

// ---------------------------------------------------------------------------
// Sentinels that hang, and the bounds on a query.

// With a small DialTimeout, the first sentinels in Addrs can use up a whole
// query when they hang; those that failed are asked last next time, so a
// healthy sentinel listed after them is reached.
func TestSentinelHealthySentinelAfterHungOnesIsAsked(t *testing.T) {
	master := startFakeMaster(t)
	good := startAnsweringSentinel(t, master)
	p := &redispool.Pool{
		Sentinel: &redispool.Sentinel{
			Addrs:      []string{silentServer(t), silentServer(t), good.addr},
			MasterName: "mymaster",
		},
		DialTimeout: 200 * time.Millisecond,
	}
	defer p.Close()
	var last error
	for i := 0; i < 5; i++ {
		c := p.Get()
		last = c.Err()
		c.Close()
		if last == nil {
			return
		}
		time.Sleep(600 * time.Millisecond) // past the dial backoff
	}
	t.Fatalf("5 Gets over 4 s all failed; the healthy sentinel was asked %d times; last error: %v", good.queries.Load(), last)
}

// While every sentinel is down, queries are still limited to two a second:
// a dial within 500 ms of a failed query gets that query's error.
func TestSentinelQueriesAreRateLimitedWhileSentinelsAreDown(t *testing.T) {
	addrs := []string{refusedAddr(t), refusedAddr(t)}
	p := &redispool.Pool{
		Sentinel:    &redispool.Sentinel{Addrs: addrs, MasterName: "mymaster"},
		DialTimeout: 300 * time.Millisecond,
	}
	defer p.Close()
	const window = 1500 * time.Millisecond
	start := time.Now()
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000 && time.Since(start) < window; i++ {
				c := p.Get()
				c.Close()
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	queries := p.Sentinel.Queries() / int64(len(addrs))
	// Two a second, and one more for the first.
	allowed := int64(took/(time.Second/2)) + 1
	assert.LessOrEqual(t, queries, allowed, "the sentinels were asked %d times in %v", queries, took)
}

// With Sentinel.Password set, AUTH and SENTINEL together fit the sentinel's
// share of DialTimeout: a sentinel that answers each slowly does not hold a
// Get past it, and its answer after the deadline is not taken.
func TestSentinelSlowSentinelWithPasswordFitsDialTimeout(t *testing.T) {
	master := startFakeMaster(t)
	s := startSentinel(t, &fakeSentinel{master: master, delay: 450 * time.Millisecond})
	p := &redispool.Pool{
		Sentinel:    &redispool.Sentinel{Addrs: []string{s.addr}, MasterName: "mymaster", Password: "secret"},
		DialTimeout: 500 * time.Millisecond,
	}
	defer p.Close()
	start := time.Now()
	c := p.Get()
	err := c.Err()
	c.Close()
	took := time.Since(start)
	assert.Less(t, took, 750*time.Millisecond, "Get with DialTimeout 500ms, one sentinel, took %v: %v", took, err)
}

// TestDialTimeoutBoundsTheRoleCheck checks that the ROLE a pool sends to
// the master a sentinel names is bounded by DialTimeout, not by ReadTimeout,
// which may be disabled: a master that accepts and never answers must not
// hold Get.
func TestDialTimeoutBoundsTheRoleCheck(t *testing.T) {
	master := silentServer(t)
	sentinel := startAnsweringSentinel(t, master)
	p := &redispool.Pool{
		Sentinel:    &redispool.Sentinel{Addrs: []string{sentinel.addr}, MasterName: "mymaster"},
		DialTimeout: 300 * time.Millisecond,
		ReadTimeout: -1,
	}
	defer p.Close()
	r := awaitGet(t, goGet(p, context.Background()), 5*time.Second) // a master that does not answer ROLE, with DialTimeout 300ms
	r.close()
	err := r.err
	require.Error(t, err)
	assert.Contains(t, err.Error(), "ROLE")
}

// With Sentinel.DialOptions asking for TLS, a sentinel that accepts and
// never answers holds the query only for its share of DialTimeout, not for
// redigo's own 10 s TLS handshake timeout.
func TestSentinelTLSHandshakeIsBoundedByDialTimeout(t *testing.T) {
	p := tlsSentinelPool(silentServer(t))
	defer p.Close()
	start := time.Now()
	r := awaitGet(t, goGet(p, context.Background()), 3*time.Second)
	r.close()
	require.Error(t, r.err, "with DialTimeout 300ms")
	assert.Less(t, time.Since(start), 2*time.Second)
}

// A subscription's dial stuck in the same TLS handshake ends soon after
// Pool.Close.
func TestSentinelCloseEndsSubscriptionInTLSHandshake(t *testing.T) {
	var accepted atomic.Int64
	addr := serveLoopback(t, func(c net.Conn) { accepted.Add(1); io.Copy(io.Discard, c) }) // silent
	running := goleak.IgnoreCurrent()
	p := tlsSentinelPool(addr)
	got := goGet(p, context.Background())
	require.Eventually(t, func() bool { return accepted.Load() >= 2 }, 2*time.Second, 5*time.Millisecond,
		"the query and the subscription did not both reach the sentinel")
	p.Close()
	awaitGet(t, got, 5*time.Second).close()
	deadline := time.Now().Add(2 * time.Second)
	for err := goleak.Find(running); err != nil; err = goleak.Find(running) {
		if time.Now().After(deadline) {
			t.Fatalf("2 s after Pool.Close, a subscription to a sentinel still runs (stuck in its TLS handshake):\n%v", err)
		}
	}
}

// With Sentinel.Password set, a subscription whose connection is blackholed
// while it waits for the AUTH reply gives up within its dial timeout and is
// dialed again, so the pool hears the sentinel once it works again.
func TestSentinelSubscriptionStuckInAuthIsDialedAgain(t *testing.T) {
	defer redispool.SetWatchPing(100 * time.Millisecond)()
	master := startFakeMaster(t)
	until := time.Now().Add(400 * time.Millisecond)
	s := startSentinel(t, &fakeSentinel{
		master: master,
		silent: func() bool { return time.Now().Before(until) },
	})
	p := &redispool.Pool{
		Sentinel:    &redispool.Sentinel{Addrs: []string{s.addr}, MasterName: "mymaster", Password: "secret"},
		DialTimeout: 300 * time.Millisecond,
	}
	defer p.Close()
	c := p.Get() // the query times out; the subscription dials into the blackhole
	c.Close()
	time.Sleep(time.Until(until))
	// The sentinel works again: a ping interval, a dial timeout and a backoff
	// step later the subscription should be back.
	ok := assert.Eventually(t, func() bool { return s.subscribes.Load() > 0 }, 3*time.Second, 20*time.Millisecond,
		"the subscription never subscribed again after its AUTH went unanswered")
	if !ok {
		t.Logf("queries answered meanwhile: %d (the sentinel works)", s.queries.Load())
	}
}

func TestASentinelThatHangsIsSubscribedToAgainOnceItRecovers(t *testing.T) {
	const ping = 100 * time.Millisecond
	defer redispool.SetWatchPing(ping)()
	master := redistest.Start(t)
	s := redistest.StartSentinels(t, "mymaster", master, 1, 5*time.Second)[0]

	rec := &recorder{}
	p := &redispool.Pool{
		Sentinel:    &redispool.Sentinel{Addrs: []string{s.Addr()}, MasterName: "mymaster"},
		DialTimeout: 300 * time.Millisecond,
		Logger:      slog.New(rec),
	}
	defer p.Close()
	c := p.Get()
	require.NoError(t, c.Err())
	c.Close()
	require.Eventually(t, func() bool { return subscribers(t, s) == 1 }, 5*time.Second, 10*time.Millisecond,
		"the pool subscribes to +switch-master on its first dial")

	// A sentinel with nothing to announce answers the pings: its
	// subscription is kept.
	time.Sleep(10 * ping)
	assert.Empty(t, rec.find("subscription to a sentinel failed"), "a quiet, healthy sentinel was given up")
	assert.Equal(t, 1, subscribers(t, s))

	// Hung, the sentinel keeps the connection open and sends nothing: only
	// the missing pong shows it.
	s.Stop(t)
	stopped := time.Now()
	require.Eventually(t, func() bool {
		for _, r := range rec.find("subscription to a sentinel failed") {
			if r["sentinel"] == s.Addr() && strings.Contains(r["error"], "timeout") {
				return true
			}
		}
		return false
	}, 5*time.Second, 10*time.Millisecond, "the subscription to a hung sentinel was not given up")
	noticed := time.Since(stopped)
	assert.Less(t, noticed, ping+300*time.Millisecond+time.Second, "noticed after a ping interval and the dial timeout")

	s.Cont(t)
	// The connections dialed while it hung are closed; a new one subscribes.
	require.Eventually(t, func() bool { return subscribers(t, s) == 1 }, 10*time.Second, 20*time.Millisecond,
		"the pool did not subscribe again after the sentinel recovered")
	t.Logf("a hung sentinel was noticed after %v", noticed.Round(time.Millisecond))
}

// ---------------------------------------------------------------------------
// Configuration.

// Sentinel.Addrs with no usable port ("host:", a port out of range) are a
// configuration error, not a dial of port 0 at every Get.
func TestSentinelConfigRejectsAddrWithoutPort(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:", "127.0.0.1:99999"} {
		t.Run(addr, func(t *testing.T) {
			p := &redispool.Pool{
				Sentinel:    &redispool.Sentinel{Addrs: []string{addr}, MasterName: "mymaster"},
				DialTimeout: 200 * time.Millisecond,
			}
			defer p.Close()
			c := p.Get()
			err := c.Err()
			c.Close()
			assert.ErrorIs(t, err, redispool.ErrInvalidConfig, "Sentinel.Addrs %q was accepted; Get said: %v", addr, err)
		})
	}
}

// A Sentinel serves the first Pool that uses it: another Pool given the same
// Sentinel, even once the first is closed, fails its first use with
// ErrInvalidConfig and writes nothing. A Pool whose configuration was
// rejected does not hold its Sentinel.
func TestASentinelServesOnePool(t *testing.T) {
	master := redistest.Start(t)
	s := redistest.StartSentinels(t, "mymaster", master, 1, 5*time.Second)[0]
	sentinel := &redispool.Sentinel{Addrs: []string{s.Addr()}, MasterName: "mymaster"}
	set := func(p *redispool.Pool, v string) error {
		c := p.Get()
		defer c.Close()
		_, err := c.Do("SET", "k", v)
		return err
	}

	rejected := &redispool.Pool{Sentinel: sentinel, Addr: master.Addr()}
	defer rejected.Close()
	require.ErrorIs(t, set(rejected, "rejected"), redispool.ErrInvalidConfig, "Sentinel together with Addr")

	first := &redispool.Pool{Sentinel: sentinel}
	defer first.Close()
	require.NoError(t, set(first, "first"), "the Sentinel of a pool whose configuration was rejected is free")

	second := &redispool.Pool{Sentinel: sentinel}
	defer second.Close()
	err := set(second, "second")
	require.ErrorIs(t, err, redispool.ErrInvalidConfig)
	assert.Contains(t, err.Error(), "Sentinel is already used by another Pool")

	first.Close()
	third := &redispool.Pool{Sentinel: sentinel}
	defer third.Close()
	require.ErrorIs(t, set(third, "third"), redispool.ErrInvalidConfig, "after the first pool is closed")

	v, err := redis.String(master.Do(t, "GET", "k"), nil)
	require.NoError(t, err)
	assert.Equal(t, "first", v, "only the first pool wrote")
}

// ---------------------------------------------------------------------------
// Helpers: fake sentinels and masters.

// fakeSentinel is a sentinel that names its master to SENTINEL
// get-master-addr-by-name, confirms SUBSCRIBE and then writes to the
// subscribed connection what push receives, answers PING, and +OK to
// anything else. Its options are set before startSentinel.
type fakeSentinel struct {
	master string        // named as host and port, see setAnswer
	reply  string        // when set, the raw reply to SENTINEL instead
	delay  time.Duration // how long every reply waits
	// silent, when it returns true for a new connection, makes it never
	// answer anything: a blackholed connection.
	silent func() bool
	// gateAt, when positive, makes the reply to query number gateAt (from
	// 1) wait for release, for at most 5 s, after closing asked.
	gateAt int64

	addr            string
	push            chan string // raw frames for the subscribed connections
	asked, release  chan struct{}
	refuseSubscribe atomic.Bool // SUBSCRIBE gets an error reply
	queries         atomic.Int64
	subscribes      atomic.Int64
	mu              sync.Mutex // protects master
}

// startSentinel starts s, its options set, on a loopback port.
func startSentinel(t *testing.T, s *fakeSentinel) *fakeSentinel {
	s.push, s.asked, s.release = make(chan string, 16), make(chan struct{}), make(chan struct{})
	done := make(chan struct{})
	s.addr = serveLoopback(t, func(c net.Conn) { s.serve(c, done) })
	t.Cleanup(func() { close(done) }) // before serveLoopback's, which waits for the connections
	return s
}

// serve answers the commands read from c until it fails; once c is
// subscribed, it also writes what push receives, until done is closed.
func (s *fakeSentinel) serve(c net.Conn, done <-chan struct{}) {
	if s.silent != nil && s.silent() {
		io.Copy(io.Discard, c)
		return
	}
	var wmu sync.Mutex
	write := func(b string) error {
		wmu.Lock()
		defer wmu.Unlock()
		_, err := c.Write([]byte(b))
		return err
	}
	r := bufio.NewReader(c)
	for {
		args, err := readCommand(r)
		if err != nil {
			return
		}
		reply, subscribed := s.answer(args)
		time.Sleep(s.delay)
		if err := write(reply); err != nil {
			return
		}
		if subscribed {
			go s.pushTo(write, done)
		}
	}
}

// pushTo writes what push receives until a write fails or done is closed.
func (s *fakeSentinel) pushTo(write func(string) error, done <-chan struct{}) {
	for {
		select {
		case f := <-s.push:
			if write(f) != nil {
				return
			}
		case <-done:
			return
		}
	}
}

// startAnsweringSentinel starts a fakeSentinel that names master.
func startAnsweringSentinel(t *testing.T, master string) *fakeSentinel {
	return startSentinel(t, &fakeSentinel{master: master})
}

// answer is the sentinel's reply to the command args, and whether it
// subscribed the connection.
func (s *fakeSentinel) answer(args []string) (reply string, subscribed bool) {
	switch strings.ToUpper(args[0]) {
	case "SENTINEL":
		if s.queries.Add(1) == s.gateAt { // asked, even if it answers too late
			close(s.asked)
			select {
			case <-s.release:
			case <-time.After(5 * time.Second):
			}
		}
		if s.reply != "" {
			return s.reply, false
		}
		s.mu.Lock()
		host, port, _ := net.SplitHostPort(s.master)
		s.mu.Unlock()
		return respBulks(host, port), false
	case "SUBSCRIBE":
		if s.refuseSubscribe.Load() {
			return "-ERR SUBSCRIBE refused\r\n", false
		}
		s.subscribes.Add(1)
		return fmt.Sprintf("*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:1\r\n", len(args[1]), args[1]), true
	case "PING":
		return "*2\r\n$4\r\npong\r\n$0\r\n\r\n", false
	}
	return "+OK\r\n", false
}

// setAnswer makes the sentinel name master from now on.
func (s *fakeSentinel) setAnswer(master string) {
	s.mu.Lock()
	s.master = master
	s.mu.Unlock()
}

// stalePool is a pool whose Sentinel asks s.
func stalePool(t *testing.T, s *fakeSentinel, logger *slog.Logger) *redispool.Pool {
	p := &redispool.Pool{
		Sentinel:    &redispool.Sentinel{Addrs: []string{s.addr}, MasterName: "mymaster"},
		DialTimeout: 5 * time.Second,
		Logger:      logger,
	}
	p.Stats() // first use: the Sentinel serves p
	t.Cleanup(func() { p.Close() })
	return p
}

// tlsSentinelPool is a pool that reaches the sentinel at addr over TLS,
// with DialTimeout 300ms.
func tlsSentinelPool(addr string) *redispool.Pool {
	return &redispool.Pool{
		Sentinel: &redispool.Sentinel{
			Addrs:       []string{addr},
			MasterName:  "mymaster",
			DialOptions: []redis.DialOption{redis.DialUseTLS(true)},
		},
		DialTimeout: 300 * time.Millisecond,
	}
}

// switchMsg is the +switch-master announcement that mymaster moved from
// oldAddr to newAddr.
func switchMsg(oldAddr, newAddr string) string {
	oldHost, oldPort, _ := net.SplitHostPort(oldAddr)
	newHost, newPort, _ := net.SplitHostPort(newAddr)
	return fmt.Sprintf("mymaster %s %s %s %s", oldHost, oldPort, newHost, newPort)
}

// announceSwitch hands p's Sentinel, as a sentinel would, the announcement
// that the master moved from oldAddr to newAddr.
func announceSwitch(p *redispool.Pool, oldAddr, newAddr string) {
	p.Sentinel.Announce("test", switchMsg(oldAddr, newAddr))
}

// switchMessage is a +switch-master message frame with data msg.
func switchMessage(msg string) string { return respBulks("message", "+switch-master", msg) }

// respBulks encodes strs as a RESP array of bulk strings.
func respBulks(strs ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(strs))
	for _, s := range strs {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(s), s)
	}
	return b.String()
}

// gatedDial is a dial option whose first dial waits for proceed to be
// closed, after closing started.
func gatedDial() (opt redis.DialOption, started <-chan struct{}, proceed chan<- struct{}) {
	start, goOn := make(chan struct{}), make(chan struct{})
	var once sync.Once
	opt = redis.DialContextFunc(func(ctx context.Context, network, addr string) (net.Conn, error) {
		once.Do(func() {
			close(start)
			<-goOn
		})
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	})
	return opt, start, goOn
}

// roleServer is a fake Redis server that answers ROLE with its role and +OK
// to everything else, and counts the connections it accepts. When readOnly
// is set, it refuses SET with READONLY, as a master demoted after a dial's
// ROLE check would.
type roleServer struct {
	addr     string
	conns    atomic.Int64
	readOnly atomic.Bool
}

func startRoleServer(t *testing.T, role string) *roleServer {
	s := &roleServer{}
	s.addr = serveLoopback(t, func(c net.Conn) {
		s.conns.Add(1)
		r := bufio.NewReader(c)
		for {
			args, err := readCommand(r)
			if err != nil {
				return
			}
			reply := "+OK\r\n"
			switch strings.ToUpper(args[0]) {
			case "ROLE":
				reply = fmt.Sprintf("*3\r\n$%d\r\n%s\r\n:0\r\n*0\r\n", len(role), role)
			case "PING":
				reply = "+PONG\r\n"
			case "SET":
				if s.readOnly.Load() {
					reply = "-READONLY You can't write against a read only replica.\r\n"
				}
			}
			if _, err := c.Write([]byte(reply)); err != nil {
				return
			}
		}
	})
	return s
}

// startFakeMaster starts a fake master that answers ROLE as a master, and +OK
// to everything else.
func startFakeMaster(t *testing.T) string {
	return startRoleServer(t, "master").addr
}

// wrongPasswordServer answers every command, AUTH first, with WRONGPASS.
func wrongPasswordServer(t *testing.T) string {
	return serveLoopback(t, func(c net.Conn) {
		r := bufio.NewReader(c)
		for {
			if _, err := readCommand(r); err != nil {
				return
			}
			if _, err := c.Write([]byte("-WRONGPASS invalid username-password pair or user is disabled.\r\n")); err != nil {
				return
			}
		}
	})
}

// subscribers counts the clients of a sentinel subscribed to a channel: on a
// sentinel, only the pool's watch is.
func subscribers(t *testing.T, s *redistest.Sentinel) int {
	list, err := redis.String(s.Do(t, "CLIENT", "LIST"), nil)
	require.NoError(t, err)
	n := 0
	for _, line := range strings.Split(list, "\n") {
		if strings.Contains(line, " sub=1 ") {
			n++
		}
	}
	return n
}
