// Package gen writes the command table of package cluster from the COMMAND
// reply of a running redis-server: for every command and subcommand, its
// "readonly" flag and its key specs (where the keys begin and how many
// there are), as Redis 7 reports them.
//
// The program in ./cmd/gentable runs it (go generate ./internal/cluster);
// the cluster package's tests run it against their own server and compare
// the result with the checked-in table, so that the table cannot drift.
package gen

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/gomodule/redigo/redis"
)

// Command is one command or subcommand ("xinfo|stream") of the table.
type Command struct {
	Name      string
	ReadOnly  bool
	Container bool // the command has subcommands, named by its first argument
	Specs     []KeySpec
}

// KeySpec is one key spec of COMMAND, as the server evaluates it
// (getKeysUsingKeySpecs in Redis's db.c).
type KeySpec struct {
	Flags []string // RO, RW, incomplete, not_key, variable_flags, ...

	BeginType string // "index", "keyword" or "unknown"
	Index     int    // index: the position of the first key
	Keyword   string // keyword: the keyword the keys follow
	StartFrom int    // keyword: where the search starts; negative counts from the end, backwards

	FindType string // "range", "keynum" or "unknown"
	LastKey  int    // range: the last key, relative to the first; negative counts from the end
	KeyStep  int    // range and keynum: the distance between two keys
	Limit    int    // range with LastKey -1: only 1/Limit of the remaining arguments
	KeyNum   int    // keynum: the position of the key count, relative to the begin
	FirstKey int    // keynum: the position of the first key, relative to the begin
}

