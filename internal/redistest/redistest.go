// Package redistest runs real redis-server processes for tests.
//
// Each [Start] launches a fresh redis-server bound to 127.0.0.1 on a free
// port, with persistence turned off, and kills it when the test ends. The
// returned [Server] can be frozen ([Server.Stop], [Server.Cont]), killed and
// brought back on the same port ([Server.Kill], [Server.Restart]), and
// queried ([Server.Do], [Server.ConnectedClients],
// [Server.TotalConnectionsReceived]), which is what connection pool tests
// need to provoke and observe network failures.
//
// When redis-server is not on PATH, tests using this package are skipped, or
// fail if the environment variable CI is "true".
//
// The package relies on POSIX signals (SIGSTOP, SIGCONT, SIGKILL) and so
// builds only on Unix-like systems.
package redistest

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
)

// ErrPortInUse is returned (wrapped) by [StartOnPort] when the requested
// port is already taken by another listener.
var ErrPortInUse = errors.New("redistest: port already in use")

const (
	// startAttempts is how many free ports Start tries.
	startAttempts = 3
	// readyTimeout bounds the wait for a new process to answer PING, and
	// Restart's retries to bind the old port.
	readyTimeout = 5 * time.Second
	// probeTimeout is the dial and read timeout of one readiness PING.
	probeTimeout = 50 * time.Millisecond
	// pollInterval separates two readiness probes or bind attempts.
	pollInterval = 10 * time.Millisecond
	// adminTimeout is the dial, read and write timeout of the admin
	// connections used by Do, ConnectedClients and TotalConnectionsReceived.
	adminTimeout = time.Second
	// exitTimeout bounds the wait for a SIGKILLed process to be reaped.
	exitTimeout = 10 * time.Second
	// signalTimeout bounds the wait for SIGSTOP/SIGCONT to take effect.
	signalTimeout = 2 * time.Second
	// logTailSize is how much of the server output failure messages show.
	logTailSize = 4 << 10
	// logKeepSize is how much of the server output is kept in memory.
	logKeepSize = 256 << 10
)

// Server is a redis-server process started by [Start] or [StartOnPort].
// Its methods may be called from several goroutines, but the ones that take
// a testing.TB call t.Fatal on failure and so, like t.Fatal itself, belong
// on the test's goroutine.
type Server struct {
	bin  string
	port int
	args []string // full redis-server command line, without the binary
	dir  string   // working directory of the process

	mu   sync.Mutex
	proc *process // the current (possibly exited) process
}

// process is one run of redis-server.
type process struct {
	cmd  *exec.Cmd
	log  *logBuffer
	done chan struct{} // closed once the process has exited and been reaped
	err  error         // result of cmd.Wait; read only after done is closed

	// harnessConns counts the connections this package opened to the
	// process, so that TotalConnectionsReceived can leave them out. It
	// starts as the server's own count once it is ready (readiness probes
	// included, whether or not they succeeded on our side) and grows with
	// every admin connection.
	harnessConns atomic.Int64
	// harnessSlots counts the CLUSTER SLOTS this package sent to the
	// process, which CommandCalls leaves out.
	harnessSlots atomic.Int64
}

// Start starts a fresh redis-server on a free 127.0.0.1 port for the test,
// with persistence off (--save "" --appendonly no), and registers t.Cleanup
// to kill it. extraArgs are appended to the command line, for example
// "--timeout", "1".
//
// The port is found by listening on 127.0.0.1:0 and closing the listener;
// if the server fails to come up (the port may have been taken in between),
// Start retries with a new port, three times in all, and then calls t.Fatal
// with the end of the server's output.
//
// When the redis-server binary is not on PATH, Start calls t.Fatal if the
// environment variable CI is "true", and t.Skip otherwise.
func Start(t testing.TB, extraArgs ...string) *Server {
	t.Helper()
	bin := lookupBinary(t)
	dir := t.TempDir()
	var errs []error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		port, err := freePort()
		if err != nil {
			errs = append(errs, fmt.Errorf("attempt %d: %w", attempt, err))
			continue
		}
		s := newServer(bin, dir, port, extraArgs)
		p, err := s.launch()
		if err != nil {
			errs = append(errs, fmt.Errorf("attempt %d: %w", attempt, err))
			continue
		}
		s.proc = p
		s.registerCleanup(t)
		return s
	}
	t.Fatalf("redistest: redis-server did not start after %d attempts:\n%v", startAttempts, errors.Join(errs...))
	return nil
}

