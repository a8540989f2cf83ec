// Package telemetry holds userd's observability: Prometheus metrics (served
// on the ops listener), OpenTelemetry tracing (exported over OTLP when the
// standard OTEL_* variables name an endpoint) and the slog setup that puts
// trace ids in logs.
package telemetry

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/userd/userd/internal/feed"
	"github.com/userd/userd/internal/users"
)

// Metrics are userd's Prometheus collectors, on a registry of their own.
type Metrics struct {
	Registry *prometheus.Registry
	// GRPC instruments the gRPC server (per method and code).
	GRPC *GRPCMetrics

	httpRequests  *prometheus.CounterVec
	httpDuration  *prometheus.HistogramVec
	webhookEvents *prometheus.CounterVec
	webhookReject *prometheus.CounterVec
	credits       *prometheus.CounterVec
	usersCreated  *prometheus.CounterVec
	clerkBatches  prometheus.Histogram
	syncUsers     *prometheus.CounterVec
	syncOrgs      *prometheus.CounterVec
	syncMembers   *prometheus.CounterVec
	syncRuns      *prometheus.CounterVec
	syncLastOK    prometheus.Gauge
	syncDuration  prometheus.Gauge
	feedEvents    prometheus.Counter
	feedWatchers  prometheus.Gauge
	feedBehind    prometheus.Counter
	feedRejected  *prometheus.CounterVec

	fdLimit        prometheus.Gauge
	connMax        *prometheus.GaugeVec
	connOpen       *prometheus.GaugeVec
	connEvicted    *prometheus.CounterVec
	connRejected   *prometheus.CounterVec
	healthWatches  prometheus.Gauge
	healthRejected prometheus.Counter
}

// latencyBuckets suit a service whose calls take about a millisecond.
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}

