package clerksync

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// Bar draws a progress bar on a terminal, redrawn in place ("\r") at most
// ten times a second, and leaves the summary on its own line at the end.
type Bar struct {
	w     io.Writer
	start time.Time
	last  time.Time
	mu    sync.Mutex
}

// NewBar returns a Bar drawing on w (a terminal).
func NewBar(w io.Writer) *Bar { return &Bar{w: w, start: time.Now()} }

const barWidth = 30

// Update implements Progress.
func (b *Bar) Update(c Counts, total int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	if now.Sub(b.last) < 100*time.Millisecond && (total == 0 || c.Listed < total) {
		return
	}
	b.last = now
	bar := strings.Repeat("·", barWidth)
	pct := ""
	if total > 0 {
		done := min(int(int64(barWidth)*c.Listed/total), barWidth)
		bar = strings.Repeat("█", done) + strings.Repeat("·", barWidth-done)
		pct = fmt.Sprintf(" %3d%%", min(100*c.Listed/total, 100))
	}
	// \x1b[K clears what a longer previous line left.
	fmt.Fprintf(b.w, "\r[%s]%s %s\x1b[K", bar, pct, progressLine(c, total, now.Sub(b.start)))
}

// Done implements Progress.
func (b *Bar) Done(s Summary, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	fmt.Fprint(b.w, "\r\x1b[K")
	fmt.Fprintln(b.w, SummaryLine(s, err))
}

// Lines writes a plain progress line at most every interval (for logs and
// pipes, where a redrawn bar would be noise) and the summary at the end.
type Lines struct {
	w     io.Writer
	every time.Duration
	start time.Time
	last  time.Time
	mu    sync.Mutex
}

// NewLines returns a Lines writing to w at most every interval.
func NewLines(w io.Writer, every time.Duration) *Lines {
	now := time.Now()
	return &Lines{w: w, every: every, start: now, last: now}
}

// Update implements Progress.
func (l *Lines) Update(c Counts, total int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if now.Sub(l.last) < l.every {
		return
	}
	l.last = now
	fmt.Fprintln(l.w, "clerk sync:", progressLine(c, total, now.Sub(l.start)))
}

// Done implements Progress.
func (l *Lines) Done(s Summary, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintln(l.w, SummaryLine(s, err))
}

// Log reports progress to a logger at most every interval, and the summary
// at the end (inside `userd serve`).
type Log struct {
	log   *slog.Logger
	every time.Duration
	last  time.Time
	mu    sync.Mutex
}

// NewLog returns a Log writing to log at most every interval.
func NewLog(log *slog.Logger, every time.Duration) *Log {
	return &Log{log: log, every: every, last: time.Now()}
}

// Update implements Progress.
func (l *Log) Update(c Counts, total int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if time.Since(l.last) < l.every {
		return
	}
	l.last = time.Now()
	l.log.Info("clerk sync progress", append([]any{"total", total}, countAttrs(c)...)...)
}

// Done implements Progress.
func (l *Log) Done(s Summary, err error) {
	attrs := append([]any{"total", s.Total, "duration", s.Duration.Round(time.Millisecond).String(),
		"users_per_second", int64(s.UsersPerSecond()), "dry_run", s.DryRun}, countAttrs(s.Counts)...)
	if err != nil {
		l.log.Warn("clerk sync stopped", append(attrs, "err", err)...)
		return
	}
	l.log.Info("clerk sync done", attrs...)
}

func countAttrs(c Counts) []any {
	return []any{"listed", c.Listed, "created", c.Created, "updated", c.Updated, "unchanged", c.Unchanged,
		"stale", c.Stale, "ignored_deleted", c.IgnoredDeleted, "missing", c.Missing, "deleted", c.Deleted, "failed", c.Failed}
}

func progressLine(c Counts, total int64, elapsed time.Duration) string {
	of := ""
	if total > 0 {
		of = fmt.Sprintf("/%d", total)
	}
	rate := 0.0
	if elapsed > 0 {
		rate = float64(c.Listed) / elapsed.Seconds()
	}
	return fmt.Sprintf("%d%s users, %.0f/s · created %d, updated %d, unchanged %d, stale %d, failed %d",
		c.Listed, of, rate, c.Created, c.Updated, c.Unchanged, c.Stale, c.Failed)
}

// SummaryLine is the one-line summary of a run.
func SummaryLine(s Summary, err error) string {
	var b strings.Builder
	switch {
	case err != nil:
		b.WriteString("clerk sync STOPPED")
	case s.DryRun:
		b.WriteString("clerk sync dry run (nothing changed; counts are what would happen)")
	default:
		b.WriteString("clerk sync done")
	}
	fmt.Fprintf(&b, ": %d users listed in %s (%.0f users/s); created %d, updated %d, unchanged %d, stale %d, deleted in userd %d",
		s.Listed, s.Duration.Round(time.Millisecond), s.UsersPerSecond(), s.Created, s.Updated, s.Unchanged, s.Stale, s.IgnoredDeleted)
	if s.Missing > 0 || s.Deleted > 0 {
		fmt.Fprintf(&b, "; missing from Clerk %d, deleted %d", s.Missing, s.Deleted)
	}
	fmt.Fprintf(&b, "; failed %d", s.Failed)
	switch {
	case s.OrgsNotEnabled:
		b.WriteString("; organizations not enabled in Clerk")
	case s.Orgs != (Counts{}) || s.Memberships != (Counts{}):
		for _, k := range []struct {
			name string
			c    Counts
		}{{"organizations", s.Orgs}, {"memberships", s.Memberships}} {
			fmt.Fprintf(&b, "; %s listed %d: created %d, updated %d, unchanged %d, stale %d, deleted in userd %d",
				k.name, k.c.Listed, k.c.Created, k.c.Updated, k.c.Unchanged, k.c.Stale, k.c.IgnoredDeleted)
			if k.c.Missing > 0 || k.c.Deleted > 0 {
				fmt.Fprintf(&b, ", missing from Clerk %d, deleted %d", k.c.Missing, k.c.Deleted)
			}
			fmt.Fprintf(&b, ", failed %d", k.c.Failed)
		}
	}
	return b.String()
}
