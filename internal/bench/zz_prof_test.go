package bench

import (
	"context"
	"os"
	"runtime/pprof"
	"testing"
	"time"
)

func TestZZProfE2E(t *testing.T) {
	addr := os.Getenv("PROF_ADDR")
	name := os.Getenv("PROF_POOL")
	if addr == "" {
		t.Skip()
	}
	p := newE2EPool(name, addr)
	defer p.close()
	ctx := context.Background()
	e2eLoop(ctx, p, false, time.Second, nil)
	f, _ := os.Create("/tmp/prof_" + name + ".prof")
	pprof.StartCPUProfile(f)
	var acc e2eAcc
	e2eLoop(ctx, p, os.Getenv("PROF_SET") != "", 15*time.Second, &acc)
	pprof.StopCPUProfile()
	f.Close()
	r := acc.result()
	t.Logf("%s: %.0f ops/s p99 %v cpu/op %v", name, r.opsPerSec, r.p99, r.cpuPerOp)
}
