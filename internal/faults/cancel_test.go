package faults

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/internal/redistest"
)

// The cancellation workload, the redis-py March 2023 class of bug (a command
// cancelled after it was sent, leaving its reply for the next user of the
// connection): cancelWorkers goroutines run ECHO of unique tokens with
// contexts that end after a random 0-2 ms, by deadline or by cancel, through
// redis.DoContext, GetContext and pipelines of Sends.
const (
	cancelWorkers   = 16
	cancelMaxActive = 8
	cancelMaxWait   = 2 * time.Millisecond
	// autoCancelMaxWait is the longest wait with AutoPipeline, where the
	// workers share a conn and a cancelled command's reply is still read:
	// long enough that many commands finish, as many end mid-call.
	autoCancelMaxWait = 20 * time.Millisecond
	// maxPad is the largest padding of an ECHO token: long replies take a
	// while to read, so that contexts also end mid-reply.
	maxPad = 64 << 10
)

var pad = strings.Repeat("x", maxPad)

// cancelCounts adds to a tally what the cancellation suite tells apart.
type cancelCounts struct {
	tally
	cancelled   atomic.Int64 // the caller's ctx.Err(), as documented
	lateTimeout atomic.Int64 // an i/o timeout at the ctx's deadline instead of ctx.Err()
	unsent      atomic.Int64 // replies never read: pipelines closed with replies pending
	errs        errorKinds   // other failures
	modes       [5]atomic.Int64
	maxWait     time.Duration // contexts end after 0 to this
}

// judgeCtx counts the outcome of a command run under ctx that should have
// replied want.
func (cc *cancelCounts) judgeCtx(ctx context.Context, reply any, err error, want string) outcome {
	o := cc.count(reply, err, want)
	if o != failed {
		return o
	}
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		cc.cancelled.Add(1)
	case errors.Is(err, os.ErrDeadlineExceeded) && deadlinePassed(ctx):
		// The read deadline was the context's, which has passed, but the
		// context's own timer had not yet marked it done.
		cc.lateTimeout.Add(1)
	default:
		cc.errs.add(err)
	}
	return o
}

// deadlinePassed reports whether ctx has a deadline and it has passed.
func deadlinePassed(ctx context.Context) bool {
	dl, ok := ctx.Deadline()
	return ok && !time.Now().Before(dl)
}

