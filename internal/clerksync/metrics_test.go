package clerksync_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/userd/userd/internal/clerksync"
)

// kindRecorder counts what a run records, by kind and outcome.
type kindRecorder struct {
	mu sync.Mutex
	n  map[string]int64
}

func (r *kindRecorder) add(kind, outcome string, n int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n[kind+" "+outcome] += n
}

func (r *kindRecorder) ClerkSyncUsers(o string, n int64)         { r.add("users", o, n) }
func (r *kindRecorder) ClerkSyncOrganizations(o string, n int64) { r.add("organizations", o, n) }
func (r *kindRecorder) ClerkSyncMemberships(o string, n int64)   { r.add("memberships", o, n) }

// TestOrganizationSyncMetrics: a run records its organizations and
// memberships by outcome, as it does its users, each under its own kind;
// a dry run records nothing.
func TestOrganizationSyncMetrics(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testRate)
	addOrgs(e.fake, 3, 2, time.Now().Add(-time.Hour).Truncate(time.Millisecond))
	run := func(dry bool) map[string]int64 {
		t.Helper()
		rec := &kindRecorder{n: map[string]int64{}}
		if _, err := e.sync(t, clerksync.Options{Organizations: true, Recorder: rec, DryRun: dry}); err != nil {
			t.Fatal(err)
		}
		return rec.n
	}
	if got := run(true); len(got) != 0 {
		t.Fatalf("a dry run recorded %v", got)
	}
	if got, want := fmt.Sprint(run(false)), fmt.Sprint(map[string]int64{"memberships created": 6, "organizations created": 3}); got != want {
		t.Fatalf("first run recorded %s, want %s", got, want)
	}
	if got, want := fmt.Sprint(run(false)), fmt.Sprint(map[string]int64{"memberships unchanged": 6, "organizations unchanged": 3}); got != want {
		t.Fatalf("second run recorded %s, want %s", got, want)
	}
}
