// Package redispool is a bounded, channel-based pool of redigo connections.
//
// Pool is a drop-in replacement for redigo's redis.Pool: it has the same
// exported fields and methods, so code that uses redis.Pool compiles after
// changing the type name. Unlike redis.Pool, its zero value is bounded
// (MaxActive defaults to 10 x GOMAXPROCS and every wait is bounded), it
// dials with connect, read and write timeouts, and it backs
// off instead of dialing in a storm while the server is down.
//
// A connection goes back to the idle set only when it is provably clean: a
// call that failed with anything but a Redis error reply (a timeout, a
// cancelled context, EOF), replies that could not be read, or state the next
// caller must not inherit and Close cannot undo (pub/sub, MONITOR, CLIENT
// REPLY OFF, HELLO, ...) gets it closed instead, so a late reply can never
// reach the wrong caller. Close undoes MULTI, WATCH, READONLY and a SELECT
// of another database.
//
// Libraries that require a *redis.Pool get one backed by the pool from
// Pool.RedigoPool; code that only needs Get, GetContext and Close can accept
// the ConnPool interface, which both pools satisfy.
package redispool
