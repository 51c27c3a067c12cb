package redispool_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/redispool/redispool"
)

// The zero value dials localhost:6379, keeps at most 10 x GOMAXPROCS
// connections, and bounds every dial, read, write and wait.
func ExamplePool() {
	var pool redispool.Pool
	defer pool.Close()

	conn := pool.Get()
	defer conn.Close()
	if _, err := conn.Do("SET", "greeting", "hello"); err != nil {
		log.Print(err)
	}
}

// Code written for redigo's redis.Pool keeps its struct literal: only the
// type name changes. MaxActive 0 now means the default bound, not unlimited.
func ExamplePool_dropIn() {
	pool := &redispool.Pool{ // was: &redis.Pool{
		MaxIdle:     3,
		IdleTimeout: 240 * time.Second,
		Dial:        func() (redis.Conn, error) { return redis.Dial("tcp", "localhost:6379") },
	}
	defer pool.Close()

	conn := pool.Get()
	defer conn.Close()
	n, err := redis.Int(conn.Do("INCR", "visits"))
	fmt.Println(n, err)
}

// Let the pool dial, with credentials, a database and explicit limits.
func ExamplePool_addr() {
	pool := &redispool.Pool{
		Addr:        "localhost:6379",
		Password:    "secret",
		DB:          1,
		MaxActive:   32,
		ReadTimeout: 500 * time.Millisecond,
		WaitTimeout: 100 * time.Millisecond,
	}
	defer pool.Close()

	conn, err := pool.GetContext(context.Background())
	if errors.Is(err, redis.ErrPoolExhausted) {
		log.Print("all 32 connections stayed busy for 100ms")
		return
	}
	if err != nil {
		log.Print(err)
		return
	}
	defer conn.Close()
	// A blocking command waits ReadTimeout plus its own timeout: here 5.5s.
	reply, err := redis.Strings(conn.Do("BLPOP", "jobs", 5))
	fmt.Println(reply, err)
}

// Libraries that require a *redis.Pool (boj/redistore, gin-contrib/sessions,
// gocraft/work) get one backed by the pool, which keeps bounding and checking
// the connections.
func ExamplePool_RedigoPool() {
	pool := &redispool.Pool{Addr: "localhost:6379", MaxActive: 8}
	defer pool.Close()

	var rp *redis.Pool = pool.RedigoPool()
	conn := rp.Get()
	defer conn.Close()
	_, err := conn.Do("PING")
	fmt.Println(err)
}

// Application code that accepts a ConnPool works with either pool and with
// a fake in tests.
func ExampleConnPool() {
	countVisits := func(pool redispool.ConnPool) (int, error) {
		conn := pool.Get()
		defer conn.Close()
		return redis.Int(conn.Do("INCR", "visits"))
	}
	ours := &redispool.Pool{}
	theirs := &redis.Pool{Dial: func() (redis.Conn, error) { return redis.Dial("tcp", "localhost:6379") }}
	fmt.Println(countVisits(ours))
	fmt.Println(countVisits(theirs))
}

// Stats reports redigo's four counters and the pool's own.
func ExamplePool_Stats() {
	var pool redispool.Pool
	defer pool.Close()

	s := pool.Stats()
	fmt.Printf("open=%d idle=%d dials=%d dial_errors=%d exhausted=%d discarded=%d\n",
		s.ActiveCount, s.IdleCount, s.DialCount, s.DialErrorCount, s.WaitTimeoutCount, s.Discards.Total())
}
