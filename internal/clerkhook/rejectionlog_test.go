package clerkhook

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) lines() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Split(strings.TrimSpace(s.b.String()), "\n")
}

// TestRejectionSummary: the rejections beyond the rate limit are not lost
// from the log: one line per interval says how many, by reason.
func TestRejectionSummary(t *testing.T) {
	t.Parallel()
	buf := &syncBuffer{}
	l := newRejectionLog(slog.New(slog.NewJSONHandler(buf, nil)), 100*time.Millisecond)
	l.SetLimit(0) // the burst only, however slow the machine
	waitLines := func(n int) []string {
		deadline := time.Now().Add(10 * time.Second)
		for len(buf.lines()) < n && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		return buf.lines()
	}
	for i := range 100 {
		rej := rejectBadSignature
		if i%4 == 0 {
			rej = rejectOutOfWindow
		}
		l.Write(rej, "msg_x", "192.0.2.1:1234")
	}
	lines := waitLines(rejectionLogBurst + 1)
	if len(lines) != rejectionLogBurst+1 {
		t.Fatalf("%d log lines for 100 rejections, want %d and a summary:\n%s", len(lines), rejectionLogBurst, strings.Join(lines, "\n"))
	}
	var summary struct {
		Msg      string         `json:"msg"`
		Count    int            `json:"count"`
		ByReason map[string]int `json:"by_reason"`
	}
	if err := json.Unmarshal([]byte(lines[rejectionLogBurst]), &summary); err != nil {
		t.Fatal(err)
	}
	// The first 10 logged were 3 out-of-window (i = 0, 4, 8) and 7 bad
	// signatures; 22 and 68 of each remain.
	if summary.Count != 90 || summary.ByReason["timestamp_out_of_tolerance"] != 22 || summary.ByReason["bad_signature"] != 68 {
		t.Errorf("summary %+v, want 90: 22 timestamp_out_of_tolerance, 68 bad_signature", summary)
	}
	// Another rejection after the summary starts a new count.
	l.Write(rejectBadSignature, "msg_y", "192.0.2.1:1234")
	if lines := waitLines(rejectionLogBurst + 2); len(lines) != rejectionLogBurst+2 || !strings.Contains(lines[len(lines)-1], `"count":1`) {
		t.Errorf("after one more rejection: %s", strings.Join(lines[rejectionLogBurst:], "\n"))
	}
}
