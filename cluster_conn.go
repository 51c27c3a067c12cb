package redispool

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/redispool/redispool/internal/cluster"
)

var (
	_ redis.ConnWithTimeout = (*clusterConn)(nil)
	_ redis.ConnWithContext = (*clusterConn)(nil)
)

const (
	// maxRedirects bounds the MOVED and ASK replies one command follows.
	maxRedirects = 16
	// retryBackoffMin and retryBackoffMax pace the retries of a command
	// the cluster could not take (TRYAGAIN, CLUSTERDOWN, LOADING, a failed
	// dial): the pause doubles from the first to the second.
	retryBackoffMin = 10 * time.Millisecond
	retryBackoffMax = 250 * time.Millisecond
)

// errNoReplyPending is returned by Receive on a cluster conn that sent no
// command: no node has a reply for it.
var errNoReplyPending = errors.New("redispool: Receive on a cluster conn that sent no command")

// errSlotUnserved is the error of a command whose slot no node serves in
// the slot map; the command is retried as the map is refreshed.
var errSlotUnserved = errors.New("redispool: no node of the cluster serves the slot")

// clusterConn is the conn Get hands out for a cluster. It holds one conn
// from a node pool at a time: bound by the first command, moved when a
// command's slot lives on another node and the node conn is clean (see
// activeConn.clean). Commands that provably did not run (MOVED, ASK,
// TRYAGAIN, CLUSTERDOWN, LOADING, a failed dial) are retried; nothing else.
type clusterConn struct {
	cl *Cluster
	// mu protects the fields below. It is held while a command is routed,
	// which may borrow a node conn, never while a command runs: a reader
	// that another goroutine's Send must not block (PubSubConn) only reads
	// from a conn already bound, which is not clean, so never moved.
	mu     sync.Mutex
	nc     redis.Conn // the node conn; nil until the first command
	addr   string     // nc's node
	closed bool
	// multi is set by a MULTI asked for while the conn was clean: it is
	// sent with the next command, so that the transaction goes to that
	// command's node, or by Flush.
	multi bool
}

// doFunc runs a command on a node conn.
type doFunc func(nc redis.Conn) (any, error)

// Do routes the command by its key's slot (see docs/cluster.md) and
// returns its reply.
func (c *clusterConn) Do(cmd string, args ...any) (any, error) {
	return c.run(context.Background(), cmd, args, func(nc redis.Conn) (any, error) {
		return nc.Do(cmd, args...)
	})
}

// DoWithTimeout is Do with the read timeout given instead of the pool's.
func (c *clusterConn) DoWithTimeout(timeout time.Duration, cmd string, args ...any) (any, error) {
	return c.run(context.Background(), cmd, args, func(nc redis.Conn) (any, error) {
		return redis.DoWithTimeout(nc, timeout, cmd, args...)
	})
}

// DoContext is Do bounded also by ctx, retries included.
func (c *clusterConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	if err := contextDone(ctx); err != nil {
		return nil, err
	}
	return c.run(ctx, cmd, args, func(nc redis.Conn) (any, error) {
		return redis.DoContext(nc, ctx, cmd, args...)
	})
}

// run runs a command on the node that serves it, following redirects and
// retrying while the command provably did not run, within WaitTimeout and
// ctx.
func (c *clusterConn) run(ctx context.Context, cmd string, args []any, do doFunc) (any, error) {
	switch {
	case cmd == "":
		return c.pending(do)
	case isMulti(cmd, args):
		if ok, err := c.deferMulti(); ok || err != nil {
			return okReply(err)
		}
	}
	return c.routed(ctx, cluster.RouteOf(cmd, args), do)
}

// routed runs a command on the node of route, following redirects and
// pausing before retries (see retry).
func (c *clusterConn) routed(ctx context.Context, route cluster.Route, do doFunc) (any, error) {
	r := retry{cl: c.cl, ctx: ctx}
	for {
		nc, free, err := c.conn(ctx, route, r.to)
		if err != nil {
			if r.again(err) {
				continue
			}
			return nil, err
		}
		if r.asking {
			if err := nc.Send("ASKING"); err != nil {
				return nil, err
			}
		}
		reply, err := do(nc)
		switch {
		case !free:
			return reply, err
		case r.redirected(err):
		case unsent(nc, err) && r.again(err):
		default:
			return reply, err
		}
	}
}

