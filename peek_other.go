//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package redispool

import "net"

// peek is not available here: a stale connection fails its first command
// and is discarded then.
func peek(net.Conn) error { return nil }
