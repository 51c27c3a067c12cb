package redispool_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/redispool/redispool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// ---------------------------------------------------------------------------
// Helpers: a fake master, a scriptable fake sentinel.

// respBulks encodes strs as a RESP array of bulk strings.
func respBulks(strs ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(strs))
	for _, s := range strs {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(s), s)
	}
	return b.String()
}

// addrReply is a sentinel's reply naming host:port.
func addrReply(host, port string) string { return respBulks(host, port) }

// startFakeMaster starts a fake master that answers ROLE as a master, and +OK
// to everything else.
func startFakeMaster(t *testing.T) string {
	return startRoleServer(t, "master").addr
}

// scriptedSentinel is a scriptable fake sentinel.
type scriptedSentinel struct {
	addr string
	// reply is the raw reply to SENTINEL get-master-addr-by-name.
	reply string
	// delay is how long every reply (AUTH, SENTINEL) waits.
	delay time.Duration
	// silent, when it returns true for a new connection, makes it never
	// answer anything: a blackholed connection.
	silent func() bool
	// push receives raw frames written to every subscribed connection.
	push chan string

	subscribes atomic.Int64
	queries    atomic.Int64
}

func startScriptedSentinel(t *testing.T, s *scriptedSentinel) *scriptedSentinel {
	if s.push == nil {
		s.push = make(chan string, 16)
	}
	done := make(chan struct{})
	s.addr = serveLoopback(t, func(c net.Conn) {
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
			var reply string
			switch strings.ToUpper(args[0]) {
			case "SENTINEL":
				s.queries.Add(1) // asked, even if it answers too late
				reply = s.reply
			case "SUBSCRIBE":
				s.subscribes.Add(1)
				reply = fmt.Sprintf("*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:1\r\n", len(args[1]), args[1])
				go func() {
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
				}()
			case "PING":
				reply = "*2\r\n$4\r\npong\r\n$0\r\n\r\n"
			default:
				reply = "+OK\r\n"
			}
			if s.delay > 0 {
				time.Sleep(s.delay)
			}
			if err := write(reply); err != nil {
				return
			}
		}
	})
	t.Cleanup(func() { close(done) })
	return s
}

// switchMessage is a +switch-master message frame with data msg.
func switchMessage(msg string) string { return respBulks("message", "+switch-master", msg) }

// ---------------------------------------------------------------------------
// Hostile and malformed replies.

// A sentinel reply that announces a huge bulk length makes redigo's reader
// panic (makeslice: len out of range); Get must return an error instead.
func TestSentinelHugeLengthInReplyIsAnError(t *testing.T) {
	s := startScriptedSentinel(t, &scriptedSentinel{reply: "*2\r\n$9223372036854775807\r\n"})
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
		host, port, _ := net.SplitHostPort(master)
		s := startScriptedSentinel(t, &scriptedSentinel{reply: addrReply(host, port)})
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
	gHost, gPort, _ := net.SplitHostPort(good)
	local := startFakeMaster(t) // a server on this machine that is not the master
	_, lPort, _ := net.SplitHostPort(local)

	for _, tc := range []struct{ name, host, port string }{
		{"empty port", "127.0.0.1", ""},
		{"port not a number", "127.0.0.1", "sixthree"},
		{"port out of range", "127.0.0.1", "99999"},
		{"empty host", "", lPort},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := startScriptedSentinel(t, &scriptedSentinel{reply: addrReply(tc.host, tc.port)})
			ok := startScriptedSentinel(t, &scriptedSentinel{reply: addrReply(gHost, gPort)})
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

// A +switch-master announcement whose new port is not a port is ignored: the
// pool keeps its working master and its connections.
func TestSentinelGarbageSwitchMasterIsIgnored(t *testing.T) {
	defer redispool.SetWatchPing(100 * time.Millisecond)()
	master := startFakeMaster(t)
	host, port, _ := net.SplitHostPort(master)
	s := startScriptedSentinel(t, &scriptedSentinel{reply: addrReply(host, port)})
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
	s.push <- switchMessage(fmt.Sprintf("mymaster %s %s 127.0.0.1 not-a-port", host, port))
	s.push <- switchMessage("mymaster garbage garbage garbage 99999999")
	// A valid announcement after them, in order on the same connection:
	// once it is followed, the two before it were read.
	other := startFakeMaster(t)
	ohost, oport, _ := net.SplitHostPort(other)
	s.push <- switchMessage(fmt.Sprintf("mymaster %s %s %s %s", host, port, ohost, oport))
	require.Eventually(t, func() bool { return p.Sentinel.Master() == other }, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, gen+1, p.Generation(), "only the valid announcement retired the conns")
}

// ---------------------------------------------------------------------------
// Sentinels that hang.

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
	host, port, _ := net.SplitHostPort(master)
	until := time.Now().Add(400 * time.Millisecond)
	s := startScriptedSentinel(t, &scriptedSentinel{
		reply:  addrReply(host, port),
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

// With a small DialTimeout, the first sentinels in Addrs can use up a whole
// query when they hang; those that failed are asked last next time, so a
// healthy sentinel listed after them is reached.
func TestSentinelHealthySentinelAfterHungOnesIsAsked(t *testing.T) {
	master := startFakeMaster(t)
	host, port, _ := net.SplitHostPort(master)
	good := startScriptedSentinel(t, &scriptedSentinel{reply: addrReply(host, port)})
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

// ---------------------------------------------------------------------------
// Rate limit.

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

// With Sentinel.Password set, AUTH and SENTINEL together fit the sentinel's
// share of DialTimeout: a sentinel that answers each slowly does not hold a
// Get past it, and its answer after the deadline is not taken.
func TestSentinelSlowSentinelWithPasswordFitsDialTimeout(t *testing.T) {
	master := startFakeMaster(t)
	host, port, _ := net.SplitHostPort(master)
	s := startScriptedSentinel(t, &scriptedSentinel{reply: addrReply(host, port), delay: 450 * time.Millisecond})
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

// ---------------------------------------------------------------------------
// Sentinels that name a server that is not the master.

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
			host, port, _ := net.SplitHostPort(master)
			bHost, bPort, _ := net.SplitHostPort(tc.named(t))
			sentinels := []*scriptedSentinel{
				startScriptedSentinel(t, &scriptedSentinel{reply: addrReply(bHost, bPort), delay: tc.delay}),
				startScriptedSentinel(t, &scriptedSentinel{reply: addrReply(host, port)}),
				startScriptedSentinel(t, &scriptedSentinel{reply: addrReply(host, port)}),
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
