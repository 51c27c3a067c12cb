// Package command classifies Redis commands by what they do to a connection:
// the state they leave behind for the next user of the connection, and how long
// the server may legitimately take to answer them.
//
// The pool consults it on every command, so Classify does not allocate for
// command names up to 32 bytes.
package command

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Effect is a set of things a command does to its connection.
type Effect uint16

const (
	// Watch: WATCH; the connection has watched keys until EXEC, DISCARD or UNWATCH.
	Watch Effect = 1 << iota
	// Unwatch: UNWATCH, EXEC and DISCARD forget the watched keys.
	Unwatch
	// Multi: MULTI opens a transaction.
	Multi
	// EndMulti: EXEC and DISCARD close the transaction.
	EndMulti
	// Subscribe: SUBSCRIBE, PSUBSCRIBE or SSUBSCRIBE put the connection in
	// pub/sub mode; Info.PubSub says which kind of subscription.
	Subscribe
	// UnsubscribeAll: UNSUBSCRIBE, PUNSUBSCRIBE or SUNSUBSCRIBE without
	// arguments ask the server to leave every subscription of the kind in
	// Info.PubSub.
	UnsubscribeAll
	// Monitor: MONITOR streams every command the server runs to the connection.
	Monitor
	// Select: SELECT changes the connection's database to Info.DB
	// (Info.DB is -1 when the argument is not a database number).
	Select
	// Taint: the command leaves state the pool cannot prove undone, such as
	// CLIENT REPLY OFF or SKIP, HELLO, AUTH, RESET, CLIENT TRACKING,
	// CLIENT NO-EVICT or NO-TOUCH, CLIENT SETINFO, or ends the connection
	// (QUIT, and POST and HOST:, which the server takes for an attack): the
	// connection must be discarded.
	Taint
	// Blocking: the server may hold the reply for Info.Timeout
	// (Info.Forever when the command blocks with no time limit).
	Blocking
	// ReadOnly: READONLY lets a cluster replica serve reads on the
	// connection until READWRITE.
	ReadOnly
	// ReadWrite: READWRITE ends READONLY.
	ReadWrite
	// Asking: ASKING lets the connection's next command run on a slot the
	// cluster node is importing; that command uses it up.
	Asking
)

// Info is what Classify found out about one command.
type Info struct {
	Effects Effect
	// DB is the database number of a SELECT, or -1 when it could not be read.
	DB int
	// Timeout is how long a Blocking command may wait at the server.
	Timeout time.Duration
	// Forever is set for a Blocking command whose timeout is zero (no limit).
	Forever bool
	// PubSub is the kind of subscription of a Subscribe or UnsubscribeAll.
	PubSub PubSub
}

// PubSub is a kind of pub/sub subscription: channels, patterns or shard
// channels, each left by its own UNSUBSCRIBE command.
type PubSub uint8

// The kinds of subscription.
const (
	Channels PubSub = 1 + iota // SUBSCRIBE, UNSUBSCRIBE
	Patterns                   // PSUBSCRIBE, PUNSUBSCRIBE
	Shards                     // SSUBSCRIBE, SUNSUBSCRIBE
)

// Has reports whether every effect in e is in i.Effects.
func (i Info) Has(e Effect) bool { return i.Effects&e == e }

type kind uint8

const (
	kindNone kind = iota
	kindWatch
	kindUnwatch
	kindMulti
	kindExecDiscard
	kindSubscribe
	kindPSubscribe
	kindSSubscribe
	kindUnsubscribe
	kindPUnsubscribe
	kindSUnsubscribe
	kindMonitor
	kindSelect
	kindTaint
	kindReadOnly
	kindReadWrite
	kindAsking
	kindClient
	kindScript
	kindLastArgSeconds  // BLPOP, BRPOP, BRPOPLPUSH, BLMOVE, BZPOPMIN, BZPOPMAX
	kindFirstArgSeconds // BLMPOP, BZMPOP
	kindLastArgMillis   // WAIT, WAITAOF
	kindXRead           // XREAD, XREADGROUP: BLOCK ms
)

