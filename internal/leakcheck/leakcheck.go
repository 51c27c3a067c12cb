// Package leakcheck detects goroutines leaked by tests.
//
// It is a small, dependency-free equivalent of go.uber.org/goleak: it parses
// the runtime's goroutine dump, drops the goroutines that the runtime and the
// testing package run on their own, and reports whatever is left. Because
// goroutines often need a moment to exit after the code that owns them is
// closed, a check keeps retrying for up to [DefaultTimeout] before it fails.
//
// Typical use in a single test:
//
//	func TestPool(t *testing.T) {
//		defer leakcheck.VerifyNone(t, leakcheck.IgnoreCurrent())
//		...
//	}
//
// (the arguments of a deferred call are evaluated when the defer statement
// runs, so IgnoreCurrent snapshots the goroutines present when the test
// starts), or for a whole package:
//
//	func TestMain(m *testing.M) { leakcheck.VerifyTestMain(m) }
//
// VerifyNone cannot tell which test started a goroutine, so it must not be
// used in tests that run in parallel with others; use VerifyTestMain there.
package leakcheck

import (
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"
)

// DefaultTimeout is how long VerifyNone and VerifyTestMain wait for extra
// goroutines to exit before reporting them.
const DefaultTimeout = 5 * time.Second

// maxPoll caps the interval between two looks at the goroutines.
const maxPoll = 100 * time.Millisecond

// Option changes what a check ignores.
type Option interface {
	apply(*config)
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

type config struct {
	ignore  []func(goroutine) bool
	timeout time.Duration
}

func newConfig(opts []Option) *config {
	c := &config{
		timeout: DefaultTimeout,
		ignore:  []func(goroutine) bool{isTestingGoroutine, isStdlibGoroutine, isRuntimeGoroutine},
	}
	for _, o := range opts {
		o.apply(c)
	}
	return c
}

func (c *config) ignored(g goroutine) bool {
	for _, f := range c.ignore {
		if f(g) {
			return true
		}
	}
	return false
}

// IgnoreCurrent takes a snapshot of the goroutines running now and ignores
// them in the check it is passed to. The snapshot is taken when IgnoreCurrent
// is called, not when the check runs.
func IgnoreCurrent() Option {
	ids := make(map[int]bool)
	for _, g := range allGoroutines() {
		ids[g.id] = true
	}
	return optionFunc(func(c *config) {
		c.ignore = append(c.ignore, func(g goroutine) bool { return ids[g.id] })
	})
}

// IgnoreTopFunction ignores goroutines whose innermost stack frame is the
// function fn, given fully qualified as it appears in a stack trace, for
// example "net/http.(*persistConn).readLoop" or "internal/poll.runtime_pollWait".
func IgnoreTopFunction(fn string) Option {
	return optionFunc(func(c *config) {
		c.ignore = append(c.ignore, func(g goroutine) bool { return g.topFunc == fn })
	})
}

// IgnoreAnyFunction ignores goroutines that have the function fn (fully
// qualified, as in IgnoreTopFunction) anywhere in their stack.
func IgnoreAnyFunction(fn string) Option {
	return optionFunc(func(c *config) {
		c.ignore = append(c.ignore, func(g goroutine) bool { return g.hasFunc(fn) })
	})
}

// withTimeout overrides DefaultTimeout; used by this package's tests.
func withTimeout(d time.Duration) Option {
	return optionFunc(func(c *config) { c.timeout = d })
}

// isTestingGoroutine reports goroutines of the testing package that wait for
// tests: the main goroutine and parent tests blocked in (*T).Run, parallel
// tests waiting in (*T).Parallel, tRunner waiting for parallel subtests, and
// the fuzzing drivers.
func isTestingGoroutine(g goroutine) bool {
	switch g.topFunc {
	case "testing.RunTests", "testing.runTests", "testing.(*T).Run", "testing.(*T).Parallel",
		"testing.tRunner", "testing.tRunner.func1", "testing.runFuzzing", "testing.runFuzzTests",
		"testing.(*F).Fuzz":
		return strings.HasPrefix(g.state, "chan receive")
	}
	return false
}

// isStdlibGoroutine reports long-lived goroutines that the standard library
// starts on first use and never stops: the os/signal dispatcher, the
// runtime's signal-forwarding goroutine, and the runtime/trace reader.
func isStdlibGoroutine(g goroutine) bool {
	switch g.topFunc {
	case "os/signal.signal_recv", "os/signal.loop":
		return true
	}
	return g.hasFunc("runtime.ensureSigM") || g.hasFunc("runtime.ReadTrace")
}

// isRuntimeGoroutine reports goroutines made only of runtime frames (shown
// with GOTRACEBACK=system, e.g. GC workers), and goroutines sitting in a
// syscall at the bottom of the runtime, as cgo callbacks leave behind.
func isRuntimeGoroutine(g goroutine) bool {
	if g.hasFunc("runtime.goexit") && strings.HasPrefix(g.state, "syscall") {
		return true
	}
	if len(g.funcs) == 0 {
		return false
	}
	for fn := range g.funcs {
		if !strings.HasPrefix(fn, "runtime.") {
			return false
		}
	}
	return true
}

// find returns the goroutines that are neither the caller nor ignored by
// c, waiting up to c.timeout for them to go away.
func find(c *config) []goroutine {
	self := currentID()
	deadline := time.Now().Add(c.timeout)
	poll := time.Millisecond
	for {
		var extra []goroutine
		for _, g := range allGoroutines() {
			if g.id != self && !c.ignored(g) {
				extra = append(extra, g)
			}
		}
		if len(extra) == 0 {
			return nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return extra
		}
		time.Sleep(min(poll, left))
		poll = min(2*poll, maxPoll)
	}
}

// report formats leaked goroutines for a failure message.
func report(gs []goroutine) string {
	var b strings.Builder
	fmt.Fprintf(&b, "found %d unexpected goroutine(s):\n", len(gs))
	for _, g := range gs {
		b.WriteString("\n")
		b.WriteString(g.String())
	}
	return b.String()
}

// VerifyNone fails t (with t.Errorf, so it is safe in defer and t.Cleanup)
// if goroutines other than the caller, the ones ignored by opts (such as a
// snapshot taken with IgnoreCurrent) and the standard runtime and testing
// ones are still running after DefaultTimeout. The failure message contains
// the stacks of the leaked goroutines.
func VerifyNone(t testing.TB, opts ...Option) {
	t.Helper()
	if leaked := find(newConfig(opts)); len(leaked) > 0 {
		t.Errorf("leakcheck: %s", report(leaked))
	}
}

// VerifyTestMain runs the tests with m.Run and then, if they passed, checks
// that no goroutines leaked (see VerifyNone). It exits the process with the
// tests' exit code, or 1 if goroutines leaked. Call it from TestMain:
//
//	func TestMain(m *testing.M) { leakcheck.VerifyTestMain(m) }
func VerifyTestMain(m *testing.M, opts ...Option) {
	os.Exit(verifyTestMain(m.Run, os.Stderr, opts))
}

// verifyTestMain is VerifyTestMain without the exit, for testing.
func verifyTestMain(run func() int, stderr io.Writer, opts []Option) int {
	code := run()
	if code != 0 {
		return code
	}
	if leaked := find(newConfig(opts)); len(leaked) > 0 {
		fmt.Fprintf(stderr, "leakcheck: tests passed but goroutines leaked: %s\n", report(leaked))
		return 1
	}
	return 0
}
