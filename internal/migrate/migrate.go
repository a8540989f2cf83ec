// Package migrate applies the embedded migrations in db/migrations with
// goose. The same code migrates production databases (`userd migrate`, or at
// start-up) and every test database.
//
// Any number of replicas may start at once: applying migrations takes a
// PostgreSQL advisory lock (goose's session locker), so one replica
// migrates while the others wait and then find nothing left to do.
// Migrations are expand/contract: a binary works on a schema at or beyond
// its own newest migration, so a replica started on a database that a newer
// release has already migrated applies nothing and stays ready.
package migrate

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/database"
	"github.com/pressly/goose/v3/lock"

	"github.com/userd/userd/db"
)

// LockID is the key of the PostgreSQL advisory lock held while migrations
// run: the first eight bytes of sha256("userd migrations") as a big-endian
// int64. It is userd's own (not goose's default), so another
// goose-migrated application on the same server never waits on it.
const LockID int64 = -6006738922087832841

// A replica that finds the lock taken polls it every second for up to ten
// minutes (the longest migration we are prepared to wait for) before it
// gives up and exits.
const (
	lockPoll     = 1   // seconds
	lockAttempts = 600 // times
)

// Migrator applies userd's migrations to one database.
type Migrator struct {
	provider *goose.Provider
	store    database.Store
	sqlDB    *sql.DB
	latest   int64
	// db is the handle New opened and Close closes.
	db *sql.DB
}

// New returns a Migrator over the pool's database. Close it when done (the
// pool itself stays open).
func New(pool *pgxpool.Pool) (*Migrator, error) {
	sqlDB := stdlib.OpenDBFromPool(pool)
	m, err := NewFromDB(sqlDB)
	if err != nil {
		_ = sqlDB.Close()
		return nil, err
	}
	m.db = sqlDB
	return m, nil
}

// NewFromDB returns a Migrator over an open database/sql handle, which the
// caller keeps owning.
func NewFromDB(sqlDB *sql.DB) (*Migrator, error) {
	fsys, err := fs.Sub(db.Migrations, "migrations")
	if err != nil {
		return nil, fmt.Errorf("open embedded migrations: %w", err)
	}
	store, err := database.NewStore(database.DialectPostgres, goose.DefaultTablename)
	if err != nil {
		return nil, fmt.Errorf("create migration store: %w", err)
	}
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockID(LockID), lock.WithLockTimeout(lockPoll, lockAttempts))
	if err != nil {
		return nil, fmt.Errorf("create migration lock: %w", err)
	}
	p, err := goose.NewProvider("", sqlDB, fsys, goose.WithStore(store), goose.WithSessionLocker(locker))
	if err != nil {
		return nil, fmt.Errorf("create migration provider: %w", err)
	}
	m := &Migrator{provider: p, store: store, sqlDB: sqlDB}
	if srcs := p.ListSources(); len(srcs) > 0 {
		m.latest = srcs[len(srcs)-1].Version
	}
	return m, nil
}

// Close releases the handle New opened on the pool.
func (m *Migrator) Close() error {
	if m.db == nil {
		return nil
	}
	return m.db.Close()
}

// Hash identifies the embedded migration set: it changes whenever a
// migration is added or edited.
func Hash() (string, error) {
	h := sha256.New()
	err := fs.WalkDir(db.Migrations, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(db.Migrations, path)
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s %d\n", path, len(b))
		h.Write(b)
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("hash migrations: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Up applies every pending migration and returns how many it applied.
// Nothing pending (the schema is at or beyond this binary's version) costs
// one read and takes no lock; otherwise it waits for the migration lock
// and applies what is still pending once it holds it, so replicas started
// together apply each migration exactly once.
func (m *Migrator) Up(ctx context.Context) (int, error) {
	res, err := m.provider.Up(ctx)
	if err != nil {
		return len(res), fmt.Errorf("migrate up: %w", err)
	}
	return len(res), nil
}

// Down rolls back the newest applied migration. It refuses when the
// database holds migrations this binary does not know: only the release
// that applied them can roll them back.
func (m *Migrator) Down(ctx context.Context) error {
	if err := m.refuseNewer(ctx); err != nil {
		return err
	}
	if _, err := m.provider.Down(ctx); err != nil {
		return fmt.Errorf("migrate down: %w", err)
	}
	return nil
}

// DownTo rolls back every migration newer than version (0: all of them).
func (m *Migrator) DownTo(ctx context.Context, version int64) error {
	if err := m.refuseNewer(ctx); err != nil {
		return err
	}
	if _, err := m.provider.DownTo(ctx, version); err != nil {
		return fmt.Errorf("migrate down to %d: %w", version, err)
	}
	return nil
}

// Status is the state of one migration.
type Status struct {
	Version int64
	Name    string
	Applied bool
}

// Status lists every known migration and whether it is applied.
func (m *Migrator) Status(ctx context.Context) ([]Status, error) {
	st, err := m.provider.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("migration status: %w", err)
	}
	out := make([]Status, len(st))
	for i, s := range st {
		out[i] = Status{Version: s.Source.Version, Name: s.Source.Path, Applied: s.State == goose.StateApplied}
	}
	return out, nil
}

// Latest is the version of the newest migration this binary carries.
func (m *Migrator) Latest() int64 { return m.latest }

// ErrNotMigrated reports a database without userd's migration table.
var ErrNotMigrated = errors.New("the database has no schema version table: run userd migrate up")

// SchemaVersion reads the database's schema version (the highest applied
// migration) with one query: no lock, nothing created, cheap enough for a
// readiness probe.
func (m *Migrator) SchemaVersion(ctx context.Context) (int64, error) {
	v, err := m.store.GetLatestVersion(ctx, m.sqlDB)
	if err == nil {
		return v, nil
	}
	if errors.Is(err, database.ErrVersionNotFound) {
		return 0, nil
	}
	if pgErr := (*pgconn.PgError)(nil); errors.As(err, &pgErr) && pgErr.Code == pgerrcode.UndefinedTable {
		return 0, ErrNotMigrated
	}
	return 0, fmt.Errorf("read schema version: %w", err)
}

// Versions reports the database's schema version and the newest embedded
// one. The schema serves this binary when current >= latest.
func (m *Migrator) Versions(ctx context.Context) (current, latest int64, err error) {
	current, err = m.SchemaVersion(ctx)
	return current, m.latest, err
}

func (m *Migrator) refuseNewer(ctx context.Context) error {
	cur, err := m.SchemaVersion(ctx)
	if err != nil {
		return err
	}
	if cur > m.latest {
		return fmt.Errorf("the database is at schema version %d, newer than this binary's %d: "+
			"roll back with the userd release that applied it", cur, m.latest)
	}
	return nil
}
