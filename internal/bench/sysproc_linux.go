package bench

import "syscall"

// sysProcAttr kills the redis-server started here when this process dies,
// however it dies.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
