// Package database opens userd's PostgreSQL: the server at DATABASE_URL or,
// when it is empty, the embedded one (internal/pgembed) that userd starts
// and stops itself. internal/app and the one-off commands in cmd/userd open
// it here and close it last, once nothing uses the pool any more.
package database

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/exaring/otelpgx"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/multitracer"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/userd/userd/internal/config"
	"github.com/userd/userd/internal/pgembed"
	"github.com/userd/userd/internal/standby"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/telemetry"
)

// DB is an open pool and, without DATABASE_URL, the embedded server
// behind it.
type DB struct {
	Pool     *pgxpool.Pool
	embedded *pgembed.Server
	log      *slog.Logger
	// standbys are the pools OpenStandbys opened, closed with Pool.
	standbys []*pgxpool.Pool
	// Fence traces every statement of Pool for the read cache's write
	// fence (internal/store/readcache.go); inert until given a cache.
	Fence *store.FenceTracer
}

// Open connects to DATABASE_URL, or, when it is empty, to the embedded
// PostgreSQL: the one of the userd running on USERD_DATA_DIR if there is
// one (for the commands run beside `userd serve`: sync-clerk, erase-user,
// migrate; it stays that userd's, Close never stops it), else one it
// starts. It checks that the database answers. Every connection of the
// pool gets the session timeouts (none for `userd migrate`, whose
// migrations may legitimately run long).
func Open(ctx context.Context, cfg config.Database, session store.SessionTimeouts, log *slog.Logger) (*DB, error) {
	return open(ctx, cfg, session, log, nil, true)
}

// OpenServe is Open for `userd serve`, which never uses another userd's
// database: lock is the data directory's lock (pgembed.Lock) when serve
// took it before binding its ports, or nil.
func OpenServe(ctx context.Context, cfg config.Database, session store.SessionTimeouts, log *slog.Logger, lock *pgembed.DirLock) (*DB, error) {
	return open(ctx, cfg, session, log, lock, false)
}

// DataDir is the embedded database's data directory.
func DataDir(cfg config.Database) string {
	if cfg.DataDir != "" {
		return cfg.DataDir
	}
	return pgembed.DefaultDataDir()
}

// EmbeddedURL is the URL of the embedded database of the userd running on
// USERD_DATA_DIR (password included), for `userd db-url`.
func EmbeddedURL(ctx context.Context, cfg config.Database) (string, error) {
	r, err := pgembed.Attach(ctx, DataDir(cfg))
	if err != nil {
		return "", err
	}
	return r.URL, nil
}

// Embedded reports whether db runs its own embedded server.
func (db *DB) Embedded() bool { return db.embedded != nil }

func open(ctx context.Context, cfg config.Database, session store.SessionTimeouts, log *slog.Logger,
	lock *pgembed.DirLock, attach bool,
) (*DB, error) {
	db := &DB{log: log}
	url := cfg.URL
	if cfg.Embedded() {
		dir := DataDir(cfg)
		logFile, err := openPGLog(dir)
		if err != nil {
			lock.Release()
			return nil, err
		}
		log.Info("DATABASE_URL is empty: starting the embedded PostgreSQL", "data_dir", dir)
		start := time.Now()
		db.embedded, err = pgembed.Start(ctx, pgembed.Config{DataDir: dir, BinDir: cfg.PGBinDir, Log: logFile, Lock: lock})
		if errors.Is(err, pgembed.ErrInUse) && attach {
			// A userd serves on this data directory: use its database
			// (it stays that userd's; this command never stops it).
			_ = logFile.Close()
			running, aerr := pgembed.Attach(ctx, dir)
			if aerr != nil {
				return nil, fmt.Errorf("%w; and its database cannot be used: %w", err, aerr)
			}
			log.Info("USERD_DATA_DIR is used by a running userd: using its embedded PostgreSQL",
				"pid", running.PID, "data_dir", dir)
			return connect(ctx, db, running.URL, cfg, session)
		}
		if err != nil {
			return nil, err
		}
		if pid := db.embedded.AdoptedPID(); pid != 0 {
			log.Warn("adopted the embedded PostgreSQL left running by a userd that did not stop (killed or crashed); "+
				"this userd stops it when it stops", "pid", pid, "data_dir", dir)
		}
		log.Info("embedded PostgreSQL ready", "took", time.Since(start).Round(time.Millisecond).String(),
			"log", filepath.Join(dir, "postgres.log"))
		url = db.embedded.URL
	}
	return connect(ctx, db, url, cfg, session)
}

