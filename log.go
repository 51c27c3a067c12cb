package redispool

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

// logInterval is the least time between two records of the same kind: a
// storm of failures logs once per interval, with the count of those left out.
const logInterval = time.Second

// logKind is a kind of event the pool logs, each rate-limited on its own.
type logKind int

const (
	logDialError logKind = iota
	logExhausted
	logLeak
	logDiscard  // + DiscardReason: one kind per reason, after the others
	numLogKinds = logDiscard + logKind(numDiscardReasons)
)

// logLimiter lets one record of each kind through per logInterval.
type logLimiter struct {
	mu         sync.Mutex                 // protects the fields below
	next       [numLogKinds]time.Duration // see Pool.clock: no record of the kind before
	suppressed [numLogKinds]int
}

// allow reports whether a record of kind k may be logged at now, and how
// many were left out since the last one.
func (l *logLimiter) allow(k logKind, now time.Duration) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now < l.next[k] {
		l.suppressed[k]++
		return false, 0
	}
	n := l.suppressed[k]
	l.next[k], l.suppressed[k] = now+logInterval, 0
	return true, n
}

// log writes a rate-limited record to the pool's Logger, if it has one.
//
// A panic in the Logger's handler is recovered and the record lost. The pool
// logs on goroutines of its own (a dial's, a leak timer's), where a panic
// would end the program, and in the middle of its accounting (a waiter
// discarding its grant keeps the permit to dial; a Get that gives up holds
// a permit or an abandoned dial), where it would lose a permit or a
// connection for good.
func (p *Pool) log(k logKind, level slog.Level, msg string, attrs ...slog.Attr) {
	logger := p.Logger
	if k == logLeak && logger == nil {
		logger = slog.Default()
	}
	if logger == nil {
		return
	}
	_ = guard(func() { // see above: the record is lost, nothing else
		if !logger.Enabled(context.Background(), level) {
			return
		}
		ok, suppressed := p.limiter.allow(k, p.clock())
		if !ok {
			return
		}
		if suppressed > 0 {
			attrs = append(attrs, slog.Int("suppressed", suppressed))
		}
		logger.LogAttrs(context.Background(), level, msg, attrs...)
	})
}

// logSentinel logs a record about the sentinels, when Logger is set. These
// are not rate-limited: each follows an announcement, a query or a failed
// subscription, whose retries back off. As with log, a panic in the handler
// loses the record and goes no further: some are logged on the pool's own
// goroutines, where it would end the program.
func (p *Pool) logSentinel(ctx context.Context, level slog.Level, msg string, attrs ...slog.Attr) {
	if p.Logger == nil {
		return
	}
	_ = guard(func() { p.Logger.LogAttrs(ctx, level, msg, attrs...) })
}

// logDiscarded logs a discarded connection. Routine discards (idle timeout,
// lifetime, MaxIdle, pool closed) are Debug; the others are Warn.
func (p *Pool) logDiscarded(reason DiscardReason, err error) {
	if p.Logger == nil {
		return
	}
	level := slog.LevelWarn
	switch reason {
	case DiscardIdleTimeout, DiscardLifetime, DiscardMaxIdle, DiscardPoolClosed:
		level = slog.LevelDebug
	}
	attrs := []slog.Attr{slog.String("reason", reason.String())}
	if err != nil {
		attrs = append(attrs, slog.String("error", errText(err)))
	}
	p.log(logDiscard+logKind(reason), level, "redispool: connection discarded", attrs...)
}

// leakWatch reports a borrowed connection held longer than LeakThreshold.
type leakWatch struct {
	timer *time.Timer
	pcs   []uintptr // the borrower's stack
}

// watchLeak starts the leak timer for a conn just handed out.
func (p *Pool) watchLeak() *leakWatch {
	w := &leakWatch{pcs: make([]uintptr, 32)}
	// Skip runtime.Callers, watchLeak and GetContext (and Get, if used).
	n := runtime.Callers(3, w.pcs)
	w.pcs = w.pcs[:n]
	start := time.Now()
	w.timer = time.AfterFunc(p.LeakThreshold, func() {
		p.stats.leaks.Add(1)
		p.log(logLeak, slog.LevelWarn, "redispool: connection held longer than LeakThreshold; was it closed?",
			slog.Duration("held", time.Since(start)),
			slog.String("borrowed_at", formatStack(w.pcs)))
	})
	return w
}

// formatStack renders the borrower's frames, leaving out the pool's own.
func formatStack(pcs []uintptr) string {
	var b strings.Builder
	frames := runtime.CallersFrames(pcs)
	for {
		f, more := frames.Next()
		if !strings.HasPrefix(f.Function, "github.com/redispool/redispool.") {
			b.WriteString(f.Function)
			b.WriteString("\n\t")
			b.WriteString(f.File)
			b.WriteByte(':')
			b.WriteString(strconv.Itoa(f.Line))
			b.WriteByte('\n')
		}
		if !more {
			break
		}
	}
	return b.String()
}

// errText is err's message for a log record. An error from user code may
// panic in its Error method, a typed nil pointer for one; fmt recovers and
// prints a placeholder, where a call of Error on a pool goroutine would end
// the program.
func errText(err error) string {
	return fmt.Sprint(err)
}
