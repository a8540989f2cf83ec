package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"golang.org/x/term"

	"github.com/userd/userd/internal/app"
	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/clerksync"
	"github.com/userd/userd/internal/config"
	"github.com/userd/userd/internal/database"
	"github.com/userd/userd/internal/migrate"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/users"
)

type syncClerkCmd struct {
	config.Database `embed:""`
	config.Log      `embed:""`
	config.ClerkAPI `embed:""`
	config.Users    `embed:""`

	DryRun         bool          `name:"dry-run" help:"Change nothing: print what would change, one line per user (create, update, delete), and the counts."`
	DeleteMissing  bool          `name:"delete-missing" help:"Also mark deleted the users live in userd that Clerk no longer has (each confirmed missing with Clerk first); their personal data is erased unless USERD_KEEP_DELETED_USER_DATA."`
	MaxDeleteShare float64       `name:"max-delete-share" env:"USERD_CLERK_SYNC_MAX_DELETE_SHARE" default:"0.1" help:"Safety stop of --delete-missing: refuse (deleting none) when more than this share of the live users is missing from Clerk, as with a key of another or an empty instance."`
	Force          bool          `help:"With --delete-missing: delete the missing users even past --max-delete-share."`
	Organizations  bool          `name:"organizations" negatable:"" default:"true" help:"Also mirror the instance's organizations and their memberships, after the users (--no-organizations: users only). An instance without the organizations feature is skipped. With --delete-missing, organizations and memberships Clerk no longer has are deleted too (organizations behind the same --max-delete-share stop)."`
	MaxRunTime     time.Duration `name:"max-run-time" env:"USERD_CLERK_SYNC_MAX_RUN_TIME" default:"6h" help:"Longest the run may take (it holds the fleet-wide sync lock meanwhile); past it the run stops with an error, keeping what it applied."`
	Progress       string        `default:"auto" enum:"auto,bar,lines,none" help:"Progress report on stderr: bar, lines (one every 10 s), none, or auto (a bar on a terminal, else lines)."`
}

func (c *syncClerkCmd) Help() string {
	return `Mirrors every user of the Clerk instance of CLERK_SECRET_KEY (and, unless
--no-organizations, every organization and membership) into userd, through the
same versioned path as webhooks (an older state never overwrites a newer one; a deletion
is final), so it is safe while userd serves and webhooks arrive. Run it once after hooking
up Clerk to backfill the users that existed before; a rerun changes only what changed.
Exit status: 0 when every user was applied, 1 otherwise (the message says why).`
}

func (c *syncClerkCmd) Run() error {
	for _, err := range []error{c.Database.Validate(), c.Log.Validate(), c.ClerkAPI.Validate(), c.Users.Validate(),
		config.ValidDeleteShare("--max-delete-share (USERD_CLERK_SYNC_MAX_DELETE_SHARE)", c.MaxDeleteShare),
		config.ValidRunTime("--max-run-time (USERD_CLERK_SYNC_MAX_RUN_TIME)", c.MaxRunTime)} {
		if err != nil {
			return err
		}
	}
	if c.SecretKey == "" {
		return errors.New("CLERK_SECRET_KEY (--clerk-secret-key) is required: the sync lists users with Clerk's Backend API")
	}
	if c.Force && !c.DeleteMissing {
		return errors.New("--force only applies to --delete-missing")
	}
	log := newLogger(os.Stderr, c.Log)
	ctx := signalContext(log)
	db, err := openMigrated(ctx, c.Database, log)
	if err != nil {
		return err
	}
	defer db.Close()
	st := store.New(db.Pool, store.Options{})
	svc := users.NewService(st, users.Options{InitialCredits: c.InitialCredits, KeepDeletedUserData: c.KeepDeletedUserData,
		OrgInitialCredits: c.OrgInitialCredits})
	api, err := app.NewClerkAPI(c.ClerkAPI)
	if err != nil {
		return err
	}
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	opts := clerksync.Options{
		DryRun:         c.DryRun,
		DeleteMissing:  c.DeleteMissing,
		MaxDeleteShare: c.MaxDeleteShare,
		Force:          c.Force,
		Organizations:  c.Organizations,
		Retry:          app.ClerkRetryPolicy(c.ClerkAPI),
		MaxRunTime:     c.MaxRunTime,
		Progress:       progress(c.Progress),
		Out:            changesWriter(out, c.DryRun),
		Log:            log,
	}
	log.Info("clerk sync starting", "api", c.APIURL, "rate_limit", api.RateLimit().String(),
		"dry_run", c.DryRun, "delete_missing", c.DeleteMissing)
	var sum clerksync.Summary
	if c.DryRun {
		// Reads only: no lock, so it can run beside a real sync.
		sum, err = clerksync.Run(ctx, api, svc, opts)
	} else {
		sum, _, err = clerksync.RunExclusive(ctx, st, 0, api, svc, opts)
	}
	if err != nil {
		return err
	}
	if sum.Failed > 0 {
		return fmt.Errorf("%d users could not be applied (the log names them); rerun to retry them", sum.Failed)
	}
	if n := sum.Orgs.Failed + sum.Memberships.Failed; n > 0 {
		return fmt.Errorf("%d organizations or memberships could not be applied (the log names them); rerun to retry them", n)
	}
	return nil
}

// progress returns the progress report asked for on stderr.
func progress(mode string) clerksync.Progress {
	if mode == "auto" {
		mode = "lines"
		if term.IsTerminal(int(os.Stderr.Fd())) {
			mode = "bar"
		}
	}
	switch mode {
	case "bar":
		return clerksync.NewBar(os.Stderr)
	case "lines":
		return clerksync.NewLines(os.Stderr, 10*time.Second)
	}
	return nil
}