// randomCtx returns a context that ends after a random 0 to maxWait, half
// the time by its deadline and half the time by a cancel without a deadline.
func randomCtx(maxWait time.Duration) (context.Context, context.CancelFunc) {
	d := rand.N(maxWait)
	if rand.IntN(2) == 0 {
		return context.WithTimeout(context.Background(), d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	timer := time.AfterFunc(d, cancel)
	return ctx, func() {
		timer.Stop()
		cancel()
	}
}

// token returns a unique ECHO argument, a quarter of them padded to up to
// maxPad bytes.
func token(w, n, k int) string {
	t := fmt.Sprintf("w%d.n%d.k%d.", w, n, k)
	if rand.IntN(4) == 0 {
		t += pad[:rand.IntN(maxPad)]
	}
	return t
}

// cancelRound runs one randomly chosen use of the pool under a random
// context and judges every reply it reads.
func cancelRound(p *redispool.Pool, cc *cancelCounts, w, n int) {
	ctx, cancel := randomCtx(cc.maxWait)
	defer cancel()
	mode := rand.IntN(len(cc.modes))
	cc.modes[mode].Add(1)
	switch mode {
	case 0: // redis.DoContext on a conn from Get
		c := p.Get()
		defer c.Close()
		want := token(w, n, 0)
		reply, err := redis.DoContext(c, ctx, "ECHO", want)
		cc.judgeCtx(ctx, reply, err, want)
	case 1: // GetContext, then DoContext, with the same context
		c, err := p.GetContext(ctx)
		if err != nil {
			cc.judgeCtx(ctx, nil, err, "")
			return
		}
		defer c.Close()
		want := token(w, n, 0)
		reply, err := redis.DoContext(c, ctx, "ECHO", want)
		cc.judgeCtx(ctx, reply, err, want)
	case 2: // two Sends, then DoContext, which reads all three replies
		c := p.Get()
		defer c.Close()
		c.Send("ECHO", token(w, n, 0))
		c.Send("ECHO", token(w, n, 1))
		want := token(w, n, 2)
		reply, err := redis.DoContext(c, ctx, "ECHO", want)
		cc.judgeCtx(ctx, reply, err, want)
	case 3: // a pipeline read with ReceiveContext, sometimes only in part
		c := p.Get()
		defer c.Close()
		wants := []string{token(w, n, 0), token(w, n, 1), token(w, n, 2)}
		for _, want := range wants {
			c.Send("ECHO", want)
		}
		if err := c.Flush(); err != nil {
			cc.judgeCtx(ctx, nil, err, "")
			return
		}
		read := 1 + rand.IntN(len(wants))
		for _, want := range wants[:read] {
			reply, err := redis.ReceiveContext(c, ctx)
			if cc.judgeCtx(ctx, reply, err, want) != good {
				return
			}
		}
		cc.unsent.Add(int64(len(wants) - read))
	case 4: // Sends left unread for Close to deal with, then a DoContext
		c := p.Get()
		c.Send("ECHO", token(w, n, 0))
		c.Send("ECHO", token(w, n, 1))
		want := token(w, n, 2)
		reply, err := redis.DoContext(c, ctx, "ECHO", want)
		cc.judgeCtx(ctx, reply, err, want)
		c.Send("ECHO", token(w, n, 3))
		c.Close()
		cc.unsent.Add(1)
	}
}

// cancelLoad runs the cancellation workload on p for d, sampling the pool's
// ActiveCount; it returns the peak.
func cancelLoad(p *redispool.Pool, cc *cancelCounts, d time.Duration) (peakActive int) {
	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := range cancelWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < maxCommandsPerWorker && !stop.Load(); n++ {
				cancelRound(p, cc, w, n)
			}
		}()
	}
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		peakActive = max(peakActive, p.ActiveCount())
		time.Sleep(time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	return peakActive
}

// TestCancellationAtRandomPointsNeverHandsOnAReply ends contexts between 0 and
// 2 ms into every kind of use, and checks that each reply read is the one
// asked for, and that the pool stays bounded and usable.
func TestCancellationAtRandomPointsNeverHandsOnAReply(t *testing.T) {
	for _, tc := range []struct {
		name        string
		d           time.Duration
		naive, auto bool
	}{
		{"pool dials", 3 * time.Second, false, false},
		{"naive Dial", 2 * time.Second, true, false},
		{"AutoPipeline", 3 * time.Second, false, true},
		{"AutoPipeline, naive Dial", 2 * time.Second, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkLeaks(t)
			srv := redistest.Start(t)
			p := &redispool.Pool{Addr: srv.Addr(), MaxActive: cancelMaxActive, ReadTimeout: time.Second}
			var st naiveStats
			if tc.naive {
				p = &redispool.Pool{Dial: naiveDialer(srv.Addr(), time.Second, &st), MaxActive: cancelMaxActive, ReadTimeout: time.Second}
			}
			p.AutoPipeline = tc.auto
			defer p.Close()
			cc := cancelCounts{maxWait: cancelMaxWait}
			if tc.auto {
				cc.maxWait = autoCancelMaxWait
			}
			start := time.Now()
			peak := cancelLoad(p, &cc, tc.d)
			wall := time.Since(start)
			s := p.Stats()

			// The pool is usable and bounded afterwards.
			for i := range 200 {
				c := p.Get()
				want := fmt.Sprintf("after.%d", i)
				reply, err := c.Do("ECHO", want)
				c.Close()
				require.Equal(t, good, cc.count(reply, err, want), "ECHO after the cancellations: %v %v", reply, err)
			}
			var modes []string
			for i := range cc.modes {
				modes = append(modes, fmt.Sprint(cc.modes[i].Load()))
			}
			name := "cancel, " + tc.name
			t.Logf("%s: %d workers, MaxActive %d, contexts ending after 0-%v, %d rounds (per mode DoContext/GetContext/Send+DoContext/Send+ReceiveContext/unread Sends: %s) in %v: %v; failures: %d ctx.Err(), %d i/o timeouts at the ctx deadline instead of ctx.Err(), other: %s; %d replies left unread for Close; conns discarded broken %d, state %d, dials %d; peak ActiveCount %d",
				name, cancelWorkers, cancelMaxActive, cc.maxWait, cancelRounds(&cc), strings.Join(modes, "/"),
				wall.Round(time.Millisecond), &cc.tally, cc.cancelled.Load(), cc.lateTimeout.Load(), &cc.errs,
				cc.unsent.Load(), s.Discards.Broken, s.Discards.State, s.DialCount, peak)
			if tc.naive {
				t.Logf("naive conns: %d dialed, %d commands sent on conns that had failed", st.opened.Load(), st.reusedBroken.Load())
			}
			if tc.naive && !tc.auto {
				// A shared conn's writer may still write for a moment after
				// its reader failed, until the conn is closed: there, what
				// counts is that nothing read from it reaches anyone.
				assert.Zero(t, st.reusedBroken.Load(), "a naive conn that failed was used again")
			}
			record(name, &cc.tally, wall)

			assert.Zero(t, cc.wrong.Load(), "replies handed to the wrong caller")
			assert.Positive(t, cc.good.Load())
			assert.Positive(t, cc.cancelled.Load(), "contexts must end during the calls")
			if !tc.auto {
				// With AutoPipeline, a cancelled call on a shared conn
				// leaves its reply to be read and dropped instead.
				assert.Positive(t, s.Discards.Broken, "some contexts must end mid-call")
			}
			assert.LessOrEqual(t, peak, cancelMaxActive)
			assert.LessOrEqual(t, p.ActiveCount(), cancelMaxActive)
			require.True(t, waitFor(5*time.Second, func() bool { return srv.ConnectedClients(t) <= cancelMaxActive }),
				"the server has more clients than MaxActive")
			require.NoError(t, p.Close())
			require.True(t, waitFor(5*time.Second, func() bool { return srv.ConnectedClients(t) == 0 }),
				"conns left open after the pool was closed")
			if tc.naive {
				require.True(t, waitFor(5*time.Second, func() bool { return st.opened.Load() == st.closed.Load() }),
					"naive conns left open")
			}
		})
	}
}

func cancelRounds(cc *cancelCounts) int64 {
	var n int64
	for i := range cc.modes {
		n += cc.modes[i].Load()
	}
	return n
}
