package cluster_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/redispool/redispool/internal/cluster"
	"github.com/redispool/redispool/internal/cluster/gen"
	"github.com/redispool/redispool/internal/redistest"
)

// edgeLines are command lines whose keys are found by a keyword, a key
// count, a subcommand or the command's own code, with the arguments as
// many types as redigo's Do accepts.
var edgeLines = []commandLine{
	{"GET", args("a")}, {"get", args("{user}:1")}, {"GeT", args([]byte("b"))},
	{"GET", args(42)}, {"GET", args(int64(-7))}, {"GET", args(1.5)}, {"GET", args(true)}, {"GET", args(false)},
	{"GET", args(nil)}, {"GET", args(uint8(9))}, {"GET", args(argument{"arg"})}, {"GET", args(argument{argument{"x"}})},
	{"GET", args(redis.Args{"p", "q"})}, {"GET", args(struct{ A, B int }{1, 2})},
	{"SET", args("k", "v", "GET")}, {"SET", args("k", "v", "EX", 10)}, {"BITFIELD", args("k", "GET", "u8", 0)},
	{"MSET", args("a", 1, "b", 2)}, {"DEL", args("a", "b", "c")}, {"BITOP", args("AND", "d", "a", "b")},
	{"LMOVE", args("a", "b", "LEFT", "RIGHT")}, {"BLPOP", args("a", "b", 0)}, {"RENAME", args("a", "b")},
	{"EVAL", args("s", 0)}, {"EVAL", args("s", 2, "a", "b", "c")}, {"EVAL", args("s", "3", "a")},
	{"EVAL", args("s", -1, "a")}, {"EVAL", args("s", "x", "a")},
	{"EVAL", args("s", []byte("1"), "a")}, {"EVALSHA", args("sha", 1, "a", "b")}, {"EVAL_RO", args("s", 1, "a")},
	{"FCALL", args("f", 2, "a", "b")}, {"FCALL_RO", args("f", 1, "a")},
	{"XREAD", args("COUNT", 1, "STREAMS", "a", "b", 0, 0)}, {"XREAD", args("streams", "a", "b", "c", 0, 0, 0)},
	{"XREAD", args("BLOCK", 0, "STREAMS", "a", "$")},
	{"XREADGROUP", args("GROUP", "g", "c", "STREAMS", "s", ">")},
	{"XREADGROUP", args("GROUP", "streams", "c", "STREAMS", "s", ">")},
	{"XREADGROUP", args("GROUP", "g", "streams", "COUNT", 1, "STREAMS", "s1", "s2", ">", ">")},
	{"MIGRATE", args("h", 1, "k", 0, 5)}, {"MIGRATE", args("h", 1, "", 0, 5, "KEYS", "a", "b")},
	{"MIGRATE", args("h", 1, "", 0, 5, "AUTH", "keys", "KEYS", "a", "b")},
	{"MIGRATE", args("h", 1, "", 0, 5, "AUTH2", "u", "keys", "KEYS", "a")},
	{"MIGRATE", args("h", 1, "", 0, 5, "COPY", "REPLACE", "KEYS", "a")}, {"MIGRATE", args("h", 1, "k", 0, 5, "KEYS", "a")},
	{"MIGRATE", args("h", 1, "", 0, 5)}, {"MIGRATE", args("h", 1, nil, 0, 5, "keys", "a")},
	{"SORT", args("k")}, {"SORT", args("k", "STORE", "d")}, {"SORT", args("k", "BY", "store", "GET", "store", "STORE", "d")},
	{"SORT", args("k", "LIMIT", 0, 1, "STORE", "d", "STORE", "e")}, {"SORT", args("k", "STORE")}, {"SORT", args("k", "STORE", "store", "d")},
	{"SORT", args("k", "LIMIT", "store", "store", "ALPHA")}, {"SORT_RO", args("k", "BY", "x")},
	{"ZUNIONSTORE", args("d", 2, "a", "b", "WEIGHTS", 1, 2)}, {"ZUNIONSTORE", args("d", 3, "a", "b")},
	{"ZUNION", args(2, "a", "b")}, {"ZINTERCARD", args(2, "a", "b", "LIMIT", 1)}, {"SINTERCARD", args(1, "a")},
	{"LMPOP", args(2, "a", "b", "LEFT")}, {"BLMPOP", args(0, 2, "a", "b", "LEFT")}, {"BZMPOP", args(0, 1, "a", "MIN")},
	{"GEORADIUS", args("k", 0, 0, 1, "m", "STORE", "d")}, {"GEORADIUS", args("k", 0, 0, 1, "m", "STOREDIST", "d")},
	{"GEORADIUS", args("k", 0, 0, 1, "m", "STORE")}, {"GEORADIUSBYMEMBER", args("k", "m", 1, "km", "STORE", "d")},
	{"GEOSEARCHSTORE", args("d", "s", "FROMMEMBER", "m", "BYRADIUS", 1, "km")},
	{"OBJECT", args("ENCODING", "k")}, {"object", args("encoding", "k")}, {"OBJECT", args([]byte("Freq"), "k")},
	{"MEMORY", args("USAGE", "k", "SAMPLES", 5)}, {"XINFO", args("STREAM", "k", "FULL")},
	{"XGROUP", args("CREATE", "k", "g", "$", "MKSTREAM")}, {"XGROUP", args("CREATECONSUMER", "k", "g", "c")},
	{"CLIENT", args("LIST")}, {"XINFO", args("NOSUCH", "k")}, {"XINFO", args(42, "k")}, {"XINFO", args()},
	{"GET", args()}, {"NOSUCH", args("k")}, {"PUBLISH", args("ch", "m")}, {"KEYS", args("*")},
	{"SPUBLISH", args("ch", "m")}, {"SSUBSCRIBE", args("a", "b")}, {"SUNSUBSCRIBE", args()},
	{"WATCH", args("a", "b")}, {"EXISTS", args("a", "b")},
}

