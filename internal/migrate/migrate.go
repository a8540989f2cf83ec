// Package migrate applies the embedded migrations in db/migrations with
// goose. The same code migrates production databases (`userd migrate`, or at
// start-up) and every test database.
//
// Any number of replicas may start at once: applying migrations takes a
// PostgreSQL advisory lock (goose's session locker), so one replica
// migrates while the others wait and then find nothing left to do.
// Migrations are expand/contract: a binary works on a schema at or beyond
// its own newest expand migration, so a replica started on a database that
// a newer release has already migrated applies nothing and stays ready.
//
// A migration whose first line is "-- userd:post-deploy" (PostDeployMarker)
// is a post-deploy (contract) migration: it removes what the previous
// release still uses, so it may only run once every replica runs the
// release that carries it. `userd serve` (UpForServe) applies pending
// migrations up to, not including, the first pending post-deploy one — on
// a new database, where no previous release can be running, it applies
// everything — and `userd migrate up` (Up) applies everything.
package migrate

import (
	"cmp"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"time"

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

// PostDeployMarker is the first line of a post-deploy (contract) migration.
const PostDeployMarker = "-- userd:post-deploy"

// Migration is one migration this binary carries.
type Migration struct {
	Version int64
	// Name is the file name, e.g. 00010_accounts.sql.
	Name string
	// PostDeploy: the file starts with PostDeployMarker; `userd serve`
	// leaves it to `userd migrate up` on a database in use.
	PostDeploy bool
}

// Migrator applies userd's migrations to one database.
type Migrator struct {
	provider *goose.Provider
	store    database.Store
	sqlDB    *sql.DB
	locker   lock.SessionLocker
	// lockConn opens the connection that holds the migration lock while
	// goose works on another one.
	lockConn func(context.Context) (*sql.Conn, func(), error)
	// migrations are sorted by version.
	migrations []Migration
	// latest is the newest migration; required the newest that is not
	// post-deploy: the schema version this binary needs to serve.
	latest, required int64
	// db and readDB are the handles New opened and Close closes.
	db, readDB *sql.DB
}

// New returns a Migrator over the pool's database. Close it when done (the
// pool itself stays open).
//
// Migrations run on connections of their own, outside the pool (at most
// two, open only while migrating: goose's and the one holding the
// migration lock), made with the pool's settings but without
// statement_timeout: a migration's statement may rightly run longer than
// any call (a batched backfill, validating a constraint on a large table)
// without holding calls up, while lock_timeout and
// idle_in_transaction_session_timeout still bound how long it may queue
// for a lock or sit idle holding one. What a migration sets in its session
// (SET, pg_temp objects) never reaches a connection that serves calls. The
// schema version (readiness) is read through the pool.
func New(pool *pgxpool.Pool) (*Migrator, error) {
	cc := pool.Config().ConnConfig.Copy()
	cc.RuntimeParams["statement_timeout"] = "0"
	migDB := stdlib.OpenDB(*cc)
	migDB.SetMaxOpenConns(2)
	migDB.SetMaxIdleConns(0)
	m, err := NewFromDB(migDB)
	if err != nil {
		_ = migDB.Close()
		return nil, err
	}
	m.db = migDB
	m.readDB = stdlib.OpenDBFromPool(pool)
	m.sqlDB = m.readDB
	return m, nil
}

// NewFromDB returns a Migrator of the embedded migrations over an open
// database/sql handle, which the caller keeps owning.
func NewFromDB(sqlDB *sql.DB) (*Migrator, error) {
	fsys, err := fs.Sub(db.Migrations, "migrations")
	if err != nil {
		return nil, fmt.Errorf("open embedded migrations: %w", err)
	}
	return NewFromFS(sqlDB, fsys)
}

// NewFromFS returns a Migrator of the migrations in fsys (NNNNN_name.sql
// files at its root) over an open database/sql handle, which the caller
// keeps owning. Production uses the embedded ones (NewFromDB, New); tests
// give sets of their own.
func NewFromFS(sqlDB *sql.DB, fsys fs.FS) (*Migrator, error) {
	store, err := database.NewStore(database.DialectPostgres, goose.DefaultTablename)
	if err != nil {
		return nil, fmt.Errorf("create migration store: %w", err)
	}
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockID(LockID), lock.WithLockTimeout(lockPoll, lockAttempts))
	if err != nil {
		return nil, fmt.Errorf("create migration lock: %w", err)
	}
	// goose takes no lock of its own: the Migrator holds LockID while it
	// decides what to apply and goose applies it, so that the decision
	// (which depends on what is applied) cannot go stale.
	p, err := goose.NewProvider("", sqlDB, fsys, goose.WithStore(store))
	if err != nil {
		return nil, fmt.Errorf("create migration provider: %w", err)
	}
	m := &Migrator{provider: p, store: store, sqlDB: sqlDB, locker: locker}
	m.lockConn = func(ctx context.Context) (*sql.Conn, func(), error) {
		conn, err := sqlDB.Conn(ctx)
		if err != nil {
			return nil, nil, fmt.Errorf("connect for the migration lock: %w", err)
		}
		return conn, func() { _ = conn.Close() }, nil
	}
	for _, src := range p.ListSources() {
		mg := Migration{Version: src.Version, Name: src.Path}
		if src.Type == goose.TypeSQL {
			b, err := fs.ReadFile(fsys, src.Path)
			if err != nil {
				return nil, fmt.Errorf("read migration %s: %w", src.Path, err)
			}
			first, _, _ := strings.Cut(string(b), "\n")
			mg.PostDeploy = strings.TrimSpace(first) == PostDeployMarker
		}
		m.migrations = append(m.migrations, mg)
		m.latest = src.Version
		if !mg.PostDeploy {
			m.required = src.Version
		}
	}
	return m, nil
}

