package cluster_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/gomodule/redigo/redis"

	"github.com/redispool/redispool/internal/redistest"
)

// startServer starts a cluster-enabled redis-server (a single node answers
// CLUSTER KEYSLOT, COMMAND and COMMAND GETKEYS) and returns a connection.
func startServer(t *testing.T) redis.Conn {
	t.Helper()
	s := redistest.StartClusterNode(t)
	c, err := redis.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// docArg is one argument of COMMAND DOCS.
type docArg struct {
	typ      string // key, string, integer, double, pattern, unix-time, pure-token, oneof, block
	token    string
	optional bool
	args     []docArg // oneof and block
}

// commandLine is a command name and its arguments, as given to Do.
type commandLine struct {
	name string
	args []interface{}
}

func (l commandLine) String() string {
	return strings.TrimSpace(fmt.Sprintf("%s %v", l.name, l.args))
}

// sampleLines returns, for every command and subcommand in COMMAND DOCS,
// two command lines: one with the required arguments only, one with every
// optional argument too (the first choice of each oneof, one of each
// repeated argument). Keys are named k1, k2, ..., the other arguments are
// "s", 1 and 1.5, so that a key found where there is none shows.
func sampleLines(t *testing.T, c redis.Conn) []commandLine {
	t.Helper()
	docs, err := redis.Values(c.Do("COMMAND", "DOCS"))
	if err != nil {
		t.Fatalf("COMMAND DOCS: %v", err)
	}
	var lines []commandLine
	for i := 0; i+1 < len(docs); i += 2 {
		lines = append(lines, docLines(t, docs[i], docs[i+1])...)
	}
	return lines
}

func docLines(t *testing.T, nameReply, docReply interface{}) []commandLine {
	t.Helper()
	name, _ := redis.String(nameReply, nil)
	doc := replyMap(t, docReply)
	if subs, ok := doc["subcommands"]; ok {
		a, _ := redis.Values(subs, nil)
		var lines []commandLine
		for i := 0; i+1 < len(a); i += 2 {
			lines = append(lines, docLines(t, a[i], a[i+1])...)
		}
		return lines
	}
	args := parseDocArgs(t, doc["arguments"])
	var prefix []interface{}
	if container, sub, ok := strings.Cut(name, "|"); ok {
		name, prefix = container, []interface{}{sub}
	}
	var lines []commandLine
	for _, optional := range []bool{false, true} {
		n := 0
		line := append([]interface{}{}, prefix...)
		line = renderArgs(line, args, optional, &n)
		lines = append(lines, commandLine{name: name, args: line})
	}
	return lines
}

func parseDocArgs(t *testing.T, reply interface{}) []docArg {
	t.Helper()
	list, _ := redis.Values(reply, nil)
	var out []docArg
	for _, r := range list {
		m := replyMap(t, r)
		a := docArg{}
		a.typ, _ = redis.String(m["type"], nil)
		a.token, _ = redis.String(m["token"], nil)
		flags, _ := redis.Strings(m["flags"], nil)
		for _, f := range flags {
			a.optional = a.optional || f == "optional"
		}
		if sub, ok := m["arguments"]; ok {
			a.args = parseDocArgs(t, sub)
		}
		out = append(out, a)
	}
	return out
}

// renderArgs appends a sample of args to line.
func renderArgs(line []interface{}, args []docArg, optional bool, n *int) []interface{} {
	for _, a := range args {
		if a.optional && !optional {
			continue
		}
		if a.token != "" {
			line = append(line, a.token)
		}
		switch a.typ {
		case "key":
			*n++
			line = append(line, fmt.Sprintf("k%d", *n))
		case "integer", "unix-time":
			line = append(line, 1)
		case "double":
			line = append(line, 1.5)
		case "pure-token":
		case "oneof":
			if len(a.args) > 0 {
				line = renderArgs(line, a.args[:1], true, n)
			}
		case "block":
			line = renderArgs(line, a.args, optional, n)
		default:
			line = append(line, "s")
		}
	}
	return line
}

func replyMap(t *testing.T, reply interface{}) map[string]interface{} {
	t.Helper()
	a, err := redis.Values(reply, nil)
	if err != nil || len(a)%2 != 0 {
		t.Fatalf("not a map reply: %v (%v)", reply, err)
	}
	m := make(map[string]interface{}, len(a)/2)
	for i := 0; i < len(a); i += 2 {
		k, _ := redis.String(a[i], nil)
		m[k] = a[i+1]
	}
	return m
}