// StartOnPort is like [Start] but uses the given port (for example to bring
// up a server on the default port 6379). If the port is already in use it
// returns an error wrapping [ErrPortInUse] instead of failing the test;
// other failures to start call t.Fatal.
func StartOnPort(t testing.TB, port int, extraArgs ...string) (*Server, error) {
	t.Helper()
	bin := lookupBinary(t)
	addr := hostPort(port)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrPortInUse, addr, err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("redistest: closing probe listener on %s: %v", addr, err)
	}

	s := newServer(bin, t.TempDir(), port, extraArgs)
	p, err := s.launch()
	if errors.Is(err, ErrPortInUse) {
		return nil, err
	}
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	s.proc = p
	s.registerCleanup(t)
	return s, nil
}

// Cluster nodes listen on a port below the kernel's ephemeral range
// (32768 and up on Linux), and on a bus port 10000 above it, which must be
// free too: a port from the kernel's range leaves a bus port that may be
// taken or above 65535.
const (
	clusterPortMin   = 12000
	clusterPortMax   = 22000
	clusterBusOffset = 10000
	clusterAttempts  = 50
)

// StartClusterNode starts a redis-server with --cluster-enabled yes on a
// port whose cluster bus port is free too, with extraArgs after.
func StartClusterNode(t testing.TB, extraArgs ...string) *Server {
	t.Helper()
	args := append([]string{"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"}, extraArgs...)
	var errs []error
	for range clusterAttempts {
		port := clusterPortMin + rand.IntN(clusterPortMax-clusterPortMin)
		bus, err := net.Listen("tcp", hostPort(port+clusterBusOffset))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		bus.Close()
		s, err := StartOnPort(t, port, args...)
		if err == nil {
			return s
		}
		errs = append(errs, err)
	}
	t.Fatalf("redistest: no cluster node started in %d attempts: %v", clusterAttempts, errors.Join(errs...))
	return nil
}

// lookupBinary returns the path of redis-server, or skips or fails t.
func lookupBinary(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err == nil {
		return bin
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("redistest: redis-server not found on PATH (%v); CI=true makes this a failure: install it (apt-get install redis-server)", err)
	}
	t.Skip("redis-server not found on PATH; install it (apt-get install redis-server) or set CI=true to make this a failure")
	return ""
}

// freePort asks the kernel for a free port on 127.0.0.1.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	return port, nil
}

func hostPort(port int) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

