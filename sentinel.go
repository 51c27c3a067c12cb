package redispool

import (
	"context"
	"errors"
	"fmt"
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

// Sentinel finds a Redis master through Redis Sentinel. Set it as
// Pool.Sentinel, with Addr, Dial and DialContext unset: the pool asks the
// sentinels for the master's address once, dials the master with its own
// options (Username, Password, DB, DialOptions, timeouts), checks with ROLE
// that each new connection reaches a master, and keeps using the address
// until a failure says otherwise: a READONLY reply, a connection closed by the
// server, a failed dial or a ROLE other than master. Then it forgets the
// address, retires every connection dialed before (see Pool.Retire), and asks
// the sentinels again on its next dial, under the pool's dial limits and
// backoff. The sentinels are asked once per failover, not once per request.
//
// A Sentinel must not be copied after first use, nor shared between pools.
type Sentinel struct {
	// Addrs are the sentinels' "host:port" addresses. They are asked in turn
	// until one answers; the one that answered is asked first next time.
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

	mu     sync.Mutex // protects the fields below
	master string     // the cached master address; empty when unknown
	order  []string   // Addrs, the last one that answered first

	queries atomic.Int64
}

// Queries returns how many times the sentinels were asked for the master.
func (s *Sentinel) Queries() int64 { return s.queries.Load() }

// Master returns the master address in use, or "" before the first dial and
// after a failure made the pool forget it.
func (s *Sentinel) Master() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.master
}

// check reports a configuration error.
func (s *Sentinel) check() error {
	switch {
	case len(s.Addrs) == 0:
		return errors.New("Sentinel.Addrs is empty; list the sentinels' host:port addresses")
	case s.MasterName == "":
		return errors.New("Sentinel.MasterName is empty; set the name the sentinels monitor the master under")
	}
	for _, a := range s.Addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("Sentinel.Addrs has %q, which is not host:port: %v", a, err)
		}
	}
	return nil
}

// masterAddr returns the cached master address, asking the sentinels when
// there is none. Concurrent callers share one query.
func (s *Sentinel) masterAddr(ctx context.Context, timeout time.Duration) (string, error) {
	if m := s.Master(); m != "" {
		return m, nil
	}
	s.queryMu.Lock()
	defer s.queryMu.Unlock()
	if m := s.Master(); m != "" {
		return m, nil // another caller's query found it
	}
	s.mu.Lock()
	if s.order == nil {
		s.order = append([]string(nil), s.Addrs...)
	}
	order := append([]string(nil), s.order...)
	s.mu.Unlock()

	var errs []error
	for _, addr := range order {
		master, err := s.ask(ctx, addr, timeout)
		if err != nil {
			errs = append(errs, fmt.Errorf("sentinel %s: %w", addr, err))
			if ctx.Err() != nil {
				break
			}
			continue
		}
		s.mu.Lock()
		s.master = master
		s.order = moveToFront(s.order, addr)
		s.mu.Unlock()
		return master, nil
	}
	return "", fmt.Errorf("redispool: no sentinel named the master %q: %w", s.MasterName, errors.Join(errs...))
}

// ask asks one sentinel for the master's address.
func (s *Sentinel) ask(ctx context.Context, addr string, timeout time.Duration) (string, error) {
	s.queries.Add(1)
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	opts := []redis.DialOption{
		redis.DialConnectTimeout(timeout),
		redis.DialReadTimeout(timeout),
		redis.DialWriteTimeout(timeout),
		redis.DialUsername(s.Username),
		redis.DialPassword(s.Password),
	}
	c, err := redis.DialContext(ctx, "tcp", addr, append(opts, s.DialOptions...)...)
	if err != nil {
		return "", err
	}
	defer c.Close()
	reply, err := redis.Strings(c.Do("SENTINEL", "get-master-addr-by-name", s.MasterName))
	switch {
	case errors.Is(err, redis.ErrNil):
		return "", fmt.Errorf("does not know a master named %q", s.MasterName)
	case err != nil:
		return "", err
	case len(reply) != 2:
		return "", fmt.Errorf("unexpected reply %q to SENTINEL get-master-addr-by-name", reply)
	}
	return net.JoinHostPort(reply[0], reply[1]), nil
}

// forget drops the cached master address if it is still addr, so that a
// late failure on an old master does not discard a newer answer.
func (s *Sentinel) forget(addr string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.master == "" || s.master != addr {
		return false
	}
	s.master = ""
	return true
}

// checkRole verifies that c reaches a master.
func checkRole(c redis.Conn, addr string) error {
	reply, err := redis.Values(c.Do("ROLE"))
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
