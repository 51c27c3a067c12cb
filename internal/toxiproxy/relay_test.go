package toxiproxy_test

import (
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// relaySettle bounds how long the relay waits, when the test ends, for the
// proxy to close the connections whose client is gone, before it closes
// them itself.
const relaySettle = 5 * time.Second

// relay is a plain TCP forwarder put between the pool and the proxy for the
// slicer toxic, to work around a toxiproxy v2 bug (Shopify/toxiproxy#558,
// #412, open in v2.12.0): when a write to the client fails (the client closed
// the connection, as the pool does after a read timeout) while a toxic still
// holds data for it, the link's writer exits without draining its channel.
// The last toxic of the chain then blocks forever sending to it: its
// goroutine leaks, and a RemoveToxic or AddToxic that reaches the link
// before the writer unregisters it waits for that toxic forever while
// holding the proxy's toxic lock. The slicer, which writes each reply in
// many pieces, hits it within seconds here: "remove toxic did not return
// within 10s", and goroutines left blocked in SlicerToxic.Pipe.
//
// The relay keeps reading what the proxy sends after the pool closed its
// connection, dropping it, and half-closes toward the proxy, so that the
// proxy's writes never fail and its links end by EOF, as they do when the
// server side closes. Bytes are forwarded as they arrive, so the pool sees
// the same pieces at the same times.
type relay struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// startRelay listens on a free loopback port and forwards to target until
// the test ends.
func startRelay(t *testing.T, target string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	r := &relay{ln: ln, target: target, conns: make(map[net.Conn]struct{})}
	r.wg.Add(1)
	go r.accept()
	t.Cleanup(func() {
		ln.Close()
		// The pool is closed by now: let the proxy finish and close its side.
		done := make(chan struct{})
		go func() { r.wg.Wait(); close(done) }()
		select {
		case <-done:
			return
		case <-time.After(relaySettle):
		}
		r.closeAll()
		if err := bounded("relay shutdown", func() error { <-done; return nil }); err != nil {
			t.Error(err)
		}
	})
	return ln.Addr().String()
}

func (r *relay) track(c net.Conn) {
	r.mu.Lock()
	r.conns[c] = struct{}{}
	r.mu.Unlock()
}

func (r *relay) closeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range r.conns {
		c.Close()
	}
}

func (r *relay) accept() {
	defer r.wg.Done()
	for {
		client, err := r.ln.Accept()
		if err != nil {
			return // the listener was closed
		}
		r.wg.Add(1)
		go r.pipe(client)
	}
}

// pipe forwards one connection.
func (r *relay) pipe(client net.Conn) {
	defer r.wg.Done()
	server, err := net.DialTimeout("tcp", r.target, time.Second)
	if err != nil {
		client.Close()
		return
	}
	r.track(client)
	r.track(server)
	defer func() {
		r.mu.Lock()
		delete(r.conns, client)
		delete(r.conns, server)
		r.mu.Unlock()
	}()

	// Client to proxy. When the client is gone, half-close: the proxy sees
	// EOF, closes the server connection, and its links end in order.
	up := make(chan struct{})
	go func() {
		defer close(up)
		io.Copy(server, client)
		server.(*net.TCPConn).CloseWrite()
	}()

	// Proxy to client, until the proxy closes. Once a write to the client
	// fails, keep reading and drop the rest.
	buf := make([]byte, 32<<10)
	clientGone := false
	var rerr error
	for rerr == nil {
		var n int
		n, rerr = server.Read(buf)
		if n > 0 && !clientGone {
			if _, err := client.Write(buf[:n]); err != nil {
				clientGone = true
			}
		}
	}
	if errors.Is(rerr, syscall.ECONNRESET) {
		// The proxy reset the connection: reset the client's too.
		client.(*net.TCPConn).SetLinger(0)
	}
	client.Close()
	server.Close()
	<-up
}