// Close releases the handles New opened.
func (m *Migrator) Close() error {
	var errs []error
	for _, db := range []*sql.DB{m.db, m.readDB} {
		if db != nil {
			errs = append(errs, db.Close())
		}
	}
	return errors.Join(errs...)
}

// Migrations lists the migrations this binary carries, oldest first.
func (m *Migrator) Migrations() []Migration { return slices.Clone(m.migrations) }

// withLock runs fn while holding the migration lock (LockID) on a
// connection of its own: replicas starting together wait for one another.
func (m *Migrator) withLock(ctx context.Context, fn func(context.Context) error) (err error) {
	conn, release, err := m.lockConn(ctx)
	if err != nil {
		return err
	}
	defer release()
	if err := m.locker.SessionLock(ctx, conn); err != nil {
		return fmt.Errorf("take the migration lock: %w", err)
	}
	defer func() {
		// Unlock even when ctx is done; closing the connection would
		// release it as well.
		if uerr := m.locker.SessionUnlock(context.WithoutCancel(ctx), conn); uerr != nil && err == nil {
			err = fmt.Errorf("release the migration lock: %w", uerr)
		}
	}()
	return fn(ctx)
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

// Up applies every pending migration, post-deploy ones included (`userd
// migrate up`), and returns how many it applied. Nothing pending (the
// schema is at or beyond this binary's version) costs one read and takes
// no lock; otherwise it waits for the migration lock and applies what is
// still pending once it holds it, so replicas started together apply each
// migration exactly once.
func (m *Migrator) Up(ctx context.Context) (int, error) {
	res, err := m.UpAll(ctx)
	return res.Applied, err
}

// UpAll is Up, reporting each migration applied.
func (m *Migrator) UpAll(ctx context.Context) (ServeResult, error) {
	return m.up(ctx, false)
}

// ServeResult is what UpForServe did and left.
type ServeResult struct {
	// Applied is how many migrations it applied.
	Applied int
	// Fresh: the database had no userd migration applied, so everything
	// was applied, post-deploy migrations included.
	Fresh bool
	// PendingPostDeploy is the first post-deploy migration left pending
	// (zero Version: none). Every migration after it is pending too.
	PendingPostDeploy Migration
	// Ran lists the migrations applied, in order, with how long each took.
	Ran []Ran
}

// Ran is one applied migration.
type Ran struct {
	Migration
	Took time.Duration
}

// UpForServe applies what `userd serve` may apply at start-up: pending
// migrations up to, not including, the first pending post-deploy one,
// while replicas of the previous release may still serve — except on a
// new database (no userd migration applied yet), where it applies
// everything. It decides under the migration lock, so that a database
// another process migrates meanwhile is judged as it is when it applies.
// Nothing to apply costs one read and takes no lock.
func (m *Migrator) UpForServe(ctx context.Context) (ServeResult, error) {
	return m.up(ctx, true)
}

// plan reads what is applied and returns the version to migrate up to,
// with what UpForServe reports. forServe=false: everything.
func (m *Migrator) plan(ctx context.Context, forServe bool) (target int64, todo int, res ServeResult, err error) {
	applied, err := m.appliedVersions(ctx)
	if err != nil {
		return 0, 0, res, err
	}
	res.Fresh = len(applied) == 0
	target = m.latest
	if forServe && !res.Fresh {
		for _, mg := range m.migrations {
			if mg.PostDeploy && !applied[mg.Version] {
				res.PendingPostDeploy = mg
				target = mg.Version - 1
				break
			}
		}
	}
	for _, mg := range m.migrations {
		if mg.Version <= target && !applied[mg.Version] {
			todo++
		}
	}
	return target, todo, res, nil
}

func (m *Migrator) up(ctx context.Context, forServe bool) (ServeResult, error) {
	_, todo, res, err := m.plan(ctx, forServe)
	if err != nil || todo == 0 {
		return res, err
	}
	err = m.withLock(ctx, func(ctx context.Context) error {
		target, todo, r, err := m.plan(ctx, forServe)
		if res = r; err != nil || todo == 0 {
			return err
		}
		applied, err := m.provider.UpTo(ctx, target)
		if pe := (*goose.PartialError)(nil); errors.As(err, &pe) {
			applied = pe.Applied
		}
		for _, r := range applied {
			mg := Migration{Version: r.Source.Version, Name: r.Source.Path}
			if j, ok := slices.BinarySearchFunc(m.migrations, mg.Version, func(mg Migration, v int64) int { return cmp.Compare(mg.Version, v) }); ok {
				mg = m.migrations[j]
			}
			res.Ran = append(res.Ran, Ran{Migration: mg, Took: r.Duration})
		}
		res.Applied = len(res.Ran)
		return err
	})
	if err != nil {
		return res, fmt.Errorf("migrate up: %w", err)
	}
	return res, nil
}

// appliedVersions reads the versions recorded as applied, version 0 (the
// version table's own row) left out: none on a new database, with or
// without the version table.
func (m *Migrator) appliedVersions(ctx context.Context) (map[int64]bool, error) {
	rows, err := m.store.ListMigrations(ctx, m.sqlDB)
	if pgErr := (*pgconn.PgError)(nil); errors.As(err, &pgErr) && pgErr.Code == pgerrcode.UndefinedTable {
		return map[int64]bool{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read applied migrations: %w", err)
	}
	out := make(map[int64]bool, len(rows))
	for _, r := range rows {
		if r.Version != 0 {
			out[r.Version] = true
		}
	}
	return out, nil
}

// Down rolls back the newest applied migration. It refuses when the
// database holds migrations this binary does not know: only the release
// that applied them can roll them back.
func (m *Migrator) Down(ctx context.Context) error {
	return m.withLock(ctx, func(ctx context.Context) error {
		if err := m.refuseNewer(ctx); err != nil {
			return err
		}
		if _, err := m.provider.Down(ctx); err != nil {
			return fmt.Errorf("migrate down: %w", err)
		}
		return nil
	})
}

// DownTo rolls back every migration newer than version (0: all of them).
func (m *Migrator) DownTo(ctx context.Context, version int64) error {
	return m.withLock(ctx, func(ctx context.Context) error {
		if err := m.refuseNewer(ctx); err != nil {
			return err
		}
		if _, err := m.provider.DownTo(ctx, version); err != nil {
			return fmt.Errorf("migrate down to %d: %w", version, err)
		}
		return nil
	})
}

// Status is the state of one migration.
type Status struct {
	Version    int64
	Name       string
	Applied    bool
	PostDeploy bool
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
		if j, ok := slices.BinarySearchFunc(m.migrations, s.Source.Version, func(mg Migration, v int64) int { return cmp.Compare(mg.Version, v) }); ok {
			out[i].PostDeploy = m.migrations[j].PostDeploy
		}
	}
	return out, nil
}

// Latest is the version of the newest migration this binary carries.
func (m *Migrator) Latest() int64 { return m.latest }

// Required is the schema version this binary serves on: its newest
// migration that is not post-deploy. A schema at or beyond it serves,
// with the post-deploy migrations after it applied or not.
func (m *Migrator) Required() int64 { return m.required }

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
// one. The schema serves this binary when current >= Required().
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
