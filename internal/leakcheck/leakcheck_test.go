package leakcheck

import (
	"bytes"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestMain checks that this package's own tests leave no goroutine behind.
func TestMain(m *testing.M) { VerifyTestMain(m) }

// recordingTB is a testing.TB that records failures instead of failing the
// test. Embedding the real testing.TB provides the methods not overridden.
type recordingTB struct {
	testing.TB
	mu     sync.Mutex
	errors []string
}

func (r *recordingTB) Helper() {}

func (r *recordingTB) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

func (r *recordingTB) Error(args ...any) { r.Errorf("%s", fmt.Sprint(args...)) }

func (r *recordingTB) Fatalf(format string, args ...any) {
	r.Errorf(format, args...)
	r.TB.Fatalf("unexpected Fatalf: "+format, args...)
}

func (r *recordingTB) Fatal(args ...any) { r.Fatalf("%s", fmt.Sprint(args...)) }

func (r *recordingTB) failures() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.errors...)
}

// leakBlockedOnChannel starts a goroutine that blocks receiving from a
// channel until the returned release function is called. release waits for
// the goroutine to have exited.
func leakBlockedOnChannel() (release func()) {
	ch := make(chan struct{})
	exited := make(chan struct{})
	started := make(chan struct{})
	go func() {
		defer close(exited)
		blockOn(ch, started)
	}()
	<-started
	var once sync.Once
	return func() {
		once.Do(func() { close(ch) })
		<-exited
	}
}

// blockOn is a named function so that it can be found in stack traces.
func blockOn(ch <-chan struct{}, started chan<- struct{}) {
	close(started)
	<-ch
}

const shortTimeout = 200 * time.Millisecond

func TestVerifyNoneReportsLeakedGoroutine(t *testing.T) {
	release := leakBlockedOnChannel()
	t.Cleanup(release)

	rec := &recordingTB{TB: t}
	start := time.Now()
	VerifyNone(rec, withTimeout(shortTimeout))
	if took := time.Since(start); took < shortTimeout {
		t.Errorf("VerifyNone returned after %v, before its %v retry window", took, shortTimeout)
	}

	errs := rec.failures()
	if len(errs) != 1 {
		t.Fatalf("VerifyNone recorded %d failures, want 1: %q", len(errs), errs)
	}
	msg := errs[0]
	for _, want := range []string{
		"found 1 unexpected goroutine",
		"leakcheck.blockOn",       // the leaked goroutine's stack...
		"[chan receive",           // ...its state...
		"leakcheck_test.go",       // ...and source positions
		"leakBlockedOnChannel in", // the "created by" line
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("failure message does not contain %q:\n%s", want, msg)
		}
	}

	// Once released, the goroutine exits and the check passes.
	release()
	rec = &recordingTB{TB: t}
	VerifyNone(rec, withTimeout(shortTimeout))
	if errs := rec.failures(); len(errs) != 0 {
		t.Errorf("VerifyNone after release recorded failures: %q", errs)
	}
}

// TestVerifyNoneWaitsForExitingGoroutine checks the retry loop: a goroutine
// that is still running when VerifyNone starts but exits shortly after is
// not a leak.
func TestVerifyNoneWaitsForExitingGoroutine(t *testing.T) {
	release := leakBlockedOnChannel()
	timer := time.AfterFunc(100*time.Millisecond, func() { release() })
	t.Cleanup(func() { timer.Stop(); release() })

	// Use the real t and the default timeout: a failure here fails the test.
	VerifyNone(t)
}

func TestIgnoreCurrent(t *testing.T) {
	release := leakBlockedOnChannel()
	t.Cleanup(release)

	snapshot := IgnoreCurrent()

	rec := &recordingTB{TB: t}
	VerifyNone(rec, snapshot, withTimeout(shortTimeout))
	if errs := rec.failures(); len(errs) != 0 {
		t.Errorf("goroutine present at the snapshot was reported: %q", errs)
	}

	// A goroutine started after the snapshot is still reported.
	release2 := leakBlockedOnChannel()
	t.Cleanup(release2)
	rec = &recordingTB{TB: t}
	VerifyNone(rec, snapshot, withTimeout(shortTimeout))
	if errs := rec.failures(); len(errs) != 1 || !strings.Contains(errs[0], "found 1 unexpected goroutine") {
		t.Errorf("goroutine started after the snapshot: got failures %q, want exactly one leak", errs)
	}
}

func TestIgnoreTopFunctionAndAnyFunction(t *testing.T) {
	release := leakBlockedOnChannel()
	t.Cleanup(release)

	for _, opt := range []Option{
		IgnoreTopFunction("github.com/redispool/redispool/internal/leakcheck.blockOn"),
		IgnoreAnyFunction("github.com/redispool/redispool/internal/leakcheck.leakBlockedOnChannel.func1"),
	} {
		rec := &recordingTB{TB: t}
		VerifyNone(rec, opt, withTimeout(shortTimeout))
		if errs := rec.failures(); len(errs) != 0 {
			t.Errorf("ignored goroutine was reported: %q", errs)
		}
	}

	// A non-matching top function ignores nothing.
	rec := &recordingTB{TB: t}
	VerifyNone(rec, IgnoreTopFunction("github.com/redispool/redispool/internal/leakcheck.leakBlockedOnChannel.func1"),
		withTimeout(shortTimeout))
	if errs := rec.failures(); len(errs) != 1 {
		t.Errorf("IgnoreTopFunction matched a frame that is not on top: failures %q", errs)
	}
}

