// Package clustertest holds the tests of redispool's Redis Cluster support
// against a real cluster of six redis-server processes (see
// redistest.StartCluster): the bound per node, failovers, a master killed,
// resharding. It has no code of its own.
package clustertest
