// Package faults holds the fault-injection suites of redispool: real
// redis-server processes frozen with SIGSTOP, killed and restarted, closing
// idle connections behind the pool's back, turned into replicas, and callers
// cancelling at random points. Every suite counts the replies handed to the
// wrong caller (there must be none) and logs its figures in one line, which
// docs/reliability.md reproduces.
//
// The package has no API: everything is in its tests. Run them with
//
//	go test -race -count=1 -v ./internal/faults/
//
// They need redis-server on PATH; without it they skip, or fail when the
// environment variable CI is "true".
package faults
