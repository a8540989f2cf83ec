// Package app wires userd together: it opens the database (through
// internal/database), applies migrations, builds the domain service, the
// transports and the background tasks (an internal/lifecycle group), binds
// the listeners and runs them until the context ends, then shuts down
// gracefully (run.go). cmd/userd calls it; end-to-end tests run it
// in-process.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/auth"
	"github.com/userd/userd/internal/billing"
	"github.com/userd/userd/internal/clerk"
	"github.com/userd/userd/internal/clerkhook"
	"github.com/userd/userd/internal/config"
	"github.com/userd/userd/internal/connlimit"
	"github.com/userd/userd/internal/console"
	"github.com/userd/userd/internal/database"
	"github.com/userd/userd/internal/feed"
	"github.com/userd/userd/internal/gateway"
	"github.com/userd/userd/internal/grpcapi"
	"github.com/userd/userd/internal/httpmw"
	"github.com/userd/userd/internal/lifecycle"
	"github.com/userd/userd/internal/migrate"
	"github.com/userd/userd/internal/pgembed"
	"github.com/userd/userd/internal/standby"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/stripeapi"
	"github.com/userd/userd/internal/stripehook"
	"github.com/userd/userd/internal/telemetry"
	"github.com/userd/userd/internal/upstream"
	"github.com/userd/userd/internal/users"
)

// Header limits. Authentication runs only once a call's message arrives,
// so whatever a connection may make userd hold before that is available to
// anyone who can reach the port.
const (
	// grpcMaxHeaderListSize bounds a call's metadata (HPACK accounting:
	// name + value + 32 bytes per field). With grpc-go's default, 16 MiB,
	// one connection sending 160 KB (40 streams repeating one HPACK-indexed
	// 2.9 KB entry 4,000 times) grew userd from 25 to 500 MiB, held until
	// the connection closed (TestHeaderLimits). The largest legitimate
	// metadata is an end user's Clerk session token — at most ~4 KB, since
	// browsers keep it in a 4 KB cookie — plus ~1 KB of pseudo-headers,
	// content-type, te, user-agent, grpc-timeout, x-request-id and W3C
	// tracing headers. 16 KiB leaves room for that three times over; it is
	// gRPC C-core's hard limit and twice grpc-java's (and grpc-go's
	// upcoming) 8 KiB default. A grpc-go client learns it from SETTINGS and
	// fails a larger call itself, before sending; otherwise the server
	// resets the stream, keeping none of it.
	grpcMaxHeaderListSize = 16 << 10
	// grpcMaxConcurrentStreams bounds the calls one connection has open at
	// once, and with it what one connection can pin: streams × header list.
	// RFC 9113 §6.5.2 recommends no less than 100; a userd call takes about
	// a millisecond, so 100 streams carry ~100,000 calls/s per connection,
	// and gRPC clients (grpc-go, grpc-java) queue calls beyond the limit
	// instead of failing them.
	grpcMaxConcurrentStreams = 100
	// HTTP/1.1 header limits (net/http's MaxHeaderBytes; it reads 4 KiB
	// more before answering 431). No amplification there (no HPACK: the
	// listeners do not speak HTTP/2), so they only need to fit the callers.
	// The API's callers include browsers, whose Cookie header may carry the
	// __session token and other cookies beside an Authorization header:
	// 32 KiB is what a default nginx in front would let through.
	apiMaxHeaderBytes = 32 << 10
	// Svix sends a handful of short headers (svix-id, svix-timestamp, one
	// signature per active secret); probes and Prometheus fewer still.
	webhookMaxHeaderBytes = 8 << 10
	opsMaxHeaderBytes     = 8 << 10
)

