package clustertest

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/redispool/redispool/internal/redistest"
)

// TestClusterBoundHoldsPerNode: 200 goroutines writing and reading their
// own keys through a cluster pool of MaxActive 8 get every reply right,
// no error, and never more than 8 of the pool's connections on any node,
// also with AutoPipeline, whose shared connections count toward the bound.
func TestClusterBoundHoldsPerNode(t *testing.T) {
	for _, auto := range []bool{false, true} {
		t.Run(fmt.Sprintf("AutoPipeline=%v", auto), func(t *testing.T) {
			boundHolds(t, auto)
		})
	}
}

func boundHolds(t *testing.T, auto bool) {
	c := redistest.StartCluster(t)
	p := newPool(t, c, 8)
	p.AutoPipeline = auto
	s := sample(c)
	var res tally
	var wg sync.WaitGroup
	end := time.Now().Add(3 * time.Second)
	for g := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(end); i++ {
				key, val := fmt.Sprintf("bound:%d:%d", g, i%10), fmt.Sprintf("%d-%d", g, i)
				conn := p.Get()
				_, err := conn.Do("SET", key, val)
				if err == nil {
					var got string
					got, err = redis.String(conn.Do("GET", key))
					if err == nil && got != val {
						res.bad("GET %s = %q, want %q", key, got, val)
					}
				}
				conn.Close()
				if err != nil {
					res.failed(err)
				} else {
					res.good()
				}
			}
		}()
	}
	wg.Wait()
	most, samples := s.end()
	st := p.Stats()
	t.Logf("200 goroutines, MaxActive 8: %s; at most %d pool conns on one node over %d samples; stats %+v", &res, most, samples, st)
	if res.wrong != 0 || res.errs != 0 || res.ok == 0 {
		t.Errorf("want only right replies: %s", &res)
	}
	if most > 8 {
		t.Errorf("%d pool connections on one node, above MaxActive 8", most)
	}
	if auto && st.PipelineCommandCount <= st.PipelineBatchCount {
		t.Errorf("AutoPipeline wrote %d commands in %d batches; want batches of several", st.PipelineCommandCount, st.PipelineBatchCount)
	}
}
