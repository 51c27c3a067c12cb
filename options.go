package redispool

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Defaults for the fields of Pool left at their zero value.
const (
	// DefaultAddr is the address dialed when Addr, Dial and DialContext are unset.
	DefaultAddr = "localhost:6379"
	// DefaultDialTimeout bounds connecting, including the TLS handshake and the
	// AUTH and SELECT commands (or PING) sent while dialing.
	DefaultDialTimeout = 5 * time.Second
	// DefaultReadTimeout bounds the wait for each reply.
	DefaultReadTimeout = 3 * time.Second
	// DefaultIdleTimeout closes connections left idle this long: less than the
	// idle timeouts of the load balancers commonly found in front of Redis.
	DefaultIdleTimeout = 4 * time.Minute
	// defaultMaxActivePerProc times GOMAXPROCS is MaxActive's default.
	defaultMaxActivePerProc = 10
	// defaultMaxDials is the most concurrent dials by default.
	defaultMaxDials = 8
	// drainTimeoutCap bounds how long Close reads replies still pending on a
	// connection before it gives up on keeping it.
	drainTimeoutCap = time.Second
	// maxPoolSize is the largest MaxActive accepted. One host opens at most
	// about 64k TCP connections to one address, one per local port, and
	// the pool sets aside a token and an idle place per connection when it
	// is first used.
	maxPoolSize = 1 << 16
	// maxTimeout is the longest any duration of the configuration counts
	// for (73 years): longer ones are shortened to it, so that sums such as
	// ReadTimeout plus a blocking command's timeout cannot overflow.
	maxTimeout = time.Duration(math.MaxInt64 / 4)
	// minDuration is the shortest positive timeout accepted: anything shorter
	// is almost always a duration written without its unit (5 meaning 5 ns).
	minDuration = time.Millisecond
)

// ErrInvalidConfig is wrapped by the error that Get, GetContext and every
// method of the conn Get returns when the Pool's fields make no sense, for
// example a negative MaxActive or both Dial and Addr set. The message names the
// field. The configuration is checked once, on first use.
var ErrInvalidConfig = errors.New("redispool: invalid configuration")

// config is a Pool's fields with defaults applied and checked, fixed at first use.
type config struct {
	maxActive    int
	maxIdle      int
	maxDials     int
	readTimeout  time.Duration // 0: no deadline
	writeTimeout time.Duration // 0: no deadline
	dialTimeout  time.Duration // 0: no deadline
	waitTimeout  time.Duration // < 0: do not wait
	drainTimeout time.Duration
	idleTimeout  time.Duration // 0: never
	maxLifetime  time.Duration // 0: never
	userDial     bool          // connections come from Dial or DialContext
	addr         string        // host:port or a socket path, never a URL
	username     string        // Username, or the user of a URL in Addr
	password     string        // Password, or the password of a URL in Addr
	tls          bool          // Addr is a rediss:// URL
	db           int           // DB, or the database of a URL in Addr
}

