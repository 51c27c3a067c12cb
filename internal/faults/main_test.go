package faults

import (
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/redispool/redispool/internal/redistest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var errDeadline = os.ErrDeadlineExceeded

// checkLeaks makes t fail if a goroutine started during t is still running
// after every other cleanup of t has run, the redis-server processes' ones
// included. Tests in this package do not run in parallel.
func checkLeaks(t *testing.T) {
	t.Helper()
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) })
}

// outcome is what became of one command.
type outcome int

const (
	good   outcome = iota // the reply asked for
	failed                // an error other than a Redis error reply
	wrong                 // a reply, or a Redis error, that was not the one asked for
)

// tally counts the outcomes of a suite's commands.
type tally struct {
	good, failed, wrong atomic.Int64
	firstWrong          atomic.Pointer[string] // what the first wrong reply was
}

func (tl *tally) commands() int64 { return tl.good.Load() + tl.failed.Load() + tl.wrong.Load() }

// count records the outcome of a command that should have replied want.
func (tl *tally) count(reply any, err error, want string) outcome {
	o := judge(reply, err, want)
	tl.add(o)
	if o == wrong && tl.firstWrong.Load() == nil {
		s := fmt.Sprintf("wanted %.40q, got %.40q", want, show(reply))
		if err != nil {
			s = fmt.Sprintf("wanted %.40q, got error %v", want, err)
		}
		tl.firstWrong.CompareAndSwap(nil, &s)
	}
	return o
}

func (tl *tally) add(o outcome) {
	switch o {
	case good:
		tl.good.Add(1)
	case failed:
		tl.failed.Add(1)
	default:
		tl.wrong.Add(1)
	}
}

func (tl *tally) String() string {
	s := fmt.Sprintf("%d commands: %d good, %d failed, %d wrong", tl.commands(), tl.good.Load(), tl.failed.Load(), tl.wrong.Load())
	if p := tl.firstWrong.Load(); p != nil {
		s += " (first: " + *p + ")"
	}
	return s
}

// judge says whether a command that should have replied want (a bulk
// string) got it. A Redis error reply counts as wrong: none of the commands
// whose replies are judged can fail at the server.
func judge(reply any, err error, want string) outcome {
	var rerr redis.Error
	switch {
	case errors.As(err, &rerr):
		return wrong
	case err != nil:
		return failed
	}
	if b, ok := reply.([]byte); ok && string(b) == want {
		return good
	}
	return wrong
}

// show formats a reply for a message, bulk strings as strings.
func show(reply any) string {
	if b, ok := reply.([]byte); ok {
		return string(b)
	}
	return fmt.Sprint(reply)
}

// suiteRow is one suite's figures for the summary.
type suiteRow struct {
	name                          string
	commands, good, failed, wrong int64
	wall                          time.Duration
}

// suites collects what each suite counted, for TestSummary.
var suites struct {
	mu   sync.Mutex
	rows []suiteRow
}

// record adds a suite's counts to the summary.
func record(name string, tl *tally, wall time.Duration) {
	suites.mu.Lock()
	defer suites.mu.Unlock()
	suites.rows = append(suites.rows, suiteRow{
		name: name, commands: tl.commands(), good: tl.good.Load(),
		failed: tl.failed.Load(), wrong: tl.wrong.Load(), wall: wall,
	})
}

// recordedSuites returns a copy of the rows recorded so far.
func recordedSuites() []suiteRow {
	suites.mu.Lock()
	defer suites.mu.Unlock()
	return slices.Clone(suites.rows)
}

// percentile returns the q-quantile (0 < q <= 1) of ds, nearest rank; 0 when
// ds is empty. It sorts ds.
func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	k := int(math.Ceil(q*float64(len(ds)))) - 1
	return ds[max(0, min(k, len(ds)-1))]
}

// keys is the size of the key set GET workloads read: key:i holds value:i.
const keys = 1000

// loadKeys sets key:i to value:i for i < keys.
func loadKeys(t *testing.T, srv *redistest.Server) {
	t.Helper()
	args := make([]any, 0, 2*keys)
	for i := range keys {
		args = append(args, fmt.Sprintf("key:%d", i), fmt.Sprintf("value:%d", i))
	}
	require.Equal(t, "OK", srv.Do(t, "MSET", args...))
}

// clientIDs returns the ids in the server's CLIENT LIST.
func clientIDs(t *testing.T, srv *redistest.Server) map[int64]bool {
	t.Helper()
	list, err := redis.String(srv.Do(t, "CLIENT", "LIST"), nil)
	require.NoError(t, err)
	ids := make(map[int64]bool)
	for _, line := range strings.Split(list, "\n") {
		var id int64
		if _, err := fmt.Sscanf(strings.TrimSpace(line), "id=%d ", &id); err == nil {
			ids[id] = true
		}
	}
	return ids
}

// waitFor polls cond every 10 ms until it holds or d passes, and reports
// whether it held.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ms formats a duration in milliseconds with one decimal.
func ms(d time.Duration) string {
	return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
}
