#!/usr/bin/env bash
# Runs redigo's own pool tests (redis/pool_test.go of the redigo version in
# go.mod) against redispool, in a scratch module outside the repository: the
# project carries none of redigo's code, the file is copied from the module
# cache at run time. See docs/migration.md for the results and the
# differences they show.
#
#   bash internal/scripts/redigo-pooltests.sh [DIR] [go test flags...]
#
# DIR is the scratch directory (default: a new temporary one). Extra flags go
# to go test, for example -count=30 or -run TestPoolReuse. Without -run or
# -skip, the tests that assert a documented difference are skipped (see
# docs/migration.md); pass -run . to run them all.
#
# The edits, all mechanical: the type redis.Pool becomes redispool.Pool, and
# what redigo's other test files give pool_test.go is written below
# (helpers_test.go): DialDefaultServer, DialDefaultServerContext and
# DefaultServerAddr, on a redis-server started on a free port of 127.0.0.1
# as redigo's test server is; the package-level err; the fake net.Conn
# testConn; and SetNowFunc, which sets redispool's clock through a file
# added to the package for this build only (go test -overlay), as redigo's
# own is set through its test file.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
	dir=$1
	shift
else
	dir=$(mktemp -d)
	trap 'rm -rf "$dir"' EXIT
fi
cd "$repo"
redigo=$(go list -m -f '{{.Version}}' github.com/gomodule/redigo)
src=$(go env GOMODCACHE)/github.com/gomodule/redigo@$redigo/redis
[ -f "$src/pool_test.go" ] || go mod download github.com/gomodule/redigo
testify=$(go list -m -f '{{.Version}}' github.com/stretchr/testify)
mkdir -p "$dir"
cd "$dir"

sed -e 's/\bredis\.Pool\b/redispool.Pool/g' \
    -e 's/\bredis\.\(DialDefaultServerContext\|DialDefaultServer\|DefaultServerAddr\|SetNowFunc\)\b/\1/g' \
    -e 's#^\t"github.com/gomodule/redigo/redis"$#\t"github.com/gomodule/redigo/redis"\n\t"github.com/redispool/redispool"#' \
    "$src/pool_test.go" >pool_test.go

cat >helpers_test.go <<'GO'
package redis_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/redispool/redispool"
)

// serverAddr is the redis-server TestMain starts, on a free port.
var serverAddr string

// err is declared at package level by redigo's script_test.go.
var err error

// testConn is the net.Conn of redigo's conn_test.go: no network.
type testConn struct {
	io.Reader
	io.Writer
}

func (*testConn) Close() error                       { return nil }
func (*testConn) LocalAddr() net.Addr                { return nil }
func (*testConn) RemoteAddr() net.Addr               { return nil }
func (*testConn) SetDeadline(t time.Time) error      { return nil }
func (*testConn) SetReadDeadline(t time.Time) error  { return nil }
func (*testConn) SetWriteDeadline(t time.Time) error { return nil }

func TestMain(m *testing.M) {
	code, err := run(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	os.Exit(code)
}

func run(m *testing.M) (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	serverAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	srv := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err := srv.Start(); err != nil {
		return 0, fmt.Errorf("redis-server: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- srv.Wait() }()
	defer func() { srv.Process.Kill(); <-exited }()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		select {
		case err := <-exited:
			exited <- err
			return 0, fmt.Errorf("redis-server exited: %v", err)
		default:
		}
		c, err := redis.Dial("tcp", serverAddr)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("redis-server did not start: %w", err)
		}
	}
	return m.Run(), nil
}

func DefaultServerAddr() (string, error) { return serverAddr, nil }

func DialDefaultServer(options ...redis.DialOption) (redis.Conn, error) {
	return DialDefaultServerContext(context.Background(), options...)
}

func DialDefaultServerContext(ctx context.Context, options ...redis.DialOption) (redis.Conn, error) {
	c, err := redis.DialContext(ctx, "tcp", serverAddr, append([]redis.DialOption{redis.DialReadTimeout(time.Second), redis.DialWriteTimeout(time.Second)}, options...)...)
	if err != nil {
		return nil, err
	}
	if _, err = redis.DoContext(c, ctx, "FLUSHDB"); err != nil {
		return nil, err
	}
	return c, nil
}

func SetNowFunc(f func() time.Time) { redispool.SetNowFuncForRedigoTests(f) }
GO

cat >clock_seam.go.txt <<'GO'
package redispool

import "time"

// SetNowFuncForRedigoTests sets the pool's clock; added for this build only.
func SetNowFuncForRedigoTests(f func() time.Time) { nowFunc.Store(&f) }
GO
printf '{"Replace":{"%s/zz_redigo_pooltests_seam.go":"%s/clock_seam.go.txt"}}\n' "$repo" "$dir" >overlay.json

cat >go.mod <<GO
module redigo-pooltests

go 1.24

require (
	github.com/gomodule/redigo $redigo
	github.com/redispool/redispool v0.0.0
	github.com/stretchr/testify $testify
)

replace github.com/redispool/redispool => $repo
GO
GOFLAGS=-mod=mod go mod tidy >/dev/null 2>&1 || true

# The tests that assert a documented difference (docs/migration.md).
documented='^TestPoolBorrowCheck$/^TestOnBorrowContext-context.Canceled$|^TestPoolPubSubCleanup$|^TestWaitPoolDialError$'
args=("$@")
if ! printf '%s\n' "${args[@]}" | grep -q -- '^-\(run\|skip\)'; then
	args+=(-skip "$documented")
fi
echo "redigo $redigo pool tests against $repo, in $dir"
go test -overlay overlay.json -count=1 "${args[@]}" .