// App is a configured, listening userd.
type App struct {
	cfg config.Serve
	log *slog.Logger
	db  *database.DB
	// readCache is the read cache, nil when off (USERD_READ_CACHE).
	readCache *store.ReadCache
	pool      *pgxpool.Pool
	grpc      *grpc.Server
	health    *health.Server
	grpcLn    net.Listener
	// api is nil when USERD_HTTP_ADDR is "off".
	api   *http.Server
	apiLn net.Listener
	// webhook and hook are nil when USERD_WEBHOOK_ADDR is "off".
	webhook   *http.Server
	webhookLn net.Listener
	hook      *clerkhook.Handler
	// stripeHook serves POST /webhooks/stripe beside hook.
	stripeHook *stripehook.Handler
	// billing applies Stripe's billing to accounts (internal/billing).
	billing *billing.Service
	// ops is nil when USERD_OPS_ADDR is "off".
	ops   *http.Server
	opsLn net.Listener
	// console and consoleLn are nil unless USERD_CONSOLE_ADDR is set.
	console   *http.Server
	consoleLn net.Listener
	// sessions verifies Clerk session tokens (nil when not configured).
	sessions *auth.SessionVerifier
	metrics  *telemetry.Metrics
	users    *users.Service
	// migrator is built once: start-up migrates with it, /readyz reads the
	// schema version through it.
	migrator *migrate.Migrator
	store    *store.Store
	// clerkAPI is nil without CLERK_SECRET_KEY.
	clerkAPI *clerk.API
	// feed serves WatchUserEvents: this replica's one poller of the
	// change feed.
	feed *feed.Hub
	// background holds every task that runs beside the servers; shutdown
	// stops it, and waits for it, before the pool closes (run.go).
	background *lifecycle.Group
	// httpHandlers counts the HTTP handlers running (run.go).
	httpHandlers inflight
	// beforePoolClose, when set (by tests), is called just before the pool
	// closes.
	beforePoolClose func()
	// budget is each listener's connection limit within the file
	// descriptor limit; grpcLim is the gRPC listener's limiter (nil when
	// the listener is off).
	budget  connBudget
	grpcLim *connlimit.Listener
	// standbys serves reads from USERD_DATABASE_READ_URL; nil without it.
	standbys *standby.Router
}

// CheckSettings checks every setting before anything starts: what
// config.Serve.Validate checks, and the values only their own packages can
// parse (DATABASE_URL, USERD_SERVICE_TOKENS, CLERK_WEBHOOK_SECRET). Each
// message names the setting and never contains a secret.
func CheckSettings(cfg config.Serve) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.Database.URL != "" {
		// The parse error may quote the URL, password included: do not wrap it.
		if _, err := pgxpool.ParseConfig(cfg.Database.URL); err != nil {
			return errors.New("DATABASE_URL (--database-url) is not a valid PostgreSQL URL or DSN")
		}
	}
	if cfg.ReadURL != "" {
		if _, err := pgxpool.ParseConfig(cfg.ReadURL); err != nil {
			return errors.New("USERD_DATABASE_READ_URL (--database-read-url) is not a valid PostgreSQL URL or DSN")
		}
	}
	if _, err := auth.ParseServiceTokens(cfg.ServiceTokens); err != nil {
		return err
	}
	if _, err := clerkhook.ParseSecrets(cfg.WebhookSecret); err != nil {
		return err
	}
	if _, err := stripehook.ParseSecrets(cfg.StripeWebhookSecrets); err != nil {
		return err
	}
	if _, err := NewStripeAPI(cfg.Stripe); err != nil {
		return err
	}
	_, err := NewClerkAPI(cfg.ClerkAPI)
	return err
}

// ClerkRetryPolicy is the retry bounds of Backend API calls the settings
// describe (here, not in internal/config, which stays free of net/http).
func ClerkRetryPolicy(c config.ClerkAPI) upstream.Policy {
	return upstream.Policy{MaxRetryAfter: c.MaxRetryAfter, MaxElapsed: c.MaxRetryTime}
}

