package faults

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/internal/redistest"
)

const (
	readOnlyMaxActive = 8
	readOnlyWorkers   = 8
)

// clientID returns the server's id of the conn c.
func clientID(t *testing.T, c redis.Conn) int64 {
	t.Helper()
	id, err := redis.Int64(c.Do("CLIENT", "ID"))
	require.NoError(t, err)
	return id
}

// isErrorReply reports whether err is a Redis error reply starting with one
// of prefixes.
func isErrorReply(err error, prefixes ...string) bool {
	e, ok := err.(redis.Error)
	if !ok {
		return false
	}
	for _, p := range prefixes {
		if strings.HasPrefix(string(e), p) {
			return true
		}
	}
	return false
}

// TestReadOnlyRetiresTheConnsToTheFormerPrimary turns a real redis-server
// into a replica with REPLICAOF under a pool with idle and borrowed conns:
// the conn that gets READONLY is discarded, the error comes back unchanged,
// and no conn dialed before it is handed out again; the server sees them
// closed. A second part does the same under load and counts the replies.
func TestReadOnlyRetiresTheConnsToTheFormerPrimary(t *testing.T) {
	checkLeaks(t)
	primary := redistest.Start(t)
	srv := redistest.Start(t)
	p := &redispool.Pool{Addr: srv.Addr(), MaxActive: readOnlyMaxActive}
	defer p.Close()
	var tl tally
	start := time.Now()

	// Four conns: three go back idle, one stays borrowed.
	old := make(map[int64]bool)
	conns := make([]redis.Conn, 4)
	for i := range conns {
		conns[i] = p.Get()
		old[clientID(t, conns[i])] = true
		reply, err := conns[i].Do("SET", fmt.Sprint("k", i), "v")
		require.NoError(t, err)
		require.Equal(t, "OK", reply)
	}
	held := conns[3]
	for _, c := range conns[:3] {
		require.NoError(t, c.Close())
	}
	require.Equal(t, 3, p.IdleCount())
	dialsBefore := p.Stats().DialCount

	require.Equal(t, "OK", srv.Do(t, "REPLICAOF", "127.0.0.1", strconv.Itoa(primary.Port())))
	serverErr, ok := srv.Do(t, "SET", "k", "v").(redis.Error)
	require.True(t, ok, "the replica must refuse writes")

	c := p.Get()
	id := clientID(t, c)
	assert.True(t, old[id], "the write goes out on a conn dialed before the failover")
	_, roErr := c.Do("SET", "k", "v")
	require.Error(t, roErr)
	assert.Equal(t, reflect.TypeFor[redis.Error](), reflect.TypeOf(roErr), "the READONLY error is a redis.Error, not wrapped")
	assert.Equal(t, serverErr, roErr, "the READONLY error is the server's, unchanged")
	assert.True(t, strings.HasPrefix(roErr.Error(), "READONLY "))
	assert.Zero(t, p.IdleCount(), "the idle conns dialed before are closed at once")
	require.NoError(t, c.Close())
	require.NoError(t, held.Close())
	s := p.Stats()
	assert.EqualValues(t, 1, s.Discards.State, "the conn that got READONLY")
	assert.EqualValues(t, 3, s.Discards.Retired, "the two idle conns and the borrowed one")
	assert.Zero(t, p.ActiveCount())
	require.True(t, waitFor(5*time.Second, func() bool {
		ids := clientIDs(t, srv)
		for id := range old {
			if ids[id] {
				return false
			}
		}
		return true
	}), "the conns dialed before READONLY are still open at the server")

	// The next Get dials a new conn.
	c = p.Get()
	assert.False(t, old[clientID(t, c)])
	want := "fresh"
	reply, err := c.Do("ECHO", want)
	require.Equal(t, good, tl.count(reply, err, want))
	c.Close()
	assert.Equal(t, dialsBefore+1, p.Stats().DialCount)
	t.Logf("readonly, one conn: READONLY %q passed through; discarded: %d with the reply, %d retired (2 idle, 1 borrowed); all 4 gone from CLIENT LIST",
		roErr, s.Discards.State, s.Discards.Retired)

	// Under load: workers write and echo while the other server, promoted,
	// becomes the replica of the first.
	require.Equal(t, "OK", primary.Do(t, "REPLICAOF", "NO", "ONE"))
	p2 := &redispool.Pool{Addr: primary.Addr(), MaxActive: readOnlyMaxActive}
	defer p2.Close()
	var readOnly atomic.Int64
	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := range readOnlyWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < maxCommandsPerWorker && !stop.Load(); n++ {
				c := p2.Get()
				want := fmt.Sprintf("w%d.n%d", w, n)
				reply, err := c.Do("ECHO", want)
				tl.count(reply, err, want)
				reply, err = c.Do("SET", want, want)
				switch {
				case err == nil && reply == "OK":
					tl.add(good)
				case isErrorReply(err, "READONLY "):
					readOnly.Add(1)
					tl.add(good) // the reply to this SET, passed through
				case isErrorReply(err, "LOADING ", "MASTERDOWN "):
					tl.add(good) // also this SET's own reply, during the sync
				default:
					tl.count(reply, err, "OK")
				}
				c.Close()
			}
		}()
	}
	time.Sleep(300 * time.Millisecond) // load before the failover
	require.Equal(t, "OK", primary.Do(t, "REPLICAOF", "127.0.0.1", strconv.Itoa(srv.Port())))
	require.Equal(t, "OK", srv.Do(t, "REPLICAOF", "NO", "ONE"))
	time.Sleep(700 * time.Millisecond) // load after it
	peakActive := p2.ActiveCount()
	stop.Store(true)
	wg.Wait()
	wall := time.Since(start)
	s2 := p2.Stats()
	t.Logf("readonly, under load: %d workers, MaxActive %d, a REPLICAOF after 300 ms of 1 s: %v; %d READONLY replies, conns discarded with them %d, retired %d, dials %d",
		readOnlyWorkers, readOnlyMaxActive, &tl, readOnly.Load(), s2.Discards.State, s2.Discards.Retired, s2.DialCount)
	record("readonly", &tl, wall)

	assert.Zero(t, tl.wrong.Load(), "replies handed to the wrong caller")
	assert.Zero(t, tl.failed.Load())
	assert.Positive(t, readOnly.Load())
	assert.Equal(t, readOnly.Load(), s2.Discards.State, "every conn that got READONLY is discarded")
	assert.LessOrEqual(t, peakActive, readOnlyMaxActive)
}
