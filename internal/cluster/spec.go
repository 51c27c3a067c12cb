package cluster

// command is one command or subcommand of the generated table.
type command struct {
	readOnly  bool      // the "readonly" flag of COMMAND
	container bool      // the command has subcommands, named by its first argument
	specs     []keySpec // COMMAND's key specs
	// keys, when set, finds the keys when a spec does not fit the
	// arguments, as the command's own code in the server does.
	keys func(args []interface{}) positions
}

// positions are the positions of keys in argv: first to last, then extra
// when it is not 0; none when first is 0.
type positions struct{ first, last, extra int }

// keySpec is one key spec of COMMAND: where its keys begin (an index or
// after a keyword) and how many follow (a range or a key count).
type keySpec struct {
	flags   specFlags
	begin   beginKind
	index   int // beginIndex: the position; beginKeyword: where the search starts (from the end if negative)
	keyword string
	find    findKind
	last    int // findRange: the last key, relative to the first, or from the end if negative
	step    int // findRange and findKeynum: the distance between two keys
	limit   int // findRange with last -1: keys take 1/limit of the remaining arguments
	keynum  int // findKeynum: the position of the key count, relative to the begin
	first   int // findKeynum: the position of the first key, relative to the begin
}

type specFlags uint8

const (
	// incomplete: the spec may miss keys, so the server finds them with
	// the command's own code instead.
	incomplete specFlags = 1 << iota
	// notKey: the spec names a shard channel, not a key.
	notKey
)

type beginKind uint8

const (
	beginUnknown beginKind = iota
	beginIndex
	beginKeyword
)

type findKind uint8

const (
	findUnknown findKind = iota
	findRange
	findKeynum
)

// firstKey returns the position of the first key of the command with
// args (position 1 is args[0]), counting shard channels as keys.
func (c *command) firstKey(args []interface{}) (int, bool) {
	if !c.specsFit(args, true) {
		if c.keys == nil {
			return 0, false
		}
		p := c.keys(args)
		return p.first, p.first > 0
	}
	for i := range c.specs {
		if first, _, found := c.specs[i].span(args); found == spanKeys {
			return first, true
		}
	}
	return 0, false
}

// eachKey calls f with the position of each key of the command with args,
// in the order COMMAND GETKEYS lists them. Like the server, when a spec
// does not fit the arguments it finds the keys with the command's own code
// if it has some (MIGRATE, SORT), and finds none otherwise.
func (c *command) eachKey(args []interface{}, f func(pos int)) {
	if !c.specsFit(args, false) {
		if c.keys == nil {
			return
		}
		p := c.keys(args)
		for pos := p.first; pos > 0 && pos <= p.last; pos++ {
			f(pos)
		}
		if p.extra > 0 {
			f(p.extra)
		}
		return
	}
	for i := range c.specs {
		s := &c.specs[i]
		if s.flags&notKey != 0 {
			continue
		}
		first, last, found := s.span(args)
		if found != spanKeys {
			continue
		}
		for pos := first; pos <= last; pos += s.step {
			f(pos)
		}
	}
}

// specsFit reports whether every spec fits the arguments, as the server
// requires before it trusts them.
func (c *command) specsFit(args []interface{}, channels bool) bool {
	for i := range c.specs {
		s := &c.specs[i]
		if s.flags&notKey != 0 && !channels {
			continue
		}
		switch _, _, found := s.span(args); {
		case found == spanInvalid:
			return false
		case found == spanKeys && s.flags&incomplete != 0:
			return false
		}
	}
	return true
}

// spanFound is what a key spec found in the arguments.
type spanFound uint8

const (
	spanKeys    spanFound = iota // keys from first to last
	spanAbsent                   // the spec's keyword is not there: no keys, but no error either
	spanInvalid                  // the spec does not fit the arguments
)

// span returns the positions of the first and the last key of the spec
// in argv, the command name followed by args, as the server computes them
// (getKeysUsingKeySpecs in db.c).
func (s *keySpec) span(args []interface{}) (first, last int, found spanFound) {
	argc := len(args) + 1
	switch s.begin {
	case beginIndex:
		first = s.index
	case beginKeyword:
		if first = s.keywordEnd(args); first == 0 {
			return 0, 0, spanAbsent
		}
	default:
		return 0, 0, spanInvalid
	}
	switch s.find {
	case findRange:
		last = s.rangeLast(first, argc)
	case findKeynum:
		if count := first + s.keynum; count < 1 || count >= argc {
			return 0, 0, spanInvalid
		}
		n, ok := argInt(args[first+s.keynum-1])
		if !ok || n < 0 {
			return 0, 0, spanInvalid
		}
		first += s.first
		last = first + n - 1
	default:
		return 0, 0, spanInvalid
	}
	if first < 1 || last >= argc || last < first || s.step < 1 {
		return 0, 0, spanInvalid
	}
	return first, last, spanKeys
}

// keywordEnd returns the position after the spec's keyword, searched from
// s.index forwards, or from argc+s.index backwards when it is negative,
// or 0 if the keyword is not there. Like the server, the search stops
// before the last argument going forwards and before argv[1] going
// backwards.
func (s *keySpec) keywordEnd(args []interface{}) int {
	argc := len(args) + 1
	if s.index > 0 {
		for i := s.index; i < argc-1; i++ {
			if argEqualFold(args[i-1], s.keyword) {
				return i + 1
			}
		}
		return 0
	}
	for i := argc + s.index; i > 1 && i < argc; i-- {
		if argEqualFold(args[i-1], s.keyword) {
			return i + 1
		}
	}
	return 0
}

// rangeLast is the position of the last key of a range spec whose first
// key is at first.
func (s *keySpec) rangeLast(first, argc int) int {
	switch {
	case s.last >= 0:
		return first + s.last
	case s.limit == 0:
		return argc + s.last
	default:
		return first + (argc-first)/s.limit + s.last
	}
}
