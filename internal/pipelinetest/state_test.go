package pipelinetest

import (
	"errors"
	"fmt"
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

// plainTraffic runs workers that SET and GET keys of their own through p
// until stop is closed, and counts replies that are not the one asked for.
func plainTraffic(p *redispool.Pool, workers int, stop <-chan struct{}) (wait func() (good, wrong int64, firstWrong string)) {
	var good, wrong atomic.Int64
	var first atomic.Pointer[string]
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 1_000_000; n++ {
				select {
				case <-stop:
					return
				default:
				}
				k, v := fmt.Sprintf("plain:%d", w), fmt.Sprintf("v%d.%d", w, n)
				c := p.Get()
				_, err := c.Do("SET", k, v)
				got, gerr := redis.String(c.Do("GET", k))
				c.Close()
				switch {
				case err == nil && gerr == nil && got == v:
					good.Add(1)
				default:
					wrong.Add(1)
					s := fmt.Sprintf("wanted %q, got %q (%v, %v)", v, got, err, gerr)
					first.CompareAndSwap(nil, &s)
				}
			}
		}()
	}
	return func() (int64, int64, string) {
		wg.Wait()
		s := ""
		if f := first.Load(); f != nil {
			s = *f
		}
		return good.Load(), wrong.Load(), s
	}
}

// stateful runs, on conns from p, a borrower's MULTI/EXEC, WATCH, SELECT,
// SUBSCRIBE and BLPOP, and returns what each saw.
func stateful(t *testing.T, p *redispool.Pool, srv *redistest.Server, tag string) []string {
	t.Helper()
	var out []string
	see := func(name string, reply any, err error) {
		out = append(out, fmt.Sprintf("%s: %v %v", name, show(reply), err))
	}
	k := "state:" + tag

	c := p.Get()
	_, err := c.Do("DEL", k, k+":n", k+":list")
	require.NoError(t, err)
	require.NoError(t, c.Send("MULTI"))
	require.NoError(t, c.Send("SET", k, "a"))
	require.NoError(t, c.Send("INCR", k+":n"))
	reply, err := c.Do("EXEC")
	see("MULTI/EXEC", reply, err)
	require.NoError(t, c.Close())

	c = p.Get()
	_, err = c.Do("WATCH", k)
	require.NoError(t, err)
	v, err := redis.String(c.Do("GET", k))
	see("WATCH GET", v, err)
	require.NoError(t, c.Send("MULTI"))
	require.NoError(t, c.Send("SET", k, v+"b"))
	reply, err = c.Do("EXEC")
	see("WATCH EXEC", reply, err)
	require.NoError(t, c.Close())

	c = p.Get()
	reply, err = c.Do("SELECT", 1)
	see("SELECT", reply, err)
	reply, err = c.Do("SET", k, "db1")
	see("SET in db 1", reply, err)
	reply, err = c.Do("GET", k)
	see("GET in db 1", reply, err)
	require.NoError(t, c.Close())
	c = p.Get()
	reply, err = c.Do("GET", k)
	see("GET in db 0 after", reply, err)
	require.NoError(t, c.Close())

	psc := redis.PubSubConn{Conn: p.Get()}
	require.NoError(t, psc.Subscribe(k+":ch"))
	see("SUBSCRIBE", psc.Receive(), nil)
	srv.Do(t, "PUBLISH", k+":ch", "hello")
	see("message", psc.Receive(), nil)
	require.NoError(t, psc.Unsubscribe())
	see("UNSUBSCRIBE", psc.Receive(), nil)
	require.NoError(t, psc.Close())

	c = p.Get()
	time.AfterFunc(50*time.Millisecond, func() {
		pc := p.Get()
		defer pc.Close()
		pc.Do("RPUSH", k+":list", "x") // BLPOP below fails if this did
	})
	reply, err = c.Do("BLPOP", k+":list", 5)
	see("BLPOP", reply, err)
	require.NoError(t, c.Close())
	return out
}

// show prints a reply with its byte slices as strings.
func show(reply any) any {
	switch r := reply.(type) {
	case []byte:
		return string(r)
	case []any:
		out := make([]any, len(r))
		for i := range r {
			out[i] = show(r[i])
		}
		return out
	case redis.Message:
		return fmt.Sprintf("message %s %s", r.Channel, r.Data)
	case redis.Subscription:
		return fmt.Sprintf("%s %s %d", r.Kind, r.Channel, r.Count)
	}
	return reply
}

