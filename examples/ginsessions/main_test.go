package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/gin-gonic/gin"
	"github.com/gomodule/redigo/redis"
	"go.uber.org/goleak"

	"github.com/redispool/redispool/examples/internal/bound"
	"github.com/redispool/redispool/internal/redistest"
)

func TestMain(m *testing.M) {
	gin.SetMode(gin.TestMode)
	goleak.VerifyTestMain(m)
}

// visitors each visit the page visits times, one visit after the other, all
// visitors at once: bound.Requests requests in all.
const (
	visitors = 40
	visits   = bound.Requests / visitors
)

// TestGinSessions sends 400 requests from 40 visitors at once through
// gin-contrib/sessions' redis store on a pool of 8, checks that each visitor's count went 1, 2,
// ... 10 (the session was saved to Redis and read back each time), and that
// the pool opened at most 8 connections.
func TestGinSessions(t *testing.T) {
	srv := redistest.Start(t)
	p := newPool(srv.Addr())
	p.MaxActive = bound.MaxConns
	defer p.Close()

	tr := &http.Transport{MaxIdleConnsPerHost: visitors}
	defer tr.CloseIdleConnections()
	var err error
	r := bound.Measure(t, srv, p, func() {
		store, serr := newStore(p, []byte("0123456789abcdef0123456789abcdef"))
		if serr != nil {
			err = serr
			return
		}
		ts := httptest.NewServer(newRouter(store))
		defer ts.Close()
		err = bound.Run(visitors, visitors, func(int) error {
			jar, err := cookiejar.New(nil)
			if err != nil {
				return err
			}
			client := &http.Client{Transport: tr, Jar: jar}
			for want := 1; want <= visits; want++ {
				got, err := visit(client, ts.URL+"/")
				if err != nil {
					return err
				}
				if got != want {
					return fmt.Errorf("visit %d: the page counted %d; the session was not kept", want, got)
				}
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	bound.Check(t, r)

	keys, kerr := redis.Strings(srv.Do(t, "KEYS", "session_*"), nil)
	if kerr != nil || len(keys) != visitors {
		t.Errorf("Redis holds %d session keys (error %v); want one per visitor, %d", len(keys), kerr, visitors)
	}
}

// visit gets url and returns the count in the body.
func visit(client *http.Client, url string) (int, error) {
	resp, err := client.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s: %s", resp.Status, body)
	}
	return strconv.Atoi(strings.TrimSpace(string(body)))
}
