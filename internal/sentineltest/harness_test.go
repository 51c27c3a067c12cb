package sentineltest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/internal/redistest"
)

const (
	masterName = "mymaster"
	downAfter  = time.Second
	writers    = 50
	maxActive  = 16
	// clientName names the pool's connections, so that CLIENT LIST on a
	// server shows which of its clients are the pool's.
	clientName = "sentineltest-pool"
	// pollEvery is how often the monitor looks at the servers and the pool.
	pollEvery = 20 * time.Millisecond
	// writePause is the pause of a writer between two writes, so that 50
	// writers do not starve the servers and sentinels of the 2 cores.
	writePause = 2 * time.Millisecond
	// maxWritesPerWriter bounds each writer's loop besides its time limit.
	maxWritesPerWriter = 100_000
)

// cluster is a master, a replica and three sentinels on loopback.
type cluster struct {
	master, replica *redistest.Server
	sentinels       []*redistest.Sentinel
}

// startCluster starts the processes. The master refuses writes when it has
// no replica (min-replicas-to-write 1), as Redis's documentation advises
// for Sentinel: otherwise, after SENTINEL FAILOVER, the old master stays a
// writable master for about ten seconds, and whatever it accepts after the
// promotion is lost when it turns replica, whatever the client does. The
// replica has no such setting, so that once promoted it accepts writes
// without waiting for the old master to come back as its replica.
func startCluster(t *testing.T) *cluster {
	t.Helper()
	start := time.Now()
	master := redistest.Start(t, "--min-replicas-to-write", "1", "--min-replicas-max-lag", "10")
	replica := redistest.StartReplica(t, master)
	sentinels := redistest.StartSentinels(t, masterName, master, 3, downAfter)
	t.Logf("cluster up in %v: master %s, replica %s, sentinels %s %s %s", time.Since(start).Round(time.Millisecond),
		master.Addr(), replica.Addr(), sentinels[0].Addr(), sentinels[1].Addr(), sentinels[2].Addr())
	return &cluster{master: master, replica: replica, sentinels: sentinels}
}

// sentinelAddrs returns the sentinels' addresses, after a dead one when
// withDead is set: the pool must move on to the next.
func (c *cluster) sentinelAddrs(t *testing.T, withDead bool) []string {
	var addrs []string
	if withDead {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, l.Addr().String())
		l.Close() // nothing listens there now: dialing it is refused
	}
	for _, s := range c.sentinels {
		addrs = append(addrs, s.Addr())
	}
	return addrs
}

