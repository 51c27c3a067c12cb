//go:build linux

package redistest

import "syscall"

// sysProcAttr makes the kernel SIGKILL redis-server if the test binary dies
// without running its cleanups (for example on a -timeout panic), so that no
// orphaned server keeps its port.
//
// Pdeathsig fires when the OS thread that started the child exits. The Go
// runtime only ends threads whose goroutine exits while locked to the thread
// (runtime.LockOSThread), so do not call Start from such a goroutine.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
