package cluster

// The commands whose key specs the server does not trust for every
// argument list (an "unknown" or "incomplete" spec) have their own code to
// find their keys; these are its equivalents, for argv positions.
func init() {
	setKeys("sort", sortKeys)
	setKeys("sort_ro", sortROKeys)
	setKeys("migrate", migrateKeys)
}

func setKeys(name string, keys func(args []interface{}) positions) {
	c, ok := commands[name]
	if !ok {
		panic("cluster: the command table has no " + name)
	}
	c.keys = keys
	commands[name] = c
}

// sortKeys finds the keys of SORT key [BY pattern] [LIMIT offset count]
// [GET pattern ...] [ASC|DESC] [ALPHA] [STORE destination]: the key, then
// the destination of the last STORE, skipping the arguments of BY, LIMIT
// and GET (sortGetKeys in db.c).
func sortKeys(args []interface{}) positions {
	if len(args) < 1 {
		return positions{}
	}
	store := 0
	for i := 2; i <= len(args); i++ {
		switch a := args[i-1]; {
		case argEqualFold(a, "limit"):
			i += 2
		case argEqualFold(a, "get"), argEqualFold(a, "by"):
			i++
		case argEqualFold(a, "store") && i+1 <= len(args):
			store = i + 1
		}
	}
	return positions{first: 1, last: 1, extra: store}
}

// sortROKeys finds the key of SORT_RO key ... (sortROGetKeys in db.c).
func sortROKeys(args []interface{}) positions {
	if len(args) < 1 {
		return positions{}
	}
	return positions{first: 1, last: 1}
}

// migrateKeys finds the keys of MIGRATE host port key|"" db timeout [COPY]
// [REPLACE] [AUTH password] [AUTH2 username password] [KEYS key ...]: the
// key, or the keys after KEYS when the key is empty (migrateGetKeys in
// db.c).
func migrateKeys(args []interface{}) positions {
	argc := len(args) + 1
	first, last := 3, 3
	for i := 6; i < argc; i++ {
		a := args[i-1]
		if argEqualFold(a, "keys") {
			if argString(args[2]) != "" {
				return positions{}
			}
			first, last = i+1, argc-1
			break
		}
		switch {
		case argEqualFold(a, "auth"):
			i++
		case argEqualFold(a, "auth2"):
			i += 2
		}
	}
	if first > last || last >= argc {
		return positions{}
	}
	return positions{first: first, last: last}
}