// NewClerkAPI builds the Backend API client the settings describe.
func NewClerkAPI(c config.ClerkAPI) (*clerk.API, error) {
	cfg := clerk.APIConfig{URL: c.APIURL, SecretKey: c.SecretKey}
	if c.APIRate != 0 {
		if c.APIRate < clerk.MinRateLimitRequests {
			return nil, fmt.Errorf("USERD_CLERK_API_RATE (--clerk-api-rate) must be 0 (the instance's limit) or at least %d, got %d",
				clerk.MinRateLimitRequests, c.APIRate)
		}
		cfg.RateLimit = clerk.RateLimit{Requests: c.APIRate, Window: 10 * time.Second}
	}
	return clerk.NewAPI(cfg)
}

// New binds the listeners, connects to the database, migrates it when
// configured to and builds the servers. Call Run to serve.
func New(ctx context.Context, cfg config.Serve, log *slog.Logger) (*App, error) {
	if err := CheckSettings(cfg); err != nil {
		return nil, err
	}
	a := &App{cfg: cfg, log: log}
	soft, hard, err := fdLimit()
	if err != nil {
		return nil, err
	}
	a.budget, err = planConnBudget(soft, int(cfg.Database.MaxConns)+standbyConns(cfg.StandbyReads), cfg.Limits, listenersOn{
		grpc: cfg.GRPCAddr != config.Off, http: cfg.HTTPAddr != config.Off,
		webhook: cfg.WebhookAddr != config.Off, ops: cfg.OpsAddr != config.Off,
	})
	if err != nil {
		return nil, err
	}
	logBudget(log, a.budget, hard, cfg.Limits)
	// The embedded database's data directory first: a second userd on it
	// (a second `make run`) is told that another userd uses it, not that
	// one of its ports is in use.
	var lock *pgembed.DirLock
	if cfg.Database.Embedded() {
		var err error
		if lock, err = pgembed.Lock(database.DataDir(cfg.Database)); err != nil {
			return nil, err
		}
	}
	// Then the listeners: an address in use is found before the database
	// starts (or the embedded one is started for nothing).
	if err := a.listen(); err != nil {
		a.closeListeners()
		lock.Release()
		return nil, err
	}
	db, err := database.OpenServe(ctx, cfg.Database, sessionTimeouts(cfg), log, lock)
	if err != nil {
		a.closeListeners()
		return nil, err
	}
	a.db, a.pool = db, db.Pool
	if err := a.init(ctx); err != nil {
		a.closeListeners()
		a.closeMigrator()
		db.Close()
		return nil, err
	}
	return a, nil
}

func (a *App) closeListeners() {
	for _, ln := range []net.Listener{a.grpcLn, a.apiLn, a.webhookLn, a.opsLn, a.consoleLn} {
		if ln != nil {
			_ = ln.Close()
		}
	}
}

func (a *App) closeMigrator() {
	if a.migrator != nil {
		_ = a.migrator.Close()
	}
}

// listen binds every listener that is not "off".
func (a *App) listen() error {
	for _, l := range []struct {
		setting, addr string
		ln            *net.Listener
	}{
		{"USERD_GRPC_ADDR", a.cfg.GRPCAddr, &a.grpcLn},
		{"USERD_HTTP_ADDR", a.cfg.HTTPAddr, &a.apiLn},
		{"USERD_WEBHOOK_ADDR", a.cfg.WebhookAddr, &a.webhookLn},
		{"USERD_OPS_ADDR", a.cfg.OpsAddr, &a.opsLn},
		{"USERD_CONSOLE_ADDR", a.cfg.ConsoleAddr, &a.consoleLn},
	} {
		if l.addr == config.Off || l.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			return fmt.Errorf("listen on %s %s: %w", l.setting, l.addr, err)
		}
		*l.ln = ln
	}
	return nil
}

