package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
)

// profile writes, for each shape of part 1 and for redispool and redigo, a
// CPU profile of Get+Close taken over ProfileTime, and an allocation profile
// with every allocation sampled, taken over a fifth of that:
//
//	getclose-<pool>-<clients>x<conns>.cpu.pprof
//	getclose-<pool>-<clients>x<conns>.allocs.pprof (and .allocs-base.pprof)
//
// Read them with
//
//	go tool pprof -top FILE.cpu.pprof
//	go tool pprof -top -sample_index=alloc_space -diff_base FILE.allocs-base.pprof FILE.allocs.pprof
func (r *runner) profile() error {
	dir := r.cfg.ProfileDir
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, s := range getCloseShapes {
		for _, name := range []string{nameRedispool, nameRedigo} {
			p, err := newFakePool(name, s.Conns)
			if err != nil {
				return err
			}
			base := filepath.Join(dir, fmt.Sprintf("getclose-%s-%dx%d", name, s.Clients, s.Conns))
			runtime.GC()
			f, err := os.Create(base + ".cpu.pprof")
			if err != nil {
				return err
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				f.Close()
				return err
			}
			res := loop(s.Clients, r.cfg.getCloseWarmup(), r.cfg.ProfileTime, p.getClose)
			pprof.StopCPUProfile()
			if err := f.Close(); err != nil {
				return err
			}
			r.progress("profile %s %s: %.1f ns/op, %.2f allocs/op, %d failed Gets under the CPU profiler -> %s.cpu.pprof",
				name, s, float64(res.elapsed.Nanoseconds())/float64(res.ops), float64(res.allocs)/float64(res.ops), res.failed, base)

			// The allocation profile is cumulative since the program
			// started: a base is written before the loop, to subtract with
			// -diff_base. Both are written while every allocation is
			// sampled, so that the writer scales none.
			old := runtime.MemProfileRate
			runtime.MemProfileRate = 1
			runtime.GC()
			runtime.GC()
			err = writeProfile(base+".allocs-base.pprof", "allocs")
			if err == nil {
				loop(s.Clients, 0, r.cfg.ProfileTime/5, p.getClose)
				runtime.GC()
				runtime.GC()
				err = writeProfile(base+".allocs.pprof", "allocs")
			}
			runtime.MemProfileRate = old
			if err != nil {
				return err
			}
			p.close()
		}
	}
	return nil
}

func writeProfile(path, name string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup(name).WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// profileE2E writes a CPU profile of each redigo-API pool running GET end to
// end, e2e-<pool>-get.cpu.pprof, to see what a pool costs next to the
// network and the protocol.
func (r *runner) profileE2E(ctx context.Context, s *server) error {
	for _, name := range []string{nameRedispool, nameRedigo} {
		p := newE2EPool(name, s.addr)
		e2eLoop(ctx, p, false, r.warmup, nil)
		runtime.GC()
		path := filepath.Join(r.cfg.ProfileDir, fmt.Sprintf("e2e-%s-get.cpu.pprof", name))
		f, err := os.Create(path)
		if err != nil {
			p.close()
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			p.close()
			return err
		}
		var acc e2eAcc
		e2eLoop(ctx, p, false, r.cfg.ProfileTime, &acc)
		res := acc.result()
		pprof.StopCPUProfile()
		p.close()
		if err := f.Close(); err != nil {
			return err
		}
		r.progress("profile e2e GET %s: %.0f ops/s, %.1f allocs/op -> %s", name, res.opsPerSec, res.allocs, path)
	}
	return nil
}
