// Command throttled rate-limits an HTTP endpoint with throttled/v2, whose
// redigostore keeps the limiter's state in Redis, through a bounded
// redispool.Pool.
//
// redigostore takes any pool with a Get method (its RedigoPool interface),
// so the pool goes in as it is, and the switch is one line:
//
//	store, err := redigostore.NewCtx(&redis.Pool{MaxIdle: 3, Dial: dial}, "throttled:", db)
//
// becomes
//
//	store, err := redigostore.NewCtx(&redispool.Pool{Addr: addr, MaxActive: 8, DB: db}, "throttled:", db)
//
// redigostore sends SELECT db on every connection it borrows, db 0
// included. redispool puts a connection back in the pool's own database
// (its DB field) when it is returned, so that no other user of the pool
// inherits another database:
//
//   - With DB set to throttled's db, as above, the SELECT changes nothing.
//   - On a pool shared with users of another database, Close sends
//     SELECT <DB> on each connection throttled used and keeps it: no new
//     connection, and the next user works in DB.
//   - redigo's redis.Pool puts the connection back still in db, and the next
//     user of the pool, who expects database 0, reads and writes db.
//
// Run it against a redis-server; each API key may make 5 requests at once,
// then one a minute:
//
//	cd examples && go run ./throttled -addr localhost:6379 -listen localhost:8080 -db 0
//	for i in 1 2 3 4 5 6; do curl -s -H 'X-Api-Key: alice' localhost:8080/; done
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"time"

	"github.com/throttled/throttled/v2"
	"github.com/throttled/throttled/v2/store/redigostore"

	"github.com/redispool/redispool"
)

const (
	// maxConns is the most connections to Redis the example opens.
	maxConns = 8
	// keyPrefix starts the name of every key throttled writes.
	keyPrefix = "throttled:"
	// apiKeyHeader names the header whose value each limit applies to.
	apiKeyHeader = "X-Api-Key"
)

// quota lets each API key make 5 requests at once, then one a minute.
var quota = throttled.RateQuota{MaxRate: throttled.PerMin(1), MaxBurst: 4}

// newPool returns the pool throttled uses: at most maxConns connections, in
// database db, the one throttled selects.
func newPool(addr string, db int) *redispool.Pool {
	return &redispool.Pool{Addr: addr, MaxActive: maxConns, DB: db}
}

// newStore is the one line that changes: the store takes the pool as it is.
func newStore(p redigostore.RedigoPool, db int) (throttled.GCRAStoreCtx, error) {
	return redigostore.NewCtx(p, keyPrefix, db)
}

// newHandler answers "ok" to each request its API key's quota allows, and
// 429 Too Many Requests to the others.
func newHandler(store throttled.GCRAStoreCtx) (http.Handler, error) {
	limiter, err := throttled.NewGCRARateLimiterCtx(store, quota)
	if err != nil {
		return nil, err
	}
	rl := &throttled.HTTPRateLimiterCtx{
		RateLimiter: limiter,
		VaryBy:      &throttled.VaryBy{Headers: []string{apiKeyHeader}},
		Error: func(w http.ResponseWriter, r *http.Request, err error) {
			http.Error(w, "rate limiter: "+err.Error(), http.StatusInternalServerError)
		},
	}
	return rl.RateLimit(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})), nil
}

func main() {
	addr := flag.String("addr", envOr("REDIS_ADDR", "localhost:6379"), "Redis address `host:port`")
	listen := flag.String("listen", "localhost:8080", "HTTP listen `address`")
	db := flag.Int("db", 0, "Redis `database` for throttled's keys")
	flag.Parse()
	if err := run(*addr, *listen, *db); err != nil {
		log.Fatal(err)
	}
}

func run(addr, listen string, db int) error {
	p := newPool(addr, db)
	defer p.Close()
	store, err := newStore(p, db)
	if err != nil {
		return err
	}
	h, err := newHandler(store)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	srv := &http.Server{Addr: listen, Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	}()
	log.Printf("serving on http://%s/, rate limits in Redis at %s, database %d", listen, addr, db)
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	log.Printf("pool: %+v", p.Stats())
	return nil
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
