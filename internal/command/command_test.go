package command

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestClassify(t *testing.T) {
	tests := []struct {
		name string
		args []any
		want Info
	}{
		{"GET", []any{"k"}, Info{}},
		{"get", []any{"k"}, Info{}},
		{"WATCH", []any{"k"}, Info{Effects: Watch}},
		{"unwatch", nil, Info{Effects: Unwatch}},
		{"MULTI", nil, Info{Effects: Multi}},
		{"Exec", nil, Info{Effects: EndMulti | Unwatch}},
		{"DISCARD", nil, Info{Effects: EndMulti | Unwatch}},
		{"SUBSCRIBE", []any{"c"}, Info{Effects: Subscribe, PubSub: Channels}},
		{"psubscribe", []any{"c*"}, Info{Effects: Subscribe, PubSub: Patterns}},
		{"SSUBSCRIBE", []any{"c"}, Info{Effects: Subscribe, PubSub: Shards}},
		{"UNSUBSCRIBE", nil, Info{Effects: UnsubscribeAll, PubSub: Channels}},
		{"UNSUBSCRIBE", []any{"c"}, Info{}},
		// One reply per channel, subscribed or not, where Do reads one.
		{"UNSUBSCRIBE", []any{"a", "b"}, Info{Effects: Taint}},
		{"PUNSUBSCRIBE", []any{"a*", "b*"}, Info{Effects: Taint}},
		{"SUNSUBSCRIBE", []any{"a", "b"}, Info{Effects: Taint}},
		{"SCRIPT", []any{"DEBUG", "YES"}, Info{Effects: Taint}},
		{"script", []any{"debug", "sync"}, Info{Effects: Taint}},
		{"SCRIPT", []any{"EXISTS", "abc"}, Info{}},
		{"SCRIPT", nil, Info{}},
		{"PUNSUBSCRIBE", nil, Info{Effects: UnsubscribeAll, PubSub: Patterns}},
		{"sunsubscribe", nil, Info{Effects: UnsubscribeAll, PubSub: Shards}},
		{"QUIT", nil, Info{Effects: Taint}},
		{"POST", nil, Info{Effects: Taint}},
		{"Host:", nil, Info{Effects: Taint}},
		{"MONITOR", nil, Info{Effects: Monitor}},
		{"SELECT", []any{3}, Info{Effects: Select, DB: 3}},
		{"select", []any{"0"}, Info{Effects: Select, DB: 0}},
		{"SELECT", []any{[]byte("12")}, Info{Effects: Select, DB: 12}},
		{"SELECT", []any{"x"}, Info{Effects: Select, DB: -1}},
		{"SELECT", []any{-1}, Info{Effects: Select, DB: -1}},
		{"SELECT", nil, Info{Effects: Select, DB: -1}},
		{"SELECT", []any{uint64(math.MaxUint64)}, Info{Effects: Select, DB: -1}},
		{"READONLY", nil, Info{Effects: ReadOnly}},
		{"readonly", []any{"x"}, Info{Effects: ReadOnly}},
		{"READWRITE", nil, Info{Effects: ReadWrite}},
		{"ReadWrite", nil, Info{Effects: ReadWrite}},
		// Rejected for its argument: it ends nothing.
		{"READWRITE", []any{"x"}, Info{}},
		{"ASKING", nil, Info{Effects: Asking}},
		{"ASKING", []any{"x"}, Info{Effects: Asking}},
		{"HELLO", []any{3}, Info{Effects: Taint}},
		{"AUTH", []any{"pw"}, Info{Effects: Taint}},
		{"RESET", nil, Info{Effects: Taint}},
		{"CLIENT", []any{"REPLY", "OFF"}, Info{Effects: Taint}},
		{"client", []any{"reply", "skip"}, Info{Effects: Taint}},
		{"CLIENT", []any{"REPLY", "ON"}, Info{}},
		{"CLIENT", []any{"TRACKING", "ON"}, Info{Effects: Taint}},
		{"CLIENT", []any{"TRACKING", "off"}, Info{}},
		{"CLIENT", []any{[]byte("no-evict"), "on"}, Info{Effects: Taint}},
		{"CLIENT", []any{"SETNAME", "x"}, Info{Effects: Taint}},
		{"CLIENT", []any{"KILL", "ID", "7"}, Info{Effects: Taint}},
		{"CLIENT", nil, Info{}},
		{"BLPOP", []any{"a", "b", 1}, Info{Effects: Blocking, Timeout: time.Second}},
		{"brpop", []any{"a", "0.25"}, Info{Effects: Blocking, Timeout: 250 * time.Millisecond}},
		{"BLPOP", []any{"a", 0}, Info{Effects: Blocking, Forever: true}},
		{"BLPOP", []any{"a", true}, Info{Effects: Blocking, Timeout: time.Second}},
		{"BLPOP", []any{"a", false}, Info{Effects: Blocking, Forever: true}},
		{"SELECT", []any{true}, Info{Effects: Select, DB: 1}},
		{"BLPOP", []any{"a", "0"}, Info{Effects: Blocking, Forever: true}},
		{"BLPOP", []any{"a", "nope"}, Info{}},
		{"BLPOP", []any{"a", -1}, Info{}},
		{"BLPOP", nil, Info{}},
		{"BRPOPLPUSH", []any{"a", "b", 2.5}, Info{Effects: Blocking, Timeout: 2500 * time.Millisecond}},
		{"BLMOVE", []any{"a", "b", "LEFT", "RIGHT", 3}, Info{Effects: Blocking, Timeout: 3 * time.Second}},
		{"BZPOPMIN", []any{"z", int64(4)}, Info{Effects: Blocking, Timeout: 4 * time.Second}},
		{"BZPOPMAX", []any{"z", float32(0.5)}, Info{Effects: Blocking, Timeout: 500 * time.Millisecond}},
		{"BLMPOP", []any{5, 1, "k", "LEFT"}, Info{Effects: Blocking, Timeout: 5 * time.Second}},
		{"BZMPOP", []any{"0", 1, "k", "MIN"}, Info{Effects: Blocking, Forever: true}},
		{"WAIT", []any{1, 100}, Info{Effects: Blocking, Timeout: 100 * time.Millisecond}},
		{"WAITAOF", []any{1, 0, 0}, Info{Effects: Blocking, Forever: true}},
		{"XREAD", []any{"COUNT", 1, "BLOCK", 200, "STREAMS", "s", "$"}, Info{Effects: Blocking, Timeout: 200 * time.Millisecond}},
		{"XREAD", []any{"STREAMS", "BLOCK", "0"}, Info{}},
		{"XREAD", []any{"COUNT", 1, "STREAMS", "s", "0"}, Info{}},
		{"XREADGROUP", []any{"GROUP", "g", "c", "block", "0", "STREAMS", "s", ">"}, Info{Effects: Blocking, Forever: true}},
		// A group or consumer named like an option, and a COUNT's number.
		{"XREADGROUP", []any{"GROUP", "g", "STREAMS", "BLOCK", "300", "STREAMS", "s", ">"}, Info{Effects: Blocking, Timeout: 300 * time.Millisecond}},
		{"XREADGROUP", []any{"GROUP", "BLOCK", "c", "STREAMS", "s", ">"}, Info{}},
		{"XREAD", []any{"COUNT", "STREAMS", "BLOCK", "5", "STREAMS", "s", "0"}, Info{Effects: Blocking, Timeout: 5 * time.Millisecond}},
		{"BLPOP", []any{"a", "1e300"}, Info{Effects: Blocking, Forever: true}},
		{"BLPOP", []any{"a", "NaN"}, Info{}},
		// The server rounds seconds up to a millisecond: a timeout that
		// comes to zero blocks forever, a smaller one is rejected.
		{"BLPOP", []any{"a", 0.0001}, Info{Effects: Blocking, Timeout: time.Millisecond}},
		{"BLPOP", []any{"a", "-0.0005"}, Info{Effects: Blocking, Forever: true}},
		{"BLPOP", []any{"a", -0.001}, Info{}},
		// What redigo sends for other types, and what strtold reads.
		{"BLPOP", []any{"a", seconds(2)}, Info{Effects: Blocking, Timeout: 2 * time.Second}},
		{"BLPOP", []any{"a", argument{0.5}}, Info{Effects: Blocking, Timeout: 500 * time.Millisecond}},
		{"BLPOP", []any{"a", "0x1"}, Info{Effects: Blocking, Timeout: time.Second}},
		{"BLPOP", []any{"a", []byte("0X2")}, Info{Effects: Blocking, Timeout: 2 * time.Second}},
		{"BLPOP", []any{"a", "0x"}, Info{}},
		{"SELECT", []any{seconds(3)}, Info{Effects: Select, DB: 3}},
		{"SELECT", []any{argument{int64(4)}}, Info{Effects: Select, DB: 4}},
		// The server keeps the last BLOCK.
		{"XREAD", []any{"BLOCK", 10, "BLOCK", 600, "STREAMS", "s", "$"}, Info{Effects: Blocking, Timeout: 600 * time.Millisecond}},
		// Rejected for their arguments: they end or undo nothing.
		{"DISCARD", []any{"now"}, Info{}},
		{"EXEC", []any{"x"}, Info{}},
		{"UNWATCH", []any{"k"}, Info{}},
		{"asking", nil, Info{Effects: Asking}},
		{"MULTI", []any{"x"}, Info{}},
		{"WATCH", nil, Info{Effects: Watch}},
		{"SUBSCRIBE", nil, Info{Effects: Subscribe, PubSub: Channels}},
		{"PUNSUBSCRIBE", []any{"a*"}, Info{}},
		{"SUNSUBSCRIBE", []any{"a"}, Info{}},
		{"MONITOR", []any{"x"}, Info{Effects: Monitor}},
		{"script", []any{[]byte("debug"), "no"}, Info{Effects: Taint}},
		// A timeout's place: the first argument of BLMPOP and BZMPOP, the
		// last of the others; none when there are no arguments.
		{"BLMPOP", []any{"k", 5, "LEFT"}, Info{}},
		{"BLPOP", []any{0, "k", 5}, Info{Effects: Blocking, Timeout: 5 * time.Second}},
		{"WAIT", []any{100, 2}, Info{Effects: Blocking, Timeout: 2 * time.Millisecond}},
		{"BLMPOP", nil, Info{}},
		{"WAIT", nil, Info{}},
		{"XREAD", nil, Info{}},
		{"XREAD", []any{"BLOCK"}, Info{}},
		{"BLPOP", []any{"a", uint64(math.MaxUint64)}, Info{}},
		// SELECT takes one database number, in any integer type redigo writes.
		{"SELECT", []any{1, 2}, Info{Effects: Select, DB: -1}},
		{"SELECT", []any{int64(math.MaxInt32) + 1}, Info{Effects: Select, DB: -1}},
		{"SELECT", []any{int64(math.MaxInt32)}, Info{Effects: Select, DB: math.MaxInt32}},
		{"SELECT", []any{int8(5)}, Info{Effects: Select, DB: 5}},
		{"SELECT", []any{int8(-5)}, Info{Effects: Select, DB: -1}},
		{"SELECT", []any{int16(6)}, Info{Effects: Select, DB: 6}},
		{"SELECT", []any{int32(7)}, Info{Effects: Select, DB: 7}},
		{"SELECT", []any{uint(8)}, Info{Effects: Select, DB: 8}},
		{"SELECT", []any{uint(math.MaxUint)}, Info{Effects: Select, DB: -1}},
		{"SELECT", []any{uint8(9)}, Info{Effects: Select, DB: 9}},
		{"SELECT", []any{uint16(10)}, Info{Effects: Select, DB: 10}},
		{"SELECT", []any{uint32(11)}, Info{Effects: Select, DB: 11}},
		{"SELECT", []any{uint64(12)}, Info{Effects: Select, DB: 12}},
		{"SELECT", []any{false}, Info{Effects: Select, DB: 0}},
		{"SELECT", []any{nil}, Info{Effects: Select, DB: -1}},
		{"SELECT", []any{argument{"13"}}, Info{Effects: Select, DB: 13}},
		{"", nil, Info{}},
		{"AVERYLONGCOMMANDNAMETHATISLONGERTHANTHIRTYTWOBYTES", nil, Info{}},
	}
	for _, tt := range tests {
		got := Classify(tt.name, tt.args)
		if got != tt.want {
			t.Errorf("Classify(%q, %v) = %+v, want %+v", tt.name, tt.args, got, tt.want)
		}
	}
}

