//go:build !linux

package bench

import (
	"syscall"
	"time"
)

func sysProcAttr() *syscall.SysProcAttr { return nil }

// processCPU is not read here.
func processCPU() (time.Duration, bool) { return 0, false }
