package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/pprof"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/lifecycle"
	"github.com/userd/userd/internal/migrate"
)

// dbCheckInterval is how often the health of the database is probed.
const dbCheckInterval = time.Second

// opsRoutes serves the operations listener: liveness, readiness, metrics
// and, when enabled, pprof.
func (a *App) opsRoutes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeOpsJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := a.ready(r.Context()); err != nil {
			writeOpsJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "unavailable", "reason": err.Error()})
			return
		}
		writeOpsJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	mux.Handle("GET /metrics", a.metrics.Handler())
	if a.cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// readyError is a readiness failure safe to show on /readyz.
type readyError string

func (e readyError) Error() string { return string(e) }

// ready reports whether userd can serve: the database answers and its
// schema is at or beyond this binary's newest migration that is not
// post-deploy (migrate.Required): a post-deploy migration of this release
// may still be pending. Migrations are expand/contract, so a newer schema
// (a newer release has migrated during a rolling deploy) serves this
// binary; only an older one does not.
func (a *App) ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := a.pool.Ping(ctx); err != nil {
		return readyError("database unreachable")
	}
	cur, err := a.migrator.SchemaVersion(ctx)
	required := a.migrator.Required()
	switch {
	case errors.Is(err, migrate.ErrNotMigrated):
		return readyError("database schema not created: run userd migrate up")
	case err != nil:
		return readyError("cannot read the schema version")
	case cur < required:
		return readyError(fmt.Sprintf("database schema version %d is older than this binary's %d: run userd migrate up", cur, required))
	}
	return nil
}

// setServing sets the health of the server as a whole and of UserService.
func (a *App) setServing(s healthpb.HealthCheckResponse_ServingStatus) {
	a.health.SetServingStatus("", s)
	a.health.SetServingStatus(userdv1.UserService_ServiceDesc.ServiceName, s)
}

// monitorDatabase keeps grpc.health.v1 in step with the database: SERVING
// while it answers, NOT_SERVING while it does not.
func (a *App) monitorDatabase(ctx context.Context) {
	up := true
	t := time.NewTicker(dbCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pingCtx, cancel := context.WithTimeout(ctx, dbCheckInterval)
		err := a.pool.Ping(pingCtx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		switch {
		case err != nil && up:
			a.log.Warn("database unreachable: health NOT_SERVING", "err", err)
			a.setServing(healthpb.HealthCheckResponse_NOT_SERVING)
		case err == nil && !up:
			a.log.Info("database reachable again: health SERVING")
			a.setServing(healthpb.HealthCheckResponse_SERVING)
		}
		up = err == nil
	}
}

func writeOpsJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// pruneInterval is how often old webhook message ids and change feed
// events are forgotten.
const pruneInterval = time.Hour

// pruner is the background job that deletes what is older than retention
// (webhook message ids, change feed events), at start and then hourly.
// Every replica runs it; the deletes are idempotent (and the feed's let
// one replica at a time through).
func (a *App) pruner(what string, retention time.Duration, del func(ctx context.Context, before time.Time) (int64, error)) lifecycle.Service {
	return lifecycle.Every(pruneInterval, func(ctx context.Context) {
		n, err := del(ctx, time.Now().Add(-retention))
		switch {
		case ctx.Err() != nil:
		case err != nil:
			a.log.Warn("pruning "+what, "err", err)
		case n > 0:
			a.log.Info("pruned "+what, "count", n, "older_than", retention.String())
		}
	})
}
