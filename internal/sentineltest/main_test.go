package sentineltest

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain also proves that a closed pool stops its subscriptions to the
// sentinels and that the processes' waiters end.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
