package redispool

import (
	"context"
	"errors"

	"github.com/gomodule/redigo/redis"
)

// ConnPool is what application code needs from a pool of Redis connections.
// Both *Pool and redigo's *redis.Pool satisfy it, so code that accepts a
// ConnPool works with either and can be tested with a fake.
type ConnPool interface {
	Get() redis.Conn
	GetContext(ctx context.Context) (redis.Conn, error)
	Close() error
}

var (
	_ ConnPool = (*Pool)(nil)
	_ ConnPool = (*redis.Pool)(nil)
)

// RedigoPool returns a *redis.Pool backed by p, for libraries that require
// that concrete type (boj/redistore, gin-contrib/sessions, gocraft/work). Its
// own limits are off (MaxIdle and MaxActive zero): p alone bounds the
// connections, bounds the waits and decides which connections to keep.
// Each call returns a new *redis.Pool, so that each library can be given its
// own: closing one makes only that one's Get fail, and closes neither p nor
// the others.
func (p *Pool) RedigoPool() *redis.Pool {
	if p == nil {
		return &redis.Pool{DialContext: func(context.Context) (redis.Conn, error) { return nil, errNilPool }}
	}
	return &redis.Pool{DialContext: p.GetContext}
}

// errNilNewFn is what Get returns on a pool from NewPool without a dial
// function.
var errNilNewFn = errors.New("redispool: NewPool was given a nil dial function (newFn)")

// NewPool returns a pool that dials with newFn and keeps at most maxIdle
// connections idle, as redigo's redis.NewPool does; the other fields are at
// their defaults (see Pool). A nil newFn makes every Get fail with an error
// that says so; a negative maxIdle makes it fail with the error of an
// invalid MaxIdle.
//
// Deprecated: set the fields of a Pool directly, as redigo advises for
// redis.NewPool.
func NewPool(newFn func() (redis.Conn, error), maxIdle int) *Pool {
	if newFn == nil {
		newFn = func() (redis.Conn, error) { return nil, errNilNewFn }
	}
	return &Pool{Dial: newFn, MaxIdle: maxIdle}
}