// unsent reports whether err, from a command on a clean node conn, says
// that the command was not written: with AutoPipeline, the shared
// connection could not be had, as a dial failed. The conn is then still
// clean (see autoConn.awaitAll).
func unsent(nc redis.Conn, err error) bool {
	a, ok := nc.(*autoConn)
	return ok && !replied(err) && a.clean()
}

// isMulti reports whether the command is MULTI.
func isMulti(cmd string, args []any) bool {
	return len(args) == 0 && strings.EqualFold(cmd, "MULTI")
}

// okReply is the reply to a MULTI deferred, or the error that stopped it.
func okReply(err error) (any, error) {
	if err != nil {
		return nil, err
	}
	return "OK", nil
}

// deferMulti holds a MULTI back until the next command when the conn is
// clean, and reports whether it did.
func (c *clusterConn) deferMulti() (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.closed:
		return false, ErrConnClosed
	case c.nc != nil && !isClean(c.nc), c.multi:
		// A MULTI held back already: this one goes to the server after it,
		// which refuses it (nested), as without a cluster.
		return false, nil
	}
	c.multi = true
	return true, nil
}

// pending is Do(""): it flushes and reads the replies pending on the node
// conn, if any. A MOVED among them, not followed (the commands were
// pipelined), still refreshes a slot map that disagrees with it.
func (c *clusterConn) pending(do doFunc) (any, error) {
	nc, err := c.bound()
	if nc == nil {
		return nil, err
	}
	reply, err := do(nc)
	rs, _ := reply.([]any)
	for _, r := range rs {
		if e, ok := r.(redis.Error); ok {
			c.cl.pipelinedMoved(e)
		}
	}
	return reply, err
}

// conn returns the node conn for a command on route, or on the node to
// when a redirect named one, binding the conn or moving it. free reports
// that the conn was clean: the command's error replies then say whether
// it ran. A conn that is not clean is not moved: the command goes to its
// node.
func (c *clusterConn) conn(ctx context.Context, route cluster.Route, to string) (nc redis.Conn, free bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.multi {
		route.ReadOnly = false // a transaction goes to a master, whatever its first command
	}
	nc, free, err = c.connLocked(ctx, route, to)
	if err == nil && c.multi {
		// The deferred MULTI goes first: from here the command is in a
		// transaction, and its redirect an error, not a retry.
		c.multi, free = false, false
		err = nc.Send("MULTI")
	}
	return nc, free, err
}

// connLocked is conn but for a deferred MULTI.
func (c *clusterConn) connLocked(ctx context.Context, route cluster.Route, to string) (nc redis.Conn, free bool, err error) {
	if c.closed {
		return nil, false, ErrConnClosed
	}
	if c.nc != nil && !isClean(c.nc) {
		return c.nc, false, nil
	}
	addr := to
	if addr == "" {
		addr = c.cl.route(route, c.addr)
	}
	switch {
	case addr == "":
		return nil, false, errSlotUnserved
	case c.nc != nil && addr == c.addr:
		return c.nc, true, nil
	case c.nc != nil:
		old := c.nc
		c.nc, c.addr = nil, ""
		old.Close() // clean: back to its pool
	}
	nc, err = c.cl.node(addr).GetContext(ctx)
	if err != nil {
		return nil, false, err
	}
	c.nc, c.addr = nc, addr
	return nc, true, nil
}

// isClean reports whether a node conn may move: nothing pending, no
// state, no error.
func isClean(nc redis.Conn) bool {
	switch nc := nc.(type) {
	case *activeConn:
		return nc.clean()
	case *autoConn:
		return nc.clean()
	}
	return false
}

// clean reports whether the borrow left nothing to read or undo, no error,
// and no call in progress.
func (ac *activeConn) clean() bool {
	pc, err := ac.lock()
	if err != nil {
		return false
	}
	defer ac.unlock()
	return pc.untouched(pc.p.cfg.db) && ac.word.Load()&wordUses == 0
}