func TestClassifyDoesNotAllocate(t *testing.T) {
	args := []any{"key", 1}
	for _, name := range []string{"GET", "get", "Blpop", "SELECT", "readonly", "ReadWrite", "asking"} {
		n := testing.AllocsPerRun(100, func() { Classify(name, args) })
		if n != 0 {
			t.Errorf("Classify(%q) allocates %v times per call, want 0", name, n)
		}
	}
}

// FuzzClassify checks that no input makes Classify panic and that its answer
// is self-consistent: a timeout only for blocking commands, never negative,
// and a database only for SELECT.
func FuzzClassify(f *testing.F) {
	f.Add("BLPOP", "k", "1.5", "")
	f.Add("XREAD", "BLOCK", "100", "STREAMS")
	f.Add("select", "3", "", "")
	f.Add("CLIENT", "REPLY", "OFF", "")
	f.Add("WAIT", "1", "-5", "")
	f.Fuzz(func(t *testing.T, name, a, b, c string) {
		for n := 0; n <= 3; n++ {
			args := []any{a, []byte(b), c}[:n]
			info := Classify(name, args)
			if Inert(name) && info.Effects != 0 {
				t.Fatalf("Inert(%q) but Classify finds %+v for %q", name, info, args)
			}
			if info.Timeout < 0 {
				t.Fatalf("negative timeout %v for %q %q", info.Timeout, name, args)
			}
			if (info.Timeout != 0 || info.Forever) && !info.Has(Blocking) {
				t.Fatalf("timeout without Blocking for %q %q: %+v", name, args, info)
			}
			if info.Has(Blocking) && info.Timeout == 0 && !info.Forever {
				t.Fatalf("Blocking with no timeout for %q %q: %+v", name, args, info)
			}
			if info.DB != 0 && !info.Has(Select) {
				t.Fatalf("DB without Select for %q %q: %+v", name, args, info)
			}
			if info.Has(Select) && info.DB < -1 {
				t.Fatalf("bad DB for %q %q: %+v", name, args, info)
			}
			if (info.PubSub != 0) != (info.Has(Subscribe) || info.Has(UnsubscribeAll)) || info.PubSub > Shards {
				t.Fatalf("bad PubSub for %q %q: %+v", name, args, info)
			}
		}
	})
}

