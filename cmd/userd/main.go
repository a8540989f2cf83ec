// Command userd keeps an application's users in sync with Clerk and owns
// their plan and credits. See README.md.
//
//	userd [serve]              run the service (default)
//	userd migrate up|down|status
//	userd sync-clerk           mirror every Clerk user (backfill, reconcile)
//	userd sync-stripe          converge accounts on their Stripe subscriptions
//	userd erase-user           erase one user's personal data on request
//	userd db-url               print the database's URL (for psql)
//	userd version
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kong"

	"github.com/userd/userd/internal/app"
	"github.com/userd/userd/internal/clerkhook"
	"github.com/userd/userd/internal/config"
	"github.com/userd/userd/internal/database"
	"github.com/userd/userd/internal/migrate"
	"github.com/userd/userd/internal/pgembed"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/telemetry"
)

// version is stamped by `make build` (-ldflags "-X main.version=...").
var version = ""

type cli struct {
	Serve   serveCmd   `cmd:"" default:"withargs" help:"Run userd (the default command)."`
	Migrate migrateCmd `cmd:"" help:"Apply, roll back or show database migrations."`
	Version versionCmd `cmd:"" help:"Print the version and exit."`

	SyncClerk  syncClerkCmd  `cmd:"" name:"sync-clerk" help:"Mirror every Clerk user into userd (first backfill, or reconcile); --delete-missing also deletes users Clerk no longer has."`
	SyncStripe syncStripeCmd `cmd:"" name:"sync-stripe" help:"Converge every account linked to a Stripe customer on its subscriptions as Stripe has them now (backfill, or repair after downtime)."`
	EraseUser  eraseUserCmd  `cmd:"" name:"erase-user" help:"Erase one user's personal data on request and mark it deleted for good; the ledger and plan history stay."`

	SendClerkEvent sendClerkEventCmd `cmd:"" name:"send-clerk-event" help:"Post a correctly signed sample Clerk event to a running userd (local demo without Clerk)."`
	DBURL          dbURLCmd          `cmd:"" name:"db-url" help:"Print the URL of the database userd uses: DATABASE_URL, or the embedded PostgreSQL of the userd running on USERD_DATA_DIR (password included: psql \"$(userd db-url)\")."`
}

type dbURLCmd struct {
	config.Database `embed:""`
}

func (c *dbURLCmd) Run() error {
	if !c.Embedded() {
		fmt.Println(c.URL)
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u, err := database.EmbeddedURL(ctx, c.Database)
	if errors.Is(err, pgembed.ErrNotRunning) {
		return fmt.Errorf("%w: DATABASE_URL is empty and no userd runs on USERD_DATA_DIR; start one (make run), "+
			"or set USERD_DATA_DIR to the one it uses", err)
	}
	if err != nil {
		return err
	}
	fmt.Println(u)
	return nil
}

func main() {
	var c cli
	kctx := kong.Parse(&c,
		kong.Name("userd"),
		kong.Description("userd mirrors Clerk users into PostgreSQL and owns their plan and credits."),
	)
	if err := kctx.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "userd:", err)
		os.Exit(1)
	}
}

type serveCmd struct {
	config.Serve `embed:""`
}

