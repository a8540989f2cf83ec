// Command userd keeps an application's users in sync with Clerk and owns
// their plan and credits. See README.md.
//
//	userd [serve]              run the service (default)
//	userd migrate up|down|status
//	userd sync-clerk           mirror every Clerk user (backfill, reconcile)
//	userd erase-user           erase one user's personal data on request
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
	"syscall"
	"time"

	"github.com/alecthomas/kong"

	"github.com/userd/userd/internal/app"
	"github.com/userd/userd/internal/clerkhook"
	"github.com/userd/userd/internal/config"
	"github.com/userd/userd/internal/database"
	"github.com/userd/userd/internal/migrate"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/telemetry"
)

// version is stamped by `make build` (-ldflags "-X main.version=...").
var version = ""

type cli struct {
	Serve   serveCmd   `cmd:"" default:"withargs" help:"Run userd (the default command)."`
	Migrate migrateCmd `cmd:"" help:"Apply, roll back or show database migrations."`
	Version versionCmd `cmd:"" help:"Print the version and exit."`

	SyncClerk syncClerkCmd `cmd:"" name:"sync-clerk" help:"Mirror every Clerk user into userd (first backfill, or reconcile); --delete-missing also deletes users Clerk no longer has."`
	EraseUser eraseUserCmd `cmd:"" name:"erase-user" help:"Erase one user's personal data on request and mark it deleted for good; the ledger and plan history stay."`

	SendClerkEvent sendClerkEventCmd `cmd:"" name:"send-clerk-event" help:"Post a correctly signed sample Clerk event to a running userd (local demo without Clerk)."`
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
	log.Info("starting userd", "version", buildVersion(), "tracing", telemetry.TracingEnabled())
	s.Serve.Version = buildVersion()
	a, err := app.New(ctx, s.Serve, log)
	if err != nil {
		return err
	}
	return a.Run(ctx)
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

	Up     struct{} `cmd:"" help:"Apply every pending migration."`
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
		n, err := mg.Up(ctx)
		if err != nil {
			return err
		}
		fmt.Printf("applied %d migration(s)\n", n)
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
			fmt.Printf("%05d  %-8s %s\n", s.Version, state, s.Name)
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

type sendClerkEventCmd struct {
	URL       string `default:"http://localhost:8081/webhooks/clerk" help:"Webhook endpoint to post to."`
	Secret    string `name:"clerk-webhook-secret" env:"CLERK_WEBHOOK_SECRET" required:"" help:"Signing secret to sign with (the first one when several are configured)."`
	Type      string `default:"user.created" enum:"user.created,user.updated,user.deleted" help:"Event type."`
	UserID    string `name:"user-id" default:"user_2demoSampleUser" help:"Clerk user id."`
	Email     string `default:"grace@example.com" help:"Primary email (empty for none)."`
	FirstName string `name:"first-name" default:"Grace" help:"First name."`
	LastName  string `name:"last-name" default:"Hopper" help:"Last name."`
	MessageID string `name:"message-id" help:"Svix message id (default: a new one; reuse one to see deduplication)."`
}

func (c *sendClerkEventCmd) Run() error {
	secrets, err := clerkhook.ParseSecrets(c.Secret)
	if err != nil {
		return err
	}
	if len(secrets) == 0 {
		return errors.New("CLERK_WEBHOOK_SECRET is empty")
	}
	now := time.Now()
	if c.MessageID == "" {
		c.MessageID = fmt.Sprintf("msg_demo_%d", now.UnixNano())
	}
	body := clerkhook.SampleEvent(c.Type, clerkhook.SampleUser{
		ID: c.UserID, Email: c.Email, FirstName: c.FirstName, LastName: c.LastName, UpdatedAt: now,
	})
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
	fmt.Printf("%s %s (svix-id %s, user %s) -> %s %s", c.Type, c.URL, c.MessageID, c.UserID, resp.Status, answer)
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
