package redispool

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/redispool/redispool/internal/cluster"
)

const (
	// refreshGap is the least time between the starts of two refreshes of
	// the slot map: at most two a second.
	refreshGap = 500 * time.Millisecond
	// mapMaxAge is the age at which a slot map in use is refreshed.
	mapMaxAge = time.Minute
	// nodeGrace is how long a node pool is kept once its node left the
	// slot map, so that a node that comes back or a conn still on it is
	// not cut off; it is closed at the first refresh after.
	nodeGrace = 30 * time.Second
)

// Cluster, set as Pool.Cluster, makes the Pool serve a Redis Cluster: a
// conn from Get sends each command to the node that serves its key's slot,
// through a pool of its own per node with the Pool's settings (MaxActive
// and MaxIdle are per node). See docs/cluster.md for how commands are
// routed, redirected and retried. A Cluster serves one Pool.
type Cluster struct {
	// StartupNodes are addresses, "host:port", of some of the cluster's
	// nodes. The pool asks them for the slot map when no node it knows
	// answers. At least one is needed.
	StartupNodes []string

	// ReadOnly sends read-only commands (GET, ZRANGE, EVAL_RO, ...) to
	// the replicas of their slot, which may answer with data a little
	// older than the master's; each connection to a node is sent READONLY
	// once, when dialed. When false, every command goes to a master.
	ReadOnly bool

	mu      sync.Mutex
	p       *Pool                // the one Pool it serves; set by serve
	nodes   map[string]*Pool     // by address; protected by mu
	left    map[string]time.Time // when a node left the slot map; protected by mu
	retired []*Pool              // node pools closed, still counted by Stats; protected by mu

	slots atomic.Pointer[slotMap]
	// refresher holds a token while a refresh runs (see lockRefresh).
	refresher  chan struct{}
	refreshing atomic.Bool // a refresh is scheduled or in progress
	// lastRefresh is when the last refresh began, in Unix nanoseconds.
	lastRefresh atomic.Int64
	// loadErr is the error of the last read of the first slot map, when
	// it failed; protected by refresher.
	loadErr error
	pick    atomic.Uint32 // spreads keyless commands and replica reads
	stop    context.CancelFunc
	ctx     context.Context // ends when the Pool is closed
}

// slotMap is a slot map and when it was read.
type slotMap struct {
	*cluster.Map
	read time.Time
}

// check reports StartupNodes that are missing or not host:port.
func (cl *Cluster) check() error {
	if len(cl.StartupNodes) == 0 {
		return errors.New("Cluster.StartupNodes is empty; list the host:port of one or more of the cluster's nodes")
	}
	for _, a := range cl.StartupNodes {
		if strings.Contains(a, "@") || strings.Contains(a, "://") {
			return fmt.Errorf("Cluster.StartupNodes has %q; give host:port only, and credentials in Username and Password", redactAddr(a))
		}
		_, port, err := net.SplitHostPort(a)
		if err == nil {
			err = checkPort(port)
		}
		if err != nil {
			return fmt.Errorf("Cluster.StartupNodes has %q, which is not host:port: %v", a, err)
		}
	}
	return nil
}

// checkCluster reports the fields that Cluster excludes.
func checkCluster(p *Pool) error {
	switch {
	case p.Cluster == nil:
		return nil
	case p.Addr != "":
		return fmt.Errorf("both Cluster and Addr (%q) are set; the cluster's slot map names the nodes: list some in Cluster.StartupNodes", redactAddr(p.Addr))
	case p.Dial != nil || p.DialContext != nil:
		return errors.New("both Cluster and Dial or DialContext are set; the pool dials the cluster's nodes itself")
	case p.Sentinel != nil:
		return errors.New("both Cluster and Sentinel are set; a cluster fails over by itself: set one")
	case p.DB != 0:
		return fmt.Errorf("Cluster is set and DB is %d; a cluster has database 0 only", p.DB)
	}
	return p.Cluster.check()
}

// serve makes cl serve p, once its configuration is checked.
func (cl *Cluster) serve(p *Pool) error {
	if cl == nil {
		return nil
	}
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.p != nil && cl.p != p {
		return fmt.Errorf("%w: Cluster is already used by another Pool; give each Pool its own *Cluster", ErrInvalidConfig)
	}
	if cl.p == nil {
		cl.p = p
		cl.nodes = map[string]*Pool{}
		cl.left = map[string]time.Time{}
		cl.ctx, cl.stop = context.WithCancel(context.Background())
		cl.refresher = make(chan struct{}, 1)
	}
	return nil
}

