//go:build !linux

package redistest

import "syscall"

// sysProcAttr returns no special attributes outside Linux.
func sysProcAttr() *syscall.SysProcAttr { return nil }