// TestIgnoresTestingGoroutines runs VerifyNone where the testing package has
// goroutines of its own waiting: the parent test blocked in (*T).Run, and a
// parallel subtest's tRunner waiting for its paused siblings.
func TestIgnoresTestingGoroutines(t *testing.T) {
	t.Run("subtest", func(t *testing.T) {
		VerifyNone(t, withTimeout(shortTimeout))
	})
	t.Run("group", func(t *testing.T) {
		t.Run("parallel", func(t *testing.T) {
			t.Parallel()
			VerifyNone(t, withTimeout(shortTimeout))
		})
	})
}

func TestIgnoresSignalGoroutines(t *testing.T) {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGUSR2)
	signal.Stop(c)
	VerifyNone(t, withTimeout(shortTimeout))
}

func TestVerifyTestMain(t *testing.T) {
	t.Run("clean", func(t *testing.T) {
		var stderr bytes.Buffer
		if code := verifyTestMain(func() int { return 0 }, &stderr, []Option{withTimeout(shortTimeout)}); code != 0 {
			t.Errorf("exit code %d, want 0; stderr:\n%s", code, stderr.String())
		}
	})
	t.Run("tests failed", func(t *testing.T) {
		var stderr bytes.Buffer
		if code := verifyTestMain(func() int { return 3 }, &stderr, nil); code != 3 {
			t.Errorf("exit code %d, want the tests' 3", code)
		}
	})
	t.Run("leak", func(t *testing.T) {
		var release func()
		t.Cleanup(func() { release() })
		var stderr bytes.Buffer
		run := func() int {
			release = leakBlockedOnChannel()
			return 0
		}
		if code := verifyTestMain(run, &stderr, []Option{withTimeout(shortTimeout)}); code != 1 {
			t.Errorf("exit code %d, want 1", code)
		}
		if !strings.Contains(stderr.String(), "leakcheck.blockOn") {
			t.Errorf("stderr does not name the leaked goroutine:\n%s", stderr.String())
		}
	})
}

func TestParseStacks(t *testing.T) {
	const dump = `goroutine 23 [running]:
example.com/p.dump(0xc0000a46c8)
	/src/p/d_test.go:3 +0x50
testing.tRunner(0xc0000a46c8, 0x6553f8)
	/usr/local/go/src/testing/testing.go:2036 +0x21d
created by testing.(*T).Run in goroutine 19
	/usr/local/go/src/testing/testing.go:2101 +0xb13

goroutine 1 [chan receive, 3 minutes]:
testing.(*T).Run(0xc0000a4248, {0x6478af, 0x8}, 0x655348)
	/usr/local/go/src/testing/testing.go:2109 +0xb3e
main.main()
	_testmain.go:46 +0x165

goroutine 26 gp=0xc000003340 m=nil [IO wait]:
internal/poll.runtime_pollWait(0x7f, 0x72)
	/usr/local/go/src/runtime/netpoll.go:351 +0x85
internal/poll.ignoringEINTRIO(...)
	/usr/local/go/src/internal/poll/fd_unix.go:738
net/http.(*conn).serve(0xc0001)
	/usr/local/go/src/net/http/server.go:2000 +0x1
...additional frames elided...
created by net/http.(*Server).Serve in goroutine 1
	/usr/local/go/src/net/http/server.go:3000 +0x2
[originating from goroutine 1]:
main.main(...)
	/src/main.go:1 +0x1
`
	gs, err := parseStacks(dump)
	if err != nil {
		t.Fatal(err)
	}
	type want struct {
		id       int
		state    string
		top      string
		has, not string
	}
	wants := []want{
		{23, "running", "example.com/p.dump", "testing.tRunner", "testing.(*T).Run"},
		{1, "chan receive, 3 minutes", "testing.(*T).Run", "main.main", "runtime.goexit"},
		{26, "IO wait", "internal/poll.runtime_pollWait", "net/http.(*conn).serve", "main.main"},
	}
	if len(gs) != len(wants) {
		t.Fatalf("parsed %d goroutines, want %d: %v", len(gs), len(wants), gs)
	}
	for i, w := range wants {
		g := gs[i]
		if g.id != w.id || g.state != w.state || g.topFunc != w.top {
			t.Errorf("goroutine %d: got id=%d state=%q top=%q, want id=%d state=%q top=%q",
				i, g.id, g.state, g.topFunc, w.id, w.state, w.top)
		}
		if !g.hasFunc(w.has) {
			t.Errorf("goroutine %d: stack does not contain %q: %v", g.id, w.has, g.funcs)
		}
		if g.hasFunc(w.not) {
			t.Errorf("goroutine %d: stack unexpectedly contains %q", g.id, w.not)
		}
		if !strings.HasPrefix(g.full, "goroutine ") {
			t.Errorf("goroutine %d: full stack does not start with its header: %q", g.id, g.full)
		}
	}

	if !isTestingGoroutine(gs[1]) {
		t.Errorf("main goroutine blocked in (*T).Run not recognised as testing's")
	}
	if isTestingGoroutine(gs[0]) {
		t.Errorf("running test goroutine recognised as testing's")
	}
}

func TestParseStacksRejectsGarbage(t *testing.T) {
	if _, err := parseStacks("goroutine x [running]:\n"); err == nil {
		t.Error("bad goroutine ID accepted")
	}
	if _, err := parseStacks("goroutine 1 running\n"); err == nil {
		t.Error("header without state accepted")
	}
	if _, err := parseStacks("goroutine 1 [running]:\nnot a frame\n"); err == nil {
		t.Error("frame without call parentheses accepted")
	}
}

func TestCurrentGoroutineIsNeverReported(t *testing.T) {
	// All goroutines of this test binary are either testing's or the
	// caller; the caller itself must be skipped. (The previous test's
	// goroutine may still be on its way out, hence a short retry window.)
	c := newConfig([]Option{withTimeout(shortTimeout)})
	if leaked := find(c); len(leaked) != 0 {
		t.Errorf("find reported goroutines: %s", report(leaked))
	}
}