// get returns a conn routed by slot, once a slot map is known.
func (cl *Cluster) get(ctx context.Context, p *Pool) (redis.Conn, error) {
	err := p.init()
	if err == nil && p.closed.Load() {
		err = ErrPoolClosed
	}
	if err == nil && cl.slots.Load() == nil {
		err = cl.load(ctx)
	}
	if err != nil {
		return errorConn{err}, err
	}
	return &clusterConn{cl: cl}, nil
}

// load reads the first slot map within ctx, or waits for the read in
// progress. While reads fail, a caller within refreshGap of the last one's
// start gets its error rather than asking again: the nodes are asked at
// most twice a second, however many callers wait. The Pool's Close ends a
// read.
func (cl *Cluster) load(ctx context.Context) error {
	if err := cl.lockRefresh(ctx); err != nil {
		return err
	}
	defer cl.unlockRefresh()
	switch {
	case cl.slots.Load() != nil:
		return nil
	case cl.loadErr != nil && time.Now().UnixNano()-cl.lastRefresh.Load() < int64(refreshGap):
		return cl.loadErr
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(cl.ctx, cancel)()
	err := cl.refreshLocked(ctx)
	if err != nil && ctx.Err() == nil {
		cl.loadErr = err
	}
	return err
}

// lockRefresh takes the right to refresh the slot map, waiting for a
// refresh in progress, until ctx ends or the Pool is closed.
func (cl *Cluster) lockRefresh(ctx context.Context) error {
	select {
	case <-cl.ctx.Done():
		return ErrPoolClosed
	case <-ctx.Done():
		return ctx.Err()
	case cl.refresher <- struct{}{}:
	}
	if cl.ctx.Err() != nil {
		cl.unlockRefresh()
		return ErrPoolClosed
	}
	return nil
}

func (cl *Cluster) unlockRefresh() { <-cl.refresher }

// current is the slot map; an old one is refreshed in the background.
func (cl *Cluster) current() *slotMap {
	m := cl.slots.Load()
	if m != nil && time.Since(m.read) > mapMaxAge {
		cl.requestRefresh()
	}
	return m
}

// requestRefresh refreshes the slot map in the background, unless a
// refresh is already scheduled or running, no sooner than refreshGap after
// the last one began.
func (cl *Cluster) requestRefresh() {
	if !cl.refreshing.CompareAndSwap(false, true) {
		return
	}
	wait := refreshGap - time.Duration(time.Now().UnixNano()-cl.lastRefresh.Load())
	time.AfterFunc(max(wait, 0), func() {
		defer cl.refreshing.Store(false)
		if cl.lockRefresh(cl.ctx) != nil {
			return
		}
		defer cl.unlockRefresh()
		// On failure, the next trigger tries again. A panic of user code
		// (TestOnBorrow, the Logger's handler) has no caller to reach on
		// this goroutine: it is dropped (see guard).
		_ = guard(func() { _ = cl.refreshLocked(cl.ctx) })
	})
}

// refreshLocked asks the nodes of the slot map, in random order, then the
// StartupNodes, for CLUSTER SLOTS, each within a share of what remains of
// DialTimeout, until one answers. It closes the pools of nodes that left
// the map more than nodeGrace ago.
func (cl *Cluster) refreshLocked(ctx context.Context) error {
	cl.lastRefresh.Store(time.Now().UnixNano())
	if d := cl.p.cfg.dialTimeout; d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	var addrs []string
	if m := cl.slots.Load(); m != nil {
		addrs = m.Addrs()
		rand.Shuffle(len(addrs), func(i, j int) { addrs[i], addrs[j] = addrs[j], addrs[i] })
	}
	addrs = append(addrs, cl.StartupNodes...)
	var errs []error
	for i, addr := range addrs {
		m, err := cl.ask(ctx, addr, len(addrs)-i)
		if err == nil {
			cl.slots.Store(&slotMap{Map: m, read: time.Now()})
			cl.sweep(m)
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", addr, err))
		if ctx.Err() != nil {
			break
		}
	}
	return fmt.Errorf("redispool: no cluster node gave the slot map: %w", errors.Join(errs...))
}

// ask asks the node at addr for CLUSTER SLOTS within 1/share of what
// remains of ctx.
func (cl *Cluster) ask(ctx context.Context, addr string, share int) (*cluster.Map, error) {
	if dl, ok := ctx.Deadline(); ok && share > 1 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Until(dl)/time.Duration(share))
		defer cancel()
	}
	c, err := cl.node(addr).GetContext(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	// A node conn reads on this goroutine, which may be a refresh's own:
	// a reply redigo cannot hold is an error, not the program's end.
	var reply any
	err = readSafely(func() (err error) {
		reply, err = redis.DoContext(c, ctx, "CLUSTER", "SLOTS")
		return err
	})
	if err != nil {
		return nil, err
	}
	return cluster.ParseSlots(reply, addr)
}

// node returns the pool of the node at addr, made on first use.
func (cl *Cluster) node(addr string) *Pool {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if np := cl.nodes[addr]; np != nil {
		return np
	}
	p := cl.p
	np := &Pool{
		Addr:                addr,
		TestOnBorrow:        p.TestOnBorrow,
		TestOnBorrowContext: p.TestOnBorrowContext,
		MaxIdle:             p.MaxIdle,
		MaxActive:           p.MaxActive,
		IdleTimeout:         p.IdleTimeout,
		MaxConnLifetime:     p.MaxConnLifetime,
		Username:            p.Username,
		Password:            p.Password,
		DialOptions:         p.DialOptions,
		DialTimeout:         p.DialTimeout,
		ReadTimeout:         p.ReadTimeout,
		WriteTimeout:        p.WriteTimeout,
		WaitTimeout:         p.WaitTimeout,
		MaxConcurrentDials:  p.MaxConcurrentDials,
		Logger:              p.Logger,
		LeakThreshold:       p.LeakThreshold,
		AutoPipeline:        p.AutoPipeline,
		readOnly:            cl.ReadOnly,
	}
	if p.closed.Load() {
		np.Close()
	}
	cl.nodes[addr] = np
	return np
}

// sweep notes the nodes that left map m, and closes the pools of those
// that left more than nodeGrace ago and did not come back.
func (cl *Cluster) sweep(m *cluster.Map) {
	var gone []*Pool
	cl.mu.Lock()
	now := time.Now()
	for addr, np := range cl.nodes {
		left, leaving := cl.left[addr]
		switch {
		case m.Has(addr):
			delete(cl.left, addr)
		case !leaving:
			cl.left[addr] = now
		case now.Sub(left) >= nodeGrace:
			delete(cl.left, addr)
			delete(cl.nodes, addr)
			cl.retired = append(cl.retired, np)
			gone = append(gone, np)
		}
	}
	cl.mu.Unlock()
	for _, np := range gone {
		np.Close()
	}
}

// pools returns every node pool, open or retired.
func (cl *Cluster) pools() []*Pool {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	ps := append([]*Pool(nil), cl.retired...)
	for _, np := range cl.nodes {
		ps = append(ps, np)
	}
	return ps
}

// stats sums the node pools' counters.
func (cl *Cluster) stats() PoolStats {
	var s PoolStats
	for _, np := range cl.pools() {
		n := np.Stats()
		s.ActiveCount += n.ActiveCount
		s.IdleCount += n.IdleCount
		s.WaitCount += n.WaitCount
		s.WaitDuration += n.WaitDuration
		s.MaxActive += n.MaxActive
		s.MaxIdle += n.MaxIdle
		s.WaitingCount += n.WaitingCount
		s.FailedWaitCount += n.FailedWaitCount
		s.FailedWaitDuration += n.FailedWaitDuration
		s.DialCount += n.DialCount
		s.DialErrorCount += n.DialErrorCount
		s.FastFailCount += n.FastFailCount
		s.WaitTimeoutCount += n.WaitTimeoutCount
		s.LeakCount += n.LeakCount
		s.PipelineBatchCount += n.PipelineBatchCount
		s.PipelineCommandCount += n.PipelineCommandCount
		s.Discards = s.Discards.add(n.Discards)
	}
	return s
}

// add sums two DiscardStats.
func (d DiscardStats) add(o DiscardStats) DiscardStats {
	return DiscardStats{
		Broken: d.Broken + o.Broken, State: d.State + o.State,
		IdleTimeout: d.IdleTimeout + o.IdleTimeout, Lifetime: d.Lifetime + o.Lifetime,
		MaxIdle: d.MaxIdle + o.MaxIdle, HealthCheck: d.HealthCheck + o.HealthCheck,
		PoolClosed: d.PoolClosed + o.PoolClosed, Retired: d.Retired + o.Retired,
	}
}

// close stops refreshes and closes every node pool; Pool.Close calls it.
func (cl *Cluster) close() {
	if cl == nil || cl.stop == nil {
		return
	}
	cl.stop()
	cl.refresher <- struct{}{} // a refresh in progress ends with ctx
	cl.unlockRefresh()
	for _, np := range cl.pools() {
		np.Close()
	}
}

// retire retires the connections of every node pool; Pool.Retire calls it.
func (cl *Cluster) retire() {
	if cl == nil {
		return
	}
	for _, np := range cl.pools() {
		np.Retire()
	}
}