func newServer(bin, dir string, port int, extraArgs []string) *Server {
	args := []string{
		"--port", strconv.Itoa(port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--daemonize", "no",
		"--protected-mode", "no",
	}
	args = append(args, extraArgs...)
	return &Server{bin: bin, port: port, args: args, dir: dir}
}

func (s *Server) registerCleanup(t testing.TB) {
	t.Cleanup(func() {
		if err := s.kill(); err != nil {
			t.Errorf("redistest: cleanup: %v", err)
		}
	})
}

// launch starts a new redis-server process and waits until it answers PING.
// On failure the process is gone and the error contains its output; the
// error wraps ErrPortInUse if redis-server could not bind the port.
func (s *Server) launch() (*process, error) {
	cmd := exec.Command(s.bin, s.args...)
	cmd.Dir = s.dir
	log := &logBuffer{}
	cmd.Stdout = log
	cmd.Stderr = log
	cmd.SysProcAttr = sysProcAttr()
	// Do not let a stray holder of the output pipe block cmd.Wait forever.
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", s.bin, err)
	}
	p := &process{cmd: cmd, log: log, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()

	err := p.waitReady(s.Addr())
	if err == nil {
		err = p.checkIdentity(s.Addr())
	}
	if err != nil {
		kerr := p.kill()
		if strings.Contains(log.String(), "Address already in use") {
			err = fmt.Errorf("%w (%v)", ErrPortInUse, err)
		}
		return nil, fmt.Errorf("redis-server on %s: %w%s%s", s.Addr(), errors.Join(err, kerr), s.cmdline(), p.tail())
	}
	return p, nil
}

// waitReady polls PING until it is answered, the process exits, or
// readyTimeout passes.
func (p *process) waitReady(addr string) error {
	deadline := time.Now().Add(readyTimeout)
	var lastErr error
	for {
		select {
		case <-p.done:
			return fmt.Errorf("exited before answering PING: %v", p.err)
		default:
		}
		if lastErr = ping(addr); lastErr == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer to PING within %v: %w", readyTimeout, lastErr)
		}
		select {
		case <-p.done:
		case <-time.After(pollInterval):
		}
	}
}

// checkIdentity makes sure that the server answering on addr is this
// process, not another one that took the port first (in which case this
// process is about to exit for lack of a port), and sets harnessConns to
// the number of connections the server has received so far, all of them
// from this package.
func (p *process) checkIdentity(addr string) error {
	c, err := dialTimeout(addr, adminTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	pid, err := infoField(c, "server", "process_id")
	if err != nil {
		return err
	}
	if pid != p.cmd.Process.Pid {
		return fmt.Errorf("%w: another redis-server (pid %d) answers on %s", ErrPortInUse, pid, addr)
	}
	n, err := infoField(c, "stats", "total_connections_received")
	if err != nil {
		return err
	}
	p.harnessConns.Store(int64(n))
	return nil
}

// ping sends one PING with probeTimeout for dialing and reading.
func ping(addr string) error {
	c, err := dialTimeout(addr, probeTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	reply, err := redis.String(c.Do("PING"))
	if err != nil {
		return err
	}
	if reply != "PONG" {
		return fmt.Errorf("PING answered %q", reply)
	}
	return nil
}

// dialTimeout opens a connection with the given dial, read and write timeout.
func dialTimeout(addr string, timeout time.Duration) (redis.Conn, error) {
	return redis.Dial("tcp", addr,
		redis.DialConnectTimeout(timeout),
		redis.DialReadTimeout(timeout),
		redis.DialWriteTimeout(timeout))
}

// dial opens an admin connection and counts it as the harness's own.
func (p *process) dial(addr string) (redis.Conn, error) {
	c, err := dialTimeout(addr, adminTimeout)
	if err != nil {
		return nil, err
	}
	p.harnessConns.Add(1)
	return c, nil
}

// exited reports whether the process has exited.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL (which also ends a stopped process) and waits for the
// process to be reaped. It does nothing if the process has already exited.
func (p *process) kill() error {
	if p.exited() {
		return nil
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("SIGKILL redis-server (pid %d): %w", p.cmd.Process.Pid, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(exitTimeout):
		return fmt.Errorf("redis-server (pid %d) still running %v after SIGKILL", p.cmd.Process.Pid, exitTimeout)
	}
}

// tail returns the end of the process output, formatted for a message.
func (p *process) tail() string {
	status := fmt.Sprintf("running (pid %d)", p.cmd.Process.Pid)
	if p.exited() {
		status = fmt.Sprintf("exited (pid %d): %v", p.cmd.Process.Pid, p.err)
	}
	return "\n--- redis-server " + status + "; output (tail) ---\n" + p.log.Tail(logTailSize) + "--- end of output ---"
}

func (s *Server) cmdline() string {
	return fmt.Sprintf("\ncommand: %s %q", s.bin, s.args)
}

// current returns the current process.
func (s *Server) current() *process {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc
}

// Addr returns the server's address, "127.0.0.1:PORT".
func (s *Server) Addr() string { return hostPort(s.port) }

// Port returns the server's TCP port. It stays the same across Restart.
func (s *Server) Port() int { return s.port }

// Stop freezes the server with SIGSTOP and waits until the kernel reports
// it stopped. Its sockets stay open and the kernel still completes new TCP
// handshakes into the listen backlog, so dialing succeeds but nothing is
// read or answered until [Server.Cont] (or a kill).
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	s.signal(t, syscall.SIGSTOP, true)
}

// Cont resumes a server frozen by [Server.Stop] with SIGCONT and waits until
// it runs again. Commands sent meanwhile are then processed.
func (s *Server) Cont(t testing.TB) {
	t.Helper()
	s.signal(t, syscall.SIGCONT, false)
}

func (s *Server) signal(t testing.TB, sig syscall.Signal, wantStopped bool) {
	t.Helper()
	p := s.current()
	if p.exited() {
		t.Fatalf("redistest: %v: redis-server on %s is not running (exit: %v)%s", sig, s.Addr(), p.err, p.tail())
	}
	pid := p.cmd.Process.Pid
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("redistest: %v to redis-server (pid %d): %v", sig, pid, err)
	}
	deadline := time.Now().Add(signalTimeout)
	for {
		stopped, known := isStopped(pid)
		if !known || stopped == wantStopped {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("redistest: redis-server (pid %d) stopped=%v %v after %v", pid, stopped, signalTimeout, sig)
		}
		time.Sleep(time.Millisecond)
	}
}

// isStopped reads the process state from /proc. known is false where /proc
// is not available, in which case callers do not wait.
func isStopped(pid int) (stopped, known bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false, false
	}
	// The state follows the command name, which is in parentheses and may
	// itself contain spaces or parentheses: "1234 (redis-server) T ...".
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false, false
	}
	state := b[i+2]
	return state == 'T' || state == 't', true
}