// With AutoPipeline, a borrower's MULTI/EXEC, WATCH, SELECT, SUBSCRIBE and
// BLPOP behave exactly as without it, and none of their effects reach the
// borrowers whose commands share a conn meanwhile.
func TestStatefulCommandsBehaveAsWithoutAutoPipelineAndReachNoOtherBorrower(t *testing.T) {
	srv := redistest.Start(t)
	plain := &redispool.Pool{Addr: srv.Addr()}
	defer plain.Close()
	want := stateful(t, plain, srv, "x")

	p := &redispool.Pool{Addr: srv.Addr(), AutoPipeline: true}
	defer p.Close()
	stop := make(chan struct{})
	wait := plainTraffic(p, 16, stop)
	var got []string
	for range 20 {
		got = stateful(t, p, srv, "x")
		require.Equal(t, want, got)
	}
	close(stop)
	good, wrong, first := wait()
	t.Logf("stateful borrows: %q; plain traffic alongside: %d good, %d wrong; %+v", got, good, wrong, p.Stats())
	assert.Zero(t, wrong, "plain traffic got a wrong reply: %s", first)
	assert.Positive(t, good)
	assert.Positive(t, p.Stats().PipelineBatchCount, "plain traffic shared conns")
}

// A borrower's pipeline that moves to a conn of its own midway (MULTI after
// two GETs) reads every reply in the order it sent the commands.
func TestAPipelineThatMovesToItsOwnConnReadsItsRepliesInOrder(t *testing.T) {
	srv := redistest.Start(t)
	p := &redispool.Pool{Addr: srv.Addr(), AutoPipeline: true}
	defer p.Close()
	stop := make(chan struct{})
	wait := plainTraffic(p, 8, stop)
	for i := range 200 {
		c := p.Get()
		a, b := fmt.Sprintf("a%d", i), fmt.Sprintf("b%d", i)
		_, err := c.Do("MSET", "pa", a, "pb", b)
		require.NoError(t, err)
		for _, cmd := range [][]any{{"GET", "pa"}, {"GET", "pb"}, {"MULTI"}, {"SET", "pa", b}, {"GET", "pa"}, {"EXEC"}, {"GET", "pa"}} {
			require.NoError(t, c.Send(cmd[0].(string), cmd[1:]...))
		}
		require.NoError(t, c.Flush())
		var got []any
		for range 6 {
			r, err := c.Receive()
			require.NoError(t, err)
			got = append(got, show(r))
		}
		rest, err := c.Do("")
		require.NoError(t, err)
		require.Equal(t, []any{a, b, "OK", "QUEUED", "QUEUED", []any{"OK", b}}, got)
		require.Equal(t, []any{b}, show(rest))
		require.NoError(t, c.Close())
	}
	close(stop)
	_, wrong, first := wait()
	assert.Zero(t, wrong, "plain traffic got a wrong reply: %s", first)
}

// Replies and error replies come back as redigo's own conn returns them: an
// error reply from Do is both the reply and the error, and Do("") returns
// the pending replies as a slice.
func TestRepliesComeBackAsFromRedigosConn(t *testing.T) {
	srv := redistest.Start(t)
	p := &redispool.Pool{Addr: srv.Addr(), AutoPipeline: true}
	defer p.Close()
	rc, err := redis.Dial("tcp", srv.Addr())
	require.NoError(t, err)
	defer rc.Close()
	c := p.Get()
	defer c.Close()
	for _, conn := range []redis.Conn{rc, c} {
		_, err := conn.Do("SET", "notanint", "x")
		require.NoError(t, err)
	}
	wantReply, wantErr := rc.Do("INCR", "notanint")
	reply, err := c.Do("INCR", "notanint")
	assert.Equal(t, wantReply, reply)
	assert.Equal(t, wantErr, err)
	var re redis.Error
	assert.True(t, errors.As(err, &re))

	for _, conn := range []redis.Conn{rc, c} {
		require.NoError(t, conn.Send("INCR", "notanint"))
		require.NoError(t, conn.Send("ECHO", "e"))
	}
	wantReply, wantErr = rc.Do("")
	reply, err = c.Do("")
	assert.Equal(t, wantReply, reply)
	assert.Equal(t, wantErr, err)
	reply, err = c.Do("")
	assert.Nil(t, reply)
	assert.NoError(t, err)
}