func args(a ...interface{}) []interface{} { return a }

// argument is a redis.Argument, printed by redigo as its RedisArg.
type argument struct{ v interface{} }

func (a argument) RedisArg() interface{} { return a.v }

// shardChannelCommands route by their channel, which COMMAND GETKEYS does
// not count as a key.
var shardChannelCommands = map[string]bool{"spublish": true, "ssubscribe": true, "sunsubscribe": true}

// RouteOf's slot is the slot of the first key COMMAND GETKEYS finds (or -1
// when it finds none), and Keys lists the keys COMMAND GETKEYS lists, for
// a sample of every command and subcommand of the server and for the edge
// cases of every way of finding keys.
func TestRouteOfFindsTheKeysCommandGetkeysFinds(t *testing.T) {
	c := startServer(t)
	lines := append(sampleLines(t, c), edgeLines...)
	checked, keyed := 0, map[string]bool{}
	for _, line := range lines {
		want, ok := getKeys(t, c, line)
		if !ok {
			continue
		}
		checked++
		if len(want) > 0 {
			keyed[strings.ToLower(line.name)] = true
		}
		if got := cluster.Keys(line.name, line.args); !slices.Equal(got, want) {
			t.Errorf("Keys(%s) = %q, COMMAND GETKEYS says %q", line, got, want)
		}
		if got, want := cluster.RouteOf(line.name, line.args).Slot, routeSlot(line, want); got != want {
			t.Errorf("RouteOf(%s).Slot = %d, want %d", line, got, want)
		}
	}
	t.Logf("%d command lines checked against COMMAND GETKEYS, %d commands with keys", checked, len(keyed))
	if checked < len(lines)*9/10 {
		t.Errorf("only %d of %d command lines had a number of arguments COMMAND GETKEYS accepts", checked, len(lines))
	}
	for _, name := range keyedCommands(t, c) {
		if !keyed[name] {
			t.Errorf("no command line checked has a key of %s", name)
		}
	}
}

// routeSlot is the slot RouteOf must give line, whose keys are keys: the
// slot of the first key, or of the shard channel, or -1.
func routeSlot(line commandLine, keys []string) int {
	switch {
	case len(keys) > 0:
		return cluster.Slot(keys[0])
	case shardChannelCommands[strings.ToLower(line.name)] && len(line.args) > 0:
		return cluster.Slot(fmt.Sprint(line.args[0]))
	}
	return -1
}