// seconds is a named integer type, which redigo writes with fmt.
type seconds int

// argument is a redis.Argument: redigo writes its RedisArg value.
type argument struct{ v any }

func (a argument) RedisArg() any { return a.v }

// TestLookupFindsEveryName checks that the initials filter in front of the
// map turns no known name away, in any case, and that it lets no unknown
// name through.
func TestLookupFindsEveryName(t *testing.T) {
	for name, want := range kinds {
		lower := strings.ToLower(name)
		mixed := strings.ToLower(name[:1]) + name[1:]
		for _, n := range []string{name, lower, mixed} {
			if got, ok := lookup(n); !ok || got != want {
				t.Errorf("lookup(%q) = %v, %v; want %v, true", n, got, ok, want)
			}
		}
	}
	for _, n := range []string{"GET", "set", "EXPIRE", "Sadd", "WATCHX", "XWATCH", "@ATCH", "[ATCH", "", "\xffATCH"} {
		if got, ok := lookup(n); ok {
			t.Errorf("lookup(%q) = %v, true; want no kind", n, got)
		}
	}
}

// TestInertIsFalseForEveryNameClassifyKnows: Inert is false for every name
// Classify looks at its arguments for, in any case, and true, without
// allocating, for the others, whose arguments Classify never reads.
func TestInertIsFalseForEveryNameClassifyKnows(t *testing.T) {
	for name := range kinds {
		for _, n := range []string{name, strings.ToLower(name), strings.ToLower(name[:1]) + name[1:]} {
			if Inert(n) {
				t.Errorf("Inert(%q) = true; want false", n)
			}
		}
	}
	for _, n := range []string{"GET", "set", "EXPIRE", "Sadd", "WATCHX", "XWATCH", "@ATCH", "", "\xffATCH", strings.Repeat("W", 40)} {
		if !Inert(n) {
			t.Errorf("Inert(%q) = false; want true", n)
		}
		if n := testing.AllocsPerRun(100, func() { Inert(n) }); n != 0 {
			t.Errorf("Inert allocates %v times per call, want 0", n)
		}
	}
}

// BenchmarkClassify measures Classify for a command it knows nothing of and
// for one it knows.
func BenchmarkClassify(b *testing.B) {
	args := []any{"key", 1}
	for _, name := range []string{"GET", "get", "HGETALL", "BLPOP", "blpop"} {
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				Classify(name, args)
			}
		})
	}
}

// TestArgIntRejectsUnsignedAboveMaxInt64 checks that argInt reads an unsigned
// integer only when an int64 holds it.
func TestArgIntRejectsUnsignedAboveMaxInt64(t *testing.T) {
	tests := []struct {
		arg  any
		want int64
		ok   bool
	}{
		{uint64(math.MaxInt64), math.MaxInt64, true},
		{uint(math.MaxInt64), math.MaxInt64, true},
		{uint64(math.MaxInt64) + 1, 0, false},
		{uint(math.MaxUint), 0, false},
		{argument{uint64(math.MaxUint64)}, 0, false},
	}
	for _, tt := range tests {
		n, ok := argInt(tt.arg)
		if ok != tt.ok || ok && n != tt.want {
			t.Errorf("argInt(%T(%v)) = %v, %v; want %v, %v", tt.arg, tt.arg, n, ok, tt.want, tt.ok)
		}
	}
}