// newPool returns the pool under test and registers its Close.
func newPool(t *testing.T, addrs []string) *redispool.Pool {
	p := &redispool.Pool{
		Sentinel:    &redispool.Sentinel{Addrs: addrs, MasterName: masterName},
		MaxActive:   maxActive,
		ReadTimeout: 500 * time.Millisecond,
		DialOptions: []redis.DialOption{redis.DialClientName(clientName)},
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// event is one write by a writer.
type event struct {
	at    time.Duration // since the run started, when the reply (or error) came
	v     int64         // the value INCR returned, for acks
	kind  eventKind
	reply string // the error, for failures
}

type eventKind uint8

const (
	ack      eventKind = iota // INCR returned a value
	notSent                   // Get failed: nothing was sent
	refused                   // an error reply (NOREPLICAS, READONLY): not applied
	unknown                   // the connection failed: it may have been applied
	wrongRep                  // a reply that is not an integer
)

// run is the writers and the monitor of one test.
type run struct {
	t     *testing.T
	pool  *redispool.Pool
	start time.Time
	stop  chan struct{}
	wg    sync.WaitGroup
	evs   [writers][]event

	mu      sync.Mutex
	marks   map[string]time.Duration // first time each named event was seen
	samples []sample
	// oldClients is the last time the old master was seen with a pool
	// connection, and oldClientsSeen whether it ever was.
	oldClients     time.Duration
	oldClientsSeen bool
}

// sample is the pool's counters at one moment.
type sample struct {
	at                  time.Duration
	dials, dialErrs, qs int64
}

func newRun(t *testing.T, p *redispool.Pool) *run {
	return &run{t: t, pool: p, start: time.Now(), stop: make(chan struct{}), marks: map[string]time.Duration{}}
}

func (r *run) now() time.Duration { return time.Since(r.start) }

// mark records the first time name happened.
func (r *run) mark(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.marks[name]; !ok {
		r.marks[name] = r.now()
	}
}

// at returns when name happened, and whether it did.
func (r *run) at(name string) (time.Duration, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	d, ok := r.marks[name]
	return d, ok
}

// waitFor waits until name happened, or fails the test after timeout.
func (r *run) waitFor(name string, timeout time.Duration) time.Duration {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if d, ok := r.at(name); ok {
			return d
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("%s did not happen within %v", name, timeout)
		}
		time.Sleep(pollEvery)
	}
}

// startWriters starts the writers, each incrementing its own key through
// the pool and recording every outcome.
func (r *run) startWriters() {
	for g := range writers {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			key := fmt.Sprintf("w:%d", g)
			for range maxWritesPerWriter {
				select {
				case <-r.stop:
					return
				default:
				}
				r.evs[g] = append(r.evs[g], r.write(key))
				time.Sleep(writePause)
			}
		}()
	}
}

// write does one INCR and classifies the outcome.
func (r *run) write(key string) event {
	c, err := r.pool.GetContext(context.Background())
	if err != nil {
		ev := event{at: r.now(), kind: notSent, reply: err.Error()}
		time.Sleep(10 * time.Millisecond) // the pool fails fast while dials fail
		return ev
	}
	reply, err := c.Do("INCR", key)
	at := r.now()
	c.Close()
	var rerr redis.Error
	switch {
	case errors.As(err, &rerr):
		time.Sleep(10 * time.Millisecond)
		return event{at: at, kind: refused, reply: string(rerr)}
	case err != nil:
		return event{at: at, kind: unknown, reply: err.Error()}
	}
	v, ok := reply.(int64)
	if !ok {
		return event{at: at, kind: wrongRep, reply: fmt.Sprintf("%#v", reply)}
	}
	return event{at: at, kind: ack, v: v}
}

// monitor polls the servers and the pool until the run stops: it marks
// "promoted" when the replica turns master, "demoted" when the old master
// turns replica, "announced" when the first sentinel names the replica, and
// samples the pool's counters.
func (r *run) monitor(c *cluster, watchOld bool) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		conns := map[string]redis.Conn{}
		defer func() {
			for _, conn := range conns {
				conn.Close()
			}
		}()
		do := func(addr, cmd string, args ...any) (any, error) {
			conn := conns[addr]
			if conn == nil {
				var err error
				conn, err = redis.Dial("tcp", addr, redis.DialConnectTimeout(200*time.Millisecond),
					redis.DialReadTimeout(500*time.Millisecond), redis.DialWriteTimeout(500*time.Millisecond))
				if err != nil {
					return nil, err
				}
				conns[addr] = conn
			}
			reply, err := conn.Do(cmd, args...)
			if _, ok := err.(redis.Error); err != nil && !ok {
				conn.Close()
				delete(conns, addr)
			}
			return reply, err
		}
		role := func(addr string) string {
			vs, err := redis.Values(do(addr, "ROLE"))
			if err != nil || len(vs) == 0 {
				return ""
			}
			s, _ := redis.String(vs[0], nil)
			return s
		}
		tick := time.NewTicker(pollEvery)
		defer tick.Stop()
		for range 100_000 {
			st := r.pool.Stats()
			r.mu.Lock()
			r.samples = append(r.samples, sample{at: r.now(), dials: st.DialCount, dialErrs: st.DialErrorCount, qs: r.pool.Sentinel.Queries()})
			r.mu.Unlock()
			if role(c.replica.Addr()) == "master" {
				r.mark("promoted")
			}
			for _, s := range c.sentinels {
				hp, err := redis.Strings(do(s.Addr(), "SENTINEL", "get-master-addr-by-name", masterName))
				if err == nil && len(hp) == 2 && net.JoinHostPort(hp[0], hp[1]) == c.replica.Addr() {
					r.mark("announced")
				}
			}
			if watchOld {
				if role(c.master.Addr()) == "slave" {
					r.mark("demoted")
				}
				if list, err := redis.String(do(c.master.Addr(), "CLIENT", "LIST")); err == nil &&
					strings.Contains(list, "name="+clientName+" ") {
					r.mu.Lock()
					r.oldClients, r.oldClientsSeen = r.now(), true
					r.mu.Unlock()
				}
			}
			select {
			case <-r.stop:
				return
			case <-tick.C:
			}
		}
	}()
}

