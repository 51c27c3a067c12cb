// Package sentineltest holds the failover tests of the pool's Sentinel
// support, against real processes on loopback: a master, a replica and three
// sentinels started by internal/redistest, with 50 goroutines writing through
// one pool while a sentinel fails the master over (SENTINEL FAILOVER) or the
// master is killed. It has no code of its own besides the tests.
package sentineltest
