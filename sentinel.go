package redispool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gomodule/redigo/redis"
)

// ErrNotMaster is wrapped by the dial error returned when the server that the
// sentinels named is not a master, as during a failover; the pool then asks
// the sentinels again on its next dial.
var ErrNotMaster = errors.New("redispool: server is not the master")

const (
	// minQueryInterval is the least time between two queries to the
	// sentinels. Within it, a dial after a failure reuses the last answer:
	// while the old master is down and the sentinels have not failed over
	// yet, they would name it again anyway.
	minQueryInterval = 500 * time.Millisecond
	// minSentinelTimeout is the least time given to one sentinel when the
	// dial timeout is shared among several.
	minSentinelTimeout = 100 * time.Millisecond
	// switchChannel is where sentinels announce a new master.
	switchChannel = "+switch-master"
	// Backoff of the subscriptions to switchChannel after a sentinel failed.
	watchBackoffBase = 250 * time.Millisecond
	watchBackoffCap  = 5 * time.Second
)

// watchPing is how often a subscription to switchChannel pings its
// sentinel. A sentinel that hangs with its connection open sends nothing, as
// one with nothing to announce does; its missing pong tells them apart, so
// the subscription is dialed again and the sentinel heard once it recovers.
const watchPing = 2 * time.Second

// watchPingForTests, when positive, replaces watchPing. Atomic, so that a
// test can set it while goroutines of pools closed by earlier tests end.
var watchPingForTests atomic.Int64

func watchPingInterval() time.Duration {
	if d := watchPingForTests.Load(); d > 0 {
		return time.Duration(d)
	}
	return watchPing
}

// Sentinel finds a Redis master through Redis Sentinel. Set it as
// Pool.Sentinel, with Addr, Dial and DialContext unset: the pool asks the
// sentinels for the master's address once, dials the master with its own
// options (Username, Password, DB, DialOptions, timeouts), checks with ROLE
// that each new connection reaches a master, and keeps using the address
// until a failure says otherwise: a READONLY reply, a connection closed by the
// server, a failed dial or a ROLE other than master. Then it forgets the
// address, retires every connection dialed before (see Pool.Retire), and asks
// the sentinels again on its next dial, under the pool's dial limits and
// backoff, and at most twice a second. The sentinels are asked once per
// failover, not once per request.
//
// The pool also listens to the sentinels' +switch-master announcements (one
// subscription per sentinel, pinged every 2 s and dialed again when a
// sentinel fails or stops answering, closed by Pool.Close), because after
// SENTINEL FAILOVER the old master stays a writable master for several
// seconds before the sentinels turn it into a replica: on an announcement
// the pool takes the new master's address from it and retires every
// connection to the old one at once. An announcement whose old master is not
// the one in use, such as a late duplicate from a slow sentinel, is not
// followed: the pool asks the sentinels on its next dial instead, and retires
// its connections only if they name another master.
//
// A Sentinel serves one Pool, the first whose configuration is accepted
// with it, for good: any other Pool given it, even once that one is closed,
// fails its first use with ErrInvalidConfig. Give each Pool its own
// *Sentinel. A Pool whose configuration was rejected leaves its Sentinel
// free. A Sentinel must not be copied after first use.
type Sentinel struct {
	// Addrs are the sentinels' "host:port" addresses. They are asked in turn
	// until one answers with a host and port; the one that answered, or last
	// announced a new master, is asked first next time, and those that
	// failed within their share of time last, as is the one whose master
	// then failed: refused the dial or did not answer it, refused AUTH, was
	// not a master. Each sentinel gets an equal share of the pool's
	// DialTimeout (of 5s when it is disabled), at least 100ms, so that one
	// that hangs leaves time to ask the others.
	Addrs []string

	// MasterName is the name under which the sentinels monitor the master.
	MasterName string

	// Username and Password authenticate to the sentinels themselves (their
	// own requirepass or ACL), not to the master. When empty, no AUTH is sent.
	Username, Password string

	// DialOptions are passed to redis.DialContext when dialing a sentinel,
	// for example redis.DialUseTLS(true).
	DialOptions []redis.DialOption

	queryMu sync.Mutex // held while asking the sentinels: one query at a time

	mu        sync.Mutex // protects the fields below
	master    string     // the cached master address; empty when unknown
	last      string     // the last address the sentinels named
	lastQuery time.Time  // when the sentinels last named it
	failedAt  time.Time  // when a query last failed, for lack of an answer
	failErr   error      // that query's error; nil after an answer
	epoch     uint64     // raised by each announcement of a new master
	recheck   bool       // an announcement did not fit: the next query's answer decides (see announced)
	order     []string   // Addrs, the one to ask first first
	namedBy   string     // the sentinel that named last: asked last should that master fail (see forget)
	pool      *Pool      // the one pool served, retired on an announcement; set by watch
	watching  bool       // the subscriptions run

	queries atomic.Int64
}

