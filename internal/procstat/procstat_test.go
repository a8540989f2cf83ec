package procstat_test

import (
	"os"
	"testing"

	"github.com/userd/userd/internal/procstat"
)

// TestReadsThisProcess: the figures of a live process are plausible, and a
// process that does not exist reads as 0.
func TestReadsThisProcess(t *testing.T) {
	t.Parallel()
	pid := os.Getpid()
	buf := make([]byte, 32<<20)
	for i := range buf {
		buf[i] = 1
	}
	for procstat.CPUSeconds(pid) == 0 {
		// Spin until the kernel has charged this process a clock tick.
		for i := range buf {
			buf[i]++
		}
	}
	rss, peak := procstat.RSSMiB(pid), procstat.PeakRSSMiB(pid)
	if rss < 32 || peak < rss {
		t.Errorf("RSS %.1f MiB, peak %.1f MiB; want at least the 32 MiB touched, and peak >= RSS", rss, peak)
	}
	const gone = 1 << 30 // above any pid_max
	if v := procstat.RSSMiB(gone) + procstat.PeakRSSMiB(gone) + procstat.CPUSeconds(gone); v != 0 {
		t.Errorf("a missing process reads %v, want 0", v)
	}
}