// clean reports whether the borrow has no reply due, no error, and no
// connection of its own that is not clean.
func (a *autoConn) clean() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed || a.err != nil || len(a.unsent) > 0 || len(a.pending) > 0 {
		return false
	}
	return a.ded == nil || a.ded.clean()
}

// route is the address a command on r goes to: its slot's master, or with
// ReadOnly and a read-only command one of its replicas (the bound node
// when it serves the slot); a keyless command goes to the bound node, or
// any master. It is "" when no node serves the slot.
func (cl *Cluster) route(r cluster.Route, bound string) string {
	m := cl.current()
	switch {
	case r.Slot < 0 && bound != "" && (m.IsMaster(bound) || r.ReadOnly && cl.ReadOnly):
		// A keyless write on a conn bound to a replica by reads goes to a
		// master.
		return bound
	case r.Slot < 0:
		return m.AnyMaster(cl.pick.Add(1))
	case !r.ReadOnly || !cl.ReadOnly:
		return m.Master(r.Slot)
	case bound != "" && m.Serves(r.Slot, bound):
		return bound
	}
	return m.Replica(r.Slot, cl.pick.Add(1))
}

// bound returns the node conn, or nil when no command was sent yet.
func (c *clusterConn) bound() (redis.Conn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrConnClosed
	}
	return c.nc, nil
}

// Send routes and queues a command. A conn with commands pending stays on
// its node: later Sends go there whatever their slot, and a command of
// another node's slot gets its MOVED reply as an error from Receive.
func (c *clusterConn) Send(cmd string, args ...any) error {
	if isMulti(cmd, args) {
		if ok, err := c.deferMulti(); ok || err != nil {
			return err
		}
	}
	nc, _, err := c.conn(context.Background(), cluster.RouteOf(cmd, args), "")
	if err != nil {
		return err
	}
	return nc.Send(cmd, args...)
}

// Flush writes the queued commands, and a MULTI deferred.
func (c *clusterConn) Flush() error {
	c.mu.Lock()
	multi := c.multi
	c.mu.Unlock()
	var nc redis.Conn
	var err error
	if multi {
		nc, _, err = c.conn(context.Background(), cluster.Route{Slot: -1}, "")
	} else {
		nc, err = c.bound()
	}
	if nc == nil {
		return err
	}
	return nc.Flush()
}

// Receive reads one reply from the bound node.
func (c *clusterConn) Receive() (any, error) {
	return c.receive(func(nc redis.Conn) (any, error) { return nc.Receive() })
}

// ReceiveWithTimeout is Receive with the read timeout given.
func (c *clusterConn) ReceiveWithTimeout(timeout time.Duration) (any, error) {
	return c.receive(func(nc redis.Conn) (any, error) { return redis.ReceiveWithTimeout(nc, timeout) })
}

// ReceiveContext is Receive bounded also by ctx.
func (c *clusterConn) ReceiveContext(ctx context.Context) (any, error) {
	return c.receive(func(nc redis.Conn) (any, error) { return redis.ReceiveContext(nc, ctx) })
}

// receive reads a reply with f from the bound node conn. A MOVED reply,
// not followed here (the command was pipelined), still refreshes a slot
// map that disagrees with it.
func (c *clusterConn) receive(f doFunc) (any, error) {
	nc, err := c.bound()
	switch {
	case err != nil:
		return nil, err
	case nc == nil:
		return nil, errNoReplyPending
	}
	reply, err := f(nc)
	if e, ok := err.(redis.Error); ok {
		c.cl.pipelinedMoved(e)
	}
	return reply, err
}

// pipelinedMoved refreshes the slot map if e is a MOVED reply, to a
// pipelined command, that disagrees with it.
func (cl *Cluster) pipelinedMoved(e redis.Error) {
	rest, ok := strings.CutPrefix(string(e), "MOVED ")
	if !ok {
		return
	}
	if slot, addr, ok := parseRedirect(rest); ok {
		cl.moved(slot, addr)
	}
}

// Err returns the node conn's Err, or ErrConnClosed after Close.
func (c *clusterConn) Err() error {
	nc, err := c.bound()
	if nc == nil {
		return err
	}
	return nc.Err()
}

