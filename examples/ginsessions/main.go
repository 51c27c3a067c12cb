// Command ginsessions counts each visitor's visits in a gin-contrib/sessions
// session kept in Redis, through a bounded redispool.Pool.
//
// gin-contrib/sessions' redis.NewStore builds, through boj/redistore, a
// redigo redis.Pool with MaxActive 0, which redigo takes as unlimited. The
// switch is one line:
//
//	store, err := redis.NewStore(10, "tcp", addr, "", "", key)
//
// becomes
//
//	store, err := redis.NewStoreWithPool((&redispool.Pool{Addr: addr, MaxActive: 8}).RedigoPool(), key)
//
// NewStoreWithPool takes a *redis.Pool (redigo's concrete type, which it
// hands to boj/redistore), so the pool goes in through RedigoPool.
//
// Run it against a redis-server and visit the page a few times:
//
//	cd examples && go run ./ginsessions -addr localhost:6379 -listen localhost:8080
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

	"github.com/gin-contrib/sessions"
	ginredis "github.com/gin-contrib/sessions/redis"
	"github.com/gin-gonic/gin"

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
// RedigoPool, since NewStoreWithPool needs a *redis.Pool.
func newStore(p *redispool.Pool, key []byte) (ginredis.Store, error) {
	return ginredis.NewStoreWithPool(p.RedigoPool(), key)
}

// newRouter counts the visits of each session and answers with the count.
func newRouter(store sessions.Store) *gin.Engine {
	r := gin.New()
	r.Use(gin.Recovery(), sessions.Sessions(sessionName, store))
	r.GET("/", func(c *gin.Context) {
		s := sessions.Default(c)
		n, _ := s.Get("visits").(int)
		n++
		s.Set("visits", n)
		if err := s.Save(); err != nil {
			c.String(http.StatusInternalServerError, "saving the session: %v", err)
			return
		}
		c.String(http.StatusOK, "%d\n", n)
	})
	return r
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

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	srv := &http.Server{Addr: listen, Handler: newRouter(store), ReadHeaderTimeout: 5 * time.Second}
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