// buildConfig applies defaults to p's fields and checks them.
func (p *Pool) buildConfig() (config, error) {
	c := config{
		maxActive:   p.MaxActive,
		maxIdle:     p.MaxIdle,
		maxDials:    p.MaxConcurrentDials,
		idleTimeout: p.IdleTimeout,
		maxLifetime: p.MaxConnLifetime,
		userDial:    p.Dial != nil || p.DialContext != nil,
		addr:        p.Addr,
		db:          p.DB,
	}
	if err := c.check(p); err != nil {
		return config{}, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	if err := c.setSizes(p); err != nil {
		return config{}, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	if c.addr == "" && !c.userDial && p.Sentinel == nil && p.Cluster == nil {
		c.addr = DefaultAddr
	}
	c.setTimeouts(p)
	return c, nil
}

// check reports the first of p's fields that makes no sense, in this
// order: counts, how connections are dialed, Addr or Sentinel (read into c
// by setDial), durations.
func (c *config) check(p *Pool) error {
	if err := c.checkCounts(); err != nil {
		return err
	}
	if err := checkCluster(p); err != nil {
		return err
	}
	if err := c.checkDialer(p); err != nil {
		return err
	}
	if err := c.setDial(p); err != nil {
		return err
	}
	return c.checkDurations(p)
}

// checkCounts reports a negative MaxActive, MaxIdle, MaxConcurrentDials or DB.
func (c *config) checkCounts() error {
	switch {
	case c.maxActive < 0:
		return fmt.Errorf("MaxActive is %d; it must be positive, or zero for the default (10 x GOMAXPROCS)", c.maxActive)
	case c.maxIdle < 0:
		return fmt.Errorf("MaxIdle is %d; it must be positive, or zero to keep up to MaxActive idle connections", c.maxIdle)
	case c.maxDials < 0:
		return fmt.Errorf("MaxConcurrentDials is %d; it must be positive, or zero for the default", c.maxDials)
	case c.db < 0:
		return fmt.Errorf("DB is %d; database numbers start at 0", c.db)
	}
	return nil
}

// checkDialer reports fields that the way connections are dialed would
// ignore or contradict: Dial or DialContext dials on its own, and the
// sentinels name the address.
func (c *config) checkDialer(p *Pool) error {
	if c.userDial {
		switch {
		case c.addr != "":
			return fmt.Errorf("both Addr (%q) and Dial or DialContext are set; set Addr to let the pool dial, or Dial to dial yourself", redactAddr(c.addr))
		case len(p.DialOptions) > 0:
			return errors.New("DialOptions are set together with Dial or DialContext, which would ignore them; pass the options in your Dial")
		case p.Username != "" || p.Password != "":
			return errors.New("Username or Password is set together with Dial or DialContext, which would ignore them; authenticate in your Dial")
		case p.DialTimeout != 0:
			return errors.New("DialTimeout is set together with Dial or DialContext; set the connect timeout in your Dial")
		case p.WriteTimeout != 0:
			return errors.New("WriteTimeout is set together with Dial or DialContext, which the pool cannot apply to your conns; set it in your Dial (redis.DialWriteTimeout)")
		}
	}
	if p.Sentinel != nil && (c.userDial || c.addr != "") {
		return errors.New("Sentinel is set together with Addr, Dial or DialContext; the sentinels name the address to dial")
	}
	return nil
}

// checkDurations reports a positive duration shorter than minDuration, then
// a negative IdleTimeout, MaxConnLifetime or LeakThreshold.
func (c *config) checkDurations(p *Pool) error {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"DialTimeout", p.DialTimeout},
		{"ReadTimeout", p.ReadTimeout},
		{"WriteTimeout", p.WriteTimeout},
		{"WaitTimeout", p.WaitTimeout},
		{"IdleTimeout", p.IdleTimeout},
		{"MaxConnLifetime", p.MaxConnLifetime},
		{"LeakThreshold", p.LeakThreshold},
	} {
		if d.v > 0 && d.v < minDuration {
			return fmt.Errorf("%s is %v, shorter than the 1ms minimum; a duration needs its unit (5 * time.Second, not 5)", d.name, d.v)
		}
	}
	switch {
	case c.idleTimeout < 0:
		return fmt.Errorf("IdleTimeout is %v; it must be positive, or zero for the default (%v)", c.idleTimeout, DefaultIdleTimeout)
	case c.maxLifetime < 0:
		return fmt.Errorf("MaxConnLifetime is %v; it must be positive, or zero for no limit", c.maxLifetime)
	case p.LeakThreshold < 0:
		return fmt.Errorf("LeakThreshold is %v; it must be positive, or zero for off", p.LeakThreshold)
	}
	return nil
}

// setSizes applies the defaults of MaxActive, MaxIdle and
// MaxConcurrentDials, and reports a MaxActive, given or by default, above
// maxPoolSize.
func (c *config) setSizes(p *Pool) error {
	if c.maxActive == 0 {
		c.maxActive = max(defaultMaxActivePerProc*runtime.GOMAXPROCS(0), c.maxIdle)
	}
	switch {
	case p.MaxActive > maxPoolSize:
		return fmt.Errorf("MaxActive is %d, above the %d a pool supports (one host opens at most about 64k TCP connections to one address); set the most connections the server should see from this pool", p.MaxActive, maxPoolSize)
	case c.maxActive > maxPoolSize:
		return fmt.Errorf("MaxIdle is %d, which raises the default MaxActive above the %d a pool supports; set MaxActive, or a smaller MaxIdle", p.MaxIdle, maxPoolSize)
	}
	if c.maxIdle == 0 || c.maxIdle > c.maxActive {
		c.maxIdle = c.maxActive
	}
	if c.maxDials == 0 {
		c.maxDials = defaultMaxDials
	}
	c.maxDials = min(c.maxDials, c.maxActive)
	return nil
}

