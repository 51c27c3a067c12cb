package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/jackc/puddle/v2"

	"github.com/redispool/redispool"
)

// Pool names, as printed in the tables.
const (
	nameRedispool = "redispool"
	nameRedigo    = "redigo"
	namePuddle    = "puddle"
	nameGoRedis   = "go-redis"
)

// fakePool is a pool of connections that do nothing, so that a loop of Get
// and Close measures the pool alone.
type fakePool interface {
	// getClose takes a connection and gives it back at once; it reports
	// whether Get succeeded.
	getClose() bool
	// getHoldClose takes a connection, reports how long that took, holds it
	// while hold runs and gives it back. ok is false when Get failed.
	getHoldClose(hold func()) (wait time.Duration, ok bool)
	close()
}

// fakePoolNames are the pools of the Get+Close and waiting parts, redispool
// first: ratios are redispool over each of the others.
var fakePoolNames = []string{nameRedispool, nameRedigo, namePuddle}

// newFakePool returns the named pool bounded to size connections, configured
// as the issue asks: redispool with Dial and MaxActive, redigo with MaxActive
// = MaxIdle = size and Wait, puddle with MaxSize.
func newFakePool(name string, size int) (fakePool, error) {
	switch name {
	case nameRedispool:
		return redispoolFake{&redispool.Pool{Dial: dialNop, MaxActive: size}}, nil
	case nameRedigo:
		return redigoFake{&redis.Pool{Dial: dialNop, MaxActive: size, MaxIdle: size, Wait: true}}, nil
	case namePuddle:
		p, err := puddle.NewPool(&puddle.Config[nopConn]{
			Constructor: func(context.Context) (nopConn, error) { return nopConn{}, nil },
			Destructor:  func(nopConn) {},
			MaxSize:     int32(size),
		})
		if err != nil {
			return nil, err
		}
		return puddleFake{p}, nil
	}
	return nil, fmt.Errorf("unknown pool %q", name)
}

type redispoolFake struct{ p *redispool.Pool }

func (f redispoolFake) getClose() bool {
	c := f.p.Get()
	ok := c.Err() == nil
	c.Close()
	return ok
}

func (f redispoolFake) getDoClose() bool {
	c := f.p.Get()
	reply, err := c.Do("PING")
	c.Close()
	return err == nil && reply == nopReply
}

func (f redispoolFake) getHoldClose(hold func()) (time.Duration, bool) {
	start := time.Now()
	c := f.p.Get()
	wait := time.Since(start)
	ok := c.Err() == nil
	if ok {
		hold()
	}
	c.Close()
	return wait, ok
}

func (f redispoolFake) close() { f.p.Close() }

type redigoFake struct{ p *redis.Pool }

func (f redigoFake) getClose() bool {
	c := f.p.Get()
	ok := c.Err() == nil
	c.Close()
	return ok
}

func (f redigoFake) getDoClose() bool {
	c := f.p.Get()
	reply, err := c.Do("PING")
	c.Close()
	return err == nil && reply == nopReply
}

func (f redigoFake) getHoldClose(hold func()) (time.Duration, bool) {
	start := time.Now()
	c := f.p.Get()
	wait := time.Since(start)
	ok := c.Err() == nil
	if ok {
		hold()
	}
	c.Close()
	return wait, ok
}

func (f redigoFake) close() { f.p.Close() }

type puddleFake struct{ p *puddle.Pool[nopConn] }

func (f puddleFake) getClose() bool {
	r, err := f.p.Acquire(context.Background())
	if err != nil {
		return false
	}
	r.Release()
	return true
}

func (f puddleFake) getHoldClose(hold func()) (time.Duration, bool) {
	start := time.Now()
	r, err := f.p.Acquire(context.Background())
	wait := time.Since(start)
	if err != nil {
		return wait, false
	}
	hold()
	r.Release()
	return wait, true
}

func (f puddleFake) close() { f.p.Close() }

// nopConn is a connection that does nothing, as in the library's own
// bench_test.go. Do answers every command with nopReply, as a server
// answers PING, without I/O.
type nopConn struct{}

// nopReply is nopConn's reply to Do: a constant, so returning it allocates
// nothing.
const nopReply = "PONG"

func dialNop() (redis.Conn, error) { return nopConn{}, nil }

func (nopConn) Close() error                                             { return nil }
func (nopConn) Err() error                                               { return nil }
func (nopConn) Do(string, ...any) (any, error)                           { return nopReply, nil }
func (nopConn) Send(string, ...any) error                                { return nil }
func (nopConn) Flush() error                                             { return nil }
func (nopConn) Receive() (any, error)                                    { return nil, nil }
func (nopConn) DoWithTimeout(time.Duration, string, ...any) (any, error) { return nopReply, nil }
func (nopConn) ReceiveWithTimeout(time.Duration) (any, error)            { return nil, nil }
