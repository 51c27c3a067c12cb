package redispool_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/redispool/redispool"
)

// BenchmarkPoolGetClose measures the pool's own overhead: Get and Close of a
// fake connection, for redispool and for redigo's bounded redis.Pool.
func BenchmarkPoolGetClose(b *testing.B) {
	shapes := []struct{ size, clients int }{{1, 1}, {8, 32}, {64, 256}}
	for _, s := range shapes {
		b.Run(fmt.Sprintf("redispool/size=%d/clients=%d", s.size, s.clients), func(b *testing.B) {
			p := &redispool.Pool{Dial: dialNop, MaxActive: s.size}
			defer p.Close()
			benchGetClose(b, s.clients, func() redis.Conn { c, _ := p.GetContext(context.Background()); return c })
		})
		b.Run(fmt.Sprintf("redigo/size=%d/clients=%d", s.size, s.clients), func(b *testing.B) {
			p := &redis.Pool{Dial: dialNop, MaxActive: s.size, MaxIdle: s.size, Wait: true}
			defer p.Close()
			benchGetClose(b, s.clients, p.Get)
		})
	}
}

func benchGetClose(b *testing.B, clients int, get func() redis.Conn) {
	b.ReportAllocs()
	if clients == 1 {
		for b.Loop() {
			get().Close()
		}
		return
	}
	b.SetParallelism((clients + 1) / 2) // GOMAXPROCS x parallelism goroutines
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			get().Close()
		}
	})
}

// nopConn is a connection that does nothing, so that only the pool is measured.
type nopConn struct{}

func dialNop() (redis.Conn, error) { return nopConn{}, nil }

func (nopConn) Close() error                                             { return nil }
func (nopConn) Err() error                                               { return nil }
func (nopConn) Do(string, ...any) (any, error)                           { return nil, nil }
func (nopConn) Send(string, ...any) error                                { return nil }
func (nopConn) Flush() error                                             { return nil }
func (nopConn) Receive() (any, error)                                    { return nil, nil }
func (nopConn) DoWithTimeout(time.Duration, string, ...any) (any, error) { return nil, nil }
func (nopConn) ReceiveWithTimeout(time.Duration) (any, error)            { return nil, nil }