// Load reads every command, and every subcommand, from COMMAND on c,
// sorted by name.
func Load(c redis.Conn) ([]Command, error) {
	entries, err := redis.Values(c.Do("COMMAND"))
	if err != nil {
		return nil, fmt.Errorf("gen: COMMAND: %w", err)
	}
	var out []Command
	for _, e := range entries {
		cmds, err := parseEntry(e)
		if err != nil {
			return nil, err
		}
		out = append(out, cmds...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// parseEntry parses one command of COMMAND's reply: name, arity, flags,
// first key, last key, step, ACL categories, tips, key specs, subcommands.
// It returns the command followed by its subcommands.
func parseEntry(e interface{}) ([]Command, error) {
	fields, err := redis.Values(e, nil)
	if err != nil || len(fields) < 10 {
		return nil, fmt.Errorf("gen: a COMMAND entry is not a 10-field array: %v", e)
	}
	name, err := redis.String(fields[0], nil)
	if err != nil {
		return nil, fmt.Errorf("gen: a COMMAND entry has no name: %w", err)
	}
	flags, err := redis.Strings(fields[2], nil)
	if err != nil {
		return nil, fmt.Errorf("gen: %s: flags: %w", name, err)
	}
	specs, err := redis.Values(fields[8], nil)
	if err != nil {
		return nil, fmt.Errorf("gen: %s: key specs: %w", name, err)
	}
	subs, err := redis.Values(fields[9], nil)
	if err != nil {
		return nil, fmt.Errorf("gen: %s: subcommands: %w", name, err)
	}
	cmd := Command{Name: strings.ToLower(name), ReadOnly: contains(flags, "readonly"), Container: len(subs) > 0}
	for _, s := range specs {
		ks, err := parseSpec(s)
		if err != nil {
			return nil, fmt.Errorf("gen: %s: %w", name, err)
		}
		cmd.Specs = append(cmd.Specs, ks)
	}
	out := []Command{cmd}
	for _, s := range subs {
		sub, err := parseEntry(s)
		if err != nil {
			return nil, err
		}
		out = append(out, sub...)
	}
	return out, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

// parseSpec parses one key spec: a map of flags, begin_search and find_keys.
func parseSpec(s interface{}) (KeySpec, error) {
	m, err := redisMap(s)
	if err != nil {
		return KeySpec{}, fmt.Errorf("key spec: %w", err)
	}
	var ks KeySpec
	if ks.Flags, err = redis.Strings(m["flags"], nil); err != nil {
		return KeySpec{}, fmt.Errorf("key spec flags: %w", err)
	}
	ks.BeginType, ks.FindType = "unknown", "unknown"
	begin, bspec, err := typedSpec(m["begin_search"])
	if err != nil {
		return KeySpec{}, fmt.Errorf("begin_search: %w", err)
	}
	find, fspec, err := typedSpec(m["find_keys"])
	if err != nil {
		return KeySpec{}, fmt.Errorf("find_keys: %w", err)
	}
	switch begin {
	case "index":
		ks.BeginType, ks.Index = begin, bspec.int("index")
	case "keyword":
		ks.BeginType, ks.Keyword, ks.StartFrom = begin, bspec.str("keyword"), bspec.int("startfrom")
	}
	switch find {
	case "range":
		ks.FindType, ks.LastKey, ks.KeyStep, ks.Limit = find, fspec.int("lastkey"), fspec.int("keystep"), fspec.int("limit")
	case "keynum":
		ks.FindType, ks.KeyNum, ks.FirstKey, ks.KeyStep = find, fspec.int("keynumidx"), fspec.int("firstkey"), fspec.int("keystep")
	}
	if err := errors.Join(bspec.err, fspec.err); err != nil {
		return KeySpec{}, err
	}
	return ks, nil
}

// fieldMap is a RESP2 map (a flat array of names and values) with the
// first error met while reading it.
type fieldMap struct {
	m   map[string]interface{}
	err error
}

func (f *fieldMap) int(name string) int {
	n, err := redis.Int(f.m[name], nil)
	if err != nil && f.err == nil {
		f.err = fmt.Errorf("%s: %w", name, err)
	}
	return n
}

func (f *fieldMap) str(name string) string {
	s, err := redis.String(f.m[name], nil)
	if err != nil && f.err == nil {
		f.err = fmt.Errorf("%s: %w", name, err)
	}
	return s
}

// typedSpec reads {type: T, spec: {...}}.
func typedSpec(v interface{}) (string, *fieldMap, error) {
	m, err := redisMap(v)
	if err != nil {
		return "", nil, err
	}
	typ, err := redis.String(m["type"], nil)
	if err != nil {
		return "", nil, fmt.Errorf("type: %w", err)
	}
	spec, err := redisMap(m["spec"])
	if err != nil {
		return "", nil, fmt.Errorf("spec: %w", err)
	}
	return typ, &fieldMap{m: spec}, nil
}

// redisMap reads a RESP2 map reply: an array of names and values.
func redisMap(v interface{}) (map[string]interface{}, error) {
	a, err := redis.Values(v, nil)
	if err != nil {
		return nil, err
	}
	if len(a)%2 != 0 {
		return nil, fmt.Errorf("a map of %d elements", len(a))
	}
	m := make(map[string]interface{}, len(a)/2)
	for i := 0; i < len(a); i += 2 {
		k, err := redis.String(a[i], nil)
		if err != nil {
			return nil, fmt.Errorf("map key: %w", err)
		}
		m[k] = a[i+1]
	}
	return m, nil
}

// Generate reads COMMAND and the server's version on c and returns the
// table's Go source.
func Generate(c redis.Conn) ([]byte, error) {
	version, err := Version(c)
	if err != nil {
		return nil, err
	}
	cmds, err := Load(c)
	if err != nil {
		return nil, err
	}
	return Source(cmds, version)
}

// Version returns redis_version from INFO server.
func Version(c redis.Conn) (string, error) {
	info, err := redis.String(c.Do("INFO", "server"))
	if err != nil {
		return "", fmt.Errorf("gen: INFO server: %w", err)
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
			return v, nil
		}
	}
	return "", errors.New("gen: INFO server has no redis_version")
}
