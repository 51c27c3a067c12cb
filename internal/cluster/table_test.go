package cluster_test

import (
	"bytes"
	"fmt"
	"os"
	"testing"

	"github.com/redispool/redispool/internal/cluster/gen"
)

// The checked-in table is what the generator writes from the COMMAND reply
// of the redis-server on PATH: the table cannot drift from the server the
// tests check it against.
func TestTableIsWhatTheGeneratorWritesFromTheServer(t *testing.T) {
	c := startServer(t)
	want, err := gen.Generate(c)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("table.go")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		version, _ := gen.Version(c)
		t.Errorf("table.go differs from the table of redis-server %s: run go generate ./internal/cluster\n%s", version, firstDiff(got, want))
	}
}

// firstDiff shows the first line where a and b differ.
func firstDiff(a, b []byte) string {
	la, lb := bytes.Split(a, []byte("\n")), bytes.Split(b, []byte("\n"))
	for i := 0; i < len(la) || i < len(lb); i++ {
		var x, y []byte
		if i < len(la) {
			x = la[i]
		}
		if i < len(lb) {
			y = lb[i]
		}
		if !bytes.Equal(x, y) {
			return fmt.Sprintf("line %d:", i+1) + "\n  checked in: " + string(x) + "\n  generated:  " + string(y)
		}
	}
	return ""
}
