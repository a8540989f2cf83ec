// Package upstream bounds how userd retries the remote APIs it calls —
// Clerk's Backend API today (internal/clerk, internal/clerksync), Stripe's
// next — so that no answer of a remote API, hostile or broken, can make
// userd wait without bound:
//
//   - a Retry-After is honoured up to Policy.MaxRetryAfter (60 s by
//     default), never for the hours a server may ask for;
//   - one call's attempts and waits together end after Policy.MaxElapsed
//     (cenkalti/backoff's MaxElapsedTime: a wait that would end past it is
//     not started);
//   - a caller's context (e.g. a sync run's deadline) ends any wait at once.
//
// An API client reports what a retry needs through its errors: Transient
// says whether asking again may succeed, RetryAfterer carries the wait the
// server asked for.
package upstream

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// Defaults of Policy.
const (
	DefaultAttempts      = 8
	DefaultInitial       = time.Second
	DefaultMax           = 30 * time.Second
	DefaultMaxRetryAfter = 60 * time.Second
	DefaultMaxElapsed    = 5 * time.Minute
)

// Policy is an exponential backoff with jitter, bounded three ways: in
// attempts, in the wait a server may ask for, and in total time.
type Policy struct {
	// Attempts is how often one call is tried at most (default 8).
	Attempts uint
	// Initial and Max bound the waits between attempts (defaults 1 s
	// and 30 s).
	Initial, Max time.Duration
	// MaxRetryAfter is the longest wait a server's Retry-After is honoured
	// for (default 60 s); a longer one is cut to it.
	MaxRetryAfter time.Duration
	// MaxElapsed bounds one call's attempts and waits together (default
	// 5 min): a wait that would end past it is not started.
	MaxElapsed time.Duration
}

// WithDefaults fills the zero fields with the defaults.
func (p Policy) WithDefaults() Policy {
	if p.Attempts == 0 {
		p.Attempts = DefaultAttempts
	}
	if p.Initial <= 0 {
		p.Initial = DefaultInitial
	}
	if p.Max <= 0 {
		p.Max = DefaultMax
	}
	if p.MaxRetryAfter <= 0 {
		p.MaxRetryAfter = DefaultMaxRetryAfter
	}
	if p.MaxElapsed <= 0 {
		p.MaxElapsed = DefaultMaxElapsed
	}
	return p
}

// RetryAfterer is an error that carries the wait a server asked for
// (Retry-After); 0 means none.
type RetryAfterer interface {
	RetryAfterHint() time.Duration
}

// Wait is one wait before a retry, as told to Notify.
type Wait struct {
	// Err is the failure retried.
	Err error
	// Wait is how long the retry waits.
	Wait time.Duration
	// Asked is the Retry-After the server asked for, when it was cut to
	// Policy.MaxRetryAfter (0 otherwise).
	Asked time.Duration
}

// Result says how a call went.
type Result struct {
	// Attempts is how often the call was made.
	Attempts int
	// Elapsed is the time all attempts and waits took.
	Elapsed time.Duration
}

// Retry calls f until it succeeds, fails with an error transient does
// not accept, or the policy's bounds end it; then it returns f's last
// error. notify (optional) is told about each wait before it starts.
func Retry[T any](ctx context.Context, p Policy, transient func(error) bool, notify func(Wait), f func(context.Context) (T, error)) (T, Result, error) {
	p = p.WithDefaults()
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval, b.Multiplier = p.Initial, p.Max, 2
	var res Result
	start := time.Now()
	var asked time.Duration
	v, err := backoff.Retry(ctx, func() (T, error) {
		res.Attempts++
		asked = 0
		v, err := f(ctx)
		if err == nil {
			return v, nil
		}
		if !transient(err) {
			return v, backoff.Permanent(err)
		}
		var ra RetryAfterer
		if errors.As(err, &ra) {
			if d := ra.RetryAfterHint(); d > 0 {
				if d > p.MaxRetryAfter {
					asked, d = d, p.MaxRetryAfter
				}
				return v, errors.Join(err, &backoff.RetryAfterError{Duration: d})
			}
		}
		return v, err
	}, backoff.WithBackOff(b), backoff.WithMaxTries(p.Attempts), backoff.WithMaxElapsedTime(p.MaxElapsed),
		backoff.WithNotify(func(err error, wait time.Duration) {
			if notify != nil {
				notify(Wait{Err: withoutRetryAfter(err), Wait: wait, Asked: asked})
			}
		}))
	res.Elapsed = time.Since(start)
	return v, res, withoutRetryAfter(err)
}

// withoutRetryAfter drops the *backoff.RetryAfterError Retry joined to err,
// which only backoff reads.
func withoutRetryAfter(err error) error {
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return err
	}
	var keep []error
	for _, e := range j.Unwrap() {
		var ra *backoff.RetryAfterError
		if !errors.As(e, &ra) {
			keep = append(keep, e)
		}
	}
	if len(keep) == 1 {
		return keep[0]
	}
	return errors.Join(keep...)
}

// maxHeaderRetryAfter bounds what ParseRetryAfter returns, so that no
// header value overflows a time.Duration; Policy.MaxRetryAfter cuts it
// further.
const maxHeaderRetryAfter = 30 * 24 * time.Hour

// ParseRetryAfter reads a Retry-After header (RFC 9110, section 10.2.3):
// delay-seconds or an HTTP-date, relative to now. It returns 0 when the
// header is absent, malformed or in the past, and at most 30 days.
func ParseRetryAfter(h http.Header, now time.Time) time.Duration {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if strings.Trim(v, "0123456789") == "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil || s > uint64(maxHeaderRetryAfter/time.Second) {
			// More digits than fit: as long as can be.
			return maxHeaderRetryAfter
		}
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		d := t.Sub(now)
		if d <= 0 {
			return 0
		}
		return min(d, maxHeaderRetryAfter)
	}
	return 0
}