// Kill kills the server with SIGKILL (which works on a stopped server too)
// and waits for it to exit, so that its port is free and dialing it is
// refused. Calling Kill on a server that is not running does nothing.
func (s *Server) Kill(t testing.TB) {
	t.Helper()
	if err := s.kill(); err != nil {
		t.Fatalf("redistest: %v", err)
	}
}

func (s *Server) kill() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc.kill()
}

// Restart starts the server again on the same port with the same arguments
// and waits until it answers PING. A server that is still running (or
// stopped) is killed first. Binding the port is retried for up to about
// 5 s. The new server starts empty (there is no persistence) and its
// statistics start from zero.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.proc.kill(); err != nil {
		t.Fatalf("redistest: restart: %v", err)
	}
	deadline := time.Now().Add(readyTimeout)
	for {
		p, err := s.launch()
		if err == nil {
			s.proc = p
			return
		}
		if !errors.Is(err, ErrPortInUse) || time.Now().After(deadline) {
			t.Fatalf("redistest: restart: %v", err)
		}
		time.Sleep(pollInterval)
	}
}

// admin opens a short-lived admin connection with adminTimeout, or fails t.
func (s *Server) admin(t testing.TB) (redis.Conn, *process) {
	t.Helper()
	p := s.current()
	c, err := p.dial(s.Addr())
	if err != nil {
		t.Fatalf("redistest: dialing %s: %v%s", s.Addr(), err, p.tail())
	}
	return c, p
}

