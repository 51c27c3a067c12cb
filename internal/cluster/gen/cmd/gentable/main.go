// Command gentable writes package cluster's command table from the COMMAND
// reply of a redis-server: the one at -addr, or, when -addr is empty, one
// it starts from PATH on a free 127.0.0.1 port and stops when done.
//
//	go run ./gen/cmd/gentable -o table.go
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/redispool/redispool/internal/cluster/gen"
)

func main() {
	addr := flag.String("addr", "", "address of a running redis-server; empty starts one from PATH")
	out := flag.String("o", "table.go", "the file to write")
	flag.Parse()
	if err := run(*addr, *out); err != nil {
		fmt.Fprintln(os.Stderr, "gentable:", err)
		os.Exit(1)
	}
}

func run(addr, out string) error {
	if addr == "" {
		a, stop, err := startServer()
		if err != nil {
			return err
		}
		defer stop()
		addr = a
	}
	c, err := redis.Dial("tcp", addr, redis.DialConnectTimeout(5*time.Second), redis.DialReadTimeout(5*time.Second))
	if err != nil {
		return err
	}
	defer c.Close()
	src, err := gen.Generate(c)
	if err != nil {
		return err
	}
	return os.WriteFile(out, src, 0o644)
}

// startServer starts redis-server on a free loopback port, without
// persistence, and waits until it answers PING.
func startServer() (addr string, stop func(), err error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	dir, err := os.MkdirTemp("", "gentable")
	if err != nil {
		return "", nil, err
	}
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir)
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("starting redis-server: %w", err)
	}
	stop = func() {
		cmd.Process.Kill()
		cmd.Wait()
		os.RemoveAll(dir)
	}
	addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		c, err := redis.Dial("tcp", addr, redis.DialConnectTimeout(100*time.Millisecond))
		if err == nil {
			_, err = c.Do("PING")
			c.Close()
		}
		if err == nil {
			return addr, stop, nil
		}
	}
	stop()
	return "", nil, errors.New("redis-server did not answer PING within 5s")
}
