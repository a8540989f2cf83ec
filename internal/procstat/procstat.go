// Package procstat reads a Linux process's CPU time and resident memory
// from /proc, for the benchmark and the resource tests.
package procstat

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// RSSMiB is the process's resident set size in MiB (0 if unreadable).
func RSSMiB(pid int) float64 { return statusMiB(pid, "VmRSS:") }

// PeakRSSMiB is the largest resident set size the process has had since it
// was exec'd, in MiB (0 if unreadable). Unlike the ru_maxrss of wait4, it
// does not count the memory of the parent the process was forked from.
func PeakRSSMiB(pid int) float64 { return statusMiB(pid, "VmHWM:") }

func statusMiB(pid int, field string) float64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field); ok {
			kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			return float64(kb) / 1024
		}
	}
	return 0
}

// CPUSeconds is the process's user plus system CPU time (0 if unreadable).
func CPUSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the ")" that closes the command name; utime and stime
	// are the 14th and 15th fields of the whole line.
	fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	if len(fields) < 13 {
		return 0
	}
	utime, _ := strconv.ParseFloat(fields[11], 64)
	stime, _ := strconv.ParseFloat(fields[12], 64)
	return (utime + stime) / 100 // USER_HZ
}