// Close returns the node conn to its pool, under the single-server rules,
// and makes every later call fail with ErrConnClosed. It is idempotent.
func (c *clusterConn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	nc := c.nc
	c.nc = nil
	c.mu.Unlock()
	if nc == nil {
		return nil
	}
	return nc.Close()
}

// retry follows a command's redirects and paces its retries.
type retry struct {
	cl        *Cluster
	ctx       context.Context
	deadline  time.Time // set by the first wait
	redirects int
	pause     time.Duration
	to        string // the node a redirect named; "" to route by the slot map
	asking    bool   // send ASKING first: the redirect was an ASK
}

// redirected reports whether err says that the command did not run and
// should be sent again: after MOVED to the node it names (refreshing the
// map if that disagrees), after ASK there with ASKING, after TRYAGAIN,
// CLUSTERDOWN or LOADING after a pause.
func (r *retry) redirected(err error) bool {
	e, ok := err.(redis.Error)
	if !ok {
		return false
	}
	kind, rest, _ := strings.Cut(string(e), " ")
	switch kind {
	case "MOVED", "ASK":
		return r.redirect(kind, rest)
	case "CLUSTERDOWN":
		r.cl.requestRefresh()
		return r.wait()
	case "TRYAGAIN", "LOADING":
		return r.wait()
	}
	return false
}

// redirect follows "MOVED slot addr" or "ASK slot addr".
func (r *retry) redirect(kind, rest string) bool {
	slot, addr, ok := parseRedirect(rest)
	if !ok || r.redirects >= maxRedirects {
		return false
	}
	r.redirects++
	r.to, r.asking = addr, kind == "ASK"
	if kind == "MOVED" {
		r.cl.moved(slot, addr)
	}
	return true
}

// parseRedirect reads the "slot addr" of a MOVED or ASK reply.
func parseRedirect(rest string) (slot int, addr string, ok bool) {
	slotText, addr, ok := strings.Cut(rest, " ")
	slot, err := strconv.Atoi(slotText)
	if !ok || err != nil || slot < 0 || slot >= cluster.SlotCount {
		return 0, "", false
	}
	if _, port, err := net.SplitHostPort(addr); err != nil || checkPort(port) != nil {
		return 0, "", false // not a redirect: the reply goes to the caller as it is
	}
	return slot, addr, true
}

// moved refreshes the slot map, at most twice a second, when a MOVED reply
// says that slot lives at addr and the map disagrees.
func (cl *Cluster) moved(slot int, addr string) {
	if m := cl.current(); m.Master(slot) != addr {
		cl.requestRefresh()
	}
}

// again reports whether a failed borrow of a node conn is retried: after a
// failed dial or on a slot no node serves, the map is refreshed and the
// command routed again after a pause. Exhaustion, a closed pool or conn
// and ctx's end are not retried.
func (r *retry) again(err error) bool {
	if errors.Is(err, ErrPoolExhausted) || errors.Is(err, ErrConnClosed) ||
		r.ctx.Err() != nil || r.cl.p.closed.Load() || errors.Is(err, ErrInvalidConfig) {
		return false
	}
	r.cl.requestRefresh()
	return r.wait()
}

// wait pauses before a retry, routed by the slot map, and reports false
// when the pause would end after WaitTimeout (counted from the first
// pause) or ctx, or WaitTimeout is negative.
func (r *retry) wait() bool {
	r.to, r.asking = "", false
	wt := r.cl.p.cfg.waitTimeout
	if wt < 0 {
		return false
	}
	now := time.Now()
	if r.deadline.IsZero() {
		r.deadline = now.Add(wt)
	}
	r.pause = min(max(2*r.pause, retryBackoffMin), retryBackoffMax)
	if now.Add(r.pause).After(r.deadline) {
		return false
	}
	if dl, ok := r.ctx.Deadline(); ok && now.Add(r.pause).After(dl) {
		return false
	}
	t := time.NewTimer(r.pause)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.ctx.Done():
		return false
	case <-r.cl.ctx.Done():
		return false
	}
}