// connect opens db's pool on url and checks that the database answers.
func connect(ctx context.Context, db *DB, url string, cfg config.Database, session store.SessionTimeouts) (*DB, error) {
	pcfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		db.Close()
		return nil, errors.New("DATABASE_URL is not a valid PostgreSQL URL")
	}
	pcfg.MaxConns = cfg.MaxConns
	session.Apply(pcfg.ConnConfig)
	store.DisableJIT(pcfg.ConnConfig)
	store.ConfigureFailover(pcfg)
	db.Fence = &store.FenceTracer{}
	pcfg.ConnConfig.Tracer = db.Fence
	if telemetry.TracingEnabled() {
		pcfg.ConnConfig.Tracer = multitracer.New(otelpgx.NewTracer(), db.Fence)
	}
	if db.Pool, err = pgxpool.NewWithConfig(ctx, pcfg); err != nil {
		db.Close()
		return nil, fmt.Errorf("open database pool: %w", err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := db.Pool.Ping(pingCtx); err != nil {
		db.Close()
		return nil, fmt.Errorf("connect to database %s@%s/%s: %w",
			pcfg.ConnConfig.User, hosts(pcfg.ConnConfig), pcfg.ConnConfig.Database, err)
	}
	return db, nil
}

func openPGLog(dataDir string) (*os.File, error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("USERD_DATA_DIR %s: %w (DATABASE_URL is empty, so userd runs its own PostgreSQL there: set USERD_DATA_DIR to a writable directory, or DATABASE_URL to use your server)", dataDir, err)
	}
	f, err := os.OpenFile(filepath.Join(dataDir, "postgres.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open embedded PostgreSQL log: %w", err)
	}
	if err := f.Chmod(0o600); err != nil { // the server's log is userd's alone
		f.Close()
		return nil, fmt.Errorf("embedded PostgreSQL log: %w", err)
	}
	return f, nil
}

// Close closes the pool, which waits for every connection in use to be
// released, and then stops the embedded server, if any. Callers stop
// everything that uses the pool first: a call made after Close fails with
// "closed pool".
func (db *DB) Close() {
	for _, p := range db.standbys {
		p.Close()
	}
	if db.Pool != nil {
		db.Pool.Close()
	}
	if db.embedded != nil {
		if err := db.embedded.Stop(); err != nil {
			db.log.Error("stopping the embedded PostgreSQL", "err", err)
		} else {
			db.log.Info("embedded PostgreSQL stopped")
		}
	}
}

// OpenStandbys opens one pool of at most maxConns connections per host of
// readURL (USERD_DATABASE_READ_URL: one host, or several as in a
// multi-host DATABASE_URL), for internal/standby to read from. Each pool
// reaches its host alone, so that each standby's lag is measured and
// judged by itself; target_session_attrs is ignored (every host is
// checked to be in recovery before it serves a read). The pools connect
// on first use: a standby that is down at start-up is only skipped.
// Close closes them.
func (db *DB) OpenStandbys(readURL string, maxConns int32, session store.SessionTimeouts) ([]standby.Node, error) {
	pcfg, err := pgxpool.ParseConfig(readURL)
	if err != nil {
		return nil, errors.New("USERD_DATABASE_READ_URL is not a valid PostgreSQL URL or DSN")
	}
	pcfg.MaxConns = maxConns
	pcfg.ConnConfig.ValidateConnect = nil
	session.Apply(pcfg.ConnConfig)
	store.DisableJIT(pcfg.ConnConfig)
	if telemetry.TracingEnabled() {
		pcfg.ConnConfig.Tracer = otelpgx.NewTracer()
	}
	// Every address the URL names, in order; sslmode=prefer lists each
	// host twice (with TLS, then without): those stay together.
	type target struct {
		name  string
		tries []*pgconn.FallbackConfig
	}
	var targets []*target
	all := append([]*pgconn.FallbackConfig{{Host: pcfg.ConnConfig.Host, Port: pcfg.ConnConfig.Port, TLSConfig: pcfg.ConnConfig.TLSConfig}},
		pcfg.ConnConfig.Fallbacks...)
	for _, f := range all {
		name := net.JoinHostPort(f.Host, strconv.Itoa(int(f.Port)))
		if len(targets) == 0 || targets[len(targets)-1].name != name {
			targets = append(targets, &target{name: name})
		}
		t := targets[len(targets)-1]
		t.tries = append(t.tries, f)
	}
	var nodes []standby.Node
	for _, t := range targets {
		c := pcfg.Copy()
		c.ConnConfig.Host, c.ConnConfig.Port, c.ConnConfig.TLSConfig = t.tries[0].Host, t.tries[0].Port, t.tries[0].TLSConfig
		c.ConnConfig.Fallbacks = t.tries[1:]
		pool, err := pgxpool.NewWithConfig(context.Background(), c)
		if err != nil {
			return nil, fmt.Errorf("open standby pool %s: %w", t.name, err)
		}
		db.standbys = append(db.standbys, pool)
		nodes = append(nodes, standby.Node{Name: t.name, Pool: pool})
	}
	return nodes, nil
}

// hosts lists every host:port a connection config tries, in order (a
// multi-host DATABASE_URL has fallbacks after the first).
func hosts(c *pgx.ConnConfig) string {
	list := []string{net.JoinHostPort(c.Host, strconv.Itoa(int(c.Port)))}
	for _, f := range c.Fallbacks {
		if hp := net.JoinHostPort(f.Host, strconv.Itoa(int(f.Port))); hp != list[len(list)-1] {
			list = append(list, hp)
		}
	}
	return strings.Join(list, ",")
}
