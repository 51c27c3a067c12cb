package redispool_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/internal/redistest"
)

// serveLoopback accepts connections on a loopback port and runs serve on
// each, until the test ends, when it closes the listener and every
// connection and waits for serve to return. It returns the address.
func serveLoopback(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var mu sync.Mutex
	var conns []net.Conn
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				serve(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// silentServer reads what its clients send and never answers, as a server
// hung after accept does.
func silentServer(t *testing.T) string {
	return serveLoopback(t, func(c net.Conn) { io.Copy(io.Discard, c) })
}

// getErrWithin runs p.Get and returns its conn's error, failing the test
// when Get has not returned within limit.
func getErrWithin(t *testing.T, p *redispool.Pool, limit time.Duration) error {
	t.Helper()
	got := make(chan error, 1)
	go func() {
		c := p.Get()
		got <- c.Err()
		c.Close()
	}()
	select {
	case err := <-got:
		return err
	case <-time.After(limit):
		t.Fatalf("Get still waits after %v", limit)
		return nil
	}
}

// TestDialTimeoutBoundsEveryStep checks that DialTimeout bounds the whole
// dial against a server that accepts and never answers: the TLS handshake
// (redigo's own default for it is 10 s) and AUTH.
func TestDialTimeoutBoundsEveryStep(t *testing.T) {
	addr := silentServer(t)
	for _, tc := range []struct {
		name string
		pool *redispool.Pool
	}{
		{"TLS handshake", &redispool.Pool{Addr: addr, DialOptions: []redis.DialOption{redis.DialUseTLS(true)}}},
		{"AUTH", &redispool.Pool{Addr: addr, Password: "secret"}},
		{"SELECT", &redispool.Pool{Addr: addr, DB: 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.pool
			p.DialTimeout = 300 * time.Millisecond
			defer p.Close()
			start := time.Now()
			c := p.Get()
			took := time.Since(start)
			require.Error(t, c.Err())
			c.Close()
			assert.Less(t, took, 2*time.Second, "Get with DialTimeout %v returned after %v: %v", p.DialTimeout, took, c.Err())
		})
	}
}

// TestAURLInAddrKeepsThePoolsTimeouts: a URL gives the address, not the
// timeouts: DialTimeout bounds the dial (AUTH to a server that never
// answers) and ReadTimeout each reply (from a server frozen after the dial).
func TestAURLInAddrKeepsThePoolsTimeouts(t *testing.T) {
	p := &redispool.Pool{Addr: "redis://:Hunter2pw@" + silentServer(t), DialTimeout: 300 * time.Millisecond}
	defer p.Close()
	err := getErrWithin(t, p, 2*time.Second)
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	assert.True(t, ne.Timeout(), "the dial failed other than by timing out: %v", err)

	s := redistest.Start(t)
	p = &redispool.Pool{Addr: "redis://" + s.Addr() + "/1", ReadTimeout: 200 * time.Millisecond}
	defer p.Close()
	c := p.Get()
	defer c.Close()
	_, err = c.Do("PING")
	require.NoError(t, err)
	s.Stop(t)
	defer s.Cont(t)
	start := time.Now()
	_, err = c.Do("PING")
	took := time.Since(start)
	require.ErrorAs(t, err, &ne)
	assert.True(t, ne.Timeout(), "PING to a frozen server failed other than by timing out: %v", err)
	assert.Less(t, took, 2*time.Second, "ReadTimeout 200ms, PING returned after %v", took)
}

// TestARedissURLInAddrDialsWithTLS: rediss:// turns TLS on, with the URL's
// host as the server name the certificate is checked against, and
// DialOptions still apply (here, the CA to trust).
func TestARedissURLInAddrDialsWithTLS(t *testing.T) {
	certFile, keyFile := selfSignedCert(t, t.TempDir())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	tlsPort := l.Addr().(*net.TCPAddr).Port
	l.Close()
	redistest.Start(t, "--tls-port", strconv.Itoa(tlsPort), "--tls-cert-file", certFile,
		"--tls-key-file", keyFile, "--tls-ca-cert-file", certFile, "--tls-auth-clients", "no")
	pem, err := os.ReadFile(certFile)
	require.NoError(t, err)
	roots := x509.NewCertPool()
	require.True(t, roots.AppendCertsFromPEM(pem))

	p := &redispool.Pool{Addr: "rediss://127.0.0.1:" + strconv.Itoa(tlsPort) + "/2",
		DialOptions: []redis.DialOption{redis.DialTLSConfig(&tls.Config{RootCAs: roots})}}
	defer p.Close()
	c, err := p.GetContext(context.Background())
	require.NoError(t, err)
	defer c.Close()
	info, err := redis.String(c.Do("CLIENT", "INFO"))
	require.NoError(t, err)
	assert.Contains(t, info, " db=2 ")
}
