package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/userd/userd/internal/clerktest"
	"github.com/userd/userd/internal/procstat"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
)

// cliRun is one finished run of a userd command.
type cliRun struct {
	stdout, stderr string
	code           int
	wall           time.Duration
	maxRSSMiB      float64
}

func runUserd(t *testing.T, bin string, env []string, args ...string) cliRun {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("userd %s: %v", strings.Join(args, " "), err)
	}
	// The peak RSS as the process's own VmHWM, read until it exits (it
	// only grows): wait4's ru_maxrss would count the test process too,
	// which the child was forked from.
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var peak float64
	var err error
	for waiting := true; waiting; {
		peak = max(peak, procstat.PeakRSSMiB(cmd.Process.Pid))
		select {
		case err = <-done:
			waiting = false
		case <-time.After(5 * time.Millisecond):
		}
	}
	r := cliRun{stdout: stdout.String(), stderr: stderr.String(), wall: time.Since(start), maxRSSMiB: peak}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		r.code = exit.ExitCode()
	case err != nil:
		t.Fatalf("userd %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// TestSyncClerkCommand runs the built binary the way an operator would:
// the first backfill of 10,000 users, a rerun that changes nothing, a dry
// run and a --delete-missing that the wrong (empty) instance makes refuse,
// and erase-user. It logs the sync's rate and peak memory.
func TestSyncClerkCommand(t *testing.T) {
	t.Parallel()
	bin := buildUserd(t)
	fake := clerktest.New(t)
	us := fake.AddUsers("cli", 10_000, time.Now().Add(-time.Hour))
	dbURL := testdb.URL(t)
	env := []string{
		"DATABASE_URL=" + dbURL, "CLERK_SECRET_KEY=" + clerktest.SecretKey, "CLERK_API_URL=" + fake.APIURL(),
		// The production instance's limit: the fake does not slow the sync.
		"USERD_CLERK_API_RATE=1000", "USERD_LOG_FORMAT=text",
	}

	first := runUserd(t, bin, env, "sync-clerk")
	if first.code != 0 {
		t.Fatalf("first sync exited %d:\n%s", first.code, first.stderr)
	}
	summary := lastLine(first.stderr)
	t.Logf("first sync: %s; wall %s, peak RSS %.1f MiB", summary, first.wall.Round(time.Millisecond), first.maxRSSMiB)
	if !strings.Contains(summary, "clerk sync done: 10000 users listed") || !strings.Contains(summary, "created 10000,") {
		t.Errorf("first sync summary: %s", summary)
	}
	if first.stdout != "" {
		t.Errorf("a real run printed changes other than deletions: %.200s", first.stdout)
	}

	second := runUserd(t, bin, env, "sync-clerk")
	t.Logf("second sync: %s; wall %s, peak RSS %.1f MiB", lastLine(second.stderr), second.wall.Round(time.Millisecond), second.maxRSSMiB)
	if second.code != 0 || !strings.Contains(second.stderr, "created 0, updated 0, unchanged 10000") {
		t.Errorf("second sync exited %d:\n%s", second.code, second.stderr)
	}

	// Two users deleted in Clerk whose user.deleted was lost.
	fake.DeleteUser(us[7].ID)
	fake.DeleteUser(us[9000].ID)
	dry := runUserd(t, bin, env, "sync-clerk", "--dry-run", "--delete-missing")
	if dry.code != 0 || dry.stdout != "delete "+us[7].ID+"\ndelete "+us[9000].ID+"\n" {
		t.Errorf("dry run exited %d, printed %q:\n%s", dry.code, dry.stdout, dry.stderr)
	}

	// The key of an empty instance: refused, exit 1, nothing deleted.
	empty := clerktest.New(t)
	wrong := append(env[:len(env):len(env)], "CLERK_API_URL="+empty.APIURL())
	refused := runUserd(t, bin, wrong, "sync-clerk", "--delete-missing")
	if refused.code != 1 || !strings.Contains(refused.stderr, "refused to delete missing users: 10000 of the 10000 live users") {
		t.Errorf("empty instance: exit %d:\n%s", refused.code, refused.stderr)
	}
	st := store.New(testdb.Connect(t, dbURL), store.Options{})
	ctx := context.Background()
	if _, err := st.GetLiveUserByClerkID(ctx, us[1].ID); err != nil {
		t.Fatalf("after the refused run: %v", err)
	}

	deleted := runUserd(t, bin, env, "sync-clerk", "--delete-missing")
	if deleted.code != 0 || deleted.stdout != "delete "+us[7].ID+"\ndelete "+us[9000].ID+"\n" {
		t.Errorf("--delete-missing exited %d, printed %q:\n%s", deleted.code, deleted.stdout, deleted.stderr)
	}
	for _, u := range us[7:10] {
		row, err := st.GetUserByClerkIDIncludingDeleted(ctx, u.ID)
		if gone := u.ID == us[7].ID; err != nil || (row.DeletedAt != nil) != gone || (row.Email == "") != gone {
			t.Errorf("%s after --delete-missing: %+v, %v", u.ID, row, err)
		}
	}

	// erase-user: refused while Clerk has the user, done once it does not.
	target := us[3].ID
	if r := runUserd(t, bin, env, "erase-user", "--clerk-user-id", target); r.code != 1 || !strings.Contains(r.stderr, "still exists in Clerk") {
		t.Errorf("erase-user of a user Clerk has: exit %d:\n%s", r.code, r.stderr)
	}
	fake.DeleteUser(target)
	r := runUserd(t, bin, env, "erase-user", "--clerk-user-id", target)
	if r.code != 0 || !strings.Contains(r.stdout, "erased "+target) {
		t.Errorf("erase-user: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	row, err := st.GetUserByClerkIDIncludingDeleted(ctx, target)
	if err != nil || row.DeletedAt == nil || row.Email != "" || row.FirstName != "" || row.LastName != "" || row.ImageURL != "" {
		t.Errorf("after erase-user: %+v, %v", row, err)
	}
	if r := runUserd(t, bin, env, "erase-user", "--clerk-user-id", "user_nobody"); r.code != 1 || !strings.Contains(r.stderr, "no user user_nobody") {
		t.Errorf("erase-user of an unknown user: exit %d:\n%s", r.code, r.stderr)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