var kinds = map[string]kind{
	"WATCH":        kindWatch,
	"UNWATCH":      kindUnwatch,
	"MULTI":        kindMulti,
	"EXEC":         kindExecDiscard,
	"DISCARD":      kindExecDiscard,
	"SUBSCRIBE":    kindSubscribe,
	"PSUBSCRIBE":   kindPSubscribe,
	"SSUBSCRIBE":   kindSSubscribe,
	"UNSUBSCRIBE":  kindUnsubscribe,
	"PUNSUBSCRIBE": kindPUnsubscribe,
	"SUNSUBSCRIBE": kindSUnsubscribe,
	"MONITOR":      kindMonitor,
	"SELECT":       kindSelect,
	"READONLY":     kindReadOnly,
	"READWRITE":    kindReadWrite,
	"HELLO":        kindTaint,
	"AUTH":         kindTaint,
	"RESET":        kindTaint,
	"SYNC":         kindTaint,
	"PSYNC":        kindTaint,
	"REPLCONF":     kindTaint,
	"QUIT":         kindTaint,
	// The server drops a client that sends POST or HOST: (an HTTP request
	// sent to it), without a reply.
	"POST":       kindTaint,
	"HOST:":      kindTaint,
	"ASKING":     kindAsking,
	"CLIENT":     kindClient,
	"SCRIPT":     kindScript,
	"BLPOP":      kindLastArgSeconds,
	"BRPOP":      kindLastArgSeconds,
	"BRPOPLPUSH": kindLastArgSeconds,
	"BLMOVE":     kindLastArgSeconds,
	"BZPOPMIN":   kindLastArgSeconds,
	"BZPOPMAX":   kindLastArgSeconds,
	"BLMPOP":     kindFirstArgSeconds,
	"BZMPOP":     kindFirstArgSeconds,
	"WAIT":       kindLastArgMillis,
	"WAITAOF":    kindLastArgMillis,
	"XREAD":      kindXRead,
	"XREADGROUP": kindXRead,
}

// maxNameLen is the longest command name looked up; longer names are no
// command this package knows.
const maxNameLen = 32

// Classify reports what the command name with arguments args does to a
// connection. Names are matched without regard to case. Arguments are read the
// way redigo writes them: strings, byte slices, integers, floats, the value of
// a redis.Argument, and other types as fmt prints them. An argument that
// cannot be read never makes a connection look cleaner than it is.
func Classify(name string, args []any) Info {
	k, ok := lookup(name)
	if !ok {
		return Info{}
	}
	switch k {
	case kindWatch, kindUnwatch, kindMulti, kindExecDiscard:
		return classifyTransaction(k, args)
	case kindSubscribe, kindPSubscribe, kindSSubscribe, kindUnsubscribe, kindPUnsubscribe, kindSUnsubscribe:
		return classifyPubSub(k, args)
	case kindMonitor:
		return Info{Effects: Monitor}
	case kindSelect:
		return Info{Effects: Select, DB: selectDB(args)}
	case kindTaint:
		return Info{Effects: Taint}
	case kindReadOnly, kindReadWrite, kindAsking:
		return classifyCluster(k, args)
	case kindClient:
		return classifyClient(args)
	case kindScript:
		return classifyScript(args)
	case kindLastArgSeconds, kindFirstArgSeconds, kindLastArgMillis:
		return blocking(timeoutArg(k, args))
	case kindXRead:
		return blocking(xreadBlock(args), time.Millisecond)
	}
	return Info{}
}