// Queries returns how many times the sentinels were asked for the master.
// Each sentinel asked counts once, as does each sentinel that was down.
func (s *Sentinel) Queries() int64 { return s.queries.Load() }

// Master returns the master address in use, or "" before the first dial and
// after a failure, or an announcement the pool could not place, made it
// forget it until its next dial.
func (s *Sentinel) Master() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.master
}

// masterHostPort is the address a sentinel named, "host:port", or an error
// when it is not one: a sentinel's answer or announcement is believed only
// if it names a host and a port.
func masterHostPort(host, port string) (string, error) {
	if host == "" {
		return "", errors.New("names an empty host")
	}
	if err := checkPort(port); err != nil {
		return "", err
	}
	return net.JoinHostPort(host, port), nil
}

// masterAddr returns the cached master address, asking the sentinels when
// there is none, with p's generation read together with it: the sentinels'
// news of a new master raise the generation under s.mu (see announced,
// forget, and answered for the answer to a query an announcement asked
// for), so a connection stamped with it is retired by any later news, and
// by none that came before. Concurrent callers share one query. timeout is
// the pool's dial timeout (0 when disabled), shared among the sentinels asked.
func (s *Sentinel) masterAddr(ctx context.Context, p *Pool, timeout time.Duration) (string, uint64, error) {
	s.mu.Lock()
	if m := s.master; m != "" {
		gen := p.gen.Load()
		s.mu.Unlock()
		return m, gen, nil
	}
	s.mu.Unlock()
	s.startWatch()
	s.queryMu.Lock()
	defer s.queryMu.Unlock()
	s.mu.Lock()
	if m, gen, err := s.reuseAnswerLocked(p); m != "" || err != nil {
		s.mu.Unlock()
		return m, gen, err
	}
	if s.order == nil {
		s.order = append([]string(nil), s.Addrs...)
	}
	order := append([]string(nil), s.order...)
	epoch := s.epoch
	s.mu.Unlock()
	return s.query(ctx, p, order, epoch, sentinelTimeout(timeout, len(order)))
}

// reuseAnswerLocked is masterAddr's answer without asking the sentinels:
// the master cached, the address they named less than minQueryInterval
// ago, cached again, or their failure less than that ago. It returns ""
// and a nil error when they are to be asked.
func (s *Sentinel) reuseAnswerLocked(p *Pool) (string, uint64, error) {
	switch {
	case s.master != "":
		return s.master, p.gen.Load(), nil // another caller's query or an announcement found it
	case s.last != "" && time.Since(s.lastQuery) < minQueryInterval:
		// Asked moments ago: the sentinels would name the same master.
		s.master = s.last
		return s.last, p.gen.Load(), nil
	case s.failErr != nil && time.Since(s.failedAt) < minQueryInterval:
		// The sentinels failed moments ago: at most two queries a second.
		return "", 0, s.failErr
	}
	return "", 0, nil
}

// query asks the sentinels in order, each within share, until one names
// the master, and returns it as masterAddr does. epoch is s.epoch when the
// query began. When none answers, their failure is kept for
// minQueryInterval (see reuseAnswerLocked).
func (s *Sentinel) query(ctx context.Context, p *Pool, order []string, epoch uint64, share time.Duration) (string, uint64, error) {
	var errs []error
	for i, addr := range order {
		master, timeUp, err := s.askInTurn(ctx, addr, share)
		if err == nil {
			m, gen := s.answered(p, addr, master, epoch)
			return m, gen, nil
		}
		errs = append(errs, fmt.Errorf("sentinel %s: %w", addr, err))
		if timeUp {
			if rest := order[i+1:]; len(rest) > 0 {
				errs = append(errs, fmt.Errorf("the dial's time ran out before asking %s", strings.Join(rest, ", ")))
			}
			break
		}
	}
	// ctx is the dial's own (no caller's cancellation reaches a dial): its
	// time running out is the sentinels' failure too.
	err := fmt.Errorf("redispool: no sentinel named the master %q: %w", s.MasterName, errors.Join(errs...))
	s.mu.Lock()
	s.failErr, s.failedAt = err, time.Now()
	s.mu.Unlock()
	return "", 0, err
}

