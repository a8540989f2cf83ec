// Package testwait waits, in tests, for a condition instead of for a fixed
// time: a fixed sleep is either too short on a loaded machine (a flaky
// test) or too long on an idle one (a slow suite).
package testwait

import (
	"testing"
	"time"
)

// Interval is how often Until checks its condition.
const Interval = 10 * time.Millisecond

// Until checks cond every Interval until it holds, and fails the test
// (naming what it waited for) if it does not within timeout.
func Until(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !For(timeout, cond) {
		t.Fatalf("waited %s for %s", timeout, what)
	}
}

// For checks cond every Interval until it holds (true) or timeout passes
// (false), for callers that cannot fail the test from where they wait
// (e.g. a goroutine).
func For(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(Interval)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
	return true
}
