package redispool_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
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

// selfSignedCert writes a self-signed certificate for 127.0.0.1 and
// its key to dir.
func selfSignedCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(crand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	kder, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600))
	return certFile, keyFile
}

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

// hammer runs callers goroutines that Get, PING and Close in a loop for d,
// and returns the last error a Get or its PING returned.
func hammer(p *redispool.Pool, callers int, d time.Duration) error {
	var mu sync.Mutex
	var last error
	var wg sync.WaitGroup
	end := time.Now().Add(d)
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				c := p.Get()
				_, err := c.Do("PING")
				c.Close()
				if err != nil {
					mu.Lock()
					last = err
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return last
}

// TestADialCountsOnlyOnceTheServerHasAnswered: a server at maxclients, or
// a port that speaks only TLS, accepts the TCP connection and then refuses
// or closes it. Such a dial is a failed dial, which backs off: 32 callers
// for 1.5 s make at most 20 dials, and get an error that says what
// happened.
func TestADialCountsOnlyOnceTheServerHasAnswered(t *testing.T) {
	const (
		callers  = 32
		period   = 1500 * time.Millisecond
		maxDials = 20
	)
	t.Run("server at maxclients", func(t *testing.T) {
		srv := redistest.Start(t, "--maxclients", "1")
		other, err := redis.Dial("tcp", srv.Addr())
		require.NoError(t, err)
		defer other.Close()
		_, err = other.Do("PING")
		require.NoError(t, err)

		p := &redispool.Pool{Addr: srv.Addr()}
		defer p.Close()
		err = hammer(p, callers, period)
		s := p.Stats()
		t.Logf("%d dials, %d failed, %d Gets failed fast, in %v; last error: %v", s.DialCount, s.DialErrorCount, s.FastFailCount, period, err)
		assert.LessOrEqual(t, s.DialCount, int64(maxDials))
		assert.Equal(t, s.DialCount, s.DialErrorCount, "every dial failed")
		require.Error(t, err)
		assert.Contains(t, err.Error(), "max number of clients reached")
	})
	t.Run("plain client to a TLS port", func(t *testing.T) {
		certFile, keyFile := selfSignedCert(t, t.TempDir())
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		tlsPort := l.Addr().(*net.TCPAddr).Port
		l.Close()
		redistest.Start(t, "--tls-port", strconv.Itoa(tlsPort), "--tls-cert-file", certFile,
			"--tls-key-file", keyFile, "--tls-ca-cert-file", certFile, "--tls-auth-clients", "no")

		p := &redispool.Pool{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(tlsPort))}
		defer p.Close()
		err = hammer(p, callers, period)
		s := p.Stats()
		t.Logf("%d dials, %d failed, %d Gets failed fast, in %v; last error: %v", s.DialCount, s.DialErrorCount, s.FastFailCount, period, err)
		assert.LessOrEqual(t, s.DialCount, int64(maxDials))
		assert.Equal(t, s.DialCount, s.DialErrorCount, "every dial failed")
		require.Error(t, err)
		assert.Contains(t, err.Error(), "TLS")
	})
}
