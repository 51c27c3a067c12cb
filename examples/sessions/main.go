// Command sessions counts each visitor's visits in a gorilla/sessions session
// that boj/redistore keeps in Redis, through a bounded redispool.Pool.
//
// boj/redistore's own constructors build a redigo redis.Pool with MaxActive
// 0, which redigo takes as unlimited: every burst of requests opens as many
// connections as there are requests in flight. The switch is one line:
//
//	store, err := redistore.NewRediStore(10, "tcp", addr, "", "", key)
//
// becomes
//
//	store, err := redistore.NewRediStoreWithPool((&redispool.Pool{Addr: addr, MaxActive: 8}).RedigoPool(), key)
//
// NewRediStoreWithPool takes a *redis.Pool (the concrete type), which
// RedigoPool returns: a redis.Pool that takes its connections from the
// redispool.Pool, which alone bounds them.
//
// Run it against a redis-server and visit the page a few times:
//
//	cd examples && go run ./sessions -addr localhost:6379 -listen localhost:8080
//	curl -c /tmp/jar -b /tmp/jar localhost:8080/
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"time"

	"github.com/boj/redistore"
	"github.com/gorilla/sessions"

	"github.com/redispool/redispool"
)

const (
	sessionName = "visits"
	// maxConns is the most connections to Redis the example opens.
	maxConns = 8
)

// newPool returns the pool the store uses: at most maxConns connections.
func newPool(addr string) *redispool.Pool {
	return &redispool.Pool{Addr: addr, MaxActive: maxConns}
}

// newStore is the one line that changes: the store takes the pool through
// RedigoPool, since NewRediStoreWithPool needs a *redis.Pool.
func newStore(p *redispool.Pool, key []byte) (*redistore.RediStore, error) {
	return redistore.NewRediStoreWithPool(p.RedigoPool(), key)
}

// newHandler counts the visits of each session and answers with the count.
func newHandler(store sessions.Store) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		s, err := store.Get(r, sessionName)
		if err != nil {
			// A cookie that does not decode (another key) or a session
			// that cannot be read: s is a new session, but tell.
			log.Printf("session: %v", err)
		}
		n, _ := s.Values["visits"].(int)
		n++
		s.Values["visits"] = n
		if err := s.Save(r, w); err != nil {
			http.Error(w, "saving the session: "+err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "%d\n", n)
	})
	return mux
}

func main() {
	addr := flag.String("addr", envOr("REDIS_ADDR", "localhost:6379"), "Redis address `host:port`")
	listen := flag.String("listen", "localhost:8080", "HTTP listen `address`")
	flag.Parse()
	if err := run(*addr, *listen); err != nil {
		log.Fatal(err)
	}
}

func run(addr, listen string) error {
	// A real application reads its key from its configuration: with a random
	// key, sessions do not survive a restart.
	key := make([]byte, 32)
	rand.Read(key)

	p := newPool(addr)
	defer p.Close()
	store, err := newStore(p, key)
	if err != nil {
		return fmt.Errorf("connecting to Redis at %s: %w", addr, err)
	}
	defer store.Close() // closes the redis.Pool from RedigoPool, not p

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	srv := &http.Server{Addr: listen, Handler: newHandler(store), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	}()
	log.Printf("serving on http://%s/ with sessions in Redis at %s", listen, addr)
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
