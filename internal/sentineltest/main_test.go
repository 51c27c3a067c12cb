package sentineltest

import (
	"testing"

	"github.com/redispool/redispool/internal/leakcheck"
)

// TestMain also proves that a closed pool stops its subscriptions to the
// sentinels and that the processes' waiters end.
func TestMain(m *testing.M) { leakcheck.VerifyTestMain(m) }