// askInTurn asks the sentinel at addr, within share, for the master's
// address. When it fails, it reports whether ctx's time is up, and moves the
// sentinel to the back of s.order, unless it had less than share left and
// ran out of time.
func (s *Sentinel) askInTurn(ctx context.Context, addr string, share time.Duration) (master string, timeUp bool, err error) {
	// A sentinel that failed with less than its share of time left is
	// not to blame: it keeps its place.
	dl, ok := ctx.Deadline()
	fullShare := !ok || time.Until(dl) >= share
	master, err = s.ask(ctx, addr, share)
	if err == nil {
		return master, false, nil
	}
	// The deadline, not ctx.Err, which its timer sets a moment late.
	timeUp = ctx.Err() != nil || (ok && !time.Now().Before(dl))
	if fullShare || !timeUp {
		s.mu.Lock()
		s.order = moveToBack(s.order, addr) // ask the others first next time
		s.mu.Unlock()
	}
	return "", timeUp, err
}

// answered takes the answer of the sentinel at addr, which named master
// to a query begun at epoch, and returns the master to dial with p's
// generation, as masterAddr does. A master announced since, and still
// cached, wins over the answer.
func (s *Sentinel) answered(p *Pool, addr, master string, epoch uint64) (string, uint64) {
	s.mu.Lock()
	previous, retire := s.last, false
	if s.epoch != epoch && s.master != "" {
		// A new master was announced while we asked: the answer may
		// come from a sentinel that has not heard of it yet.
		master = s.master
	} else {
		// Asked because an announcement did not fit: connections
		// dialed before reach the master in use until then, which
		// the sentinels may no longer name.
		retire = s.recheck && previous != "" && master != previous
		s.master, s.last, s.lastQuery = master, master, time.Now()
		s.order = moveToFront(s.order, addr)
		s.namedBy = addr
		if retire {
			p.gen.Add(1) // under s.mu: see masterAddr
		}
	}
	s.recheck = false
	s.failErr = nil
	gen := p.gen.Load()
	s.mu.Unlock()
	if retire {
		p.drainIdle(DiscardRetired)
		p.logSentinel(context.Background(), slog.LevelInfo, "redispool: the sentinels named a new master",
			slog.String("master", master), slog.String("previous", previous), slog.String("sentinel", addr))
	}
	return master, gen
}

// sentinelTimeout is the time given to each of n sentinels out of the dial
// timeout.
func sentinelTimeout(timeout time.Duration, n int) time.Duration {
	if timeout <= 0 {
		timeout = DefaultDialTimeout
	}
	return min(timeout, max(timeout/time.Duration(max(n, 1)), minSentinelTimeout))
}