// classifyTransaction handles WATCH, UNWATCH, MULTI, EXEC and DISCARD.
func classifyTransaction(k kind, args []any) Info {
	if k == kindWatch {
		return Info{Effects: Watch}
	}
	if len(args) > 0 {
		// The others take no arguments: the server rejects them, so no
		// transaction opens (and a WATCH after it runs), none ends (inside
		// MULTI it stays open), and no key is forgotten.
		return Info{}
	}
	switch k {
	case kindUnwatch:
		return Info{Effects: Unwatch}
	case kindMulti:
		return Info{Effects: Multi}
	case kindExecDiscard:
		return Info{Effects: EndMulti | Unwatch}
	}
	return Info{}
}

// classifyPubSub handles SUBSCRIBE, UNSUBSCRIBE, and their pattern and shard
// forms.
func classifyPubSub(k kind, args []any) Info {
	switch k {
	case kindSubscribe:
		return Info{Effects: Subscribe, PubSub: Channels}
	case kindPSubscribe:
		return Info{Effects: Subscribe, PubSub: Patterns}
	case kindSSubscribe:
		return Info{Effects: Subscribe, PubSub: Shards}
	}
	switch len(args) {
	case 0:
		// The three unsubscribe kinds are declared in the same order as the
		// PubSub values.
		return Info{Effects: UnsubscribeAll, PubSub: Channels + PubSub(k-kindUnsubscribe)}
	case 1:
		return Info{}
	}
	// One reply per argument, subscribed or not, where Do reads one.
	return Info{Effects: Taint}
}

// classifyCluster handles READONLY, READWRITE and ASKING. They take no
// arguments: given some, the server rejects them. READWRITE then ends
// nothing; READONLY and ASKING count as run all the same, which at worst
// costs an undo that was not needed.
func classifyCluster(k kind, args []any) Info {
	switch k {
	case kindReadOnly:
		return Info{Effects: ReadOnly}
	case kindAsking:
		return Info{Effects: Asking}
	}
	if len(args) > 0 {
		return Info{}
	}
	return Info{Effects: ReadWrite}
}

// selectDB reads SELECT's database number, or returns -1.
func selectDB(args []any) int {
	if len(args) == 1 {
		if n, ok := argInt(args[0]); ok && n >= 0 && n <= math.MaxInt32 {
			return int(n)
		}
	}
	return -1
}

// classifyScript handles SCRIPT DEBUG YES|SYNC, which debugs the
// connection's next EVAL.
func classifyScript(args []any) Info {
	if len(args) > 0 && isWord(args[0], "DEBUG") {
		return Info{Effects: Taint}
	}
	return Info{}
}

// classifyClient handles the CLIENT subcommands that change the connection.
func classifyClient(args []any) Info {
	if len(args) == 0 {
		return Info{}
	}
	switch {
	case isWord(args[0], "REPLY"):
		// CLIENT REPLY ON is harmless only when the connection was already on;
		// OFF and SKIP suppress replies the next caller would wait for.
		if len(args) == 2 && isWord(args[1], "ON") {
			return Info{}
		}
		return Info{Effects: Taint}
	case isWord(args[0], "TRACKING"), isWord(args[0], "NO-EVICT"), isWord(args[0], "NO-TOUCH"):
		if len(args) >= 2 && isWord(args[1], "OFF") {
			return Info{}
		}
		return Info{Effects: Taint}
	case isWord(args[0], "SETINFO"), isWord(args[0], "SETNAME"):
		// The name and library info would pass to the next caller.
		return Info{Effects: Taint}
	case isWord(args[0], "KILL"):
		// It may close this very connection, after its reply.
		return Info{Effects: Taint}
	}
	return Info{}
}

// timeoutArg finds the timeout argument of a blocking command that takes it
// in a fixed place, and its unit: the last argument, in seconds, of BLPOP and
// the like, the first of BLMPOP and BZMPOP, and the last, in milliseconds, of
// WAIT and WAITAOF. It returns nil when there are no arguments.
func timeoutArg(k kind, args []any) (any, time.Duration) {
	switch {
	case len(args) == 0:
		return nil, 0
	case k == kindFirstArgSeconds:
		return args[0], time.Second
	case k == kindLastArgMillis:
		return args[len(args)-1], time.Millisecond
	}
	return args[len(args)-1], time.Second
}

