package leakcheck

import (
	"bufio"
	"fmt"
	"runtime"
	"strconv"
	"strings"
)

// goroutine is one goroutine parsed from a runtime.Stack(all=true) dump.
type goroutine struct {
	id    int
	state string // e.g. "running", "chan receive", "chan receive, 2 minutes"

	// topFunc is the function on top of the stack (the innermost frame).
	topFunc string
	// funcs is every function in the stack, excluding the "created by" one.
	funcs map[string]struct{}
	// full is the raw stack trace, header included.
	full string
}

// hasFunc reports whether fn appears anywhere in the goroutine's stack.
func (g goroutine) hasFunc(fn string) bool {
	_, ok := g.funcs[fn]
	return ok
}

// String returns the raw stack trace, header included.
func (g goroutine) String() string { return g.full }

// stackDump returns the text of runtime.Stack, growing the buffer until the
// whole dump fits.
func stackDump(all bool) []byte {
	for size := 64 << 10; ; size *= 2 {
		buf := make([]byte, size)
		if n := runtime.Stack(buf, all); n < size {
			return buf[:n]
		}
	}
}

// allGoroutines returns every goroutine the runtime reports.
func allGoroutines() []goroutine {
	gs, err := parseStacks(string(stackDump(true)))
	if err != nil {
		// runtime.Stack output that we cannot parse is a bug in this package.
		panic(fmt.Sprintf("leakcheck: %v", err))
	}
	return gs
}

// currentID returns the ID of the calling goroutine.
func currentID() int {
	gs, err := parseStacks(string(stackDump(false)))
	if err != nil || len(gs) == 0 {
		panic(fmt.Sprintf("leakcheck: cannot parse current goroutine: %v", err))
	}
	return gs[0].id
}

// parseStacks parses the output of runtime.Stack. Each goroutine starts with
// a header line such as
//
//	goroutine 7 [chan receive, 3 minutes]:
//
// followed by pairs of lines (a function call, then a tab-indented
// file:line), and ends at an optional "created by" pair and a blank line.
func parseStacks(dump string) ([]goroutine, error) {
	var (
		gs  []goroutine
		cur *goroutine
		b   strings.Builder
		// done is set once the "created by" line has been read: anything after
		// it (for example "[originating from goroutine N]:" ancestor traces
		// with GODEBUG=tracebackancestors) does not belong to this stack.
		done bool
	)
	flush := func() {
		if cur != nil {
			cur.full = b.String()
			gs = append(gs, *cur)
			cur = nil
		}
		b.Reset()
	}
	sc := bufio.NewScanner(strings.NewReader(dump))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "goroutine ") {
			flush()
			id, state, err := parseHeader(line)
			if err != nil {
				return nil, err
			}
			cur = &goroutine{id: id, state: state, funcs: map[string]struct{}{}}
			done = false
			b.WriteString(line)
			b.WriteByte('\n')
			continue
		}
		if cur == nil {
			continue // text before the first header; runtime.Stack prints none
		}
		b.WriteString(line)
		b.WriteByte('\n')
		switch {
		case done,
			line == "",
			strings.HasPrefix(line, "\t"),                 // file:line of the previous frame
			strings.HasPrefix(line, "..."),                // "...additional frames elided..."
			strings.HasPrefix(line, "[originating from "): // tracebackancestors
			continue
		case strings.HasPrefix(line, "created by "):
			done = true
			continue
		}
		fn := funcName(line)
		if fn == "" {
			return nil, fmt.Errorf("cannot parse stack frame %q in:\n%s", line, dump)
		}
		if cur.topFunc == "" {
			cur.topFunc = fn
		}
		cur.funcs[fn] = struct{}{}
	}
	flush()
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return gs, nil
}

// parseHeader parses "goroutine 7 [chan receive]:" (the runtime may add
// fields such as "gp=0x... m=..." before the bracketed state with
// GOTRACEBACK=system).
func parseHeader(line string) (id int, state string, err error) {
	rest := strings.TrimPrefix(line, "goroutine ")
	idStr, rest, _ := strings.Cut(rest, " ")
	id, err = strconv.Atoi(idStr)
	if err != nil {
		return 0, "", fmt.Errorf("bad goroutine header %q: %v", line, err)
	}
	open := strings.IndexByte(rest, '[')
	end := strings.LastIndexByte(rest, ']')
	if open < 0 || end < open {
		return 0, "", fmt.Errorf("bad goroutine header %q: no state", line)
	}
	return id, rest[open+1 : end], nil
}

// funcName extracts the function name from a frame line such as
//
//	net/http.(*Server).Serve(0xc000123, {0x1, 0x2})
//	main.main()
//	internal/poll.ignoringEINTRIO(...)
//
// The arguments are the part after the last '(' that opens the argument
// list, so method receivers like "(*Server)" stay in the name.
func funcName(line string) string {
	if !strings.HasSuffix(line, ")") {
		return ""
	}
	// Find the '(' matching the final ')'.
	depth := 0
	for i := len(line) - 1; i >= 0; i-- {
		switch line[i] {
		case ')':
			depth++
		case '(':
			depth--
			if depth == 0 {
				return line[:i]
			}
		}
	}
	return ""
}
