package redispool_test

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/internal/redistest"
)

// TestAHealthyTLSConnReturnedUnreadIsNotDiscardedAsBroken checks peek on a
// TLS conn. Over TLS 1.3 the server sends session tickets after the
// handshake, and they stay in the socket until the client's first read. A
// conn the pool dialed that went back idle before any read (a Get closed
// without a command, or the conn of a dial whose caller gave up) must still
// be reused after PeekAfterIdle: the ticket's bytes are not an unasked-for
// reply.
func TestAHealthyTLSConnReturnedUnreadIsNotDiscardedAsBroken(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := selfSignedCert(t, dir)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	tlsPort := l.Addr().(*net.TCPAddr).Port
	l.Close()
	redistest.Start(t, "--tls-port", strconv.Itoa(tlsPort), "--tls-cert-file", certFile,
		"--tls-key-file", keyFile, "--tls-ca-cert-file", certFile, "--tls-auth-clients", "no")
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(tlsPort))

	p := &redispool.Pool{Addr: addr, MaxActive: 2,
		DialOptions: []redis.DialOption{redis.DialUseTLS(true), redis.DialTLSSkipVerify(true)}}
	defer p.Close()
	c, err := p.GetContext(context.Background())
	require.NoError(t, err)
	c.Close() // no command: nothing read since the handshake

	time.Sleep(2 * redispool.PeekAfterIdle)
	c, err = p.GetContext(context.Background())
	require.NoError(t, err)
	_, err = c.Do("PING")
	require.NoError(t, err)
	c.Close()
	s := p.Stats()
	assert.Zero(t, s.Discards.Broken, "a healthy TLS conn was discarded as broken")
	assert.EqualValues(t, 1, s.DialCount, "the idle conn was not reused")
}