// dialSentinel connects to the sentinel at addr, and authenticates, within
// connectTimeout in all: the socket carries that deadline until the dial
// ends, which bounds a TLS handshake too. readTimeout 0 means none after.
//
// AUTH is sent here rather than by redis.DialContext, which reads its reply
// on a goroutine of its own (see converse).
func (s *Sentinel) dialSentinel(ctx context.Context, addr string, connectTimeout, readTimeout time.Duration) (_ redis.Conn, err error) {
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	var netConn net.Conn
	opts := []redis.DialOption{
		dialSocket(connectTimeout, 0, &netConn),
		redis.DialTLSHandshakeTimeout(connectTimeout),
		redis.DialReadTimeout(readTimeout),
		redis.DialWriteTimeout(connectTimeout),
	}
	c, err := redis.DialContext(ctx, "tcp", addr, append(opts, s.DialOptions...)...)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if s.Password != "" {
		args := []any{s.Password}
		if s.Username != "" {
			args = []any{s.Username, s.Password}
		}
		if _, err := converse(ctx, c, "AUTH", args...); err != nil {
			return nil, fmt.Errorf("AUTH: %w", err)
		}
	}
	if netConn != nil {
		if err := netConn.SetDeadline(time.Time{}); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// ask asks one sentinel for the master's address.
func (s *Sentinel) ask(ctx context.Context, addr string, timeout time.Duration) (string, error) {
	s.queries.Add(1)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := s.dialSentinel(ctx, addr, timeout, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	reply, err := redis.Strings(converse(ctx, c, "SENTINEL", "get-master-addr-by-name", s.MasterName))
	switch {
	case errors.Is(err, redis.ErrNil):
		return "", fmt.Errorf("does not know a master named %q", s.MasterName)
	case err != nil:
		return "", err
	case len(reply) != 2:
		return "", fmt.Errorf("unexpected reply to SENTINEL get-master-addr-by-name: an array of %d", len(reply))
	}
	master, err := masterHostPort(reply[0], reply[1])
	if err != nil {
		return "", fmt.Errorf("named the master %q %q, which is not host:port: %w", reply[0], reply[1], err)
	}
	return master, nil
}

// forget drops the cached master address if it is still addr (or, while
// the pool waits for the sentinels' answer after an announcement that did
// not fit, the master still in use is addr), so that a
// late failure on an old master does not discard a newer answer, moves the
// sentinel that named it to the back, so that a sentinel naming a replica or
// a dead server is not the first asked again, and then
// retires p's connections dialed before: it reports whether it did, for the
// caller to close p's idle ones.
func (s *Sentinel) forget(p *Pool, addr string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	current := s.master
	if current == "" && s.recheck {
		current = s.last // still in use until the sentinels' answer (see announced)
	}
	if current == "" || current != addr {
		return false
	}
	s.master = ""
	s.order = moveToBack(s.order, s.namedBy)
	p.gen.Add(1)
	return true
}

// watch makes the Sentinel follow the sentinels' announcements of a new
// master for p: from the first dial until p is closed, it stays subscribed
// to +switch-master on every sentinel, and on an announcement caches the new
// master and retires p's connections. The pool calls it once, from init,
// when the rest of its configuration is valid. It reports a configuration
// error when the Sentinel serves another pool already: the master it
// caches, its subscriptions and its announcements are for that one, whose
// connections alone it would retire.
func (s *Sentinel) watch(p *Pool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pool != nil && s.pool != p {
		return fmt.Errorf("%w: Sentinel is already used by another Pool; give each Pool its own *Sentinel", ErrInvalidConfig)
	}
	s.pool = p
	return nil
}

// startWatch starts the subscriptions, once, if watch was called.
func (s *Sentinel) startWatch() {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.pool
	if p == nil || s.watching {
		return
	}
	s.watching = true
	select {
	case <-p.done:
		return // closed before its first dial
	default:
	}
	for _, addr := range s.Addrs {
		go s.subscribe(p, addr)
	}
}

// subscribe stays subscribed to +switch-master on the sentinel at addr until
// p is closed, reconnecting with backoff when the sentinel fails.
func (s *Sentinel) subscribe(p *Pool, addr string) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-p.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	fails := 0
	for ctx.Err() == nil {
		start := time.Now()
		err := s.listen(ctx, p, addr)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > watchBackoffCap {
			fails = 0 // it worked for a while: retry soon
		}
		fails++
		d := watchBackoffCap
		if fails < 6 {
			d = min(watchBackoffCap, watchBackoffBase<<(fails-1))
		}
		d -= rand.N(d/2 + 1)
		p.logSentinel(ctx, slog.LevelDebug, "redispool: subscription to a sentinel failed",
			slog.String("sentinel", addr), slog.String("error", errText(err)), slog.Duration("retry_in", d))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// listen subscribes to +switch-master on one sentinel and follows its
// announcements until the connection fails, the sentinel stops answering its
// pings, or ctx ends.
func (s *Sentinel) listen(ctx context.Context, p *Pool, addr string) (err error) {
	timeout := sentinelTimeout(p.cfg.dialTimeout, 1)
	c, err := s.dialSentinel(ctx, addr, timeout, 0)
	if err != nil {
		return err
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("unreadable message: %v", r)
		}
	}()
	// Closing the connection is the only way to end a Receive in progress.
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer func() {
		if stop() {
			c.Close()
		}
	}()
	psc := redis.PubSubConn{Conn: c}
	if err := psc.Subscribe(switchChannel); err != nil {
		return err
	}
	interval := watchPingInterval()
	pinging := make(chan struct{})
	defer close(pinging)
	go pingSentinel(psc, interval, pinging)
	// Something, a pong at least, arrives every interval from a sentinel
	// that works.
	return s.receiveAnnouncements(p, addr, psc, interval+timeout)
}

// pingSentinel pings the sentinel on psc every interval until stop is
// closed or a ping fails.
func pingSentinel(psc redis.PubSubConn, interval time.Duration, stop <-chan struct{}) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
			if psc.Ping("") != nil {
				return // receiveAnnouncements fails too
			}
		}
	}
}

// receiveAnnouncements follows the announcements that the sentinel at addr
// sends on psc until a receive fails or gets nothing within wait.
func (s *Sentinel) receiveAnnouncements(p *Pool, addr string, psc redis.PubSubConn, wait time.Duration) error {
	for {
		switch m := psc.ReceiveWithTimeout(wait).(type) {
		case error:
			return m
		case redis.Message:
			if m.Channel == switchChannel {
				s.announced(p, addr, string(m.Data))
			}
		}
	}
}