// xreadBlock returns the argument of the BLOCK option of XREAD [COUNT n]
// [BLOCK ms] STREAMS key... id..., or of XREADGROUP GROUP group consumer
// [...], or nil. Options precede STREAMS, after which keys and ids may be any
// strings, as may the names after GROUP and the number after COUNT. The server
// takes the last BLOCK.
func xreadBlock(args []any) any {
	var block any
	for i := 0; i < len(args); i++ {
		switch {
		case isWord(args[i], "STREAMS"):
			return block
		case isWord(args[i], "GROUP"):
			i += 2
		case isWord(args[i], "COUNT"):
			i++
		case isWord(args[i], "BLOCK") && i+1 < len(args):
			i++
			block = args[i]
		}
	}
	return block
}

// blocking reads a blocking command's timeout argument in unit, as the
// server does: a timeout in seconds is rounded up to a millisecond, and one
// that comes to zero, as from -0.0005, blocks forever. A missing (nil),
// unreadable or negative timeout is rejected by the server at once, so it
// needs no extra time.
func blocking(arg any, unit time.Duration) Info {
	f, ok := argFloat(arg)
	if !ok || math.IsNaN(f) {
		return Info{}
	}
	if unit == time.Second {
		f, unit = math.Ceil(f*1000), time.Millisecond
	}
	if f < 0 {
		return Info{}
	}
	if f == 0 {
		return Info{Effects: Blocking, Forever: true}
	}
	d := f * float64(unit)
	if d >= float64(math.MaxInt64/2) {
		// Longer than any deadline a caller can wait for: no limit.
		return Info{Effects: Blocking, Forever: true}
	}
	return Info{Effects: Blocking, Timeout: time.Duration(math.Ceil(d))}
}

// initials holds, for each name length, a bit for the first letter of each
// name in kinds of that length: bit c-'A' for the letter c. Most commands,
// GET and SET among them, are turned away by it before the map is hashed.
var initials = func() (m [maxNameLen + 1]uint32) {
	for name := range kinds {
		m[len(name)] |= 1 << (name[0] - 'A')
	}
	return m
}()

// Inert reports whether Classify finds no effect in the command name,
// whatever its arguments. Most commands, GET and SET among them, are told
// apart by their length and first letter alone.
func Inert(name string) bool {
	if !maybeKnown(name) {
		return true
	}
	_, ok := lookup(name)
	return !ok
}

// maybeKnown reports whether name may be in kinds, from its length and
// first letter (see initials).
func maybeKnown(name string) bool {
	if len(name) == 0 || len(name) > maxNameLen {
		return false
	}
	c := upper(name[0])
	return 'A' <= c && c <= 'Z' && initials[len(name)]&(1<<(c-'A')) != 0
}

// lookup finds a command name's kind without allocating: the name is upper
// cased into a stack buffer only when it is not upper case already.
func lookup(name string) (kind, bool) {
	if !maybeKnown(name) {
		return kindNone, false
	}
	if k, ok := kinds[name]; ok {
		return k, true
	}
	var buf [maxNameLen]byte
	changed := false
	for i := 0; i < len(name); i++ {
		c := name[i]
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
			changed = true
		}
		buf[i] = c
	}
	if !changed {
		return kindNone, false
	}
	k, ok := kinds[string(buf[:len(name)])]
	return k, ok
}

// isWord reports whether arg equals the upper case ASCII word w without
// regard to case, read as redigo writes it: a string, a byte slice, the value
// of a redis.Argument, or another type as fmt prints it (a named string type).
func isWord(arg any, w string) bool {
	var s string
	switch v := arg.(type) {
	case string:
		s = v
	case []byte:
		return isWordBytes(v, w)
	case nil, bool, int, int64, int32, int16, int8, uint, uint64, uint32, uint16, uint8, float64, float32:
		return false // never a word
	default:
		if a, ok := v.(redisArg); ok {
			// redigo writes the value, and prints a nested redis.Argument.
			switch v := a.RedisArg().(type) {
			case string:
				s = v
			case []byte:
				return isWordBytes(v, w)
			default:
				s = fmt.Sprint(v)
			}
		} else {
			s = fmt.Sprint(v)
		}
	}
	if len(s) != len(w) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if upper(s[i]) != w[i] {
			return false
		}
	}
	return true
}

