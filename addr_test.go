package redispool_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redispool/redispool"
)

// lockedBuffer is a bytes.Buffer safe for a log handler on the pool's
// goroutines and a test reading it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestNoErrorLogOrStatShowsAPassword: whatever is typed into Addr,
// Password or Sentinel.Addrs, no password reaches Get's error, the Logger's
// records or Stats, and the error still names the problem.
func TestNoErrorLogOrStatShowsAPassword(t *testing.T) {
	dial := func() (redis.Conn, error) { return nil, errors.New("not dialed") }
	sentinel := func(addr string) *redispool.Sentinel {
		return &redispool.Sentinel{Addrs: []string{addr}, MasterName: "m"}
	}
	for _, tc := range []struct {
		name    string
		pool    *redispool.Pool
		secrets []string // no part of the password may show
		want    string   // the error names the problem
		invalid bool     // the error is ErrInvalidConfig
	}{
		{"user info without a scheme", &redispool.Pool{Addr: "alice:Hunter2pw@127.0.0.1:1"},
			[]string{"Hunter2pw"}, "not a redis:// URL", true},
		{"password without a scheme", &redispool.Pool{Addr: "Hunter2pw@127.0.0.1:1"},
			[]string{"Hunter2pw"}, "not a redis:// URL", true},
		{"scheme without slashes", &redispool.Pool{Addr: "redis:alice:Hunter2pw@127.0.0.1:1"},
			[]string{"Hunter2pw"}, "not a redis:// URL", true},
		{"URL with a port that is not a number", &redispool.Pool{Addr: "redis://alice:Hunter2pw@127.0.0.1:port"},
			[]string{"Hunter2pw"}, "not a valid URL", true},
		{"URL with a port out of range", &redispool.Pool{Addr: "redis://alice:Hunter2pw@127.0.0.1:99999"},
			[]string{"Hunter2pw"}, "port", true},
		{"URL with a bad escape in the password", &redispool.Pool{Addr: "redis://alice:Hunter2%zzTiger3@127.0.0.1:1"},
			[]string{"Hunter2", "Tiger3"}, "not a valid URL", true},
		{"URL with a control character in the password", &redispool.Pool{Addr: "redis://alice:Hunter2\nTiger3@127.0.0.1:1"},
			[]string{"Hunter2", "Tiger3"}, "not a valid URL", true},
		{"URL with an unbalanced bracket", &redispool.Pool{Addr: "redis://alice:Hunter2pw@[::1"},
			[]string{"Hunter2pw"}, "not a valid URL", true},
		// A password of digits cut at / ? or # reads as a port: the URL parses.
		{"URL with / in the password", &redispool.Pool{Addr: "redis://alice:48213/90577@127.0.0.1:1"},
			[]string{"48213", "90577"}, "database", true},
		{"URL with ? in the password", &redispool.Pool{Addr: "redis://alice:48213?90577@127.0.0.1:1"},
			[]string{"48213", "90577"}, "query", true},
		{"URL with # in the password", &redispool.Pool{Addr: "redis://alice:48213#90577@127.0.0.1:1"},
			[]string{"48213", "90577"}, "fragment", true},
		{"URL with another scheme", &redispool.Pool{Addr: "http://alice:Hunter2pw@127.0.0.1:1"},
			[]string{"Hunter2pw"}, "scheme", true},
		{"URL with a path that is not a database", &redispool.Pool{Addr: "redis://alice:Hunter2pw@127.0.0.1:1/x"},
			[]string{"Hunter2pw"}, "database", true},
		{"URL with a query", &redispool.Pool{Addr: "redis://alice:Hunter2pw@127.0.0.1:1/0?db=2"},
			[]string{"Hunter2pw"}, "query", true},
		{"URL together with Dial", &redispool.Pool{Addr: "redis://:Hunter2pw@127.0.0.1:1", Dial: dial},
			[]string{"Hunter2pw"}, "Dial", true},
		{"URL with a password together with Password", &redispool.Pool{Addr: "redis://:Hunter2pw@127.0.0.1:1", Password: "Tiger3"},
			[]string{"Hunter2pw", "Tiger3"}, "Username or Password", true},
		{"URL with a database together with DB", &redispool.Pool{Addr: "redis://:Hunter2pw@127.0.0.1:1/2", DB: 3},
			[]string{"Hunter2pw"}, "DB", true},
		{"URL of a server that refuses", &redispool.Pool{Addr: "redis://alice:Hunter2pw@127.0.0.1:1"},
			[]string{"Hunter2pw"}, "refused", false},
		{"TLS URL of a server that refuses", &redispool.Pool{Addr: "REDISS://:Hunter2pw@127.0.0.1:1/1"},
			[]string{"Hunter2pw"}, "refused", false},
		{"sentinel address with a password", &redispool.Pool{Sentinel: sentinel("Hunter2pw@127.0.0.1:1")},
			[]string{"Hunter2pw"}, "Sentinel.Username", true},
		{"sentinel address with user info", &redispool.Pool{Sentinel: sentinel("alice:Hunter2pw@127.0.0.1:1")},
			[]string{"Hunter2pw"}, "Sentinel.Username", true},
		{"sentinel URL", &redispool.Pool{Sentinel: sentinel("redis://alice:Hunter2pw@127.0.0.1:26379")},
			[]string{"Hunter2pw"}, "Sentinel.Username", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs := &lockedBuffer{}
			p := tc.pool
			p.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			p.WaitTimeout = -1
			c := p.Get()
			getErr := c.Err()
			_, doErr := c.Do("PING")
			c.Close()
			_, ctxErr := p.GetContext(context.Background())
			stats := fmt.Sprintf("%+v", p.Stats())
			p.Close()

			require.Error(t, getErr)
			assert.Contains(t, getErr.Error(), tc.want)
			assert.Equal(t, tc.invalid, errors.Is(getErr, redispool.ErrInvalidConfig), "ErrInvalidConfig: %v", getErr)
			if !tc.invalid {
				assert.Contains(t, logs.String(), "dial failed")
			}
			for _, s := range tc.secrets {
				for what, text := range map[string]string{
					"Get's error": getErr.Error(), "Do's error": fmt.Sprint(doErr), "GetContext's error": fmt.Sprint(ctxErr),
					"the log": logs.String(), "Stats": stats,
				} {
					assert.NotContains(t, text, s, "%s shows the password", what)
				}
			}
		})
	}
}