// setTimeouts applies the defaults of the durations, and shortens them to
// maxTimeout.
func (c *config) setTimeouts(p *Pool) {
	if c.idleTimeout == 0 {
		c.idleTimeout = DefaultIdleTimeout
	}
	c.idleTimeout = min(c.idleTimeout, maxTimeout)
	c.maxLifetime = min(c.maxLifetime, maxTimeout)
	c.dialTimeout = min(timeout(p.DialTimeout, DefaultDialTimeout), maxTimeout)
	c.readTimeout = min(timeout(p.ReadTimeout, DefaultReadTimeout), maxTimeout)
	c.writeTimeout = min(timeout(p.WriteTimeout, c.readTimeout), maxTimeout)
	if p.WriteTimeout == 0 && p.ReadTimeout < 0 {
		c.writeTimeout = 0
	}
	switch {
	case p.WaitTimeout < 0:
		c.waitTimeout = -1
	case p.WaitTimeout > 0:
		c.waitTimeout = min(p.WaitTimeout, maxTimeout)
	case c.readTimeout > 0:
		c.waitTimeout = c.readTimeout + time.Second
	default:
		c.waitTimeout = DefaultReadTimeout + time.Second
	}
	c.drainTimeout = drainTimeoutCap
	if c.readTimeout > 0 {
		c.drainTimeout = min(c.readTimeout, drainTimeoutCap)
	}
}

// timeout applies the rule shared by the dial, read and write timeouts:
// zero takes the default, negative disables (0 inside the pool).
func timeout(v, def time.Duration) time.Duration {
	switch {
	case v < 0:
		return 0
	case v == 0:
		return def
	}
	return v
}

// setDial checks Sentinel, or reads Addr into c with the credentials and
// database of a URL, and Username, Password and DB.
func (c *config) setDial(p *Pool) error {
	c.username, c.password = p.Username, p.Password
	switch {
	case p.Username != "" && p.Password == "":
		return errors.New("Username is set without Password, and would be ignored; AUTH needs both")
	case p.Sentinel != nil:
		return p.Sentinel.check()
	case c.addr == "":
		return nil
	}
	a, err := parseAddr(c.addr)
	if err != nil {
		return err
	}
	switch {
	case a.hasUser && (p.Username != "" || p.Password != ""):
		return errors.New("both Addr's URL and Username or Password give credentials; set them in one place")
	case a.hasDB && p.DB != 0:
		return fmt.Errorf("both Addr's URL (/%d) and DB (%d) name the database; set it in one place", a.db, p.DB)
	}
	c.addr, c.tls = a.addr, a.tls
	if a.hasUser {
		c.username, c.password = a.username, a.password
	}
	if a.hasDB {
		c.db = a.db
	}
	return nil
}

// check reports a configuration error.
func (s *Sentinel) check() error {
	switch {
	case len(s.Addrs) == 0:
		return errors.New("Sentinel.Addrs is empty; list the sentinels' host:port addresses")
	case s.MasterName == "":
		return errors.New("Sentinel.MasterName is empty; set the name the sentinels monitor the master under")
	case s.Username != "" && s.Password == "":
		return errors.New("Sentinel.Username is set without Sentinel.Password, and would be ignored; AUTH needs both")
	}
	for _, a := range s.Addrs {
		if strings.Contains(a, "@") {
			return fmt.Errorf("Sentinel.Addrs has %q, with user info (@); set the sentinels' credentials in Sentinel.Username and Sentinel.Password", redactAddr(a))
		}
		_, port, err := net.SplitHostPort(a)
		if err == nil {
			err = checkPort(port)
		}
		if err != nil {
			return fmt.Errorf("Sentinel.Addrs has %q, which is not host:port: %v", a, err)
		}
	}
	return nil
}

// checkPort reports whether port is a TCP port number, 1 to 65535.
func checkPort(port string) error {
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q is not a number from 1 to 65535", port)
	}
	return nil
}