// Do runs one command on a fresh admin connection (dial, read and write
// timeouts of 1 s, so a stopped server fails the test instead of hanging
// it) and returns the reply as redigo decodes it. An error reply from Redis
// is returned as a redis.Error value; any other error (such as a refused
// connection or a timeout) calls t.Fatal.
func (s *Server) Do(t testing.TB, cmd string, args ...any) any {
	t.Helper()
	c, p := s.admin(t)
	defer c.Close()
	reply, err := c.Do(cmd, args...)
	var rerr redis.Error
	if errors.As(err, &rerr) {
		return rerr
	}
	if err != nil {
		t.Fatalf("redistest: %s on %s: %v%s", cmd, s.Addr(), err, p.tail())
	}
	return reply
}

// info runs INFO section on an admin connection and returns field as an int.
func (s *Server) info(t testing.TB, section, field string) (int, *process) {
	t.Helper()
	c, p := s.admin(t)
	defer c.Close()
	n, err := infoField(c, section, field)
	if err != nil {
		t.Fatalf("redistest: %s: %v%s", s.Addr(), err, p.tail())
	}
	return n, p
}

// infoField runs INFO section on c and returns field as an int.
func infoField(c redis.Conn, section, field string) (int, error) {
	text, err := redis.String(c.Do("INFO", section))
	if err != nil {
		return 0, fmt.Errorf("INFO %s: %w", section, err)
	}
	for _, line := range strings.Split(text, "\n") {
		value, ok := strings.CutPrefix(strings.TrimSpace(line), field+":")
		if !ok {
			continue
		}
		n, err := strconv.Atoi(value)
		if err != nil {
			return 0, fmt.Errorf("INFO %s: bad %s %q: %w", section, field, value, err)
		}
		return n, nil
	}
	return 0, fmt.Errorf("INFO %s has no %s field:\n%s", section, field, text)
}

// ConnectedClients returns the number of client connections the server has
// open (connected_clients in INFO clients), not counting the admin
// connection used to ask. The server notices a closed connection
// asynchronously, so after closing connections poll this value with a
// deadline rather than checking it once.
func (s *Server) ConnectedClients(t testing.TB) int {
	t.Helper()
	n, err := s.ConnectedClientsErr()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// ConnectedClientsErr is ConnectedClients for a goroutine other than the
// test's, where t.Fatal must not be called: it returns the error instead.
func (s *Server) ConnectedClientsErr() (int, error) {
	p := s.current()
	c, err := p.dial(s.Addr())
	if err != nil {
		return 0, fmt.Errorf("redistest: dialing %s: %v%s", s.Addr(), err, p.tail())
	}
	defer c.Close()
	n, err := infoField(c, "clients", "connected_clients")
	if err != nil {
		return 0, fmt.Errorf("redistest: %s: %v%s", s.Addr(), err, p.tail())
	}
	return n - 1, nil
}

// TotalConnectionsReceived returns total_connections_received from INFO
// stats, minus the connections this package opened itself to the current
// server process (readiness probes and the admin connections of Do,
// ConnectedClients and TotalConnectionsReceived, this one included). It is
// thus the number of connections accepted from the code under test since
// the server was started or last restarted (0 for a fresh server), and the
// difference between two calls counts exactly the connections made in
// between.
func (s *Server) TotalConnectionsReceived(t testing.TB) int {
	t.Helper()
	n, p := s.info(t, "stats", "total_connections_received")
	return n - int(p.harnessConns.Load())
}

// logBuffer collects a process's output, keeping the last logKeepSize bytes.
type logBuffer struct {
	mu  sync.Mutex
	buf []byte
}

// Write implements io.Writer.
func (l *logBuffer) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, b...)
	if over := len(l.buf) - logKeepSize; over > 0 {
		l.buf = append(l.buf[:0], l.buf[over:]...)
	}
	return len(b), nil
}

// String returns all the kept output.
func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.buf)
}

// Tail returns about the last n bytes of output, starting at a line.
func (l *logBuffer) Tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buf
	if len(b) > n {
		b = b[len(b)-n:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	s := string(b)
	if s != "" && !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	return s
}
