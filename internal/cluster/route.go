package cluster

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"

	"github.com/gomodule/redigo/redis"
)

// Route is where a command must be sent.
type Route struct {
	Slot     int  // the slot of the command's first key; -1 for a command with no key (any master)
	ReadOnly bool // the command only reads (the "readonly" flag of COMMAND), so a replica may serve it
}

// RouteOf finds the route of the command name (any case) with its
// arguments as given to redigo's Do (strings, []byte, ints, floats, bool,
// nil, redis.Argument, anything else printed as redigo prints it).
//
// The first key is found as the server finds it (COMMAND GETKEYS), except
// that the shard channel of SPUBLISH, SSUBSCRIBE and SUNSUBSCRIBE counts as
// a key, since Redis Cluster routes it by its slot too. RouteOf never
// panics; a command it does not know is keyless (Slot -1), and so is an
// argument list too short for the key spec (EVAL with numkeys beyond the
// arguments, ...): the server will refuse it.
func RouteOf(name string, args []interface{}) Route {
	cmd, ok := lookup(name, args)
	if !ok {
		return Route{Slot: -1}
	}
	r := Route{Slot: -1, ReadOnly: cmd.readOnly}
	if pos, ok := cmd.firstKey(args); ok {
		r.Slot = argSlot(args[pos-1])
	}
	return r
}

// Keys returns the keys of the command as the server lists them for
// COMMAND GETKEYS (shard channels are not keys there), printed as redigo
// writes them, or nil when the command has none.
func Keys(name string, args []interface{}) []string {
	cmd, ok := lookup(name, args)
	if !ok {
		return nil
	}
	var keys []string
	cmd.eachKey(args, func(pos int) {
		keys = append(keys, argString(args[pos-1]))
	})
	return keys
}

// maxName bounds the length of a command name, with its subcommand, that
// lookup looks for: the longest in Redis 7.0 is 29 bytes
// ("cluster|count-failure-reports").
const maxName = 64

// lookup finds the table entry of the command name, or of its subcommand
// args[0] if it has subcommands. The key positions of an entry count the
// command name as 0, like the server's argv, and the arguments from 1.
func lookup(name string, args []interface{}) (command, bool) {
	var buf [maxName]byte
	n, ok := appendLower(buf[:0], name)
	if !ok {
		return command{}, false
	}
	cmd, ok := commands[string(n)]
	if !ok || !cmd.container {
		return cmd, ok
	}
	if len(args) == 0 {
		return command{}, false
	}
	n = append(n, '|')
	switch sub := args[0].(type) {
	case string:
		n, ok = appendLower(n, sub)
	case []byte:
		n, ok = appendLower(n, sub)
	default:
		ok = false
	}
	if !ok {
		return command{}, false
	}
	cmd, ok = commands[string(n)]
	return cmd, ok
}

// appendLower appends s in lower case to b if it fits in b's capacity.
func appendLower[S string | []byte](b []byte, s S) ([]byte, bool) {
	if len(b)+len(s) > cap(b) {
		return b, false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b = append(b, c)
	}
	return b, true
}

// argSlot is the slot of the argument a, printed as redigo writes it.
func argSlot(a interface{}) int {
	switch a := a.(type) {
	case string:
		return slot(a)
	case []byte:
		return slot(a)
	}
	return slot(argString(a))
}

// argString prints a as redigo's writeArg writes it to the server.
func argString(a interface{}) string {
	switch a := a.(type) {
	case string:
		return a
	case []byte:
		return string(a)
	case int:
		return strconv.FormatInt(int64(a), 10)
	case int64:
		return strconv.FormatInt(a, 10)
	case float64:
		return strconv.FormatFloat(a, 'g', -1, 64)
	case bool:
		if a {
			return "1"
		}
		return "0"
	case nil:
		return ""
	case redis.Argument:
		return argumentString(a)
	}
	return fmt.Sprint(a)
}

// argumentString prints a redis.Argument as redigo does: its RedisArg
// printed as an argument, except that a RedisArg that is itself an
// Argument is printed with fmt.Sprint, not asked again.
func argumentString(a redis.Argument) string {
	v := a.RedisArg()
	if _, ok := v.(redis.Argument); ok {
		return fmt.Sprint(v)
	}
	return argString(v)
}

// argEqualFold reports whether a, printed as redigo prints it, equals
// word in any case.
func argEqualFold(a interface{}, word string) bool {
	switch a := a.(type) {
	case string:
		return strings.EqualFold(a, word)
	case []byte:
		return bytes.EqualFold(a, []byte(word))
	}
	return strings.EqualFold(argString(a), word)
}

// argInt parses a, printed as redigo prints it, as the server parses a key
// count (string2ll): a decimal integer with no sign but '-', no spaces.
func argInt(a interface{}) (int, bool) {
	var s string
	switch a := a.(type) {
	case int:
		return a, true
	case int64:
		return int(a), int64(int(a)) == a
	case string:
		s = a
	case []byte:
		s = string(a)
	default:
		s = argString(a)
	}
	if len(s) == 0 || s[0] == '+' || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	return n, err == nil
}
