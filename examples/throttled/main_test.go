package main

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/gomodule/redigo/redis"
	"go.uber.org/goleak"

	"github.com/redispool/redispool/examples/internal/bound"
	"github.com/redispool/redispool/internal/redistest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	// apiKeys is how many API keys the requests spread over.
	apiKeys = 40
	// allowedPerKey is how many requests the quota allows each key within a
	// minute: MaxBurst + 1.
	allowedPerKey = 5
	// marker is a key set only in database 0, so that reading it tells
	// whether a connection is in database 0.
	marker = "only-in-db-0"
)

// request sends request i, with API key i % apiKeys, and returns its status:
// 200 or 429.
func request(h http.Handler, i int) (int, error) {
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	req.Header.Set(apiKeyHeader, fmt.Sprintf("key-%d", i%apiKeys))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK && rec.Code != http.StatusTooManyRequests {
		return 0, fmt.Errorf("%d %s", rec.Code, rec.Body)
	}
	return rec.Code, nil
}

// drive sends bound.Requests requests through h on bound.Workers goroutines
// and checks that each API key got exactly allowedPerKey of them allowed.
// When other is not nil, it runs between the requests, as many times, as
// another user of the same pool would.
func drive(t *testing.T, h http.Handler, other func() error) {
	t.Helper()
	var allowed, denied atomic.Int64
	tasks := bound.Requests
	if other != nil {
		tasks *= 2
	}
	err := bound.Run(bound.Workers, tasks, func(i int) error {
		if other != nil {
			if i%2 == 1 {
				return other()
			}
			i /= 2
		}
		code, err := request(h, i)
		if code == http.StatusOK {
			allowed.Add(1)
		} else if code == http.StatusTooManyRequests {
			denied.Add(1)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if a, d := allowed.Load(), denied.Load(); a != apiKeys*allowedPerKey || a+d != bound.Requests {
		t.Errorf("%d requests allowed and %d denied; want %d allowed (%d for each of %d keys) and %d denied",
			a, d, apiKeys*allowedPerKey, allowedPerKey, apiKeys, bound.Requests-apiKeys*allowedPerKey)
	}
}

// keysIn returns the number of throttled's keys in database db.
func keysIn(t *testing.T, srv *redistest.Server, db int) int {
	t.Helper()
	c, err := redis.Dial("tcp", srv.Addr(), redis.DialDatabase(db))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	keys, err := redis.Strings(c.Do("KEYS", keyPrefix+"*"))
	if err != nil {
		t.Fatal(err)
	}
	return len(keys)
}

// TestThrottled sends 400 requests from 40 API keys at once through
// throttled's redigostore on a pool of 8 whose DB is the database throttled
// selects, and checks that each key got its quota and no more, and that the
// pool opened at most 8 connections and discarded none: throttled's SELECT
// of the pool's own database keeps the connection.
func TestThrottled(t *testing.T) {
	for _, db := range []int{1, 0} {
		t.Run(fmt.Sprintf("db%d", db), func(t *testing.T) {
			srv := redistest.Start(t)
			p := newPool(srv.Addr(), db)
			p.MaxActive = bound.MaxConns
			defer p.Close()
			r := bound.Measure(t, srv, p, func() {
				store, err := newStore(p, db)
				if err != nil {
					t.Fatal(err)
				}
				h, err := newHandler(store)
				if err != nil {
					t.Fatal(err)
				}
				drive(t, h, nil)
			})
			bound.Check(t, r)
			if n := keysIn(t, srv, db); n != apiKeys {
				t.Errorf("database %d holds %d of throttled's keys; want one per API key, %d", db, n, apiKeys)
			}
		})
	}
}

// TestThrottledSharedPool gives throttled database 1 on a pool of 8 in
// database 0 that another user shares, reading a key that exists only in
// database 0 between throttled's requests. Every read must find it: no
// connection throttled moved to database 1 may reach the other user. The
// pool puts each connection back in database 0 and keeps it: it discards
// none, and dials at most 8.
func TestThrottledSharedPool(t *testing.T) {
	const throttledDB = 1
	srv := redistest.Start(t)
	srv.Do(t, "SET", marker, "0")
	p := newPool(srv.Addr(), 0)
	p.MaxActive = bound.MaxConns
	defer p.Close()

	var reads atomic.Int64
	otherUser := func() error {
		c := p.Get()
		defer c.Close()
		v, err := redis.String(c.Do("GET", marker))
		if err != nil {
			return fmt.Errorf("another user of the pool read %s: %w; the connection was not in database 0", marker, err)
		}
		if v != "0" {
			return fmt.Errorf("another user of the pool read %s = %q; want \"0\"", marker, v)
		}
		reads.Add(1)
		return nil
	}

	r := bound.Measure(t, srv, p, func() {
		store, err := newStore(p, throttledDB)
		if err != nil {
			t.Fatal(err)
		}
		h, err := newHandler(store)
		if err != nil {
			t.Fatal(err)
		}
		drive(t, h, otherUser)

		// One more throttled request, then the other user, one after the
		// other: the connection throttled just returned is the one the pool
		// would hand out next if it kept it.
		if _, err := request(h, 0); err != nil {
			t.Fatal(err)
		}
		if err := otherUser(); err != nil {
			t.Error(err)
		}
	})
	t.Logf("pool of %d in database 0, throttled in database %d: %v", bound.MaxConns, throttledDB, r)

	if n := reads.Load(); n != bound.Requests+1 {
		t.Errorf("the other user read database 0 %d times; want %d", n, bound.Requests+1)
	}
	bound.Check(t, r) // at most 8 dialed, none discarded
	if n := keysIn(t, srv, throttledDB); n != apiKeys {
		t.Errorf("database %d holds %d of throttled's keys; want %d", throttledDB, n, apiKeys)
	}
	if n := keysIn(t, srv, 0); n != 0 {
		t.Errorf("database 0 holds %d of throttled's keys; want none", n)
	}
}

// TestRedigoPoolInheritsDatabase shows what redispool prevents: redigo's
// redis.Pool keeps the connection throttled moved to database 1, and the
// next user of the pool reads database 1.
func TestRedigoPoolInheritsDatabase(t *testing.T) {
	srv := redistest.Start(t)
	srv.Do(t, "SET", marker, "0")
	p := &redis.Pool{
		MaxIdle:   bound.MaxConns,
		MaxActive: bound.MaxConns,
		Wait:      true,
		Dial:      func() (redis.Conn, error) { return redis.Dial("tcp", srv.Addr()) },
	}
	defer p.Close()
	store, err := newStore(p, 1)
	if err != nil {
		t.Fatal(err)
	}
	h, err := newHandler(store)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := request(h, 0); err != nil {
		t.Fatal(err)
	}
	c := p.Get()
	defer c.Close()
	_, err = redis.String(c.Do("GET", marker))
	if !errors.Is(err, redis.ErrNil) {
		t.Fatalf("after throttled, GET %s on redigo's pool: %v; want redis.ErrNil (the connection is still in database 1)", marker, err)
	}
}
