package pipelinetest

import (
	"fmt"
	"sync"
	"testing"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/require"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/internal/redistest"
)

func TestSmoke(t *testing.T) {
	srv := redistest.Start(t)
	p := &redispool.Pool{Addr: srv.Addr(), AutoPipeline: true}
	defer p.Close()
	var wg sync.WaitGroup
	for g := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				c := p.Get()
				k := fmt.Sprintf("k%d:%d", g, i)
				_, err := c.Do("SET", k, k)
				require.NoError(t, err)
				v, err := redis.String(c.Do("GET", k))
				require.NoError(t, err)
				require.Equal(t, k, v)
				c.Close()
			}
		}()
	}
	wg.Wait()
	t.Logf("%+v", p.Stats())
}