func isWordBytes(b []byte, w string) bool {
	if len(b) != len(w) {
		return false
	}
	for i := range b {
		if upper(b[i]) != w[i] {
			return false
		}
	}
	return true
}

func upper(c byte) byte {
	if 'a' <= c && c <= 'z' {
		return c - ('a' - 'A')
	}
	return c
}

// redisArg is redis.Argument, whose RedisArg value redigo sends in its place.
type redisArg interface{ RedisArg() any }

// argInt reads an integer argument as redigo would send it.
func argInt(arg any) (int64, bool) {
	if a, ok := arg.(redisArg); ok {
		arg = a.RedisArg()
	}
	switch v := arg.(type) {
	case int, int64, int32, int16, int8:
		return signed(v), true
	case uint, uint64, uint32, uint16, uint8:
		return unsigned(v)
	case string:
		n, err := strconv.ParseInt(v, 10, 64)
		return n, err == nil
	case []byte:
		n, err := strconv.ParseInt(string(v), 10, 64)
		return n, err == nil
	case bool:
		if v { // redigo sends true as 1, false as 0
			return 1, true
		}
		return 0, true
	case nil, float64, float32:
		return 0, false
	}
	// Any other type, a named integer type for one, redigo sends as fmt
	// prints it.
	n, err := strconv.ParseInt(fmt.Sprint(arg), 10, 64)
	return n, err == nil
}

// signed converts a value of one of Go's signed integer types.
func signed(arg any) int64 {
	switch v := arg.(type) {
	case int:
		return int64(v)
	case int64:
		return v
	case int32:
		return int64(v)
	case int16:
		return int64(v)
	case int8:
		return int64(v)
	}
	return 0 // no caller passes another type
}

// unsigned converts a value of one of Go's unsigned integer types, and
// reports false for one above math.MaxInt64.
func unsigned(arg any) (int64, bool) {
	var u uint64
	switch v := arg.(type) {
	case uint:
		u = uint64(v)
	case uint64:
		u = v
	case uint32:
		u = uint64(v)
	case uint16:
		u = uint64(v)
	case uint8:
		u = uint64(v)
	} // no caller passes another type
	return int64(u), u <= math.MaxInt64
}

// argFloat reads a numeric argument as redigo would send it and the server
// would read it.
func argFloat(arg any) (float64, bool) {
	if a, ok := arg.(redisArg); ok {
		arg = a.RedisArg()
	}
	switch v := arg.(type) {
	case float64:
		return v, true
	case float32:
		return float64(v), true
	case string:
		return parseFloat(v)
	case []byte:
		return parseFloat(string(v))
	case int, int64, int32, int16, int8:
		return float64(signed(v)), true // the common case, which cannot fail
	case uint, uint64, uint32, uint16, uint8, bool, nil:
		n, ok := argInt(v)
		return float64(n), ok
	}
	return parseFloat(fmt.Sprint(arg))
}

// parseFloat reads a number as the server's strtold does, which also takes
// hexadecimal without a binary exponent ("0x1"), where Go wants one.
func parseFloat(s string) (float64, bool) {
	f, err := strconv.ParseFloat(s, 64)
	if err == nil {
		return f, true
	}
	t := strings.TrimLeft(s, "+-")
	if len(t) > 2 && t[0] == '0' && (t[1] == 'x' || t[1] == 'X') && !strings.ContainsAny(t, "pP_") {
		f, err = strconv.ParseFloat(s+"p0", 64)
		return f, err == nil
	}
	return 0, false
}