// NewMetrics registers every collector.
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		GRPC:     NewGRPCMetrics(latencyBuckets),
		httpRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "userd_http_requests_total",
			Help: "HTTP requests by listener (api, webhook), method and status code.",
		}, []string{"listener", "method", "code"}),
		httpDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "userd_http_request_duration_seconds",
			Help:    "HTTP request latency by listener.",
			Buckets: latencyBuckets,
		}, []string{"listener"}),
		webhookEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "userd_webhook_events_total",
			Help: "Verified Clerk webhook deliveries by event type and outcome (created, updated, stale, deleted, ignored_deleted, duplicate, ignored, bad_payload, invalid_event, unavailable, internal).",
		}, []string{"type", "outcome"}),
		webhookReject: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "userd_webhook_rejected_total",
			Help: "Clerk webhook deliveries refused before their content was trusted, by reason (bad_signature, timestamp_out_of_tolerance, missing_headers, malformed_timestamp, body_too_large, unreadable_body, secret_not_configured). Only a sample of them is logged.",
		}, []string{"reason"}),
		credits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "userd_credits_total",
			Help: "Credits moved by committed ledger entries, by kind (deduct, grant, plan_bonus, initial); replays are not counted.",
		}, []string{"kind"}),
		usersCreated: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "userd_users_created_total",
			Help: "Users created, by source (api, webhook, sync).",
		}, []string{"source"}),
		clerkBatches: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "userd_clerk_batch_events",
			Help:    "Clerk events per group-committed batch transaction (webhook deliveries and Clerk profiles applied together).",
			Buckets: []float64{1, 2, 4, 8, 16, 32},
		}),
		syncUsers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "userd_clerk_sync_users_total",
			Help: "Users of periodic Clerk syncs by outcome (created, updated, unchanged, stale, ignored_deleted, deleted, failed).",
		}, []string{"outcome"}),
		syncOrgs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "userd_clerk_sync_organizations_total",
			Help: "Organizations of periodic Clerk syncs by outcome (created, updated, unchanged, stale, ignored_deleted, deleted, failed).",
		}, []string{"outcome"}),
		syncMembers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "userd_clerk_sync_memberships_total",
			Help: "Organization memberships of periodic Clerk syncs by outcome (created, updated, unchanged, stale, ignored_deleted, deleted, failed).",
		}, []string{"outcome"}),
		syncRuns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "userd_clerk_sync_runs_total",
			Help: "Periodic Clerk sync attempts of this replica by result (ok, failed, refused, busy: another replica was running one, not_due: one started less than an interval ago).",
		}, []string{"result"}),
		syncLastOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "userd_clerk_sync_last_success_timestamp_seconds",
			Help: "When this replica's last successful periodic Clerk sync ended (Unix seconds; 0: none yet).",
		}),
		syncDuration: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "userd_clerk_sync_last_duration_seconds",
			Help: "How long this replica's last periodic Clerk sync that ran took.",
		}),
		feedEvents: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "userd_feed_events_total",
			Help: "Change feed events this replica's poller read and fanned out to its watchers.",
		}),
		feedWatchers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "userd_feed_watchers",
			Help: "Open WatchUserEvents streams on this replica (gRPC and REST).",
		}),
		feedBehind: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "userd_feed_watchers_fell_behind_total",
			Help: "Times a watcher did not keep up with the live fan-out and was switched to reading the database at its own pace.",
		}),
		feedRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "userd_feed_watches_rejected_total",
			Help: "WatchUserEvents streams refused (RESOURCE_EXHAUSTED / 429) by the limit reached: caller (USERD_FEED_MAX_WATCHES_PER_USER or _PER_SERVICE) or server (USERD_FEED_MAX_WATCHES).",
		}, []string{"limit"}),
		fdLimit: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "userd_fd_limit",
			Help: "The file descriptor limit (soft RLIMIT_NOFILE) userd runs under; the listeners' connection limits are planned within it.",
		}),
		connMax: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "userd_listener_max_connections",
			Help: "Most connections a listener (grpc, api, webhook, ops) keeps open: its USERD_*_MAX_CONNS, lowered to fit the file descriptor limit.",
		}, []string{"listener"}),
		connOpen: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "userd_listener_connections",
			Help: "Connections open on a listener.",
		}, []string{"listener"}),
		connEvicted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "userd_listener_connections_evicted_total",
			Help: "Open connections a full listener closed to admit a new one, by whether a call on them had authenticated (proven=false: never authenticated; true: an idle keep-alive one).",
		}, []string{"listener", "proven"}),
		connRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "userd_listener_connections_rejected_total",
			Help: "New connections a full listener refused, because every open one had authenticated and was at work.",
		}, []string{"listener"}),
		healthWatches: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "userd_health_watches",
			Help: "grpc.health.v1.Health/Watch streams open without a service token (at most USERD_HEALTH_WATCH_MAX).",
		}),
		healthRejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "userd_health_watches_rejected_total",
			Help: "grpc.health.v1.Health/Watch streams without a service token refused with RESOURCE_EXHAUSTED (USERD_HEALTH_WATCH_MAX reached).",
		}),
	}
	m.Registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.GRPC, m.httpRequests, m.httpDuration, m.webhookEvents, m.webhookReject, m.credits, m.usersCreated, m.clerkBatches,
		m.syncUsers, m.syncOrgs, m.syncMembers, m.syncRuns, m.syncLastOK, m.syncDuration,
		m.feedEvents, m.feedWatchers, m.feedBehind, m.feedRejected,
		m.fdLimit, m.connMax, m.connOpen, m.connEvicted, m.connRejected, m.healthWatches, m.healthRejected,
	)
	return m
}

// Handler serves /metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}

// InstrumentHTTP counts and times the requests of one listener.
func (m *Metrics) InstrumentHTTP(listener string, h http.Handler) http.Handler {
	labels := prometheus.Labels{"listener": listener}
	return promhttp.InstrumentHandlerCounter(m.httpRequests.MustCurryWith(labels),
		promhttp.InstrumentHandlerDuration(m.httpDuration.MustCurryWith(labels), h))
}

// WebhookEvent counts one verified delivery.
func (m *Metrics) WebhookEvent(eventType, outcome string) {
	m.webhookEvents.WithLabelValues(eventType, outcome).Inc()
}

// WebhookRejected counts one delivery refused by verification.
func (m *Metrics) WebhookRejected(reason string) {
	m.webhookReject.WithLabelValues(reason).Inc()
}