// init readies the schema and builds the domain service and the servers of
// the bound listeners.
func (a *App) init(ctx context.Context) error {
	if err := a.prepareSchema(ctx); err != nil {
		return err
	}
	a.metrics = telemetry.NewMetrics()
	a.metrics.Registry.MustRegister(poolMetrics(a.pool))
	a.limitListeners()
	if err := a.openStandbys(); err != nil {
		return err
	}
	// The read cache (internal/store/readcache.go) serves the primary's
	// rows only: off with standbys.
	var cache *store.ReadCache
	defer func() { a.readCache = cache }()
	if a.cfg.ReadCache && a.standbys == nil && a.db != nil && a.db.Fence != nil {
		cache = store.NewReadCache(store.ReadCacheOptions{Entries: a.cfg.ReadCacheEntries})
		a.db.Fence.SetCache(cache)
		a.metrics.Registry.MustRegister(readCacheMetrics(cache))
	}
	a.store = store.New(a.pool, store.Options{AcquireTimeout: a.cfg.DBAcquireTimeout, Standbys: a.standbys,
		WriteLanes: a.cfg.Database.WriteLanes, DisableWriteBatching: a.cfg.Database.WriteLanes == 0, ReadCache: cache})
	a.users = users.NewService(a.store, users.Options{
		InitialCredits:      a.cfg.InitialCredits,
		KeepDeletedUserData: a.cfg.KeepDeletedUserData,
		OrgInitialCredits:   a.cfg.OrgInitialCredits,
		Observer:            a.metrics,
	})
	var err error
	if a.billing, err = a.newBilling(); err != nil {
		return err
	}
	feedOpts := feed.Options{
		PollInterval: a.cfg.FeedPollInterval,
		Heartbeat:    a.cfg.FeedHeartbeat,
		// Keys read from the database on first use: the schema may not
		// have them yet when userd starts without migrating.
		Cursors:  feed.NewCursors(a.store.FeedCursorKeys),
		Observer: a.metrics,
		Log:      a.log,
	}
	if cache != nil {
		feedOpts.Invalidator = cache
	}
	a.feed = feed.NewHub(a.store, feedOpts)
	authn, profiles, err := a.authentication(ctx)
	if err != nil {
		return err
	}
	a.clerkAPI = profiles.API
	userService := grpcapi.NewServer(a.users, profiles, grpcapi.Options{Feed: a.feed, Billing: a.billing, Orgs: grpcapi.OrgPolicy{
		SpendPermission: a.cfg.OrgSpendPermission, ManagePermission: a.cfg.OrgManagePermission,
	}}).WithWatchLimits(grpcapi.WatchLimits{
		Total: a.cfg.FeedMaxWatches, PerUser: a.cfg.FeedMaxWatchesPerUser, PerService: a.cfg.FeedMaxWatchesPerService,
		Rejected: a.metrics.FeedWatchRejected,
	})
	chain := grpcapi.Chain{
		Log: a.log, Authn: authn, RequestTimeout: a.cfg.RequestTimeout, AccessLogReads: a.cfg.AccessLogReads,
		Metrics: a.metrics.GRPC.UnaryServerInterceptor(), StreamMetrics: a.metrics.GRPC.StreamServerInterceptor(),
		StandbyReads: a.standbys != nil,
	}
	if cache != nil {
		chain.ReadCache = a.store
	}
	interceptors, streamInterceptors := chain.Interceptors(), chain.StreamInterceptors()
	healthLimit := grpcapi.HealthWatchLimit(authn, a.cfg.HealthWatchMax, a.metrics)
	a.newGRPCServer(userService, interceptors, append([]grpc.StreamServerInterceptor{healthLimit}, streamInterceptors...))
	if a.apiLn != nil {
		if err := a.newAPIServer(ctx, userService, interceptors, streamInterceptors); err != nil {
			return err
		}
	}
	if a.webhookLn != nil {
		if err := a.newWebhookServer(); err != nil {
			return err
		}
	}
	if a.opsLn != nil {
		a.ops = a.newHTTPServer(a.opsRoutes(), opsMaxHeaderBytes)
	}
	if a.consoleLn != nil {
		if err := a.newConsoleServer(); err != nil {
			return err
		}
	}
	a.background = a.backgroundTasks()
	return nil
}