// keyedCommands lists the commands of the server with a key spec for
// keys, not shard channels (with the container's name for a subcommand).
func keyedCommands(t *testing.T, c redis.Conn) []string {
	t.Helper()
	cmds, err := gen.Load(c)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, cmd := range cmds {
		if slices.ContainsFunc(cmd.Specs, func(s gen.KeySpec) bool { return !slices.Contains(s.Flags, "not_key") }) {
			name, _, _ := strings.Cut(cmd.Name, "|")
			names = append(names, name)
		}
	}
	return names
}

// getKeys asks COMMAND GETKEYS for the keys of line. ok is false when the
// server refuses the number of arguments, which it checks before the keys.
func getKeys(t *testing.T, c redis.Conn, line commandLine) (keys []string, ok bool) {
	t.Helper()
	keys, err := redis.Strings(c.Do("COMMAND", append(args("GETKEYS", line.name), line.args...)...))
	var rerr redis.Error
	switch {
	case errors.As(err, &rerr) && strings.Contains(rerr.Error(), "number of arguments"):
		return nil, false
	case errors.As(err, &rerr):
		return nil, true
	case err != nil:
		t.Fatalf("COMMAND GETKEYS %s: %v", line, err)
	}
	return keys, true
}

// A key count the command itself refuses (not a plain decimal integer)
// leaves the command keyless, although COMMAND GETKEYS reads "01" as 1.
func TestRouteOfIsKeylessWhenTheKeyCountIsNotAPlainInteger(t *testing.T) {
	for _, n := range []interface{}{"01", "+1", " 1", "1 ", "1x", "", nil, 1.5, "-1", -1, "2", 99} {
		for _, name := range []string{"EVAL", "FCALL", "ZUNION", "LMPOP"} {
			line := args("s", n, "a")
			if name == "ZUNION" || name == "LMPOP" {
				line = args(n, "a")
			}
			if r := cluster.RouteOf(name, line); r.Slot != -1 {
				t.Errorf("RouteOf(%s %v) = %+v, want keyless", name, line, r)
			}
		}
	}
}

// RouteOf's ReadOnly is the "readonly" flag COMMAND gives the command, or
// the subcommand named by the first argument, in any case.
func TestRouteOfIsReadOnlyExactlyForCommandsFlaggedReadonly(t *testing.T) {
	c := startServer(t)
	entries, err := redis.Values(c.Do("COMMAND"))
	if err != nil {
		t.Fatal(err)
	}
	readOnly := 0
	for _, e := range entries {
		readOnly += checkReadOnly(t, e)
	}
	t.Logf("%d commands and subcommands, %d of them readonly", countAll(entries), readOnly)
	if readOnly < 50 {
		t.Errorf("only %d readonly commands: COMMAND's flags were not read", readOnly)
	}
	if r := cluster.RouteOf("NOSUCH", args("k")); r != (cluster.Route{Slot: -1}) {
		t.Errorf("RouteOf(NOSUCH k) = %+v, want keyless and not read-only", r)
	}
}

// checkReadOnly checks RouteOf's ReadOnly for the command of a COMMAND
// entry and its subcommands, and returns how many are readonly.
func checkReadOnly(t *testing.T, entry interface{}) int {
	t.Helper()
	fields, err := redis.Values(entry, nil)
	if err != nil || len(fields) < 10 {
		t.Fatalf("COMMAND entry %v: %v", entry, err)
	}
	name, _ := redis.String(fields[0], nil)
	flags, _ := redis.Strings(fields[2], nil)
	subs, _ := redis.Values(fields[9], nil)
	readOnly := 0
	for _, sub := range subs {
		readOnly += checkReadOnly(t, sub)
	}
	want := slices.Contains(flags, "readonly")
	if want {
		readOnly++
	}
	cmd, line := name, args()
	if container, sub, ok := strings.Cut(name, "|"); ok {
		cmd, line = container, args(strings.ToUpper(sub))
	}
	for _, cmd := range []string{cmd, strings.ToUpper(cmd)} {
		if got := cluster.RouteOf(cmd, line).ReadOnly; got != want {
			t.Errorf("RouteOf(%s %v).ReadOnly = %v, COMMAND flags %s: %q", cmd, line, got, name, flags)
		}
	}
	return readOnly
}

func countAll(entries []interface{}) int {
	n := 0
	for _, e := range entries {
		fields, _ := redis.Values(e, nil)
		subs, _ := redis.Values(fields[9], nil)
		n += 1 + countAll(subs)
	}
	return n
}