// CreditsMoved implements users.Observer.
func (m *Metrics) CreditsMoved(kind users.TxKind, amount int64) {
	if amount < 0 {
		amount = -amount
	}
	m.credits.WithLabelValues(kindLabel(kind)).Add(float64(amount))
}

// UserCreated implements users.Observer.
func (m *Metrics) UserCreated(source string) {
	m.usersCreated.WithLabelValues(source).Inc()
}

// ClerkBatchApplied implements users.Observer.
func (m *Metrics) ClerkBatchApplied(events int) {
	m.clerkBatches.Observe(float64(events))
}

// ClerkSyncUsers implements clerksync.Recorder.
func (m *Metrics) ClerkSyncUsers(outcome string, n int64) {
	m.syncUsers.WithLabelValues(outcome).Add(float64(n))
}

// ClerkSyncOrganizations implements clerksync.Recorder.
func (m *Metrics) ClerkSyncOrganizations(outcome string, n int64) {
	m.syncOrgs.WithLabelValues(outcome).Add(float64(n))
}

// ClerkSyncMemberships implements clerksync.Recorder.
func (m *Metrics) ClerkSyncMemberships(outcome string, n int64) {
	m.syncMembers.WithLabelValues(outcome).Add(float64(n))
}

// ClerkSyncRun implements clerksync.RunRecorder.
func (m *Metrics) ClerkSyncRun(result string, d time.Duration) {
	m.syncRuns.WithLabelValues(result).Inc()
	if d > 0 {
		m.syncDuration.Set(d.Seconds())
	}
	if result == "ok" {
		m.syncLastOK.SetToCurrentTime()
	}
}

func kindLabel(k users.TxKind) string {
	switch k {
	case users.TxDeduct:
		return "deduct"
	case users.TxGrant:
		return "grant"
	case users.TxPlanBonus:
		return "plan_bonus"
	case users.TxInitial:
		return "initial"
	}
	return "other"
}

// FeedPolled implements feed.Observer.
func (m *Metrics) FeedPolled(events int) { m.feedEvents.Add(float64(events)) }

// FeedWatchers implements feed.Observer.
func (m *Metrics) FeedWatchers(delta int) { m.feedWatchers.Add(float64(delta)) }

// FeedWatcherFellBehind implements feed.Observer.
func (m *Metrics) FeedWatcherFellBehind() { m.feedBehind.Inc() }

var (
	_ users.Observer = (*Metrics)(nil)
	_ feed.Observer  = (*Metrics)(nil)
)

// FeedWatchRejected counts a WatchUserEvents stream refused by a limit
// ("caller" or "server").
func (m *Metrics) FeedWatchRejected(limit string) { m.feedRejected.WithLabelValues(limit).Inc() }

// FDLimit records the file descriptor limit.
func (m *Metrics) FDLimit(n uint64) { m.fdLimit.Set(float64(n)) }

// ListenerMax records a listener's connection limit.
func (m *Metrics) ListenerMax(listener string, n int) {
	m.connMax.WithLabelValues(listener).Set(float64(n))
}

// ConnOpened implements connlimit.Observer.
func (m *Metrics) ConnOpened(listener string) { m.connOpen.WithLabelValues(listener).Inc() }

// ConnClosed implements connlimit.Observer.
func (m *Metrics) ConnClosed(listener string) { m.connOpen.WithLabelValues(listener).Dec() }

// ConnEvicted implements connlimit.Observer.
func (m *Metrics) ConnEvicted(listener string, proven bool) {
	m.connEvicted.WithLabelValues(listener, strconv.FormatBool(proven)).Inc()
}

// ConnRejected implements connlimit.Observer.
func (m *Metrics) ConnRejected(listener string) { m.connRejected.WithLabelValues(listener).Inc() }

// HealthWatches reports an unauthenticated health watch starting (+1) or
// ending (-1).
func (m *Metrics) HealthWatches(delta int) { m.healthWatches.Add(float64(delta)) }

// HealthWatchRejected counts a health watch refused.
func (m *Metrics) HealthWatchRejected() { m.healthRejected.Inc() }
