// Package testdb gives each test a fresh, migrated PostgreSQL database,
// cloned from a template that pgtestdb builds once per migration set (named
// by migrate.Hash) with the same migration code production uses.
//
// TEST_DATABASE_URL names the server (default
// postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable). When it
// cannot be reached the test fails, with a message saying how to fix it: a
// database test never skips.
package testdb

import (
	"context"
	"database/sql"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver pgtestdb uses
	"github.com/peterldowns/pgtestdb"

	"github.com/userd/userd/internal/migrate"
)

// DefaultURL is the server tests use when TEST_DATABASE_URL is unset.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// ServerURL is the server tests create their databases on.
func ServerURL() string {
	if u := os.Getenv("TEST_DATABASE_URL"); u != "" {
		return u
	}
	return DefaultURL
}

// URL creates a fresh migrated database for t and returns its URL. The
// database is dropped when t passes.
func URL(t testing.TB) string {
	t.Helper()
	pcfg, err := pgxpool.ParseConfig(ServerURL())
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
	return pgtestdb.Custom(t, conf, migrator{}).URL()
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
