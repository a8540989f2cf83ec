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
	"github.com/userd/userd/internal/feed"
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
// schema is at or beyond this binary's newest migration. Migrations are
// expand/contract, so a newer schema (a newer release has migrated during a
// rolling deploy) serves this binary; only an older one does not.
func (a *App) ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := a.pool.Ping(ctx); err != nil {
		return readyError("database unreachable")
	}
	cur, latest, err := a.migrator.Versions(ctx)
	switch {
	case errors.Is(err, migrate.ErrNotMigrated):
		return readyError("database schema not created: run userd migrate up")
	case err != nil:
		return readyError("cannot read the schema version")
	case cur < latest:
		return readyError(fmt.Sprintf("database schema version %d is older than this binary's %d: run userd migrate up", cur, latest))
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

// pruneInterval is how often old webhook message ids are forgotten.
const pruneInterval = time.Hour

// pruneWebhookEvents forgets message ids older than the retention, at
// start and then hourly. Every replica does it; the deletes are idempotent.
func (a *App) pruneWebhookEvents(ctx context.Context, svc interface {
	ForgetWebhookEvents(context.Context, time.Time) (int64, error)
}) {
	if a.cfg.WebhookRetention <= 0 {
		return
	}
	t := time.NewTicker(pruneInterval)
	defer t.Stop()
	for {
		n, err := svc.ForgetWebhookEvents(ctx, time.Now().Add(-a.cfg.WebhookRetention))
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			a.log.Warn("pruning webhook message ids", "err", err)
		case n > 0:
			a.log.Info("pruned webhook message ids", "count", n, "older_than", a.cfg.WebhookRetention.String())
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// pruneUserEvents deletes change feed events older than the retention, at
// start and then hourly. Every replica does it; the database lets one at a
// time through and the deletes are idempotent.
func (a *App) pruneUserEvents(ctx context.Context) {
	if a.cfg.FeedRetention <= 0 {
		return
	}
	t := time.NewTicker(pruneInterval)
	defer t.Stop()
	for {
		n, err := feed.Prune(ctx, a.store, time.Now().Add(-a.cfg.FeedRetention))
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			a.log.Warn("pruning change feed events", "err", err)
		case n > 0:
			a.log.Info("pruned change feed events", "count", n, "older_than", a.cfg.FeedRetention.String())
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