// changesWriter passes every change line in a dry run — what it is for —
// and otherwise only deletions and failures: a first backfill creates
// every user, which the counts say well enough.
func changesWriter(w io.Writer, dryRun bool) io.Writer {
	if dryRun {
		return w
	}
	return lineFilter{w: w, keep: func(l string) bool {
		return strings.HasPrefix(l, "delete ") || strings.HasPrefix(l, "fail ")
	}}
}

// lineFilter writes the lines keep accepts; each Write is whole lines.
type lineFilter struct {
	w    io.Writer
	keep func(string) bool
}

func (f lineFilter) Write(p []byte) (int, error) {
	for _, l := range strings.SplitAfter(string(p), "\n") {
		if l != "" && f.keep(l) {
			if _, err := io.WriteString(f.w, l); err != nil {
				return 0, err
			}
		}
	}
	return len(p), nil
}

type eraseUserCmd struct {
	config.Database `embed:""`
	config.Log      `embed:""`
	config.ClerkAPI `embed:""`

	ClerkUserID string `name:"clerk-user-id" required:"" help:"Clerk id (user_...) of the user to erase."`
	Force       bool   `help:"Erase a user live in userd although Clerk still has it, or although that cannot be checked (no CLERK_SECRET_KEY). userd then treats it as deleted for good."`
}

func (c *eraseUserCmd) Help() string {
	return `Erases the personal data of one user (email, first and last name, image URL) on request,
whatever USERD_KEEP_DELETED_USER_DATA says, and marks the user deleted for good: no later
webhook or sync can restore the data. The tombstone (Clerk id, plan, balance), the credit
ledger and the plan history are kept. A user still live in userd must be gone from Clerk
(checked with CLERK_SECRET_KEY) unless --force: delete users in Clerk, not only here.`
}

func (c *eraseUserCmd) Run() error {
	for _, err := range []error{c.Database.Validate(), c.Log.Validate(), c.ClerkAPI.Validate()} {
		if err != nil {
			return err
		}
	}
	log := newLogger(os.Stderr, c.Log)
	ctx, cancel := context.WithTimeout(signalContext(log), time.Minute)
	defer cancel()
	db, err := openMigrated(ctx, c.Database, log)
	if err != nil {
		return err
	}
	defer db.Close()
	svc := users.NewService(store.New(db.Pool, store.Options{}), users.Options{InitialCredits: 0})
	u, err := svc.UserIncludingDeleted(ctx, c.ClerkUserID)
	switch {
	case apperr.KindOf(err) == apperr.KindNotFound:
		return fmt.Errorf("userd has no user %s: nothing to erase", c.ClerkUserID)
	case err != nil:
		return err
	}
	if u.DeletedAt == nil && !c.Force {
		if err := c.checkGoneFromClerk(ctx); err != nil {
			return err
		}
	}
	erased, err := svc.EraseUser(ctx, c.ClerkUserID)
	if err != nil {
		return err
	}
	fmt.Printf("erased %s: email, names and image URL removed; deleted since %s; kept: the tombstone (plan %s, %d credits), the credit ledger and the plan history\n",
		erased.ClerkUserID, erased.DeletedAt.UTC().Format(time.RFC3339), erased.Plan, erased.Credits)
	return nil
}

// checkGoneFromClerk refuses to erase a user Clerk still has (or may have).
func (c *eraseUserCmd) checkGoneFromClerk(ctx context.Context) error {
	if c.SecretKey == "" {
		return fmt.Errorf("%s is live in userd and, without CLERK_SECRET_KEY, userd cannot check that Clerk deleted it: "+
			"set CLERK_SECRET_KEY, or pass --force to erase it and mark it deleted in userd anyway", c.ClerkUserID)
	}
	api, err := app.NewClerkAPI(c.ClerkAPI)
	if err != nil {
		return err
	}
	_, err = api.GetUser(ctx, c.ClerkUserID)
	switch {
	case apperr.KindOf(err) == apperr.KindNotFound:
		return nil
	case err != nil:
		return fmt.Errorf("checking that Clerk deleted %s: %w", c.ClerkUserID, err)
	}
	return fmt.Errorf("%s still exists in Clerk: delete it there (its user.deleted webhook erases it here), "+
		"or pass --force to erase it and mark it deleted in userd anyway (it could then still sign in to Clerk, but userd answers NOT_FOUND for good)", c.ClerkUserID)
}

// commandSessionTimeouts bound the database sessions of sync-clerk and
// erase-user. Their statements are as short as a webhook's (a page of
// versions, batches of 32 users), but nobody waits on them: looser than
// serve's defaults, still never a hang behind a stuck lock.
var commandSessionTimeouts = store.SessionTimeouts{Statement: 30 * time.Second, Lock: 10 * time.Second, IdleInTransaction: 30 * time.Second}

// openMigrated opens the database of a one-off command and checks that
// its schema is at least this binary's: commands do not migrate (`userd
// migrate up` or `userd serve` does).
func openMigrated(ctx context.Context, cfg config.Database, log *slog.Logger) (*database.DB, error) {
	db, err := database.Open(ctx, cfg, commandSessionTimeouts, log)
	if err != nil {
		return nil, err
	}
	m, err := migrate.New(db.Pool)
	if err != nil {
		db.Close()
		return nil, err
	}
	defer m.Close()
	cur, latest, err := m.Versions(ctx)
	if err != nil {
		db.Close()
		return nil, err
	}
	if cur < latest {
		db.Close()
		return nil, fmt.Errorf("the database schema is at version %d, this userd needs %d: run `userd migrate up` first", cur, latest)
	}
	return db, nil
}
