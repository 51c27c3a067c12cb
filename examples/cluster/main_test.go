package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/boj/redistore"
	"go.uber.org/goleak"

	"github.com/redispool/redispool/internal/redistest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestExampleRunsOnACluster: the example's commands work on a real
// cluster.
func TestExampleRunsOnACluster(t *testing.T) {
	c := redistest.StartCluster(t)
	p := newPool(c.Addrs()[:1])
	defer p.Close()
	var out strings.Builder
	if err := run(p, &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "user 42: ada, go") || !strings.Contains(out.String(), "counter:9 = 1") {
		t.Errorf("output:\n%s", out.String())
	}
}

// TestRedistoreSessionsOnACluster: gorilla/sessions through boj/redistore,
// given pool.RedigoPool() on a cluster, saves 100 sessions and reads each
// back unchanged.
func TestRedistoreSessionsOnACluster(t *testing.T) {
	c := redistest.StartCluster(t)
	p := newPool(c.Addrs()[:2])
	defer p.Close()
	store, err := redistore.NewRediStoreWithPool(p.RedigoPool(), []byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()

	const sessions = 100
	cookies := make([]string, sessions)
	for i := range sessions {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		s, err := store.New(r, "s")
		if err != nil && s == nil {
			t.Fatalf("session %d: %v", i, err)
		}
		s.Values["n"] = i
		s.Values["name"] = fmt.Sprintf("visitor-%d", i)
		w := httptest.NewRecorder()
		if err := s.Save(r, w); err != nil {
			t.Fatalf("saving session %d: %v", i, err)
		}
		cookies[i] = w.Header().Get("Set-Cookie")
	}
	mismatches := 0
	for i, cookie := range cookies {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Header.Set("Cookie", cookie)
		s, err := store.New(r, "s")
		if err != nil || s.IsNew || s.Values["n"] != i || s.Values["name"] != fmt.Sprintf("visitor-%d", i) {
			mismatches++
			t.Errorf("session %d read back as %v (new %v, error %v)", i, s.Values, s.IsNew, err)
		}
	}
	st := p.Stats()
	t.Logf("%d sessions saved and read back through redistore on a cluster: %d mismatches; %d conns on %d dials",
		sessions, mismatches, st.ActiveCount, st.DialCount)
}