// parsedAddr is Addr read: where to dial, and what a URL adds.
type parsedAddr struct {
	addr               string // host:port or a socket path
	username, password string
	hasUser            bool // a URL gave a user name or password
	db                 int
	hasDB              bool // a URL gave a database
	tls                bool
}

// parseAddr reads Addr: a socket path, host:port, or a URL as redigo's
// DialURL reads it. Its errors quote Addr only through redactAddr: the
// text before an "@" may be a password, typed with or without a scheme.
func parseAddr(addr string) (parsedAddr, error) {
	switch {
	case strings.HasPrefix(addr, "/"):
		return parsedAddr{addr: addr}, nil
	case strings.Contains(addr, "://"):
		return parseURL(addr)
	case strings.Contains(addr, "@"):
		return parsedAddr{}, fmt.Errorf("Addr %q has user info (@) but is not a redis:// URL; write it as redis://user:password@host:port, or set Username and Password", redactAddr(addr))
	}
	_, port, err := net.SplitHostPort(addr)
	if err == nil {
		err = checkPort(port)
	}
	if err != nil {
		return parsedAddr{}, fmt.Errorf("Addr %q is not host:port, a socket path or a redis:// URL: %v", addr, err)
	}
	return parsedAddr{addr: addr}, nil
}

// parseURL reads a redis:// or rediss:// URL (valkey:// and valkeys://
// too, as redigo does): the host defaults to localhost, the port to 6379,
// the path is the database, a user name alone is the password (as
// redis-cli reads it). A query or fragment is an error rather than ignored.
func parseURL(addr string) (parsedAddr, error) {
	bad := func(problem string) (parsedAddr, error) {
		return parsedAddr{}, fmt.Errorf("Addr %q %s", redactAddr(addr), problem)
	}
	u, err := url.Parse(addr)
	if err != nil {
		// Not err: url.Parse quotes the whole URL, password included.
		return bad("is not a valid URL; percent-encode characters such as @ : / ? # % in the user name and password")
	}
	var a parsedAddr
	switch u.Scheme {
	case "redis", "valkey":
	case "rediss", "valkeys":
		a.tls = true
	default:
		return bad("has an unknown scheme; use redis://, or rediss:// for TLS")
	}
	switch {
	case u.Opaque != "":
		return bad("is not of the form redis://[user:password@]host[:port][/db]")
	case u.RawQuery != "" || u.ForceQuery:
		return bad("has a query (?); a URL gives only the user, password, host, port and database: set the rest with the Pool's fields and DialOptions")
	case u.Fragment != "":
		return bad("has a fragment (#); percent-encode # in a password as %23")
	}
	if a.addr, err = urlHostPort(u); err != nil {
		return bad("has a port that is not a number from 1 to 65535")
	}

	if u.User != nil {
		a.username = u.User.Username()
		pw, ok := u.User.Password()
		if !ok {
			a.username, pw = "", a.username
		}
		a.password = pw
		a.hasUser = a.username != "" || a.password != ""
	}
	if db := strings.TrimPrefix(u.Path, "/"); db != "" {
		a.hasDB = true
		if a.db, err = parseDB(db); err != nil {
			return bad("has a path that is not a database number (/0, /1, ...)")
		}
	}
	return a, nil
}

// urlHostPort is u's host and port, localhost and 6379 when left out.
func urlHostPort(u *url.URL) (string, error) {
	host, port := u.Hostname(), u.Port()
	if host == "" {
		host = "localhost"
	}
	if port == "" {
		port = "6379"
	}
	return net.JoinHostPort(host, port), checkPort(port)
}

// parseDB reads a database number, digits only.
func parseDB(s string) (int, error) {
	if strings.Trim(s, "0123456789") != "" {
		return 0, errors.New("not a number")
	}
	return strconv.Atoi(s)
}

// redactAddr is addr as an error may quote it: everything before its last
// "@", where a URL keeps the user name and password, is replaced by xxxxx.
// A known scheme in front is kept.
func redactAddr(addr string) string {
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return addr
	}
	keep := ""
	if scheme, _, ok := strings.Cut(addr[:at], "://"); ok {
		switch strings.ToLower(scheme) {
		case "redis", "rediss", "valkey", "valkeys":
			keep = scheme + "://"
		}
	}
	return keep + "xxxxx" + addr[at:]
}
