package main

import (
	"context"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"go.uber.org/goleak"

	"github.com/redispool/redispool/examples/internal/bound"
	"github.com/redispool/redispool/internal/redistest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestRedsync makes 400 increments on 4 counters from 32 goroutines, each
// under its counter's redsync mutex, on a pool of 8. Every counter must end
// at 100: a lost update would show that two goroutines held a mutex at once.
// The pool must have opened at most 8 connections, counting redsync's own
// (SET NX to lock, EVAL to unlock, on every attempt).
func TestRedsync(t *testing.T) {
	srv := redistest.Start(t)
	p := newPool(srv.Addr())
	p.MaxActive = bound.MaxConns
	defer p.Close()
	l := load{workers: bound.Workers, increments: bound.Requests, counters: 4, prefix: "test:"}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var err error
	r := bound.Measure(t, srv, p, func() {
		err = run(ctx, p, newRedsync(p), l)
	})
	if err != nil {
		t.Fatal(err)
	}
	bound.Check(t, r)
	for i := range l.counters {
		n, err := redis.Int(srv.Do(t, "GET", l.counterKey(i)), nil)
		if want := l.increments / l.counters; err != nil || n != want {
			t.Errorf("%s = %d (error %v); want %d", l.counterKey(i), n, err, want)
		}
	}
}