// sessionTimeouts are the PostgreSQL session bounds of every connection.
func sessionTimeouts(cfg config.Serve) store.SessionTimeouts {
	return store.SessionTimeouts{
		Statement:         cfg.DBStatementTimeout,
		Lock:              cfg.DBLockTimeout,
		IdleInTransaction: cfg.DBIdleInTransactionTimeout,
	}
}

// openStandbys opens the pools of USERD_DATABASE_READ_URL and the router
// that reads from them (internal/standby), when it is set.
func (a *App) openStandbys() error {
	if !a.cfg.StandbyReads.Enabled() {
		return nil
	}
	nodes, err := a.db.OpenStandbys(a.cfg.ReadURL, a.cfg.ReadMaxConns, sessionTimeouts(a.cfg))
	if err != nil {
		return err
	}
	a.standbys = standby.New(a.pool, nodes, standby.Options{
		MaxLag: a.cfg.ReadMaxLag, TokenWait: a.cfg.ReadTokenWait, AcquireTimeout: a.cfg.DBAcquireTimeout, Log: a.log,
	})
	a.metrics.Registry.MustRegister(standbyMetrics(a.standbys))
	names := make([]string, len(nodes))
	for i, n := range nodes {
		names[i] = n.Name
	}
	a.log.Info("reads may be served by standbys", "standbys", strings.Join(names, ","),
		"max_lag", a.cfg.ReadMaxLag.String(), "token_wait", a.cfg.ReadTokenWait.String())
	return nil
}

// standbyConns is how many database connections the standby pools may
// open in all, for the file descriptor budget.
func standbyConns(r config.StandbyReads) int {
	if !r.Enabled() {
		return 0
	}
	c, err := pgconn.ParseConfig(r.ReadURL)
	if err != nil {
		return 0 // CheckSettings reports it
	}
	return (1 + len(c.Fallbacks)) * int(r.ReadMaxConns)
}

// prepareSchema builds the migrator (/readyz reads the schema version
// through it) and, when configured to, migrates.
func (a *App) prepareSchema(ctx context.Context) error {
	m, err := migrate.New(a.pool)
	if err != nil {
		return err
	}
	a.migrator = m
	if !a.cfg.AutoMigrate {
		return nil
	}
	return migrateUp(ctx, m, a.log)
}

