package grpcapi

import (
	"testing"
	"time"
)

// TestReadSampler: within one second at most perSecond reads are admitted;
// the first admitted in a later second reports how many were skipped since
// the last admitted one; a skipped count is reported once.
func TestReadSampler(t *testing.T) {
	t.Parallel()
	s := &readSampler{perSecond: 2}
	t0 := time.Date(2026, 12, 4, 20, 0, 0, 0, time.UTC)
	steps := []struct {
		at          time.Duration
		wantOK      bool
		wantSkipped int64
	}{
		{0, true, 0},
		{100 * time.Millisecond, true, 0},
		{200 * time.Millisecond, false, 0},
		{999 * time.Millisecond, false, 0},
		{time.Second, true, 2},
		{time.Second + 1, true, 0},
		{time.Second + 2, false, 0},
		{5 * time.Second, true, 1},
		{5*time.Second + 1, true, 0},
	}
	for i, st := range steps {
		ok, skipped := s.admit(t0.Add(st.at))
		if ok != st.wantOK || skipped != st.wantSkipped {
			t.Errorf("step %d (+%s): admit = %v, %d; want %v, %d", i, st.at, ok, skipped, st.wantOK, st.wantSkipped)
		}
	}
}