// announced handles a +switch-master message from the sentinel at from:
// "<name> <old ip> <old port> <new ip> <new port>", where the name may hold
// spaces. One that names no new host and port is ignored.
//
// Every sentinel publishes each announcement, and those of two failovers in
// quick succession (X to Y, then Y to Z) may arrive late and out of order.
// So an announcement is followed at once when nothing is known yet or when
// it starts from the master in use (the one the pool still uses while it
// waits for the sentinels' answer, below); a duplicate of the master in use
// changes nothing. Any other announcement is a late duplicate ("X to Y" on
// Z) or follows one the pool missed ("Y to Z" on X), and cannot tell which:
// the pool forgets the master, so that its next dial asks the sentinels,
// whatever the rate limit on queries, and keeps its connections until their
// answer (see answered). Retiring them at once would close every
// connection to the right master on each late duplicate, the common case;
// after a missed announcement, the answer names another master and retires
// them then, before any new connection is dialed, and until then ROLE,
// READONLY and the other failures guard them as ever (see forget). Should
// the missed announcement itself arrive late, it starts from the master in
// use and is followed, to a master that has been replaced since: its ROLE
// check fails, and the next dial asks the sentinels.
func (s *Sentinel) announced(p *Pool, from, msg string) {
	rest, ok := strings.CutPrefix(msg, s.MasterName+" ")
	if !ok {
		return
	}
	f := strings.Fields(rest)
	if len(f) != 4 {
		return
	}
	master, err := masterHostPort(f[2], f[3])
	if err != nil {
		return
	}
	old, err := masterHostPort(f[0], f[1])
	if err != nil {
		old = "" // fits no master in use
	}
	s.mu.Lock()
	current := s.master
	if current == "" {
		current = s.last
	}
	switch {
	case current != "" && master == current && s.recheck:
		// It tells nothing the sentinels' answer will not.
		s.mu.Unlock()
		return
	case current != "" && master != current && old != current:
		s.master = ""
		s.lastQuery = time.Time{} // the next dial asks, within minQueryInterval too
		s.failErr = nil           // a sentinel just spoke: do not reuse a failed query's error
		s.recheck = true
		s.mu.Unlock()
		p.logSentinel(context.Background(), slog.LevelInfo,
			"redispool: ignored an announcement of a new master that may be stale; asking the sentinels",
			slog.String("master", master), slog.String("previous", old), slog.String("current", current),
			slog.String("sentinel", from))
		return
	}
	// lastQuery is left alone: it is when the sentinels were last asked, so
	// that a dial failing on the master announced asks them at once, rather
	// than reusing what may be a late announcement for minQueryInterval.
	s.master, s.last = master, master
	s.failErr = nil
	s.recheck = false
	s.epoch++
	if s.order == nil {
		s.order = append([]string(nil), s.Addrs...)
	}
	s.order = moveToFront(s.order, from) // it knew first
	s.namedBy = from
	changed := current != master
	if changed {
		p.gen.Add(1) // under s.mu: see masterAddr
	}
	s.mu.Unlock()
	if changed {
		p.drainIdle(DiscardRetired)
		p.logSentinel(context.Background(), slog.LevelInfo, "redispool: the sentinels announced a new master",
			slog.String("master", master), slog.String("previous", current), slog.String("sentinel", from))
	}
}

// checkRole verifies that c reaches a master.
func checkRole(ctx context.Context, c redis.Conn, addr string) error {
	reply, err := redis.Values(converse(ctx, c, "ROLE"))
	if err != nil {
		return fmt.Errorf("redispool: ROLE on %s: %w", addr, err)
	}
	if len(reply) == 0 {
		return fmt.Errorf("redispool: ROLE on %s: empty reply", addr)
	}
	role, _ := redis.String(reply[0], nil)
	if !strings.EqualFold(role, "master") {
		return fmt.Errorf("%w: ROLE on %s says %q", ErrNotMaster, addr, role)
	}
	return nil
}

// moveToBack moves addr to the end of addrs.
func moveToBack(addrs []string, addr string) []string {
	for i, a := range addrs {
		if a == addr {
			copy(addrs[i:], addrs[i+1:])
			addrs[len(addrs)-1] = addr
			break
		}
	}
	return addrs
}

func moveToFront(addrs []string, addr string) []string {
	for i, a := range addrs {
		if a == addr {
			copy(addrs[1:i+1], addrs[:i])
			addrs[0] = addr
			break
		}
	}
	return addrs
}
