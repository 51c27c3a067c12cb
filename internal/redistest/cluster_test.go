package redistest_test

import (
	"testing"

	"github.com/redispool/redispool/internal/redistest"
)

// TestStartClusterIsReady: StartCluster returns a cluster of three masters
// with one replica each, every slot served.
func TestStartClusterIsReady(t *testing.T) {
	c := redistest.StartCluster(t)
	if n := len(c.Masters(t)); n != 3 {
		t.Fatalf("%d masters, want 3", n)
	}
	for _, m := range c.Masters(t) {
		c.ReplicaOf(t, m)
	}
}
