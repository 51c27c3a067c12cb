package toxiproxy_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
)

// controlTimeout bounds every call into toxiproxy (adding or removing a
// toxic, stopping the proxy), which waits for every link through the proxy
// to take the change. A call that takes longer fails the test instead of
// hanging it.
const controlTimeout = 10 * time.Second

// faultProxy is a toxiproxy proxy running in this process, listening on a
// free loopback port and forwarding to upstream.
type faultProxy struct {
	proxy *toxiproxy.Proxy
	addr  string

	longestControl time.Duration // the longest add or remove, for the log
}

// startProxy starts a proxy to upstream and stops it when the test ends.
// No HTTP API and no toxiproxy-server binary: the proxy and its toxics are
// driven through the Go API.
func startProxy(t *testing.T, upstream string) *faultProxy {
	t.Helper()
	// The ApiServer is only the owner of the proxy's logger and metrics; its
	// HTTP side is never started. Metrics must be non-nil (links read it),
	// and with no collectors set none are recorded.
	server := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	proxy := toxiproxy.NewProxy(server, "redis", "127.0.0.1:0", upstream)
	require.NoError(t, proxy.Start(), "starting toxiproxy")
	fp := &faultProxy{proxy: proxy, addr: proxy.Listen}
	// Stop closes the listener and every connection through the proxy, which
	// ends the goroutines of their links.
	t.Cleanup(func() {
		if err := bounded("stop the proxy", func() error { proxy.Stop(); return nil }); err != nil {
			t.Error(err)
		}
	})
	return fp
}

// toxic is one toxic, as the toxiproxy HTTP API takes it.
type toxic struct {
	Type       string         // latency, slicer, timeout, reset_peer, limit_data
	Stream     string         // downstream (server to client) or upstream
	Attributes map[string]any // the toxic's attributes, in toxiproxy's units
}

// toxicName is the name the toxic is added under; one at a time per proxy.
const toxicName = "fault"

func (x toxic) json() string {
	attrs := make([]string, 0, len(x.Attributes))
	for k, v := range x.Attributes {
		attrs = append(attrs, fmt.Sprintf("%q: %v", k, v))
	}
	return fmt.Sprintf(`{"name": %q, "type": %q, "stream": %q, "toxicity": 1.0, "attributes": {%s}}`,
		toxicName, x.Type, x.Stream, strings.Join(attrs, ", "))
}

func (x toxic) String() string {
	return fmt.Sprintf("%s %s %v", x.Type, x.Stream, x.Attributes)
}

// add adds the toxic to the proxy: to the connections open now and to every
// later one.
func (fp *faultProxy) add(t *testing.T, x toxic) {
	t.Helper()
	defer fp.timeControl(time.Now())
	err := bounded("add toxic "+x.String(), func() error {
		_, err := fp.proxy.Toxics.AddToxicJson(strings.NewReader(x.json()))
		return err
	})
	require.NoError(t, err)
}

// remove removes the toxic added by add. Some toxics (timeout) close the
// connections they held when removed.
func (fp *faultProxy) remove(t *testing.T) {
	t.Helper()
	defer fp.timeControl(time.Now())
	err := bounded("remove toxic", func() error {
		return fp.proxy.Toxics.RemoveToxic(context.Background(), toxicName)
	})
	require.NoError(t, err)
}

func (fp *faultProxy) timeControl(start time.Time) {
	fp.longestControl = max(fp.longestControl, time.Since(start))
}

// bounded runs f, giving up after controlTimeout.
func bounded(what string, f func() error) error {
	done := make(chan error, 1)
	go func() { done <- f() }()
	timer := time.NewTimer(controlTimeout)
	defer timer.Stop()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("toxiproxy: %s: %w", what, err)
		}
		return nil
	case <-timer.C:
		return fmt.Errorf("toxiproxy: %s did not return within %v", what, controlTimeout)
	}
}