// routeLines are the command lines of the allocation guard and the
// benchmark: string and []byte keys, found by index, key count, keyword
// and subcommand.
var routeLines = []commandLine{
	{"GET", args("user:{42}:name")},
	{"SET", args([]byte("user:{42}:name"), "ada")},
	{"EVALSHA", args("0123456789abcdef0123456789abcdef01234567", 2, "a", "b", "arg")},
	{"XREAD", args("COUNT", 10, "STREAMS", "s1", "s2", "0", "0")},
	{"xinfo", args("stream", []byte("s"))},
}

// RouteOf allocates nothing for string and []byte keys.
func TestRouteOfDoesNotAllocateForStringAndBytesKeys(t *testing.T) {
	for _, line := range routeLines {
		if n := testing.AllocsPerRun(100, func() { cluster.RouteOf(line.name, line.args) }); n != 0 {
			t.Errorf("RouteOf(%s) allocates %v times", line, n)
		}
	}
}

func BenchmarkRouteOf(b *testing.B) {
	for _, line := range routeLines {
		b.Run(strings.ToLower(line.name), func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				cluster.RouteOf(line.name, line.args)
			}
		})
	}
}

// A cluster node answers a command whose route is one of its slots, and
// refuses one whose route is a slot it does not serve: shard channels
// route by their slot, as keys do.
func TestRouteOfIsTheSlotAClusterNodeChecks(t *testing.T) {
	s := redistest.StartClusterNode(t, "--cluster-require-full-coverage", "no")
	c, err := redis.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const served = cluster.SlotCount / 2 // slots 0 to served-1
	if _, err := c.Do("CLUSTER", "ADDSLOTSRANGE", 0, served-1); err != nil {
		t.Fatal(err)
	}
	waitClusterOK(t, c)
	counts := map[bool]int{}
	for i := range 64 {
		name := fmt.Sprintf("ch%d", i)
		for _, line := range []commandLine{{"SPUBLISH", args(name, "m")}, {"GET", args(name)}} {
			r := cluster.RouteOf(line.name, line.args)
			_, err := c.Do(line.name, line.args...)
			if answered := err == nil; answered != (r.Slot < served) {
				t.Errorf("%s: RouteOf says slot %d, the node serving slots 0-%d answers %v", line, r.Slot, served-1, err)
			}
			counts[r.Slot < served]++
		}
	}
	if counts[true] == 0 || counts[false] == 0 {
		t.Errorf("the channels fell on one side of slot %d only: %v", served, counts)
	}
}

// waitClusterOK polls CLUSTER INFO until the node reports cluster_state:ok.
func waitClusterOK(t *testing.T, c redis.Conn) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		info, err := redis.String(c.Do("CLUSTER", "INFO"))
		if err == nil && strings.Contains(info, "cluster_state:ok") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the node did not report cluster_state:ok within 5s: %q %v", info, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// oddArgs are arguments that look like key counts, keywords or nothing.
var oddArgs = []interface{}{"1", "-1", "0", "99", "STREAMS", "KEYS", "STORE", "LIMIT", "", nil, []byte("2"), 3.5}

// RouteOf and Keys never panic, whatever the number and the values of the
// arguments: every command and subcommand with 0 to 6 arguments.
func TestRouteOfNeverPanicsOnShortOrOddArguments(t *testing.T) {
	cmds, err := gen.Load(startServer(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range cmds {
		name, prefix := cmd.Name, args()
		if container, sub, ok := strings.Cut(cmd.Name, "|"); ok {
			name, prefix = container, args(sub)
		}
		for n := range 7 {
			for i := range oddArgs {
				line := append([]interface{}{}, prefix...)
				for j := range n {
					line = append(line, oddArgs[(i+j*j)%len(oddArgs)])
				}
				mustNotPanic(t, commandLine{name, line})
			}
		}
	}
}

func mustNotPanic(t *testing.T, line commandLine) {
	t.Helper()
	defer func() {
		if p := recover(); p != nil {
			t.Fatalf("%s: panic: %v", line, p)
		}
	}()
	cluster.RouteOf(line.name, line.args)
	cluster.Keys(line.name, line.args)
}
