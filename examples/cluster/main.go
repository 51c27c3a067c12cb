// Command cluster uses a redispool.Pool on a Redis Cluster: the same Pool
// type, with Cluster set instead of Addr. Each command goes to the node
// that serves its key's slot; MaxActive bounds the connections per node.
//
// Run it against a cluster, naming one or more of its nodes:
//
//	cd examples && go run ./cluster -nodes 127.0.0.1:7000,127.0.0.1:7001
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"strings"

	"github.com/gomodule/redigo/redis"

	"github.com/redispool/redispool"
)

// newPool returns a pool on the cluster that the nodes belong to.
func newPool(nodes []string) *redispool.Pool {
	return &redispool.Pool{
		Cluster:   &redispool.Cluster{StartupNodes: nodes},
		MaxActive: 8, // per node
	}
}

// run writes a name and ten counters, whose keys fall on different nodes,
// reads them back and prints them with the pool's Stats.
func run(p *redispool.Pool, out io.Writer) error {
	c := p.Get()
	defer c.Close()
	// {42} is the hash tag: keys with the same tag share a slot, so that
	// a transaction or a multi-key command may use them together.
	if _, err := c.Do("SET", "user:{42}:name", "ada"); err != nil {
		return err
	}
	if _, err := c.Do("SET", "user:{42}:lang", "go"); err != nil {
		return err
	}
	vals, err := redis.Strings(c.Do("MGET", "user:{42}:name", "user:{42}:lang"))
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "user 42: %s\n", strings.Join(vals, ", "))
	for i := range 10 {
		n, err := redis.Int(c.Do("INCR", fmt.Sprintf("counter:%d", i)))
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "counter:%d = %d\n", i, n)
	}
	st := p.Stats()
	fmt.Fprintf(out, "connections: %d open, %d dialed\n", st.ActiveCount, st.DialCount)
	return nil
}

func main() {
	nodes := flag.String("nodes", "127.0.0.1:7000", "comma-separated host:port of some of the cluster's nodes")
	flag.Parse()
	p := newPool(strings.Split(*nodes, ","))
	defer p.Close()
	if err := run(p, os.Stdout); err != nil {
		log.Fatal(err)
	}
}