func (s *serveCmd) Run() error {
	log := newLogger(os.Stderr, s.Log)
	gcPercent := applyServeGC(os.LookupEnv)
	ctx := signalContext(log)
	stopTracing, err := telemetry.StartTracing(ctx, buildVersion())
	if err != nil {
		return err
	}
	defer func() {
		flushCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := stopTracing(flushCtx); err != nil {
			log.Warn("flushing traces", "err", err)
		}
	}()
	log.Info("starting userd", "version", buildVersion(), "tracing", telemetry.TracingEnabled(), "gogc", gcPercent)
	s.Serve.Version = buildVersion()
	a, err := app.New(ctx, s.Serve, log)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

// serveGCPercent is the garbage collector's target of userd serve when
// GOGC is not set: the heap may grow to three times what is live between
// collections, where the runtime's default is twice. A call's allocations
// are short-lived (about 10 KB a GetUser) and what stays live is small
// (RSS 42-45 MiB under make bench at the default), so collections were
// mostly overhead: at 200, userd's CPU per call fell by about a fifth for
// GetUser and the gRPC floor alike, for a few MiB more RSS (peak 48 MiB
// in make bench; issue 24). No memory limit is set by default: where the
// live heap grows large (a flood of connections), a limit below it would
// have the collector run back to back; GOMEMLIMIT sets one, GOGC another
// target.
const serveGCPercent = 200

// applyServeGC sets the collector's target to serveGCPercent unless GOGC
// is set (the runtime read it at start-up), and returns the target.
func applyServeGC(lookupEnv func(string) (string, bool)) int {
	if _, set := lookupEnv("GOGC"); set {
		p := debug.SetGCPercent(-1)
		debug.SetGCPercent(p)
		return p
	}
	debug.SetGCPercent(serveGCPercent)
	return serveGCPercent
}

// signalContext is cancelled by the first SIGINT or SIGTERM; a second one
// exits at once.
func signalContext(log *slog.Logger) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		sig := <-sigs
		log.Info("signal received; shutting down (send again to exit at once)", "signal", sig.String())
		cancel()
		<-sigs
		log.Warn("second signal; exiting now")
		os.Exit(130)
	}()
	return ctx
}

type migrateCmd struct {
	config.Database `embed:""`
	config.Log      `embed:""`

	Up     struct{} `cmd:"" help:"Apply every pending migration, post-deploy ones included (run those once every replica runs this release)."`
	Down   struct{} `cmd:"" help:"Roll back the newest migration."`
	Status struct{} `cmd:"" help:"List migrations and whether each is applied."`
}