// newGRPCServer builds the gRPC server: UserService, health, reflection.
func (a *App) newGRPCServer(userService *grpcapi.Server, interceptors []grpc.UnaryServerInterceptor, streamInterceptors []grpc.StreamServerInterceptor) {
	l := a.cfg.Limits
	opts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(interceptors...),
		grpc.ChainStreamInterceptor(streamInterceptors...),
		grpc.MaxRecvMsgSize(1 << 20),
		grpc.MaxHeaderListSize(grpcMaxHeaderListSize),
		grpc.MaxConcurrentStreams(grpcMaxConcurrentStreams),
		// A client pinging more often than MinTime is disconnected
		// (GOAWAY ENHANCE_YOUR_CALM); pings without a call open are
		// allowed, as grpc-go clients send them with
		// PermitWithoutStream. Idle connections close after
		// MaxConnectionIdle, and every connection after MaxConnectionAge
		// plus the grace for its calls, so that no stream — a health
		// watch that needs no credentials included — holds a connection
		// (and its file descriptor) forever.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: l.GRPCKeepaliveMinTime, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle:     l.GRPCMaxConnectionIdle,
			MaxConnectionAge:      l.GRPCMaxConnectionAge,
			MaxConnectionAgeGrace: l.GRPCMaxConnectionAgeGrace,
			Time:                  l.GRPCKeepaliveTime,
			Timeout:               l.GRPCKeepaliveTimeout,
		}),
		// A connection that does not complete the HTTP/2 handshake in
		// time is closed (grpc-go's default is 120 s).
		grpc.ConnectionTimeout(l.HTTPReadHeaderTimeout),
		// Reused workers keep their grown stacks: a fresh goroutine per
		// call spent ~10% of the CPU growing its stack (pprof, make bench).
		// A call holds its worker while it waits for the database, and
		// grpc runs calls beyond the workers on fresh goroutines, so there
		// is one per database connection plus a few per core (with only the
		// latter, stack growth was back at 15% of GetUser at 32 clients).
		grpc.NumStreamWorkers(uint32(int(a.cfg.Database.MaxConns) + 4*runtime.GOMAXPROCS(0))),
	}
	// Instrumentation costs CPU on every call (~7% for the pgx tracer
	// alone): only when there is somewhere to send the spans.
	if telemetry.TracingEnabled() {
		opts = append(opts, grpc.StatsHandler(otelgrpc.NewServerHandler()))
	}
	if a.grpcLim != nil {
		// Puts each call's connection in its context, for the
		// authentication to mark it proven (internal/connlimit).
		opts = append(opts, grpc.StatsHandler(connlimit.StatsHandler{
			L: a.grpcLim, StartedPrefix: "/" + userdv1.UserService_ServiceDesc.ServiceName + "/",
		}))
	}
	a.grpc = grpc.NewServer(opts...)
	userdv1.RegisterUserServiceServer(a.grpc, userService)
	a.health = health.NewServer()
	// Known before the first call can arrive: the database answered when
	// it was opened; monitorDatabase follows it from then on.
	a.setServing(healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(a.grpc, a.health)
	reflection.Register(a.grpc)
	a.metrics.GRPC.InitializeMetrics(a.grpc)
}

// newAPIServer builds the REST gateway, which calls userService through the
// same interceptor chain as gRPC.
func (a *App) newAPIServer(ctx context.Context, userService *grpcapi.Server,
	interceptors []grpc.UnaryServerInterceptor, streamInterceptors []grpc.StreamServerInterceptor,
) error {
	api, err := gateway.New(ctx, grpcapi.Chained(userService, interceptors, streamInterceptors), gateway.Config{
		CORSOrigins: a.cfg.CORSOriginList(), AuthorizedParties: a.cfg.Parties(), Version: a.cfg.Version,
	})
	if err != nil {
		return fmt.Errorf("REST gateway: %w", err)
	}
	a.api = a.newHTTPServer(httpmw.Wrap(api, httpmw.Options{
		Listener: "api", Log: a.log, Metrics: a.metrics, AccessLog: true,
		// REST calls are logged by the gRPC layer, with the principal.
		Skip: func(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, "/v1/") },
	}), apiMaxHeaderBytes)
	return nil
}

// newWebhookServer builds the webhook endpoints: Clerk's and Stripe's.
func (a *App) newWebhookServer() error {
	secrets, err := clerkhook.ParseSecrets(a.cfg.WebhookSecret)
	if err != nil {
		return err
	}
	a.hook, err = clerkhook.New(clerkhook.Config{
		Secrets: secrets, Tolerance: a.cfg.WebhookTolerance, Timeout: a.cfg.RequestTimeout, Recorder: a.metrics,
	}, a.users, a.log)
	if err != nil {
		return err
	}
	stripeSecrets, err := stripehook.ParseSecrets(a.cfg.StripeWebhookSecrets)
	if err != nil {
		return err
	}
	a.stripeHook = stripehook.New(stripehook.Config{
		Secrets: stripeSecrets, Tolerance: a.cfg.StripeTolerance, Timeout: a.cfg.RequestTimeout,
		Recorder: telemetry.NewStripeMetrics(a.metrics),
	}, a.billing, a.log)
	routes := http.NewServeMux()
	routes.Handle("POST "+clerkhook.Path, a.hook)
	routes.Handle("POST "+stripehook.Path, a.stripeHook)
	// The handlers log each delivery themselves, with its id.
	a.webhook = a.newHTTPServer(provenBy2xx(httpmw.Wrap(routes, httpmw.Options{
		Listener: "webhook", Log: a.log, Metrics: a.metrics,
	})), webhookMaxHeaderBytes)
	return nil
}

