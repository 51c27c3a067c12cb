package redispool

import "time"

// SetNowFunc replaces the pool's clock until the returned func is called.
// A pool reads the clock it had when first used: set it before.
func SetNowFunc(f func() time.Time) (restore func()) {
	old := nowFunc
	nowFunc = f
	return func() { nowFunc = old }
}

// Backoff bounds, for tests that move the clock past a dial backoff.
const (
	BackoffBase = backoffBase
	BackoffCap  = backoffCap
)
