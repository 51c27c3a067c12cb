package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gomodule/redigo/redis"
)

// errNoServer says that redis-server is not installed and no -addr was given.
var errNoServer = errors.New("redis-server not found on PATH and no -addr given")

// server is the redis-server the end-to-end and connection-cost parts use:
// one started here, or an existing one.
type server struct {
	addr    string
	cmd     *exec.Cmd // nil for an existing server
	dir     string
	exited  chan struct{}
	admin   redis.Conn // one connection kept for INFO, so asking costs no new one
	version string
}

// startServer starts redis-server on a free loopback port, with persistence
// off, and waits until it answers PING.
func startServer() (*server, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errNoServer
	}
	dir, err := os.MkdirTemp("", "poolbench-redis-")
	if err != nil {
		return nil, err
	}
	var lastErr error
	for range 3 {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s := &server{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), dir: dir, exited: make(chan struct{})}
		s.cmd = exec.Command(bin,
			"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--daemonize", "no",
			"--protected-mode", "no", "--maxclients", "10000")
		s.cmd.Dir = dir
		s.cmd.SysProcAttr = sysProcAttr()
		var out strings.Builder
		s.cmd.Stdout, s.cmd.Stderr = &out, &out
		if err := s.cmd.Start(); err != nil {
			return nil, fmt.Errorf("starting %s: %w", bin, err)
		}
		go func() { s.cmd.Wait(); close(s.exited) }()
		if err := s.waitReady(5 * time.Second); err != nil {
			s.close()
			lastErr = fmt.Errorf("redis-server on %s: %w\n%s", s.addr, err, out.String())
			continue
		}
		if err := s.connectAdmin(); err != nil {
			s.close()
			return nil, err
		}
		return s, nil
	}
	os.RemoveAll(dir)
	return nil, lastErr
}

// useServer connects to an existing server.
func useServer(addr string) (*server, error) {
	s := &server{addr: addr}
	if err := s.connectAdmin(); err != nil {
		return nil, err
	}
	return s, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *server) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := redis.Dial("tcp", s.addr, redis.DialConnectTimeout(100*time.Millisecond),
			redis.DialReadTimeout(100*time.Millisecond))
		if err == nil {
			_, err = c.Do("PING")
			c.Close()
			if err == nil {
				return nil
			}
		}
		select {
		case <-s.exited:
			return errors.New("redis-server exited")
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer to PING in %v: %w", timeout, err)
		}
	}
}

func (s *server) connectAdmin() error {
	c, err := redis.Dial("tcp", s.addr, redis.DialConnectTimeout(5*time.Second),
		redis.DialReadTimeout(10*time.Second), redis.DialWriteTimeout(10*time.Second))
	if err != nil {
		return fmt.Errorf("connecting to redis at %s: %w", s.addr, err)
	}
	s.admin = c
	if v, err := s.infoField("server", "redis_version"); err == nil {
		s.version = v
	}
	return nil
}

// infoField returns a field of INFO section.
func (s *server) infoField(section, field string) (string, error) {
	text, err := redis.String(s.admin.Do("INFO", section))
	if err != nil {
		return "", err
	}
	for line := range strings.SplitSeq(text, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return v, nil
		}
	}
	return "", fmt.Errorf("INFO %s has no %s", section, field)
}

// connectionsReceived is the server's total_connections_received.
func (s *server) connectionsReceived() (int64, error) {
	v, err := s.infoField("stats", "total_connections_received")
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(v, 10, 64)
}

// connectedClients is the server's connected_clients, the admin connection
// left out.
func (s *server) connectedClients() (int64, error) {
	v, err := s.infoField("clients", "connected_clients")
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(v, 10, 64)
	return n - 1, err
}

// waitClients waits until at most n clients besides the admin connection are
// connected, for at most timeout.
func (s *server) waitClients(n int64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		got, err := s.connectedClients()
		if err != nil {
			return err
		}
		if got <= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d clients still connected after %v", got, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *server) close() {
	if s.admin != nil {
		s.admin.Close()
	}
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Kill()
		select {
		case <-s.exited:
		case <-time.After(10 * time.Second):
		}
	}
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}

// connCounter counts the TCP connections a pool's dialer opens and how many
// are open at once.
type connCounter struct {
	dialer net.Dialer
	opened atomic.Int64
	open   atomic.Int64
	peak   atomic.Int64
}

func newConnCounter() *connCounter {
	return &connCounter{dialer: net.Dialer{Timeout: 5 * time.Second}}
}

func (c *connCounter) dialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	nc, err := c.dialer.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	c.opened.Add(1)
	n := c.open.Add(1)
	for {
		p := c.peak.Load()
		if n <= p || c.peak.CompareAndSwap(p, n) {
			break
		}
	}
	return &countedConn{Conn: nc, counter: c}, nil
}

// redigoDial is a redigo Dial function that counts its connections, with no
// timeouts, as boj/redistore dials.
func (c *connCounter) redigoDial(addr string) func() (redis.Conn, error) {
	return func() (redis.Conn, error) {
		return redis.Dial("tcp", addr, redis.DialContextFunc(c.dialContext))
	}
}

// waitClosed waits until every counted connection is closed.
func (c *connCounter) waitClosed(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for c.open.Load() > 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("%d connections still open %v after closing the pool", c.open.Load(), timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

type countedConn struct {
	net.Conn
	counter *connCounter
	closed  atomic.Bool
}

func (cc *countedConn) Close() error {
	if cc.closed.CompareAndSwap(false, true) {
		cc.counter.open.Add(-1)
	}
	return cc.Conn.Close()
}
