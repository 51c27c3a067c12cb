package redispool_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redispool/redispool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// ---------------------------------------------------------------------------
// Helpers: fake servers that count their connections, a fake sentinel whose
// answer a test changes, a log recorder.

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

// answeringSentinel is a fake sentinel that names the master it is told to,
// confirms SUBSCRIBE (unless refuseSubscribe is set) and answers PING. When gateAt is positive, its reply to
// query number gateAt (from 1) waits until release is closed, after closing
// asked (for at most 5 s).
type answeringSentinel struct {
	addr    string
	mu      sync.Mutex
	master  string
	queries atomic.Int64

	gateAt         int64
	asked, release chan struct{}

	// refuseSubscribe, when set, makes SUBSCRIBE fail with an error reply.
	refuseSubscribe atomic.Bool
}

func startAnsweringSentinel(t *testing.T, master string) *answeringSentinel {
	return startGatedSentinel(t, master, 0)
}

// startGatedSentinel starts an answeringSentinel whose reply to query
// number gateAt waits for release.
func startGatedSentinel(t *testing.T, master string, gateAt int64) *answeringSentinel {
	s := &answeringSentinel{master: master, gateAt: gateAt, asked: make(chan struct{}), release: make(chan struct{})}
	s.addr = serveLoopback(t, func(c net.Conn) {
		r := bufio.NewReader(c)
		for {
			args, err := readCommand(r)
			if err != nil {
				return
			}
			var reply string
			switch strings.ToUpper(args[0]) {
			case "SENTINEL":
				if s.queries.Add(1) == s.gateAt {
					close(s.asked)
					select {
					case <-s.release:
					case <-time.After(5 * time.Second):
					}
				}
				host, port, _ := net.SplitHostPort(s.answer())
				reply = addrReply(host, port)
			case "SUBSCRIBE":
				if s.refuseSubscribe.Load() {
					reply = "-ERR SUBSCRIBE refused\r\n"
					break
				}
				reply = fmt.Sprintf("*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:1\r\n", len(args[1]), args[1])
			case "PING":
				reply = "*2\r\n$4\r\npong\r\n$0\r\n\r\n"
			default:
				reply = "+OK\r\n"
			}
			if _, err := c.Write([]byte(reply)); err != nil {
				return
			}
		}
	})
	return s
}

func (s *answeringSentinel) answer() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.master
}

// setAnswer makes the sentinel name master from now on.
func (s *answeringSentinel) setAnswer(master string) {
	s.mu.Lock()
	s.master = master
	s.mu.Unlock()
}

// stalePool is a pool whose Sentinel asks s.
func stalePool(t *testing.T, s *answeringSentinel, logger *slog.Logger) *redispool.Pool {
	p := &redispool.Pool{
		Sentinel:    &redispool.Sentinel{Addrs: []string{s.addr}, MasterName: "mymaster"},
		DialTimeout: 5 * time.Second,
		Logger:      logger,
	}
	p.Stats() // first use: the Sentinel serves p
	t.Cleanup(func() { p.Close() })
	return p
}

// ---------------------------------------------------------------------------
// Tests.

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