// checkSubscribed fails t unless the pool subscribed to +switch-master on
// every sentinel within 2 s of its first dial: a subscriber on a sentinel
// (CLIENT LIST shows sub=1; its last command is SUBSCRIBE or the pool's
// PING) can only be the pool, since sentinels subscribe on the Redis
// servers, not on each other.
func checkSubscribed(t *testing.T, c *cluster) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for _, s := range c.sentinels {
		for {
			list, _ := redis.String(s.Do(t, "CLIENT", "LIST"), nil)
			if strings.Contains(list, " sub=1 ") {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("the pool is not subscribed to +switch-master on sentinel %s, so it learns of a failover only when "+
					"the old master fails it, about 10 s after SENTINEL FAILOVER; the Pool must call p.Sentinel.watch(p) "+
					"when it initializes (see sentinel.go)", s.Addr())
				return
			}
			time.Sleep(pollEvery)
		}
	}
}

// finish stops the writers and the monitor.
func (r *run) finish() {
	close(r.stop)
	r.wg.Wait()
}

// result is what the writes show.
type result struct {
	acks, notSent, refused, unknown int
	wrong                           int              // replies that cannot be the reply to this INCR
	wrongEx                         []string         // a few of them
	lostBefore, lostAfter           int              // acknowledged writes missing on the new master
	lostBeforeSpan                  [2]time.Duration // when the first and last of lostBefore were acknowledged
	lostAfterEx                     []string
	firstAfter                      time.Duration // first ack after `since` that was kept, -1 if none
	allAfter                        time.Duration // when the last writer had its first kept ack after since
	errorsEx                        []string
	lastFail                        time.Duration
}

