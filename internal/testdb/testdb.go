// Package testdb gives each test a fresh, migrated PostgreSQL database,
// cloned from a template that pgtestdb builds once per migration set (named
// by migrate.Hash) with the same migration code production uses.
//
// TEST_DATABASE_URL names the server. When it is unset, tests use the
// default postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable if a
// server answers there, and otherwise (outside CI) an embedded PostgreSQL
// started with the same mechanism as `userd serve` (internal/pgembed) in
// $TMPDIR/userd-test-postgres, shared by all test processes and left running
// for the next run. Under CI=true, or when TEST_DATABASE_URL is set, an
// unreachable server fails the test: a database test never skips.
package testdb

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver pgtestdb uses
	"github.com/peterldowns/pgtestdb"

	"github.com/userd/userd/internal/migrate"
	"github.com/userd/userd/internal/pgembed"
)

// DefaultURL is the server tests use when TEST_DATABASE_URL is unset.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

var (
	serverOnce sync.Once
	serverURL  string
	serverErr  error
)

// ServerURL is the server tests create their databases on.
func ServerURL() (string, error) {
	serverOnce.Do(func() { serverURL, serverErr = findServer() })
	return serverURL, serverErr
}

func findServer() (string, error) {
	if u := os.Getenv("TEST_DATABASE_URL"); u != "" {
		return u, nil
	}
	if os.Getenv("CI") == "true" || reachable(DefaultURL) {
		return DefaultURL, nil
	}
	return embeddedServer()
}

func reachable(url string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return false
	}
	_ = conn.Close(ctx)
	return true
}

// embeddedServer starts (or adopts) the shared embedded test server. A file
// lock keeps the test processes of one `go test ./...` from starting it
// twice.
func embeddedServer() (string, error) {
	dir := filepath.Join(os.TempDir(), "userd-test-postgres")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return "", err
	}
	defer lock.Close() // closing releases the lock
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", err
	}
	srv, err := pgembed.Start(context.Background(), pgembed.Config{DataDir: dir})
	if err != nil {
		return "", fmt.Errorf("no PostgreSQL at %s and the embedded one failed to start: %w", DefaultURL, err)
	}
	srv.Detach() // left running for the other test processes, which adopt it
	return srv.URL, nil
}

// URL creates a fresh migrated database for t and returns its URL. The
// database is dropped when t passes.
func URL(t testing.TB) string {
	t.Helper()
	return pgtestdb.Custom(t, serverConfig(t), migrator{}).URL()
}

// EmptyURL creates a fresh database without any schema (not even goose's
// version table) for t and returns its URL: what a first deploy meets.
func EmptyURL(t testing.TB) string {
	t.Helper()
	return pgtestdb.Custom(t, serverConfig(t), pgtestdb.NoopMigrator{}).URL()
}

func serverConfig(t testing.TB) pgtestdb.Config {
	t.Helper()
	server, err := ServerURL()
	if err != nil {
		t.Fatalf("test database: %v", err)
	}
	pcfg, err := pgxpool.ParseConfig(server)
	if err != nil {
		t.Fatalf("TEST_DATABASE_URL is not a valid PostgreSQL URL: %v", err)
	}
	cc := pcfg.ConnConfig
	conf := pgtestdb.Config{
		DriverName: "pgx",
		Host:       cc.Host,
		Port:       strconv.Itoa(int(cc.Port)),
		User:       cc.User,
		Password:   cc.Password,
		Database:   cc.Database,
		Options:    "sslmode=disable",
	}
	checkReachable(t, conf)
	return conf
}

// Pool is URL plus a pgx pool closed at cleanup.
func Pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	return Connect(t, URL(t))
}

// Connect opens a pool on url, closed at cleanup.
func Connect(t testing.TB, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatalf("open test pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func checkReachable(t testing.TB, conf pgtestdb.Config) {
	t.Helper()
	db, err := conf.Connect()
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err = db.PingContext(ctx)
		_ = db.Close()
	}
	if err != nil {
		t.Fatalf("cannot reach the test PostgreSQL server at %s:%s (%v).\n"+
			"Start PostgreSQL or point TEST_DATABASE_URL at one, e.g.\n"+
			"  TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable",
			conf.Host, conf.Port, err)
	}
}

// migrator adapts internal/migrate to pgtestdb.
type migrator struct{}

func (migrator) Hash() (string, error) { return migrate.Hash() }

func (migrator) Migrate(ctx context.Context, db *sql.DB, _ pgtestdb.Config) error {
	m, err := migrate.NewFromDB(db)
	if err != nil {
		return err
	}
	_, err = m.Up(ctx)
	return err
}
