package migrate_test

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/userd/userd/internal/migrate"
	"github.com/userd/userd/internal/testdb"
)

// fixture is a migration set: version -> (post-deploy?, table it creates).
// Each migration creates table tN (and drops it in its Down section), so
// the tables present show which migrations ran.
func fixture(postDeploy ...int64) func(versions ...int64) fstest.MapFS {
	return func(versions ...int64) fstest.MapFS {
		fsys := fstest.MapFS{}
		for _, v := range versions {
			body := fmt.Sprintf("-- +goose Up\nCREATE TABLE t%d (id int);\n\n-- +goose Down\nDROP TABLE t%d;\n", v, v)
			if slices.Contains(postDeploy, v) {
				body = migrate.PostDeployMarker + "\n" + body
			}
			fsys[fmt.Sprintf("%05d_m%d.sql", v, v)] = &fstest.MapFile{Data: []byte(body)}
		}
		return fsys
	}
}

func fixtureMigrator(t *testing.T, pool *pgxpool.Pool, fsys fstest.MapFS) *migrate.Migrator {
	t.Helper()
	sqlDB := stdlib.OpenDBFromPool(pool)
	t.Cleanup(func() { _ = sqlDB.Close() })
	m, err := migrate.NewFromFS(sqlDB, fsys)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// tables lists the fixture tables tN present, by N.
func tables(t *testing.T, pool *pgxpool.Pool) []int64 {
	t.Helper()
	rows, err := pool.Query(context.Background(), `
		SELECT substr(relname, 2)::bigint FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
		WHERE c.relkind = 'r' AND relname ~ '^t[0-9]+$' ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var v int64
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestPostDeployMigrations: what `userd serve` (UpForServe) applies, what it
// reports pending and whether the binary is then ready (schema version at
// or beyond Required), on each state a database can be in when a release
// starts; `userd migrate up` (Up) then applies everything.
//
// The releases: "previous" carries 1, 2 (as 00001..00009 today); "this" adds
// 3 (expand, as 00010) and 4 (post-deploy contract, as 00019); "newer" adds
// 5 (an expand migration of a later release). "pd-then-expand" is a release
// whose post-deploy migration 3 precedes an expand migration 4.
func TestPostDeployMigrations(t *testing.T) {
	t.Parallel()
	this := fixture(4)
	pdThenExpand := fixture(3)
	for _, tc := range []struct {
		name string
		// setup brings the empty database to its state with the
		// previous release's (or a newer one's) migrations.
		setup func(t *testing.T, pool *pgxpool.Pool)
		fsys  fstest.MapFS
		// What UpForServe does.
		applied   int
		fresh     bool
		pending   int64 // the pending post-deploy version reported, 0: none
		tables    []int64
		version   int64
		ready     bool
		upApplies int // then Up
	}{
		{
			name: "new database without the version table: everything", fsys: this(1, 2, 3, 4),
			setup:   func(*testing.T, *pgxpool.Pool) {},
			applied: 4, fresh: true, tables: []int64{1, 2, 3, 4}, version: 4, ready: true,
		},
		{
			name: "new database with only the version table (all rolled back): everything", fsys: this(1, 2, 3, 4),
			setup: func(t *testing.T, pool *pgxpool.Pool) {
				m := fixtureMigrator(t, pool, this(1, 2, 3, 4))
				mustUp(t, m)
				if err := m.DownTo(context.Background(), 0); err != nil {
					t.Fatal(err)
				}
			},
			applied: 4, fresh: true, tables: []int64{1, 2, 3, 4}, version: 4, ready: true,
		},
		{
			name: "database of the previous release (00009): the expand, not the contract", fsys: this(1, 2, 3, 4),
			setup:   func(t *testing.T, pool *pgxpool.Pool) { mustUp(t, fixtureMigrator(t, pool, this(1, 2))) },
			applied: 1, pending: 4, tables: []int64{1, 2, 3}, version: 3, ready: true, upApplies: 1,
		},
		{
			name: "contract pending (another replica expanded): nothing", fsys: this(1, 2, 3, 4),
			setup:   func(t *testing.T, pool *pgxpool.Pool) { mustUp(t, fixtureMigrator(t, pool, this(1, 2, 3))) },
			applied: 0, pending: 4, tables: []int64{1, 2, 3}, version: 3, ready: true, upApplies: 1,
		},
		{
			name: "already contracted: nothing", fsys: this(1, 2, 3, 4),
			setup:   func(t *testing.T, pool *pgxpool.Pool) { mustUp(t, fixtureMigrator(t, pool, this(1, 2, 3, 4))) },
			applied: 0, tables: []int64{1, 2, 3, 4}, version: 4, ready: true,
		},
		{
			name: "a newer release migrated (unknown version 5): nothing, ready", fsys: this(1, 2, 3, 4),
			setup:   func(t *testing.T, pool *pgxpool.Pool) { mustUp(t, fixtureMigrator(t, pool, this(1, 2, 3, 4, 5))) },
			applied: 0, tables: []int64{1, 2, 3, 4, 5}, version: 5, ready: true,
		},
		{
			name: "post-deploy before an expand: serve stops before it and is not ready", fsys: pdThenExpand(1, 2, 3, 4),
			setup:   func(t *testing.T, pool *pgxpool.Pool) { mustUp(t, fixtureMigrator(t, pool, pdThenExpand(1, 2))) },
			applied: 0, pending: 3, tables: []int64{1, 2}, version: 2, ready: false, upApplies: 2,
		},
		{
			name: "post-deploy before an expand, on a new database: everything", fsys: pdThenExpand(1, 2, 3, 4),
			setup:   func(*testing.T, *pgxpool.Pool) {},
			applied: 4, fresh: true, tables: []int64{1, 2, 3, 4}, version: 4, ready: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			pool := testdb.Connect(t, testdb.EmptyURL(t))
			tc.setup(t, pool)
			m := fixtureMigrator(t, pool, tc.fsys)
			res, err := m.UpForServe(ctx)
			if err != nil {
				t.Fatalf("UpForServe: %v", err)
			}
			if res.Applied != tc.applied || res.Fresh != tc.fresh || res.PendingPostDeploy.Version != tc.pending {
				t.Errorf("UpForServe = %+v; want applied %d, fresh %v, pending post-deploy %d", res, tc.applied, tc.fresh, tc.pending)
			}
			if tc.pending != 0 && (!res.PendingPostDeploy.PostDeploy || res.PendingPostDeploy.Name != fmt.Sprintf("%05d_m%d.sql", tc.pending, tc.pending)) {
				t.Errorf("pending post-deploy migration reported as %+v", res.PendingPostDeploy)
			}
			if got := tables(t, pool); !slices.Equal(got, tc.tables) {
				t.Errorf("tables after UpForServe: %v, want %v", got, tc.tables)
			}
			v, err := m.SchemaVersion(ctx)
			if err != nil || v != tc.version {
				t.Errorf("schema version after UpForServe: %d, %v; want %d", v, err, tc.version)
			}
			if ready := v >= m.Required(); ready != tc.ready {
				t.Errorf("ready (version %d >= required %d) = %v, want %v", v, m.Required(), ready, tc.ready)
			}
			// A second start finds the same and applies nothing.
			if again, err := m.UpForServe(ctx); err != nil || again.Applied != 0 || again.PendingPostDeploy.Version != tc.pending {
				t.Errorf("UpForServe again = %+v, %v; want nothing applied, pending %d", again, err, tc.pending)
			}
			n, err := m.Up(ctx)
			if err != nil || n != tc.upApplies {
				t.Errorf("Up = %d, %v; want %d", n, err, tc.upApplies)
			}
			if res, err := m.UpForServe(ctx); err != nil || res.Applied != 0 || res.PendingPostDeploy.Version != 0 {
				t.Errorf("UpForServe after Up = %+v, %v; want nothing applied or pending", res, err)
			}
			if v, err := m.SchemaVersion(ctx); err != nil || v < m.Latest() {
				t.Errorf("schema version after Up: %d, %v; want >= %d", v, err, m.Latest())
			}
		})
	}
}

// TestMarkerIsTheFirstLine: only a first line of exactly the marker makes
// a migration post-deploy; Required is the newest other one.
func TestMarkerIsTheFirstLine(t *testing.T) {
	t.Parallel()
	up := "-- +goose Up\nSELECT 1;\n"
	fsys := fstest.MapFS{
		"00001_a.sql": {Data: []byte(migrate.PostDeployMarker + "\r\n" + up)},
		"00002_b.sql": {Data: []byte("-- a comment\n" + migrate.PostDeployMarker + "\n" + up)},
		"00003_c.sql": {Data: []byte(migrate.PostDeployMarker + " please\n" + up)},
		"00004_d.sql": {Data: []byte("  " + migrate.PostDeployMarker + "  \n" + up)},
	}
	m, err := migrate.NewFromFS(&sql.DB{}, fsys)
	if err != nil {
		t.Fatal(err)
	}
	var got []bool
	for _, mg := range m.Migrations() {
		got = append(got, mg.PostDeploy)
	}
	if want := []bool{true, false, false, true}; !slices.Equal(got, want) {
		t.Errorf("post-deploy flags %v, want %v", got, want)
	}
	if m.Required() != 3 || m.Latest() != 4 {
		t.Errorf("Required, Latest = %d, %d; want 3, 4", m.Required(), m.Latest())
	}
}

// TestNothingToApplyTakesNoLock: with only a post-deploy migration pending,
// UpForServe returns at once while another process holds the migration
// lock (a `userd migrate up` applying the contract), rather than waiting
// for it; with something to apply it waits for the lock.
func TestNothingToApplyTakesNoLock(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testdb.Connect(t, testdb.EmptyURL(t))
	this := fixture(4)
	mustUp(t, fixtureMigrator(t, pool, this(1, 2, 3)))
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", migrate.LockID); err != nil {
		t.Fatal(err)
	}
	m := fixtureMigrator(t, pool, this(1, 2, 3, 4))
	if res, err := m.UpForServe(ctx); err != nil || res.Applied != 0 || res.PendingPostDeploy.Version != 4 {
		t.Fatalf("UpForServe with the lock held elsewhere = %+v, %v", res, err)
	}
	// With a migration to apply, it waits: bounded here by a context.
	m5 := fixtureMigrator(t, pool, fixture()(1, 2, 3, 4, 5))
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := m5.Up(short); err == nil {
		t.Fatal("Up applied while another session held the migration lock")
	}
	if got := tables(t, pool); !slices.Equal(got, []int64{1, 2, 3}) {
		t.Errorf("tables %v, want [1 2 3]", got)
	}
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_unlock($1)", migrate.LockID); err != nil {
		t.Fatal(err)
	}
	if n, err := m5.Up(ctx); err != nil || n != 2 {
		t.Errorf("Up once the lock is free = %d, %v; want 2", n, err)
	}
}

func mustUp(t *testing.T, m *migrate.Migrator) {
	t.Helper()
	if _, err := m.Up(context.Background()); err != nil {
		t.Fatal(err)
	}
}
