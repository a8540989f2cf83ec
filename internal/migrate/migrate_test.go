package migrate_test

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/database"

	"github.com/userd/userd/internal/migrate"
	"github.com/userd/userd/internal/testdb"
)

// versionRows lists the versions recorded in goose's table, one entry per
// row, as goose itself reads them.
func versionRows(t *testing.T, pool *pgxpool.Pool) []int64 {
	t.Helper()
	store, err := database.NewStore(database.DialectPostgres, goose.DefaultTablename)
	if err != nil {
		t.Fatal(err)
	}
	sqlDB := stdlib.OpenDBFromPool(pool)
	defer sqlDB.Close()
	rows, err := store.ListMigrations(context.Background(), sqlDB)
	if err != nil {
		t.Fatal(err)
	}
	var out []int64
	for _, r := range rows {
		out = append(out, r.Version)
	}
	return out
}

// recordVersion marks version as applied, as a newer userd release that
// migrated the database would have.
func recordVersion(t *testing.T, sqlDB *sql.DB, version int64) {
	t.Helper()
	store, err := database.NewStore(database.DialectPostgres, goose.DefaultTablename)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Insert(context.Background(), sqlDB, database.InsertRequest{Version: version}); err != nil {
		t.Fatal(err)
	}
}

// TestConcurrentUpAppliesEachMigrationOnce: replicas starting together all
// succeed, and each migration is applied exactly once, by one of them — on
// an empty database (no version table yet) and on one whose version table
// exists with migrations pending (the next release's first replicas).
func TestConcurrentUpAppliesEachMigrationOnce(t *testing.T) {
	t.Parallel()
	for name, setup := range map[string]func(t *testing.T) string{
		"empty": func(t *testing.T) string { return testdb.EmptyURL(t) },
		"pending": func(t *testing.T) string {
			url := testdb.URL(t)
			m, err := migrate.New(testdb.Connect(t, url))
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if err := m.DownTo(context.Background(), 0); err != nil {
				t.Fatal(err)
			}
			return url
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			concurrentUp(t, setup(t))
		})
	}
}

func concurrentUp(t *testing.T, url string) {
	const replicas = 4
	var (
		migrators []*migrate.Migrator
		start     = make(chan struct{})
		wg        sync.WaitGroup
		applied   [replicas]int
		errs      [replicas]error
	)
	for range replicas {
		pool, err := pgxpool.New(context.Background(), url+"&pool_max_conns=2")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		m, err := migrate.New(pool)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = m.Close() })
		migrators = append(migrators, m)
	}
	for i, m := range migrators {
		wg.Go(func() {
			<-start
			applied[i], errs[i] = m.Up(context.Background())
		})
	}
	close(start)
	wg.Wait()
	total, appliers := 0, 0
	for i := range replicas {
		if errs[i] != nil {
			t.Errorf("replica %d: %v", i, errs[i])
		}
		total += applied[i]
		if applied[i] > 0 {
			appliers++
		}
	}
	latest := migrators[0].Latest()
	// Versions need not be contiguous (numbers are assigned ahead, e.g. a
	// contract migration numbered after expand migrations still to come).
	versions := append([]int64{0}, embeddedVersions(t, migrators[0])...)
	want := len(versions) - 1
	if total != want || appliers != 1 {
		t.Errorf("replicas applied %v (%d in all, by %d replicas); want the %d migrations applied once, by one replica",
			applied, total, appliers, want)
	}
	pool := testdb.Connect(t, url)
	seen := map[int64]int{}
	for _, v := range versionRows(t, pool) {
		seen[v]++
	}
	for _, v := range versions {
		if seen[v] != 1 {
			t.Errorf("version %d recorded %d times, want once (all: %v)", v, seen[v], seen)
		}
	}
	if len(seen) != len(versions) {
		t.Errorf("versions recorded %v, want %v", seen, versions)
	}
	if cur, _, err := migrators[1].Versions(context.Background()); err != nil || cur != latest {
		t.Errorf("schema version %d (%v), want %d", cur, err, latest)
	}
}

