package redispool

import (
	"errors"
	"fmt"

	"github.com/gomodule/redigo/redis"
)

// ErrPoolClosed is returned by Get, GetContext and every method of the conn Get
// returns once the Pool has been closed, including to callers that were waiting
// for a connection when Close was called.
var ErrPoolClosed = errors.New("redispool: pool is closed")

// ErrPoolExhausted is returned by Get and GetContext when WaitTimeout passed
// before a connection, a dial slot or a Dial of the user's became available
// (at once when WaitTimeout is negative). It is redigo's
// redis.ErrPoolExhausted itself, so that code written for redis.Pool that
// compares with == or errors.Is keeps working; what the Get waited for goes
// to the Logger's "pool exhausted" record.
var ErrPoolExhausted = redis.ErrPoolExhausted

// ErrConnClosed is returned by every method but Close of a conn from Get after
// that conn has been closed. The pooled connection behind it is not touched.
var ErrConnClosed = errors.New("redispool: use of closed connection")

// ErrConnRetired is returned by the methods of a conn from Get once the pool
// retired it while in use: Retire was called, or, with Sentinel, the pool
// moved to a new master and the conn reaches the old one. Close it and get
// another. Close returns it when it closed a conn
// retired while in use with replies left unread (see Pool.Retire).
var ErrConnRetired = errors.New("redispool: connection retired after a failover; get a new one")

// ErrDialBackoff is wrapped, together with the last dial error, by the error
// Get and GetContext return at once, without dialing, while dials fail and the
// pool backs off (see MaxConcurrentDials). errors.Is finds both.
var ErrDialBackoff = errors.New("redispool: not dialing while dials fail")

// errNilConn is the dial error for a Dial that returned neither a connection
// nor an error.
var errNilConn = errors.New("redispool: Dial returned a nil connection and no error")

// errNilPool is returned by the methods of a nil *Pool.
var errNilPool = errors.New("redispool: method called on a nil *Pool")

// errNilContext is returned by GetContext, DoContext and ReceiveContext when
// given a nil context.
var errNilContext = errors.New("redispool: nil Context; pass context.Background() for none")

// userPanic carries a panic of the user's code (Dial, a conn's Close or
// Err, TestOnBorrow) through the pool's accounting, as an error, up to the
// method the user called, which panics with it again (see guard).
type userPanic struct{ v any }

func (e *userPanic) Error() string { return fmt.Sprintf("redispool: panic in user code: %v", e.v) }

// guard calls user code, and returns its panic as a *userPanic. It is the
// one place the pool recovers: whatever the user's code does, the
// accounting after it runs, and the panic goes on from the API boundary
// (see repanic).
func guard(f func()) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &userPanic{v}
		}
	}()
	f()
	return nil
}

// repanic panics again with a user's panic that err carries, at the
// boundary of the pool's API, once the accounting is done.
func repanic(err error) {
	if up, ok := err.(*userPanic); ok {
		panic(up.v)
	}
}

// either returns a if it is set, else b: of two errors, the one that
// matters more.
func either(a, b error) error {
	if a != nil {
		return a
	}
	return b
}
