package faults

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/internal/redistest"
)

// The idle workload: bursts of idleWorkers goroutines, idleBurst GETs each,
// leave idleMaxActive conns idle in the pool; between bursts the server
// closes them behind the pool's back, by its own idle timeout (timeout 1) or
// by CLIENT KILL TYPE normal.
const (
	idleWorkers   = 8
	idleMaxActive = 8
	idleBurst     = 250
	// peekAfter is a little more than how long a conn the pool dialed must
	// have been idle before Get peeks at its socket (100 ms in pool.go).
	peekAfter = 150 * time.Millisecond
)

// idleBurstRun runs one burst and returns when it ended.
func idleBurstRun(p *redispool.Pool, tl *tally) time.Time {
	var wg sync.WaitGroup
	for range idleWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range idleBurst {
				i := rand.IntN(keys)
				c := p.Get()
				reply, err := c.Do("GET", keyNames[i])
				c.Close()
				tl.count(reply, err, valueNames[i])
			}
		}()
	}
	wg.Wait()
	return time.Now()
}

// TestIdleConnsKilledBehindThePoolsBack closes the pool's idle conns at the
// server, by its idle timeout and by CLIENT KILL, between bursts of GETs.
// Where the pool dialed the conns, the peek on borrow drops the dead ones and
// no command fails; with a user Dial the first commands on dead conns may
// fail. No reply is ever handed to the wrong caller.
func TestIdleConnsKilledBehindThePoolsBack(t *testing.T) {
	for _, tc := range []struct {
		name string
		dial func(addr string, st *naiveStats) func() (redis.Conn, error)
		peek bool // the pool dials, so it can peek at the sockets
	}{
		{name: "pool dials", peek: true},
		{name: "redigo Dial", dial: func(addr string, _ *naiveStats) func() (redis.Conn, error) {
			return func() (redis.Conn, error) { return redis.Dial("tcp", addr, redis.DialConnectTimeout(time.Second)) }
		}},
		{name: "naive Dial", dial: func(addr string, st *naiveStats) func() (redis.Conn, error) {
			return naiveDialer(addr, time.Second, st)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkLeaks(t)
			srv := redistest.Start(t, "--timeout", "1")
			loadKeys(t, srv)
			var st naiveStats
			p := &redispool.Pool{Addr: srv.Addr(), MaxActive: idleMaxActive, ReadTimeout: time.Second}
			if tc.dial != nil {
				p = &redispool.Pool{Dial: tc.dial(srv.Addr(), &st), MaxActive: idleMaxActive, ReadTimeout: time.Second}
			}
			defer p.Close()

			var tl tally
			start := time.Now()
			deadIdle := 0 // idle conns the server closed, summed over the rounds
			for round, how := range []string{"timeout", "kill", "timeout", "kill"} {
				ended := idleBurstRun(p, &tl)
				idle := p.IdleCount()
				require.Positive(t, idle)
				switch how {
				case "timeout":
					// The server closes conns idle for more than a second.
					require.True(t, waitFor(10*time.Second, func() bool { return srv.ConnectedClients(t) == 0 }),
						"round %d: the server did not close the idle conns", round)
				case "kill":
					killed, err := redis.Int(srv.Do(t, "CLIENT", "KILL", "TYPE", "normal"), nil)
					require.NoError(t, err)
					require.Equal(t, idle, killed, "round %d: CLIENT KILL", round)
					require.True(t, waitFor(5*time.Second, func() bool { return srv.ConnectedClients(t) == 0 }))
				}
				deadIdle += idle
				time.Sleep(time.Until(ended.Add(peekAfter))) // so that Get peeks at every idle conn
			}
			idleBurstRun(p, &tl)
			wall := time.Since(start)
			s := p.Stats()
			name := "idle killed, " + tc.name
			t.Logf("%s: 4 rounds (server timeout 1 s, CLIENT KILL TYPE normal, twice each) of %d workers x %d GETs, %d idle conns closed by the server: %v; conns discarded broken %d, dials %d",
				name, idleWorkers, idleBurst, deadIdle, &tl, s.Discards.Broken, s.DialCount)
			record(name, &tl, wall)

			assert.Zero(t, tl.wrong.Load(), "replies handed to the wrong caller")
			assert.EqualValues(t, 5*idleWorkers*idleBurst, tl.commands())
			assert.Equal(t, int64(deadIdle), s.Discards.Broken+s.Discards.IdleTimeout, "every dead idle conn is discarded")
			if tc.peek {
				assert.Zero(t, tl.failed.Load(), "the peek on borrow must spare callers the dead conns")
				assert.EqualValues(t, deadIdle, s.Discards.Broken, "the peek finds every dead conn")
			} else {
				assert.LessOrEqual(t, tl.failed.Load(), int64(deadIdle), "at most one failed command per dead conn")
			}
			if tc.name == "naive Dial" {
				assert.Zero(t, st.reusedBroken.Load(), "a naive conn that failed was used again")
			}
		})
	}
}
