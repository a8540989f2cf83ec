// Package procstat reads a Linux process's CPU time and resident memory
// from /proc (with prometheus/procfs), for the benchmark and the resource
// tests.
package procstat

import "github.com/prometheus/procfs"

const mib = 1 << 20

// RSSMiB is the process's resident set size in MiB (0 if unreadable).
func RSSMiB(pid int) float64 {
	st, ok := status(pid)
	if !ok {
		return 0
	}
	return float64(st.VmRSS) / mib
}

// PeakRSSMiB is the largest resident set size the process has had since it
// was exec'd, in MiB (0 if unreadable). Unlike the ru_maxrss of wait4, it
// does not count the memory of the parent the process was forked from.
func PeakRSSMiB(pid int) float64 {
	st, ok := status(pid)
	if !ok {
		return 0
	}
	return float64(st.VmHWM) / mib
}

func status(pid int) (procfs.ProcStatus, bool) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return procfs.ProcStatus{}, false
	}
	st, err := p.NewStatus()
	return st, err == nil
}

// CPUSeconds is the process's user plus system CPU time (0 if unreadable).
func CPUSeconds(pid int) float64 {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0
	}
	st, err := p.Stat()
	if err != nil {
		return 0
	}
	return st.CPUTime()
}
