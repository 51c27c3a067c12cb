// Command metrics serves a redispool.Pool's statistics as Prometheus metrics
// on /metrics, next to an endpoint that uses the pool, /incr.
//
// The collector comes from github.com/redispool/redispool/examples/redispoolprom,
// a module of its own, so that the redispool library does not depend on
// Prometheus. Registering it is one line:
//
//	prometheus.MustRegister(redispoolprom.NewCollector(pool))
//
// Run it against a redis-server, make some requests and scrape:
//
//	cd examples && go run ./metrics -addr localhost:6379 -listen localhost:8080
//	curl localhost:8080/incr
//	curl -s localhost:8080/metrics | grep ^redispool_
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

	"github.com/gomodule/redigo/redis"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/examples/redispoolprom"
)

const (
	// maxConns is the most connections to Redis the example opens.
	maxConns = 8
	// counterKey is the key /incr increments.
	counterKey = "redispool-example:metrics:counter"
)

// newPool returns the pool /incr uses.
func newPool(addr string) *redispool.Pool {
	return &redispool.Pool{Addr: addr, MaxActive: maxConns}
}

// newHandler serves /incr, which increments counterKey and answers with its
// value, and /metrics, the pool's metrics labelled pool="main", with the Go
// runtime's and the process's. An application with the default registry
// registers the collector with prometheus.MustRegister instead.
func newHandler(p *redispool.Pool) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		redispoolprom.NewCollector(p, redispoolprom.WithConstLabels(prometheus.Labels{"pool": "main"})),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /incr", func(w http.ResponseWriter, r *http.Request) {
		c, err := p.GetContext(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		defer c.Close()
		n, err := redis.Int64(c.Do("INCR", counterKey))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
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
	p := newPool(addr)
	defer p.Close()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	srv := &http.Server{Addr: listen, Handler: newHandler(p), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	}()
	log.Printf("serving http://%s/incr (Redis at %s) and http://%s/metrics", listen, addr, listen)
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
