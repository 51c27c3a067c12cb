package redistest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"go.uber.org/goleak"
)

// TestMain also proves that servers are cleaned up without leaking the
// goroutines that wait for them.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// dial opens a client connection to s with the given read timeout.
func dial(t *testing.T, s *Server, readTimeout time.Duration) redis.Conn {
	t.Helper()
	c, err := redis.Dial("tcp", s.Addr(),
		redis.DialConnectTimeout(time.Second),
		redis.DialReadTimeout(readTimeout),
		redis.DialWriteTimeout(time.Second))
	if err != nil {
		t.Fatalf("dial %s: %v", s.Addr(), err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// eventually polls cond every few milliseconds until it is true or timeout
// passes, then fails t with msg.
func eventually(t *testing.T, timeout time.Duration, cond func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not true after %v: %s", timeout, msg)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestStartPing(t *testing.T) {
	s := Start(t)
	if !strings.HasPrefix(s.Addr(), "127.0.0.1:") || s.Port() <= 0 {
		t.Fatalf("Addr() = %q, Port() = %d", s.Addr(), s.Port())
	}
	if got, want := s.Addr(), hostPort(s.Port()); got != want {
		t.Errorf("Addr() = %q, want %q", got, want)
	}

	c := dial(t, s, time.Second)
	if pong, err := redis.String(c.Do("PING")); err != nil || pong != "PONG" {
		t.Fatalf("PING = %q, %v; want PONG", pong, err)
	}
	if got := s.Do(t, "PING"); got != "PONG" {
		t.Errorf("Do(PING) = %#v, want \"PONG\"", got)
	}

	// Persistence is off.
	for key, want := range map[string]string{"save": "", "appendonly": "no", "bind": "127.0.0.1"} {
		kv, err := redis.Strings(s.Do(t, "CONFIG", "GET", key), nil)
		if err != nil || len(kv) != 2 || kv[1] != want {
			t.Errorf("CONFIG GET %s = %q, %v; want %q", key, kv, err, want)
		}
	}
}

func TestExtraArgs(t *testing.T) {
	s := Start(t, "--timeout", "1", "--databases", "3")
	for key, want := range map[string]string{"timeout": "1", "databases": "3"} {
		kv, err := redis.Strings(s.Do(t, "CONFIG", "GET", key), nil)
		if err != nil || len(kv) != 2 || kv[1] != want {
			t.Errorf("CONFIG GET %s = %q, %v; want %q", key, kv, err, want)
		}
	}
}

func TestDoReturnsErrorReplies(t *testing.T) {
	s := Start(t)
	got := s.Do(t, "NOSUCHCOMMAND", "x")
	rerr, ok := got.(redis.Error)
	if !ok || !strings.Contains(string(rerr), "unknown command") {
		t.Fatalf("Do(NOSUCHCOMMAND) = %#v, want a redis.Error about an unknown command", got)
	}
	if got := s.Do(t, "SET", "k", "v"); got != "OK" {
		t.Fatalf("SET = %#v", got)
	}
	if got, err := redis.String(s.Do(t, "GET", "k"), nil); err != nil || got != "v" {
		t.Fatalf("GET = %q, %v", got, err)
	}
}

func TestStopCont(t *testing.T) {
	s := Start(t)
	before := dial(t, s, 200*time.Millisecond) // opened while running

	s.Stop(t)
	if stopped, known := isStopped(s.current().cmd.Process.Pid); known && !stopped {
		t.Fatal("process not in stopped state after Stop")
	}

	// The kernel still completes the TCP handshake of a stopped server, so
	// dialing works; only replies never come.
	after := dial(t, s, 200*time.Millisecond)
	for name, c := range map[string]redis.Conn{"existing conn": before, "new conn": after} {
		start := time.Now()
		_, err := c.Do("GET", "k")
		took := time.Since(start)
		var nerr net.Error
		if !errors.As(err, &nerr) || !nerr.Timeout() {
			t.Errorf("%s: GET on stopped server: err = %v, want a timeout", name, err)
		}
		if took < 150*time.Millisecond || took > 2*time.Second {
			t.Errorf("%s: GET failed after %v, want about the 200ms read timeout", name, took)
		}
	}

	s.Cont(t)
	if stopped, known := isStopped(s.current().cmd.Process.Pid); known && stopped {
		t.Fatal("process still in stopped state after Cont")
	}

	c := dial(t, s, time.Second)
	if v, err := c.Do("GET", "k"); err != nil || v != nil {
		t.Fatalf("GET after Cont = %#v, %v; want nil, nil", v, err)
	}
	if got := s.Do(t, "PING"); got != "PONG" {
		t.Errorf("Do(PING) after Cont = %#v", got)
	}
}

func TestKillRestart(t *testing.T) {
	s := Start(t)
	port := s.Port()
	if got := s.Do(t, "SET", "k", "v"); got != "OK" {
		t.Fatalf("SET = %#v", got)
	}

	s.Kill(t)
	s.Kill(t) // idempotent

	_, err := net.DialTimeout("tcp", s.Addr(), time.Second)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial after Kill: err = %v, want connection refused", err)
	}

	s.Restart(t)
	if s.Port() != port {
		t.Fatalf("port changed from %d to %d", port, s.Port())
	}
	c := dial(t, s, time.Second)
	if pong, err := redis.String(c.Do("PING")); err != nil || pong != "PONG" {
		t.Fatalf("PING after Restart = %q, %v", pong, err)
	}
	// No persistence: the restarted server is empty.
	if v, err := c.Do("GET", "k"); err != nil || v != nil {
		t.Fatalf("GET after Restart = %#v, %v; want nil (no persistence)", v, err)
	}

	// Restart of a running server, and of a stopped one, replaces it.
	s.Restart(t)
	s.Stop(t)
	s.Restart(t)
	if got := s.Do(t, "PING"); got != "PONG" {
		t.Fatalf("PING after restarting a stopped server = %#v", got)
	}
}

func TestCleanupKillsStoppedServer(t *testing.T) {
	var s *Server
	t.Run("stop and end", func(t *testing.T) {
		s = Start(t)
		s.Stop(t)
	})
	if s == nil {
		t.Skip("subtest did not start a server")
	}
	p := s.current()
	if !p.exited() {
		t.Fatal("stopped server still running after its test ended")
	}
	if _, err := net.DialTimeout("tcp", s.Addr(), time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial after cleanup: err = %v, want connection refused", err)
	}
	// Killing again after cleanup is harmless.
	s.Kill(t)
}

func TestConnectedClients(t *testing.T) {
	s := Start(t)
	base := s.ConnectedClients(t)
	if base != 0 {
		t.Errorf("ConnectedClients on a fresh server = %d, want 0", base)
	}
	totalBefore := s.TotalConnectionsReceived(t)
	if totalBefore != 0 {
		t.Errorf("TotalConnectionsReceived on a fresh server = %d, want 0", totalBefore)
	}

	conns := make([]redis.Conn, 3)
	for i := range conns {
		conns[i] = dial(t, s, time.Second)
		if _, err := conns[i].Do("PING"); err != nil {
			t.Fatal(err)
		}
	}
	if got := s.ConnectedClients(t); got != base+3 {
		t.Errorf("ConnectedClients with 3 open connections = %d, want %d", got, base+3)
	}
	// Admin connections in between do not count.
	s.Do(t, "PING")
	if got := s.TotalConnectionsReceived(t) - totalBefore; got != 3 {
		t.Errorf("TotalConnectionsReceived grew by %d, want 3", got)
	}

	for _, c := range conns {
		c.Close()
	}
	eventually(t, 2*time.Second, func() bool { return s.ConnectedClients(t) == base },
		"ConnectedClients back to base after closing connections")

	// Statistics restart with the server.
	s.Restart(t)
	if got := s.TotalConnectionsReceived(t); got != 0 {
		t.Errorf("TotalConnectionsReceived after Restart = %d, want 0", got)
	}
}

func TestStartOnPort(t *testing.T) {
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	s, err := StartOnPort(t, port)
	if err != nil {
		t.Fatalf("StartOnPort(%d): %v", port, err)
	}
	if s.Port() != port {
		t.Fatalf("Port() = %d, want %d", s.Port(), port)
	}
	if got := s.Do(t, "PING"); got != "PONG" {
		t.Fatalf("PING = %#v", got)
	}

	// The port is now taken by s.
	if _, err := StartOnPort(t, port); !errors.Is(err, ErrPortInUse) {
		t.Fatalf("StartOnPort on a busy port: err = %v, want ErrPortInUse", err)
	}

	// A port taken by some other listener.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	busy := l.Addr().(*net.TCPAddr).Port
	if _, err := StartOnPort(t, busy); !errors.Is(err, ErrPortInUse) {
		t.Fatalf("StartOnPort on a port with a listener: err = %v, want ErrPortInUse", err)
	}

	// redis-server's own bind failure is recognised too (Restart relies on
	// it), and its output is part of the error.
	other := newServer(s.bin, t.TempDir(), busy, nil)
	if _, err := other.launch(); !errors.Is(err, ErrPortInUse) || !strings.Contains(err.Error(), "Address already in use") {
		t.Fatalf("launch on a busy port: err = %v, want ErrPortInUse with the server output", err)
	}
	// So is a port taken by another redis-server, which answers PING.
	other = newServer(s.bin, t.TempDir(), port, nil)
	if _, err := other.launch(); !errors.Is(err, ErrPortInUse) {
		t.Fatalf("launch on a port with another redis-server: err = %v, want ErrPortInUse", err)
	}
}

// TestIdentityCheck makes sure a server is only accepted as ours when its
// process ID is the one we started, so a server that another test brought
// up on the same port first is not mistaken for it.
func TestIdentityCheck(t *testing.T) {
	s := Start(t)
	if err := s.current().checkIdentity(s.Addr()); err != nil {
		t.Fatalf("checkIdentity on our own server: %v", err)
	}
	impostor := &process{cmd: &exec.Cmd{Process: &os.Process{Pid: s.current().cmd.Process.Pid + 1}}}
	if err := impostor.checkIdentity(s.Addr()); !errors.Is(err, ErrPortInUse) {
		t.Fatalf("checkIdentity with another pid: err = %v, want ErrPortInUse", err)
	}
}

// fakeTB records Skip and Fatal calls; like testing's, they end the calling
// goroutine with runtime.Goexit.
type fakeTB struct {
	testing.TB
	skipped, fatal string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Skip(args ...any) {
	f.skipped = fmt.Sprint(args...)
	runtime.Goexit()
}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.fatal = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (f *fakeTB) Fatal(args ...any) {
	f.fatal = fmt.Sprint(args...)
	runtime.Goexit()
}

// runFake runs fn with a fakeTB on its own goroutine and waits for it.
func runFake(t *testing.T, fn func(testing.TB)) *fakeTB {
	f := &fakeTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
	return f
}

func TestMissingBinary(t *testing.T) {
	t.Setenv("PATH", t.TempDir()) // an empty directory: no redis-server

	starters := map[string]func(testing.TB){
		"Start":       func(tb testing.TB) { Start(tb) },
		"StartOnPort": func(tb testing.TB) { StartOnPort(tb, 6379) },
	}
	for name, start := range starters {
		t.Run(name+"/local", func(t *testing.T) {
			t.Setenv("CI", "")
			f := runFake(t, start)
			want := "redis-server not found on PATH; install it (apt-get install redis-server) or set CI=true to make this a failure"
			if f.skipped != want || f.fatal != "" {
				t.Errorf("skipped = %q, fatal = %q; want skipped = %q", f.skipped, f.fatal, want)
			}
		})
		t.Run(name+"/CI", func(t *testing.T) {
			t.Setenv("CI", "true")
			f := runFake(t, start)
			if f.skipped != "" || !strings.Contains(f.fatal, "redis-server not found on PATH") {
				t.Errorf("skipped = %q, fatal = %q; want a fatal failure", f.skipped, f.fatal)
			}
		})
	}
}

func TestStartFailureShowsServerOutput(t *testing.T) {
	Start(t) // skips or fails when redis-server is missing, like the others
	f := runFake(t, func(tb testing.TB) { Start(tb, "--no-such-directive", "x") })
	if f.skipped != "" || f.fatal == "" {
		t.Fatalf("skipped = %q, fatal = %q; want a fatal failure", f.skipped, f.fatal)
	}
	for _, want := range []string{
		"did not start after 3 attempts",
		"attempt 3:",
		"--no-such-directive",    // the command line
		"; output (tail) ---",    // the output section...
		"Bad directive or wrong", // ...with redis-server's complaint
	} {
		if !strings.Contains(f.fatal, want) {
			t.Errorf("failure message does not contain %q:\n%s", want, f.fatal)
		}
	}
}
