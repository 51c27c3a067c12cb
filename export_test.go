package redispool

import "time"

// SetNowFunc replaces the pool's clock until the returned func is called.
// Set it before the pool's first use: the pool measures time from then.
func SetNowFunc(f func() time.Time) (restore func()) {
	old := nowFunc.Swap(&f)
	return func() { nowFunc.Store(old) }
}

// Backoff bounds, for tests that move the clock past a dial backoff.
const (
	BackoffBase = backoffBase
	BackoffCap  = backoffCap
)

// SetWatchPing changes how often the pool pings the sentinels it subscribes
// to, until the returned func is called.
func SetWatchPing(d time.Duration) (restore func()) {
	old := watchPingForTests.Swap(int64(d))
	return func() { watchPingForTests.Store(old) }
}
