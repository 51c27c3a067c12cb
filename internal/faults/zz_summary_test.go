package faults

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// minTotalCommands is the done-when floor: commands counted over all the
// suites, every reply judged.
const minTotalCommands = 100_000

// TestSummary runs last (its file sorts last): it prints the figures of every
// suite as a table and checks the totals. It skips when some suites did not
// run (go test -run selected a few).
func TestSummary(t *testing.T) {
	rows := recordedSuites()
	want := []string{
		"stall, pool dials", "stall, naive Dial", "cancel, pool dials", "cancel, naive Dial", "outage",
		"idle killed, pool dials", "idle killed, redigo Dial", "idle killed, naive Dial", "readonly",
	}
	have := make(map[string]bool)
	for _, r := range rows {
		have[r.name] = true
	}
	for _, name := range want {
		if !have[name] {
			t.Skipf("suite %q did not run; run the whole package for the summary", name)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n| suite | commands | good | failed | wrong | wall |\n|---|---:|---:|---:|---:|---:|\n")
	var total suiteRow
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %v |\n", r.name, r.commands, r.good, r.failed, r.wrong, r.wall.Round(100*time.Millisecond))
		total.commands += r.commands
		total.good += r.good
		total.failed += r.failed
		total.wrong += r.wrong
		total.wall += r.wall
		assert.Zero(t, r.wrong, "wrong replies in %s", r.name)
	}
	fmt.Fprintf(&b, "| **total** | %d | %d | %d | %d | %v |", total.commands, total.good, total.failed, total.wrong, total.wall.Round(100*time.Millisecond))
	t.Log(b.String())
	assert.Zero(t, total.wrong)
	assert.GreaterOrEqual(t, total.commands, int64(minTotalCommands))
}
