package redispool

import (
	"bufio"
	"errors"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redispool/redispool/internal/redistest"
)

// deadlineSocket records the deadlines set on it.
type deadlineSocket struct {
	net.Conn
	read, write time.Time
	calls       int
	fail        error // returned, and nothing set, while non-nil
}

func (s *deadlineSocket) SetReadDeadline(t time.Time) error {
	s.calls++
	if s.fail != nil {
		return s.fail
	}
	s.read = t
	return nil
}

func (s *deadlineSocket) SetWriteDeadline(t time.Time) error {
	s.calls++
	if s.fail != nil {
		return s.fail
	}
	s.write = t
	return nil
}

func (s *deadlineSocket) SetDeadline(t time.Time) error {
	s.calls++
	if s.fail != nil {
		return s.fail
	}
	s.read, s.write = t, t
	return nil
}

// inSlack fails unless got serves as the deadline asked: no deadline for no
// deadline, otherwise never earlier than asked and at most slack later.
func inSlack(t *testing.T, asked, got time.Time, slack time.Duration, msg string, args ...any) {
	t.Helper()
	if asked.IsZero() {
		require.True(t, got.IsZero(), append([]any{msg + ": no deadline was asked for, the socket has %v"}, append(args, got)...)...)
		return
	}
	require.False(t, got.Before(asked), append([]any{msg + ": the socket's deadline is %v early"}, append(args, asked.Sub(got))...)...)
	require.LessOrEqual(t, got.Sub(asked), slack, append([]any{msg + ": the socket's deadline is later than asked by more than the slack"}, args...)...)
}

func TestADeadlineMovedForwardWithinTheSlackIsNotSetAgain(t *testing.T) {
	sock := &deadlineSocket{}
	slack := 5 * time.Millisecond
	c := &deadlineConn{Conn: sock, slack: slack}
	t0 := time.Now().Add(3 * time.Second)

	require.NoError(t, c.SetReadDeadline(t0))
	assert.Equal(t, t0.Add(slack), sock.read, "a new deadline is set slack later than asked")
	assert.Equal(t, 1, sock.calls)
	for _, d := range []time.Duration{time.Microsecond, slack / 2, slack} {
		require.NoError(t, c.SetReadDeadline(t0.Add(d)))
		assert.Equal(t, 1, sock.calls, "a deadline %v later is served by the one set", d)
	}
	require.NoError(t, c.SetReadDeadline(t0.Add(slack+time.Nanosecond)))
	assert.Equal(t, 2, sock.calls, "past the slack, the deadline is set again")
	assert.Equal(t, t0.Add(2*slack+time.Nanosecond), sock.read)

	require.NoError(t, c.SetReadDeadline(t0))
	assert.Equal(t, 3, sock.calls, "an earlier deadline is always set")
	assert.True(t, sock.write.IsZero(), "the write deadline is its own")
}

func TestNoDeadlineIsSetExactly(t *testing.T) {
	sock := &deadlineSocket{}
	c := &deadlineConn{Conn: sock, slack: 5 * time.Millisecond}
	require.NoError(t, c.SetWriteDeadline(time.Time{}))
	assert.Equal(t, 1, sock.calls, "the socket's deadline is not known until set")
	require.NoError(t, c.SetWriteDeadline(time.Time{}))
	assert.Equal(t, 1, sock.calls)
	require.NoError(t, c.SetWriteDeadline(time.Now().Add(time.Second)))
	require.NoError(t, c.SetWriteDeadline(time.Time{}))
	assert.Equal(t, 3, sock.calls)
	assert.True(t, sock.write.IsZero(), "no deadline, not one slack later")
}