// TestNewerSchemaIsLeftAlone: a binary on a database a newer release has
// migrated applies nothing, does not fail, and refuses to roll back what
// it does not know.
func TestNewerSchemaIsLeftAlone(t *testing.T) {
	t.Parallel()
	pool := testdb.Pool(t)
	ctx := context.Background()
	m, err := migrate.New(pool)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	sqlDB := stdlib.OpenDBFromPool(pool)
	defer sqlDB.Close()
	future := m.Latest() + 1
	recordVersion(t, sqlDB, future)

	if n, err := m.Up(ctx); err != nil || n != 0 {
		t.Errorf("Up on a newer schema: applied %d, %v; want 0, nil", n, err)
	}
	if cur, latest, err := m.Versions(ctx); err != nil || cur != future || latest != future-1 {
		t.Errorf("Versions = %d, %d, %v; want %d, %d", cur, latest, err, future, future-1)
	}
	for name, down := range map[string]func(context.Context) error{
		"Down":     m.Down,
		"DownTo 0": func(ctx context.Context) error { return m.DownTo(ctx, 0) },
	} {
		err := down(ctx)
		if err == nil || !strings.Contains(err.Error(), "newer than this binary") {
			t.Errorf("%s on a newer schema: %v, want a refusal", name, err)
		}
	}
	rows := versionRows(t, pool)
	if len(rows) != len(embeddedVersions(t, m))+2 || rows[0] != future {
		t.Errorf("version rows after the refusals: %v, want 0, every migration and %d", rows, future)
	}
}

// embeddedVersions lists the versions of the embedded migrations, in order.
func embeddedVersions(t *testing.T, m *migrate.Migrator) []int64 {
	t.Helper()
	st, err := m.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := make([]int64, len(st))
	for i, s := range st {
		out[i] = s.Version
	}
	return out
}

// TestSchemaVersionOfAnEmptyDatabase: reading the version creates nothing
// and says the schema is missing.
func TestSchemaVersionOfAnEmptyDatabase(t *testing.T) {
	t.Parallel()
	pool := testdb.Connect(t, testdb.EmptyURL(t))
	m, err := migrate.New(pool)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for range 2 {
		if _, err := m.SchemaVersion(context.Background()); !errors.Is(err, migrate.ErrNotMigrated) {
			t.Fatalf("SchemaVersion of an empty database: %v, want ErrNotMigrated", err)
		}
	}
}

// catalog describes what the migrations made in the public schema: each
// relation with its columns, and each function with its full definition.
func catalog(t *testing.T, pool *pgxpool.Pool) map[string]string {
	t.Helper()
	rows, err := pool.Query(context.Background(), `
		SELECT 'relation ' || c.relname,
		       coalesce(string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum), '')
		FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
		LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
		WHERE c.relname NOT LIKE 'goose_db_version%'
		GROUP BY c.relname
		UNION ALL
		SELECT 'function ' || p.oid::regprocedure::text, pg_get_functiondef(p.oid)
		FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace AND n.nspname = 'public'`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for rows.Next() {
		var name, def string
		if err := rows.Scan(&name, &def); err != nil {
			t.Fatal(err)
		}
		out[name] = def
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDownThenUpRestoresTheSchema: rolling back any number of migrations
// and applying them again gives the schema a fresh database gets, and
// rolling back all of them leaves nothing of userd's (a down section may
// leave a function body that answers as the older one did, db/README.md,
// but must not leave what nothing drops).
func TestDownThenUpRestoresTheSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.Pool(t)
	want := catalog(t, pool)
	m, err := migrate.New(pool)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for v := m.Latest() - 1; v >= 0; v-- {
		if err := m.DownTo(ctx, v); err != nil {
			t.Fatalf("down to %d: %v", v, err)
		}
		if v == 0 {
			if left := catalog(t, pool); len(left) != 0 {
				names := make([]string, 0, len(left))
				for name := range left {
					names = append(names, name)
				}
				t.Errorf("down to 0 left %v", names)
			}
		}
		if _, err := m.Up(ctx); err != nil {
			t.Fatalf("up from %d: %v", v, err)
		}
		got := catalog(t, pool)
		for name, def := range want {
			if got[name] != def {
				t.Errorf("down to %d and up again: %s is\n%s\nwant\n%s", v, name, got[name], def)
			}
		}
		for name := range got {
			if _, ok := want[name]; !ok {
				t.Errorf("down to %d and up again: %s is new", v, name)
			}
		}
	}
}
