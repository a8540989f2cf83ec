package upstream_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/userd/userd/internal/upstream"
)

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, c := range []struct {
		header string
		want   time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"1", time.Second},
		{" 120 ", 2 * time.Minute},
		{"100000", 100000 * time.Second},
		{"99999999999999999999999999", 30 * 24 * time.Hour}, // overflows uint64: as long as can be
		{"9223372036", 30 * 24 * time.Hour},                 // would overflow a time.Duration
		{"-5", 0},
		{"+5", 0},
		{"1.5", 0},
		{"soon", 0},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0},
		{now.Add(365 * 24 * time.Hour).Format(http.TimeFormat), 30 * 24 * time.Hour},
	} {
		h := http.Header{}
		if c.header != "" {
			h.Set("Retry-After", c.header)
		}
		if got := upstream.ParseRetryAfter(h, now); got != c.want {
			t.Errorf("Retry-After %q: %s, want %s", c.header, got, c.want)
		}
	}
}

type raErr struct{ d time.Duration }

func (e raErr) Error() string                 { return "rate limited" }
func (e raErr) RetryAfterHint() time.Duration { return e.d }

// TestRetryCutsRetryAfter: a Retry-After longer than MaxRetryAfter is
// waited for MaxRetryAfter, and Notify says what was asked.
func TestRetryCutsRetryAfter(t *testing.T) {
	t.Parallel()
	p := upstream.Policy{Attempts: 3, Initial: time.Millisecond, Max: time.Millisecond, MaxRetryAfter: 5 * time.Millisecond}
	var waits []upstream.Wait
	calls := 0
	v, res, err := upstream.Retry(context.Background(), p, func(error) bool { return true }, func(w upstream.Wait) { waits = append(waits, w) },
		func(context.Context) (int, error) {
			calls++
			if calls == 1 {
				return 0, raErr{100000 * time.Second}
			}
			return 7, nil
		})
	if err != nil || v != 7 || res.Attempts != 2 {
		t.Fatalf("Retry = %d, %+v, %v", v, res, err)
	}
	if len(waits) != 1 || waits[0].Wait != 5*time.Millisecond || waits[0].Asked != 100000*time.Second || !errors.As(waits[0].Err, new(raErr)) {
		t.Errorf("waits %+v", waits)
	}
}

// TestRetryStopsAtMaxElapsed: a wait that would end past MaxElapsed is not
// started; the last error is returned.
func TestRetryStopsAtMaxElapsed(t *testing.T) {
	t.Parallel()
	p := upstream.Policy{Attempts: 100, MaxRetryAfter: time.Hour, MaxElapsed: time.Minute}
	_, res, err := upstream.Retry(context.Background(), p, func(error) bool { return true }, nil,
		func(context.Context) (int, error) { return 0, raErr{2 * time.Minute} })
	var ra raErr
	if !errors.As(err, &ra) || res.Attempts != 1 {
		t.Fatalf("Retry: %+v, %v; want one attempt and its error", res, err)
	}
}

// TestRetryPermanent: an error that is not transient is not retried.
func TestRetryPermanent(t *testing.T) {
	t.Parallel()
	bad := errors.New("refused")
	_, res, err := upstream.Retry(context.Background(), upstream.Policy{}, func(error) bool { return false }, nil,
		func(context.Context) (int, error) { return 0, bad })
	if !errors.Is(err, bad) || res.Attempts != 1 {
		t.Fatalf("Retry: %+v, %v", res, err)
	}
}
