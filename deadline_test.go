package redispool

// deadlineConn, the socket wrapper that moves a pool socket's deadlines
// lazily: a deadline it keeps or sets is never earlier than asked and at
// most the slack later; no deadline is set exactly; one that failed to set
// is set again. These tests are about the unexported type, so they stay in
// the package; the pool's use of it is tested through SocketDeadlines.

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

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

// TestTheDialsDeadlineIsSetExactly: the socket of a dial carries the dial's
// context deadline (DialTimeout), which bounds the TLS handshake, exactly:
// not with the slack, which comes from ReadTimeout and WriteTimeout. The
// deadlineConn then takes the socket's deadlines for unknown, so that
// clearing them at the end of the dial reaches the socket.
func TestTheDialsDeadlineIsSetExactly(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	dl, _ := ctx.Deadline()
	sock := &deadlineSocket{}
	c, err := dialedSocket(ctx, sock, maxDeadlineSlack)
	require.NoError(t, err)
	assert.Equal(t, dl, sock.read, "the dial's read deadline is %v late", sock.read.Sub(dl))
	assert.Equal(t, dl, sock.write, "the dial's write deadline is %v late", sock.write.Sub(dl))
	require.IsType(t, &deadlineConn{}, c)
	require.NoError(t, c.SetDeadline(time.Time{}))
	assert.True(t, sock.read.IsZero() && sock.write.IsZero(), "clearing the dial's deadline did not reach the socket")

	plain, err := dialedSocket(ctx, sock, 0)
	require.NoError(t, err)
	assert.Same(t, sock, plain, "with no slack the socket is not wrapped")
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

// ---------------------------------------------------------------------------
// Helpers.

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