// newConsoleServer builds the operator console (internal/console).
func (a *App) newConsoleServer() error {
	if a.sessions == nil {
		return errors.New("USERD_CONSOLE_ADDR needs CLERK_JWKS_URL or CLERK_JWT_KEY: operators sign in with Clerk session tokens")
	}
	srv, err := console.New(console.Config{
		Verifier: a.sessions, OperatorsOrg: a.cfg.ConsoleOrg, SessionKey: a.cfg.ConsoleSessionKey,
		SessionTTL: a.cfg.ConsoleSessionTTL, Timeout: a.cfg.RequestTimeout, Log: a.log,
	}, a.users, users.NewConsole(a.store))
	if err != nil {
		return err
	}
	a.console = a.newHTTPServer(httpmw.Wrap(srv.Handler(), httpmw.Options{
		Listener: "console", Log: a.log, Metrics: a.metrics, AccessLog: true,
	}), apiMaxHeaderBytes)
	return nil
}

// ConsoleAddr is the address the console listener is bound to, or nil when
// it is off.
func (a *App) ConsoleAddr() net.Addr {
	if a.consoleLn == nil {
		return nil
	}
	return a.consoleLn.Addr()
}

// OpsAddr is the address the operations listener is bound to, or nil when
// it is off.
func (a *App) OpsAddr() net.Addr {
	if a.opsLn == nil {
		return nil
	}
	return a.opsLn.Addr()
}

// authentication builds the authenticator and the profile source of end
// users' EnsureUser from the configuration.
func (a *App) authentication(ctx context.Context) (*auth.Authenticator, clerk.Profiles, error) {
	tokens, err := auth.ParseServiceTokens(a.cfg.ServiceTokens)
	if err != nil {
		return nil, clerk.Profiles{}, err
	}
	var sessions *auth.SessionVerifier
	defer func() { a.sessions = sessions }()
	scfg := auth.SessionConfig{
		PEMKey:            a.cfg.JWTKey,
		JWKSURL:           a.cfg.JWKSURL,
		MinRefresh:        a.cfg.JWKSMinRefresh,
		Issuer:            a.cfg.Issuer,
		AuthorizedParties: a.cfg.Parties(),
		Leeway:            a.cfg.JWTLeeway,
		MaxLifetime:       a.cfg.JWTMaxLifetime,
	}
	if scfg.Enabled() {
		if sessions, err = auth.NewSessionVerifier(ctx, scfg); err != nil {
			return nil, clerk.Profiles{}, err
		}
	} else {
		a.log.Info("end users cannot sign in: set CLERK_JWKS_URL or CLERK_JWT_KEY to accept Clerk session tokens")
	}
	var profiles clerk.Profiles
	if a.cfg.SecretKey != "" {
		if profiles.API, err = NewClerkAPI(a.cfg.ClerkAPI); err != nil {
			return nil, clerk.Profiles{}, err
		}
	}
	return auth.NewAuthenticator(tokens, sessions, a.log), profiles, nil
}

// newHTTPServer returns a plaintext HTTP/1.1 server with timeouts that keep
// slow or idle clients from holding connections and a bound on the bytes of
// request headers; its connections are known to the listener's limiter.
func (a *App) newHTTPServer(h http.Handler, maxHeaderBytes int) *http.Server {
	// Only HTTP/1.1, said explicitly: unencrypted HTTP/2 (h2c) would bring
	// HPACK-compressed headers, and with them amplification, to listeners
	// whose callers have no use for it.
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	return &http.Server{
		Handler:           h,
		Protocols:         &protocols,
		ReadHeaderTimeout: a.cfg.HTTPReadHeaderTimeout,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       a.cfg.HTTPIdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
		ConnContext:       connlimit.ConnContext,
		ConnState:         connlimit.HTTPConnState,
	}
}