func TestADeadlineThatFailedToSetIsSetAgain(t *testing.T) {
	sock := &deadlineSocket{fail: errors.New("use of closed network connection")}
	c := &deadlineConn{Conn: sock, slack: 5 * time.Millisecond}
	at := time.Now().Add(time.Second)
	require.ErrorIs(t, c.SetReadDeadline(at), sock.fail)
	sock.fail = nil
	require.NoError(t, c.SetReadDeadline(at))
	assert.Equal(t, 2, sock.calls, "a deadline that failed to set is not taken as set")
	inSlack(t, at, sock.read, c.slack, "after a failed set")
}

// TestTheSocketsDeadlinesServeEveryDeadlineAskedFor moves the read, write and
// both deadlines as a clock runs on: mostly a timeout ahead of it, sometimes
// a random shorter one, sometimes no deadline. After each step the socket's
// deadlines are never earlier than asked and at most the slack later.
func TestTheSocketsDeadlinesServeEveryDeadlineAskedFor(t *testing.T) {
	sock := &deadlineSocket{}
	slack := 5 * time.Millisecond
	c := &deadlineConn{Conn: sock, slack: slack}
	rng := rand.New(rand.NewPCG(1, 2))
	now := time.Now()
	read, write := time.Time{}, time.Time{}
	require.NoError(t, c.SetDeadline(time.Time{}))
	const steps = 20000
	for i := range steps {
		var at time.Time
		switch r := rng.IntN(20); {
		case r == 0: // no deadline
		case r == 1:
			at = now.Add(time.Duration(rng.Int64N(int64(4 * slack))))
		default:
			at = now.Add(time.Second)
		}
		now = now.Add(time.Duration(rng.Int64N(int64(slack / 4))))
		switch rng.IntN(5) {
		case 0:
			require.NoError(t, c.SetDeadline(at))
			read, write = at, at
		case 1, 2:
			require.NoError(t, c.SetReadDeadline(at))
			read = at
		default:
			require.NoError(t, c.SetWriteDeadline(at))
			write = at
		}
		inSlack(t, read, sock.read, slack, "read, step %d", i)
		inSlack(t, write, sock.write, slack, "write, step %d", i)
	}
	assert.Less(t, sock.calls, steps/2, "most small moves forward are not set")
}

func TestDeadlineSlackIsASixtyFourthOfTheShorterTimeoutAtMostFiveMilliseconds(t *testing.T) {
	for _, tc := range []struct {
		read, write, want time.Duration
	}{
		{3 * time.Second, 3 * time.Second, maxDeadlineSlack},
		{64 * time.Millisecond, time.Second, time.Millisecond},
		{time.Second, 128 * time.Millisecond, 2 * time.Millisecond},
		{0, 64 * time.Millisecond, time.Millisecond},
		{64 * time.Millisecond, 0, time.Millisecond},
		{0, 0, 0},
	} {
		assert.Equal(t, tc.want, deadlineSlack(tc.read, tc.write), "read %v, write %v", tc.read, tc.write)
	}
}

// TestThePoolsOwnSocketsMoveTheirDeadlinesLazily: a socket the pool dials
// itself keeps its deadlines within the slack; with no timeouts it has
// nothing to keep and is left as dialed.
func TestThePoolsOwnSocketsMoveTheirDeadlinesLazily(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			go answerOK(c)
		}
	}()
	for _, tc := range []struct {
		name      string
		p         *Pool
		wantSlack time.Duration
	}{
		{"default timeouts", &Pool{Addr: l.Addr().String()}, maxDeadlineSlack},
		{"ReadTimeout 64ms", &Pool{Addr: l.Addr().String(), ReadTimeout: 64 * time.Millisecond}, time.Millisecond},
		{"no timeouts", &Pool{Addr: l.Addr().String(), ReadTimeout: -1}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer tc.p.Close()
			c, err := tc.p.GetContext(t.Context())
			require.NoError(t, err)
			defer c.Close()
			sock := c.(*activeConn).pc.netConn
			dc, ok := sock.(*deadlineConn)
			if tc.wantSlack == 0 {
				assert.False(t, ok, "a socket with no deadlines to move is not wrapped")
				return
			}
			require.True(t, ok, "the socket is %T", sock)
			assert.Equal(t, tc.wantSlack, dc.slack)
			assert.True(t, dc.read.known && dc.read.at.IsZero(), "the dial's deadline is cleared through the wrapper")
		})
	}
}