// check walks each writer's outcomes and compares them with the final
// values on the new master. An INCR's value must follow the writer's
// previous acknowledged value by one, plus at most the number of writes in
// between whose outcome is unknown (the connection failed after sending);
// a higher value is a wrong reply. A value at or below the previous one
// means that the acknowledged writes with those values were lost: the
// server that acknowledged them was not the one the later write reached,
// and its writes did not survive the failover. Likewise for the final value
// read on the new master. A lost write acknowledged at or after `since`
// counts in lostAfter, one before in lostBefore. firstAfter and allAfter
// are about the kept writes acknowledged after `resumed`.
func (r *run) check(t *testing.T, newMaster *redistest.Server, since, resumed time.Duration) result {
	t.Helper()
	res := result{firstAfter: -1}
	for g := range writers {
		final, err := redis.Int64(newMaster.Do(t, "GET", fmt.Sprintf("w:%d", g)), nil)
		if err != nil && !errors.Is(err, redis.ErrNil) {
			t.Fatalf("GET w:%d on the new master: %v", g, err)
		}
		type kept struct {
			v  int64
			at time.Duration
		}
		var acks []kept
		lost := func(above int64, by time.Duration, why string) {
			for len(acks) > 0 && acks[len(acks)-1].v >= above {
				a := acks[len(acks)-1]
				acks = acks[:len(acks)-1]
				if a.at >= since {
					res.lostAfter++
					if len(res.lostAfterEx) < 5 {
						res.lostAfterEx = append(res.lostAfterEx, fmt.Sprintf("w:%d=%d acknowledged at %v, %s at %v", g, a.v, a.at, why, by))
					}
				} else {
					if res.lostBefore == 0 || a.at < res.lostBeforeSpan[0] {
						res.lostBeforeSpan[0] = a.at
					}
					res.lostBeforeSpan[1] = max(res.lostBeforeSpan[1], a.at)
					res.lostBefore++
				}
			}
		}
		prev, pending := int64(0), 0
		for _, ev := range r.evs[g] {
			switch ev.kind {
			case notSent:
				res.notSent++
			case refused:
				res.refused++
			case unknown:
				res.unknown++
				pending++
			case wrongRep:
				res.wrong++
				res.wrongEx = append(res.wrongEx, fmt.Sprintf("w:%d: %s at %v", g, ev.reply, ev.at))
			}
			if ev.kind != ack {
				if ev.at >= since-time.Second {
					res.lastFail = max(res.lastFail, ev.at)
					res.noteError(ev.reply)
				}
				continue
			}
			res.acks++
			switch {
			case ev.v <= prev:
				lost(ev.v, ev.at, "the value came again") // the server that acked them is gone
			case ev.v > prev+1+int64(pending):
				res.wrong++
				res.wrongEx = append(res.wrongEx, fmt.Sprintf("w:%d: %d after %d with %d unknown outcomes, at %v", g, ev.v, prev, pending, ev.at))
			}
			acks = append(acks, kept{ev.v, ev.at})
			prev, pending = ev.v, 0
		}
		switch {
		case final < prev:
			lost(final+1, r.now(), fmt.Sprintf("the new master has %d at the end", final))
		case final > prev+int64(pending):
			res.wrong++
			res.wrongEx = append(res.wrongEx, fmt.Sprintf("w:%d: the new master has %d, last acknowledged %d, %d unknown outcomes after", g, final, prev, pending))
		}
		// The first write of this writer acknowledged after resumed and kept.
		first := time.Duration(-1)
		for _, a := range acks {
			if a.at >= resumed {
				first = a.at
				break
			}
		}
		if first < 0 {
			res.allAfter = -1
		} else if res.allAfter >= 0 {
			res.allAfter = max(res.allAfter, first)
		}
		if first >= 0 && (res.firstAfter < 0 || first < res.firstAfter) {
			res.firstAfter = first
		}
	}
	return res
}

// noteError keeps a few distinct kinds of error, told apart by their start.
func (res *result) noteError(msg string) {
	kind := msg[:min(len(msg), 30)]
	for _, e := range res.errorsEx {
		if strings.HasPrefix(e, kind) {
			return
		}
	}
	if len(res.errorsEx) < 8 {
		res.errorsEx = append(res.errorsEx, msg)
	}
}

// rates returns the most successful dials and sentinel queries in any one
// second from `from` on.
func (r *run) rates(from time.Duration) (dials, queries, both int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.samples
	for i := range s {
		if s[i].at < from {
			continue
		}
		j := i
		for j+1 < len(s) && s[j+1].at-s[i].at <= time.Second {
			j++
		}
		d := (s[j].dials - s[j].dialErrs) - (s[i].dials - s[i].dialErrs)
		q := s[j].qs - s[i].qs
		dials, queries, both = max(dials, d), max(queries, q), max(both, d+q)
	}
	return dials, queries, both
}

// counters returns the pool's counters at the sample closest to at.
func (r *run) counters(at time.Duration) sample {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.samples {
		if s.at >= at {
			return s
		}
	}
	return r.samples[len(r.samples)-1]
}