// WebhookAddr is the address the webhook listener is bound to, or nil when
// it is off.
func (a *App) WebhookAddr() net.Addr {
	if a.webhookLn == nil {
		return nil
	}
	return a.webhookLn.Addr()
}

// ReadCache is the read cache (USERD_READ_CACHE), nil when off.
func (a *App) ReadCache() *store.ReadCache { return a.readCache }

// GRPCAddr is the address the gRPC listener is bound to, or nil when it
// is off.
func (a *App) GRPCAddr() net.Addr {
	if a.grpcLn == nil {
		return nil
	}
	return a.grpcLn.Addr()
}

// HTTPAddr is the address the HTTP API listener is bound to, or nil when
// it is off.
func (a *App) HTTPAddr() net.Addr {
	if a.apiLn == nil {
		return nil
	}
	return a.apiLn.Addr()
}

// RequestTimeout is the bound of every call and webhook delivery.
func (a *App) RequestTimeout() time.Duration { return a.cfg.RequestTimeout }

// migrateUp applies the migrations `userd serve` may apply (all but
// pending post-deploy ones on a database in use; see internal/migrate)
// under the migration lock, so replicas starting together apply each one
// once, and logs the outcome — and, once, a post-deploy migration left
// pending with the command that applies it.
func migrateUp(ctx context.Context, m *migrate.Migrator, log *slog.Logger) error {
	res, err := m.UpForServe(ctx)
	if err != nil {
		return err
	}
	cur, latest, err := m.Versions(ctx)
	if err != nil {
		return err
	}
	for _, r := range res.Ran {
		log.Info("migration applied", "migration", r.Name, "version", r.Version, "post_deploy", r.PostDeploy, "took_ms", r.Took.Milliseconds())
	}
	log.Info("database schema ready", "applied", res.Applied, "version", cur, "binary_version", latest, "new_database", res.Fresh)
	if pd := res.PendingPostDeploy; pd.Version != 0 {
		log.Warn("post-deploy migration pending: once every replica runs this release, apply it with `userd migrate up` "+
			"(this release serves before and after it; the previous release stops working once it is applied)",
			"migration", pd.Name, "version", pd.Version, "command", "userd migrate up")
	}
	if cur > latest {
		log.Info("the database schema is newer than this binary: a newer release migrated it; "+
			"migrations are expand/contract, so this binary serves on it", "version", cur, "binary_version", latest)
	}
	return nil
}

// NewStripeAPI builds the Stripe API client the settings describe, or nil
// without STRIPE_SECRET_KEY.
func NewStripeAPI(c config.Stripe) (*stripeapi.Client, error) {
	if c.StripeSecretKey == "" {
		return nil, nil
	}
	return stripeapi.New(stripeapi.Config{
		SecretKey: c.StripeSecretKey, URL: c.StripeAPIURL, Rate: c.StripeAPIRate,
		Retry: upstream.Policy{MaxElapsed: c.StripeMaxRetryTime},
	})
}

// newBilling builds the billing domain over the store, the users service
// and Stripe's API.
func (a *App) newBilling() (*billing.Service, error) {
	api, err := NewStripeAPI(a.cfg.Stripe)
	if err != nil {
		return nil, err
	}
	var s billing.Stripe
	if api != nil {
		s = api
	} else {
		a.log.Info("Stripe API calls are off: set STRIPE_SECRET_KEY to apply subscriptions and create customers")
	}
	return billing.NewService(a.store.Billing(), s, a.users, billing.Options{Log: a.log,
		MaxLocked: billing.MaxLockedFor(int(a.cfg.Database.MaxConns))}), nil
}