func (m *migrateCmd) Run(kctx *kong.Context) error {
	if err := m.Database.Validate(); err != nil {
		return err
	}
	if err := m.Log.Validate(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	db, err := database.Open(ctx, m.Database, store.SessionTimeouts{}, newLogger(os.Stderr, m.Log))
	if err != nil {
		return err
	}
	defer db.Close()
	mg, err := migrate.New(db.Pool)
	if err != nil {
		return err
	}
	defer mg.Close()
	switch kctx.Command() {
	case "migrate up":
		res, err := mg.UpAll(ctx)
		for _, r := range res.Ran {
			fmt.Printf("applied %s in %s\n", r.Name, r.Took.Round(time.Millisecond))
		}
		if err != nil {
			return err
		}
		fmt.Printf("applied %d migration(s)\n", res.Applied)
	case "migrate down":
		if err := mg.Down(ctx); err != nil {
			return err
		}
		fmt.Println("rolled back one migration")
	case "migrate status":
		st, err := mg.Status(ctx)
		if err != nil {
			return err
		}
		for _, s := range st {
			state := "pending"
			if s.Applied {
				state = "applied"
			}
			kind := ""
			if s.PostDeploy {
				kind = "  (post-deploy: `userd serve` leaves it to `userd migrate up` on a database in use)"
			}
			fmt.Printf("%05d  %-8s %s%s\n", s.Version, state, s.Name, kind)
		}
		cur, latest, err := mg.Versions(ctx)
		if err != nil {
			return err
		}
		fmt.Printf("schema version %d; this binary's newest migration %d\n", cur, latest)
		if cur > latest {
			fmt.Println("the database holds migrations of a newer userd release (expand/contract: this binary serves on it)")
		}
	default:
		return fmt.Errorf("unknown command %q", kctx.Command())
	}
	return nil
}

// sampleCreatedAt is Clerk's updated_at in the demo's user.created events.
// Every delivery of one user's user.created carries the state the user was
// created with, so a user.created sent again after a user.updated is older
// than the stored state and answers "stale", changing nothing, as a late
// redelivery from Clerk would; it never undoes the update.
var sampleCreatedAt = time.Date(2026, time.January, 1, 0, 0, 0, 0, time.UTC)

type sendClerkEventCmd struct {
	URL       string `default:"http://localhost:8081/webhooks/clerk" help:"Webhook endpoint to post to."`
	Secret    string `name:"clerk-webhook-secret" env:"CLERK_WEBHOOK_SECRET" help:"Signing secret to sign with (the first one when several are configured): the receiving userd's CLERK_WEBHOOK_SECRET."`
	Type      string `default:"user.created" enum:"user.created,user.updated,user.deleted,organization.created,organization.updated,organization.deleted,organizationMembership.created,organizationMembership.updated,organizationMembership.deleted" help:"Event type: a *.created event carries its object as created (Clerk updated_at 2026-01-01T00:00:00Z, so once it was updated it answers stale); *.updated the object as of now."`
	UserID    string `name:"user-id" default:"user_2demoSampleUser" help:"Clerk user id (of the user, or of the member of organizationMembership.*)."`
	Email     string `default:"grace@example.com" help:"Primary email (empty for none)."`
	FirstName string `name:"first-name" default:"Grace" help:"First name."`
	LastName  string `name:"last-name" default:"Hopper" help:"Last name."`
	OrgID     string `name:"org-id" default:"org_2demoSampleOrg" help:"Clerk organization id (organization.*, organizationMembership.*)."`
	OrgName   string `name:"org-name" default:"Analytical Engines" help:"Organization name."`
	OrgSlug   string `name:"org-slug" default:"analytical-engines" help:"Organization slug (empty for none)."`
	Role      string `default:"org:member" help:"Member's role (organizationMembership.*)."`
	MessageID string `name:"message-id" help:"Svix message id (default: a new one; reuse one to see deduplication)."`
}

// body is the event c describes, as Clerk would send it at now.
func (c *sendClerkEventCmd) body(now time.Time) []byte {
	updated := now
	if strings.HasSuffix(c.Type, ".created") {
		updated = sampleCreatedAt
	}
	org := clerkhook.SampleOrg{ID: c.OrgID, Name: c.OrgName, Slug: c.OrgSlug, CreatedAt: sampleCreatedAt, UpdatedAt: updated}
	switch {
	case strings.HasPrefix(c.Type, "organizationMembership."):
		return clerkhook.SampleMembershipEvent(c.Type, clerkhook.SampleMembership{
			// One membership per organization and user, as in Clerk.
			ID:  "orgmem_" + strings.TrimPrefix(c.OrgID, "org_") + "_" + strings.TrimPrefix(c.UserID, "user_"),
			Org: org, UserID: c.UserID, Role: c.Role, UpdatedAt: updated,
		})
	case strings.HasPrefix(c.Type, "organization."):
		return clerkhook.SampleOrgEvent(c.Type, org)
	}
	return clerkhook.SampleEvent(c.Type, clerkhook.SampleUser{
		ID: c.UserID, Email: c.Email, FirstName: c.FirstName, LastName: c.LastName, UpdatedAt: updated,
	})
}

// subject names what the event is about, for the summary line.
func (c *sendClerkEventCmd) subject() string {
	switch {
	case strings.HasPrefix(c.Type, "organizationMembership."):
		return "organization " + c.OrgID + ", user " + c.UserID
	case strings.HasPrefix(c.Type, "organization."):
		return "organization " + c.OrgID
	}
	return "user " + c.UserID
}

func (c *sendClerkEventCmd) Run() error {
	if strings.TrimSpace(c.Secret) == "" {
		return errors.New("no signing secret: set CLERK_WEBHOOK_SECRET (or --clerk-webhook-secret) to the " +
			"CLERK_WEBHOOK_SECRET of the userd you post to; `make demo-webhook` signs with the development secret " +
			"that `make run` uses")
	}
	secrets, err := clerkhook.ParseSecrets(c.Secret)
	if err != nil {
		return err
	}
	now := time.Now()
	if c.MessageID == "" {
		c.MessageID = fmt.Sprintf("msg_demo_%d", now.UnixNano())
	}
	body := c.body(now)
	headers, err := clerkhook.SignHeaders(secrets[0], c.MessageID, now, body)
	if err != nil {
		return err
	}
	req, err := http.NewRequest(http.MethodPost, c.URL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	req.Header = headers
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return fmt.Errorf("post to %s: %w", c.URL, err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	fmt.Printf("%s %s (svix-id %s, %s) -> %s %s", c.Type, c.URL, c.MessageID, c.subject(), resp.Status, answer)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("userd answered %s", resp.Status)
	}
	return nil
}

type versionCmd struct{}

func (versionCmd) Run() error {
	fmt.Println("userd", buildVersion())
	return nil
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

func newLogger(w io.Writer, cfg config.Log) *slog.Logger {
	return telemetry.NewLogger(w, cfg.LogFormat, cfg.LogLevel)
}