// TestACommandAfterAPeekStillTimesOut: the peek on borrow clears the
// socket's read deadline. Cleared behind the deadlineConn's back, the next
// command's deadline, within the slack of the one the deadlineConn takes for
// set, would not be set, and a server that stopped answering would hold the
// command for ever.
func TestACommandAfterAPeekStillTimesOut(t *testing.T) {
	srv := redistest.Start(t)
	commandAfterAPeekTimesOut(t, srv, srv.Addr())
}

// commandAfterAPeekTimesOut runs a command on a connection to addr, has the
// next Get peek at it with srv stopped, and checks that the peek cleared the
// read deadline through the deadlineConn, kept the connection, and that a
// command then times out, never before ReadTimeout.
func commandAfterAPeekTimesOut(t *testing.T, srv *redistest.Server, addr string, opts ...redis.DialOption) {
	t.Helper()
	clk := NewTestClock()
	defer SetNowFunc(clk.Now)()
	const readTimeout = 300 * time.Millisecond
	p := &Pool{Addr: addr, ReadTimeout: readTimeout, DialOptions: opts}
	defer p.Close()
	c := p.Get()
	_, err := c.Do("PING")
	require.NoError(t, err)
	require.NoError(t, c.Close())

	clk.Advance(time.Minute) // idle long enough to be peeked at
	srv.Stop(t)
	defer srv.Cont(t)
	c = p.Get()
	require.NoError(t, c.Err())
	defer c.Close()
	dc, ok := c.(*activeConn).pc.netConn.(*deadlineConn)
	require.True(t, ok, "the socket is %T", c.(*activeConn).pc.netConn)
	dc.mu.Lock()
	read := dc.read
	dc.mu.Unlock()
	assert.True(t, read.known && read.at.IsZero(), "the peek cleared the read deadline behind the deadlineConn's back")
	assert.Zero(t, p.Stats().Discards.Broken, "the peek discarded a healthy connection")

	done := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := c.Do("PING")
		done <- err
	}()
	select {
	case err = <-done:
	case <-time.After(readTimeout + 5*time.Second):
		t.Fatal("a command to a stopped server did not time out")
	}
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	assert.True(t, ne.Timeout(), "%v", err)
	assert.GreaterOrEqual(t, time.Since(start), readTimeout, "timed out before ReadTimeout")
}

// BenchmarkDeadlineMove measures what moving a loopback socket's read
// deadline to now plus 3s costs, as redigo does before every reply: on the
// socket itself, and through a deadlineConn with the default slack.
func BenchmarkDeadlineMove(b *testing.B) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	defer l.Close()
	go func() {
		if c, err := l.Accept(); err == nil {
			defer c.Close()
			var buf [1]byte
			c.Read(buf[:]) // until the client closes
		}
	}()
	sock, err := net.Dial("tcp", l.Addr().String())
	require.NoError(b, err)
	defer sock.Close()
	for _, bc := range []struct {
		name string
		conn net.Conn
	}{
		{"socket", sock},
		{"deadlineConn", &deadlineConn{Conn: sock, slack: deadlineSlack(DefaultReadTimeout, DefaultReadTimeout)}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if err := bc.conn.SetReadDeadline(time.Now().Add(DefaultReadTimeout)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// answerOK answers every command read from c with +OK, as a server that
// serves but is not looked at.
func answerOK(c net.Conn) {
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "*")))
		if err != nil || !strings.HasPrefix(line, "*") {
			return
		}
		for range 2 * n { // $len, then the argument
			if _, err := r.ReadString('\n'); err != nil {
				return
			}
		}
		if _, err := c.Write([]byte("+OK\r\n")); err != nil {
			return
		}
	}
}
