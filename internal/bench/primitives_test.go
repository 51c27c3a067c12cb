package bench

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkGetClose is part 1 as a Go benchmark, for go test -cpuprofile:
//
//	go test -run '^$' -bench 'GetClose/redispool/1x1' -cpuprofile cpu.out
//	go tool pprof -top cpu.out
//
// With more than one client it runs GOMAXPROCS x ceil(clients/GOMAXPROCS)
// goroutines, as b.RunParallel does; poolbench runs exactly clients.
func BenchmarkGetClose(b *testing.B) {
	for _, s := range getCloseShapes {
		for _, name := range fakePoolNames {
			b.Run(fmt.Sprintf("%s/%dx%d", name, s.Clients, s.Conns), func(b *testing.B) {
				p, err := newFakePool(name, s.Conns)
				if err != nil {
					b.Fatal(err)
				}
				defer p.close()
				b.ReportAllocs()
				if s.Clients == 1 {
					for b.Loop() {
						p.getClose()
					}
					return
				}
				procs := runtime.GOMAXPROCS(0)
				b.SetParallelism((s.Clients + procs - 1) / procs)
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						p.getClose()
					}
				})
			})
		}
	}
}

// BenchmarkPrimitives prices what a Get+Close is made of on this machine, to
// turn a profile into nanoseconds: a clock read, an uncontended token taken
// from and put back into a channel, a mutex round trip, the allocation of
// the conn handed out (redigo's is 24 bytes; redispool's was 96 bytes before it became 16), an atomic
// pointer swap.
func BenchmarkPrimitives(b *testing.B) {
	b.Run("time.Now", func(b *testing.B) {
		var sink time.Time
		for b.Loop() {
			sink = time.Now()
		}
		_ = sink
	})
	b.Run("monotonic-since-epoch", func(b *testing.B) {
		epoch := time.Now()
		var sink time.Duration
		for b.Loop() {
			sink = time.Since(epoch)
		}
		_ = sink
	})
	b.Run("chan-token-take-return", func(b *testing.B) {
		tokens := make(chan struct{}, 1)
		tokens <- struct{}{}
		for b.Loop() {
			select {
			case <-tokens:
			default:
				b.Fatal("no token")
			}
			tokens <- struct{}{}
		}
	})
	b.Run("mutex-lock-unlock", func(b *testing.B) {
		var mu sync.Mutex
		for b.Loop() {
			mu.Lock()
			mu.Unlock() //nolint:staticcheck // the round trip is what is measured
		}
	})
	b.Run("alloc-24B", func(b *testing.B) {
		type conn24 struct {
			p, pc *int
			state int
		}
		b.ReportAllocs()
		var x int
		for b.Loop() {
			escape = &conn24{p: &x}
		}
	})
	b.Run("alloc-96B", func(b *testing.B) {
		type conn96 struct {
			p, pc   *int
			mu      sync.Mutex
			a, c, d int
			e, f, g int
			err     error
		}
		b.ReportAllocs()
		var x int
		for b.Loop() {
			escape = &conn96{p: &x}
		}
	})
	b.Run("atomic-pointer-swap", func(b *testing.B) {
		var p atomic.Pointer[int]
		x := new(int)
		for b.Loop() {
			p.Swap(x)
		}
	})
	b.Run("context.Background-Err", func(b *testing.B) {
		ctx := context.Background()
		for b.Loop() {
			if ctx.Err() != nil {
				b.Fatal("done")
			}
		}
	})
}

var escape any
