// Package config holds userd's settings. Every setting is a field with a
// flag name, an environment variable, a default and help text in its struct
// tags (read by kong in cmd/userd); Validate checks what tags cannot.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/userd/userd/internal/users"
)

// Database says how to reach PostgreSQL.
type Database struct {
	URL      string `name:"database-url" env:"DATABASE_URL" help:"PostgreSQL URL, e.g. postgres://user:pass@host:5432/userd?sslmode=disable; for a failover formation, every node and the writable one: postgres://user:pass@a:5432,b:5432/userd?target_session_attrs=read-write (or host=a,b ...). Empty: run an embedded PostgreSQL in USERD_DATA_DIR."`
	MaxConns int32  `name:"db-max-conns" env:"USERD_DB_MAX_CONNS" default:"16" help:"Maximum open database connections."`
	// WriteLanes: see internal/store/writebatch.go.
	WriteLanes int    `name:"db-write-lanes" env:"USERD_DB_WRITE_LANES" default:"4" help:"Group commit of credit and plan writes: how many batch transactions may run at once (each commits the concurrent calls of its accounts together; one account's calls always share a lane; a batch waits at most 200 ms, or USERD_DB_LOCK_TIMEOUT if shorter, for a row lock held outside it, then that account's calls run on their own). 0: every write commits on its own."`
	DataDir    string `name:"data-dir" env:"USERD_DATA_DIR" help:"Directory of the embedded PostgreSQL (used when DATABASE_URL is empty). Default: /var/lib/userd for root, else ~/.local/share/userd."`
	PGBinDir   string `name:"pg-bin-dir" env:"USERD_PG_BIN_DIR" help:"Directory of the pg_ctl and initdb the embedded PostgreSQL uses. Default: found on the machine, else downloaded."`
}

// Embedded reports whether userd runs its own PostgreSQL.
func (d Database) Embedded() bool { return d.URL == "" }

// Validate checks the database settings.
func (d Database) Validate() error {
	if d.MaxConns < 1 || d.MaxConns > 1000 {
		return fmt.Errorf("USERD_DB_MAX_CONNS (--db-max-conns) must be between 1 and 1000, got %d", d.MaxConns)
	}
	if d.WriteLanes < 0 || d.WriteLanes > int(d.MaxConns) {
		return fmt.Errorf("USERD_DB_WRITE_LANES (--db-write-lanes) must be between 0 and USERD_DB_MAX_CONNS (%d), got %d", d.MaxConns, d.WriteLanes)
	}
	return nil
}

// StandbyReads configures reads from hot standbys (internal/standby).
type StandbyReads struct {
	ReadURL       string        `name:"database-read-url" env:"USERD_DATABASE_READ_URL" help:"PostgreSQL URL of one or more hot standbys (postgres://user:pass@s1:5432,s2:5432/userd) that may serve GetUser, ListCreditTransactions, GetUsageSummary, CanAfford, ListPrices and ListPriceChanges; writes then return a consistency token (gRPC header / HTTP header userd-consistency-token) that a read may send back to never see older state. Empty: every read goes to DATABASE_URL."`
	ReadMaxConns  int32         `name:"db-read-max-conns" env:"USERD_DB_READ_MAX_CONNS" default:"16" help:"Maximum open connections to each standby of USERD_DATABASE_READ_URL."`
	ReadMaxLag    time.Duration `name:"read-max-lag" env:"USERD_READ_MAX_LAG" default:"1s" help:"Most a standby's data may lag the primary's for it to serve a read; a standby further behind is skipped (the primary serves). Measured, and exported as userd_db_standby_lag_seconds."`
	ReadTokenWait time.Duration `name:"read-token-wait" env:"USERD_READ_TOKEN_WAIT" default:"100ms" help:"How long a read carrying a consistency token waits for a standby to replay that far before the primary serves it."`
}

// Enabled reports whether standbys serve reads.
func (r StandbyReads) Enabled() bool { return r.ReadURL != "" }

// Validate checks the standby read settings.
func (r StandbyReads) Validate() error {
	if r.ReadMaxConns < 1 || r.ReadMaxConns > 1000 {
		return fmt.Errorf("USERD_DB_READ_MAX_CONNS (--db-read-max-conns) must be between 1 and 1000, got %d", r.ReadMaxConns)
	}
	if r.ReadMaxLag < 10*time.Millisecond || r.ReadMaxLag > time.Hour {
		return fmt.Errorf("USERD_READ_MAX_LAG (--read-max-lag) must be between 10ms and 1h, got %s", r.ReadMaxLag)
	}
	if r.ReadTokenWait < 0 || r.ReadTokenWait > 10*time.Second {
		return fmt.Errorf("USERD_READ_TOKEN_WAIT (--read-token-wait) must be between 0 and 10s, got %s", r.ReadTokenWait)
	}
	return nil
}

// Serve is the configuration of `userd serve`.
type Serve struct {
	Database     `embed:""`
	StandbyReads `embed:""`
	Log          `embed:""`

	AutoMigrate   bool   `name:"auto-migrate" env:"USERD_AUTO_MIGRATE" default:"true" negatable:"" help:"Apply pending migrations at start-up: all on a new database, else all but post-deploy ones (userd migrate up applies those)."`
	GRPCAddr      string `name:"grpc-addr" env:"USERD_GRPC_ADDR" default:":9090" help:"gRPC listen address (UserService, health, reflection), or \"off\"."`
	HTTPAddr      string `name:"http-addr" env:"USERD_HTTP_ADDR" default:":8080" help:"HTTP API listen address (REST gateway under /v1, /openapi.json), or \"off\"."`
	CORSOrigins   string `name:"cors-origins" env:"USERD_CORS_ORIGINS" help:"Comma-separated browser origins allowed to call the HTTP API (CORS); none when empty."`
	ServiceTokens string `name:"service-tokens" env:"USERD_SERVICE_TOKENS" help:"Backend service credentials: comma-separated name=token (or name=sha256:<hex of token>). Prefer the environment variable."`
	OpsAddr       string `name:"ops-addr" env:"USERD_OPS_ADDR" default:":9091" help:"Operations listen address (/healthz, /readyz, /metrics), or \"off\"."`
	Pprof         bool   `name:"pprof" env:"USERD_PPROF" default:"false" help:"Serve /debug/pprof on the operations listener."`
	WebhookAddr   string `name:"webhook-addr" env:"USERD_WEBHOOK_ADDR" default:":8081" help:"Clerk webhook listen address (POST /webhooks/clerk only), or \"off\"."`
	Clerk         `embed:""`
	ClerkSync     `embed:""`
	Users         `embed:""`
	ShutdownGrace time.Duration `name:"shutdown-grace" env:"USERD_SHUTDOWN_GRACE" default:"20s" help:"How long in-flight calls may run after SIGTERM before they are cut."`
	Bounds        `embed:""`
	Feed          `embed:""`
	Limits        `embed:""`
	Organizations `embed:""`
	Console       `embed:""`

	// AccessLogReads samples the access log lines of successful reads
	// (internal/grpcapi's LoggingInterceptor).
	AccessLogReads int `name:"access-log-reads" env:"USERD_ACCESS_LOG_READS" default:"100" help:"Most successful read-only calls (GetUser, GetAccount, the other standby-readable reads, gRPC health checks) the access log shows per second; the next one logged counts the others in skipped_reads (metrics count every call). Errors and writes are always logged. 0 logs every call."`
	Stripe         `embed:""`

	// Version is the binary's version (not a setting: cmd/userd sets it),
	// shown as info.version of the served OpenAPI document.
	Version string `kong:"-"`
}

// Feed configures the change feed (WatchUserEvents).
type Feed struct {
	FeedPollInterval         time.Duration `name:"feed-poll-interval" env:"USERD_FEED_POLL_INTERVAL" default:"100ms" help:"How often each replica asks the database for new change feed events (one query for all its watchers)."`
	FeedHeartbeat            time.Duration `name:"feed-heartbeat" env:"USERD_FEED_HEARTBEAT" default:"15s" help:"How often an idle WatchUserEvents stream gets a heartbeat with its cursor (keeps proxies from closing it)."`
	AllowanceInterval        time.Duration `name:"allowance-interval" env:"USERD_ALLOWANCE_INTERVAL" default:"1m" help:"How often the expiry and allowance refill job runs (on one replica at a time: a database lock). 0 turns it off on this replica."`
	FeedRetention            time.Duration `name:"feed-retention" env:"USERD_FEED_RETENTION" default:"168h" help:"How long change feed events are kept; a consumer whose cursor is older must resynchronise. 0 keeps them forever."`
	FeedMaxWatches           int           `name:"feed-max-watches" env:"USERD_FEED_MAX_WATCHES" default:"4096" help:"Most WatchUserEvents streams (gRPC and REST) open at once on this replica; beyond, RESOURCE_EXHAUSTED / 429 with a retry hint."`
	FeedMaxWatchesPerUser    int           `name:"feed-max-watches-per-user" env:"USERD_FEED_MAX_WATCHES_PER_USER" default:"8" help:"Most WatchUserEvents streams one end user (one Clerk user id) may have open at once on this replica."`
	FeedMaxWatchesPerService int           `name:"feed-max-watches-per-service" env:"USERD_FEED_MAX_WATCHES_PER_SERVICE" default:"256" help:"Most WatchUserEvents streams one service token name may have open at once on this replica."`
	// ReadCache: see internal/store/readcache.go.
	ReadCache        bool `name:"read-cache" env:"USERD_READ_CACHE" default:"true" help:"Keep users read by Clerk id (GetUser, EnsureUser of an existing user) in memory, invalidated by the change feed: a read never sees a write this replica answered before, nor one whose consistency token (userd-consistency-token, which every write then returns) it sends; other replicas' writes within 1s. Off with USERD_DATABASE_READ_URL."`
	ReadCacheEntries int  `name:"read-cache-entries" env:"USERD_READ_CACHE_ENTRIES" default:"100000" help:"Most users the read cache keeps (USERD_READ_CACHE); beyond, random ones are dropped."`
}

// Validate checks the change feed settings.
func (f Feed) Validate() error {
	if f.FeedPollInterval < 10*time.Millisecond || f.FeedPollInterval > 10*time.Second {
		return fmt.Errorf("USERD_FEED_POLL_INTERVAL (--feed-poll-interval) must be between 10ms and 10s, got %s", f.FeedPollInterval)
	}
	if f.FeedHeartbeat < time.Second || f.FeedHeartbeat > 5*time.Minute {
		return fmt.Errorf("USERD_FEED_HEARTBEAT (--feed-heartbeat) must be between 1s and 5m, got %s", f.FeedHeartbeat)
	}
	if f.ReadCacheEntries < 1 || f.ReadCacheEntries > 100_000_000 {
		return fmt.Errorf("USERD_READ_CACHE_ENTRIES (--read-cache-entries) must be between 1 and 100000000, got %d", f.ReadCacheEntries)
	}
	if f.FeedRetention != 0 && f.FeedRetention < time.Hour {
		return fmt.Errorf("USERD_FEED_RETENTION (--feed-retention) must be 0 (forever) or at least 1h, got %s", f.FeedRetention)
	}
	for _, c := range []struct {
		name string
		n    int
	}{
		{"USERD_FEED_MAX_WATCHES (--feed-max-watches)", f.FeedMaxWatches},
		{"USERD_FEED_MAX_WATCHES_PER_USER (--feed-max-watches-per-user)", f.FeedMaxWatchesPerUser},
		{"USERD_FEED_MAX_WATCHES_PER_SERVICE (--feed-max-watches-per-service)", f.FeedMaxWatchesPerService},
	} {
		if c.n < 1 || c.n > 1_000_000 {
			return fmt.Errorf("%s must be between 1 and 1000000, got %d", c.name, c.n)
		}
	}
	return nil
}

// Limits bound what connections may hold, before and after they
// authenticate: how many each listener keeps open (within the process's
// file descriptor limit, which userd reads at start), how long gRPC and
// HTTP connections may idle or live, and how many unauthenticated health
// watches may be open.
type Limits struct {
	GRPCMaxConns    int `name:"grpc-max-conns" env:"USERD_GRPC_MAX_CONNS" default:"4096" help:"Most connections the gRPC listener keeps open; when full, a new one replaces the oldest that has not authenticated a call. Lowered at start to fit the file descriptor limit."`
	HTTPMaxConns    int `name:"http-max-conns" env:"USERD_HTTP_MAX_CONNS" default:"4096" help:"Most connections the HTTP API listener keeps open (as USERD_GRPC_MAX_CONNS; then the oldest idle keep-alive one)."`
	WebhookMaxConns int `name:"webhook-max-conns" env:"USERD_WEBHOOK_MAX_CONNS" default:"4096" help:"Most connections the webhook listener keeps open (as USERD_HTTP_MAX_CONNS; a delivery answered 2xx proves its connection)."`
	OpsMaxConns     int `name:"ops-max-conns" env:"USERD_OPS_MAX_CONNS" default:"64" help:"Most connections the operations listener keeps open; reserved out of the file descriptor limit before the other listeners' shares."`

	GRPCMaxConnectionIdle     time.Duration `name:"grpc-max-connection-idle" env:"USERD_GRPC_MAX_CONNECTION_IDLE" default:"5m" help:"A gRPC connection with no call open for this long is closed (GOAWAY)."`
	GRPCMaxConnectionAge      time.Duration `name:"grpc-max-connection-age" env:"USERD_GRPC_MAX_CONNECTION_AGE" default:"30m" help:"A gRPC connection is closed (GOAWAY; clients reconnect) after this long, streams or not, so that none is held forever."`
	GRPCMaxConnectionAgeGrace time.Duration `name:"grpc-max-connection-age-grace" env:"USERD_GRPC_MAX_CONNECTION_AGE_GRACE" default:"1m" help:"How long calls open when a gRPC connection reaches its maximum age may still run; then they are cut (a WatchUserEvents consumer resumes from its cursor)."`
	GRPCKeepaliveMinTime      time.Duration `name:"grpc-keepalive-min-time" env:"USERD_GRPC_KEEPALIVE_MIN_TIME" default:"10s" help:"Least interval of a client's keepalive pings; a client pinging more often is disconnected (GOAWAY ENHANCE_YOUR_CALM)."`
	GRPCKeepaliveTime         time.Duration `name:"grpc-keepalive-time" env:"USERD_GRPC_KEEPALIVE_TIME" default:"2m" help:"userd pings a gRPC connection silent for this long, to find dead peers."`
	GRPCKeepaliveTimeout      time.Duration `name:"grpc-keepalive-timeout" env:"USERD_GRPC_KEEPALIVE_TIMEOUT" default:"20s" help:"A gRPC connection whose peer does not answer userd's ping within this is closed."`
	HTTPReadHeaderTimeout     time.Duration `name:"http-read-header-timeout" env:"USERD_HTTP_READ_HEADER_TIMEOUT" default:"5s" help:"Longest an HTTP listener (API, webhook, ops) waits for a request's headers, from the connection's start or the first byte of a later request; also bounds the gRPC handshake."`
	HTTPIdleTimeout           time.Duration `name:"http-idle-timeout" env:"USERD_HTTP_IDLE_TIMEOUT" default:"2m" help:"Longest an HTTP keep-alive connection waits for its next request."`
	HealthWatchMax            int           `name:"health-watch-max" env:"USERD_HEALTH_WATCH_MAX" default:"100" help:"Most grpc.health.v1.Health/Watch streams open at once without a service token; beyond, RESOURCE_EXHAUSTED (Check still answers). Callers with a service token are not counted."`
}

// DefaultLimits are the limits' defaults (those of the struct tags), for
// configurations built in code.
func DefaultLimits() Limits {
	return Limits{
		GRPCMaxConns: 4096, HTTPMaxConns: 4096, WebhookMaxConns: 4096, OpsMaxConns: 64,
		GRPCMaxConnectionIdle: 5 * time.Minute, GRPCMaxConnectionAge: 30 * time.Minute, GRPCMaxConnectionAgeGrace: time.Minute,
		GRPCKeepaliveMinTime: 10 * time.Second, GRPCKeepaliveTime: 2 * time.Minute, GRPCKeepaliveTimeout: 20 * time.Second,
		HTTPReadHeaderTimeout: 5 * time.Second, HTTPIdleTimeout: 2 * time.Minute,
		HealthWatchMax: 100,
	}
}

// Validate checks the limits.
func (l Limits) Validate() error {
	for _, c := range []struct {
		name string
		n    int
	}{
		{"USERD_GRPC_MAX_CONNS (--grpc-max-conns)", l.GRPCMaxConns},
		{"USERD_HTTP_MAX_CONNS (--http-max-conns)", l.HTTPMaxConns},
		{"USERD_WEBHOOK_MAX_CONNS (--webhook-max-conns)", l.WebhookMaxConns},
		{"USERD_OPS_MAX_CONNS (--ops-max-conns)", l.OpsMaxConns},
		{"USERD_HEALTH_WATCH_MAX (--health-watch-max)", l.HealthWatchMax},
	} {
		if c.n < 1 || c.n > 1_000_000 {
			return fmt.Errorf("%s must be between 1 and 1000000, got %d", c.name, c.n)
		}
	}
	for _, d := range []struct {
		name     string
		v, least time.Duration
	}{
		{"USERD_GRPC_MAX_CONNECTION_IDLE (--grpc-max-connection-idle)", l.GRPCMaxConnectionIdle, time.Second},
		{"USERD_GRPC_MAX_CONNECTION_AGE (--grpc-max-connection-age)", l.GRPCMaxConnectionAge, time.Second},
		{"USERD_GRPC_MAX_CONNECTION_AGE_GRACE (--grpc-max-connection-age-grace)", l.GRPCMaxConnectionAgeGrace, time.Second},
		{"USERD_GRPC_KEEPALIVE_MIN_TIME (--grpc-keepalive-min-time)", l.GRPCKeepaliveMinTime, time.Second},
		{"USERD_GRPC_KEEPALIVE_TIME (--grpc-keepalive-time)", l.GRPCKeepaliveTime, time.Second},
		{"USERD_GRPC_KEEPALIVE_TIMEOUT (--grpc-keepalive-timeout)", l.GRPCKeepaliveTimeout, time.Second},
		{"USERD_HTTP_READ_HEADER_TIMEOUT (--http-read-header-timeout)", l.HTTPReadHeaderTimeout, 100 * time.Millisecond},
		{"USERD_HTTP_IDLE_TIMEOUT (--http-idle-timeout)", l.HTTPIdleTimeout, time.Second},
	} {
		// Every one of them is a bound: none may be switched off.
		if d.v < d.least || d.v > 24*time.Hour {
			return fmt.Errorf("%s must be between %s and 24h, got %s", d.name, d.least, d.v)
		}
	}
	if l.HTTPReadHeaderTimeout > time.Minute {
		return fmt.Errorf("USERD_HTTP_READ_HEADER_TIMEOUT (--http-read-header-timeout) must be at most 1m, got %s", l.HTTPReadHeaderTimeout)
	}
	return nil
}

// Bounds limit how long one call may take and how long it may wait for the
// database, so that a hung or saturated database yields UNAVAILABLE/503
// within a known time instead of a hang.
type Bounds struct {
	RequestTimeout             time.Duration `name:"request-timeout" env:"USERD_REQUEST_TIMEOUT" default:"10s" help:"Longest a gRPC or REST call or a webhook delivery may run; past it the answer is UNAVAILABLE/503. A client's shorter deadline wins."`
	DBAcquireTimeout           time.Duration `name:"db-acquire-timeout" env:"USERD_DB_ACQUIRE_TIMEOUT" default:"2s" help:"Longest a call waits for a free database connection before answering UNAVAILABLE/503 (at most USERD_REQUEST_TIMEOUT)."`
	DBStatementTimeout         time.Duration `name:"db-statement-timeout" env:"USERD_DB_STATEMENT_TIMEOUT" default:"5s" help:"PostgreSQL statement_timeout of userd's sessions; 0 leaves the server's setting."`
	DBLockTimeout              time.Duration `name:"db-lock-timeout" env:"USERD_DB_LOCK_TIMEOUT" default:"2s" help:"PostgreSQL lock_timeout of userd's sessions; 0 leaves the server's setting."`
	DBIdleInTransactionTimeout time.Duration `name:"db-idle-in-transaction-timeout" env:"USERD_DB_IDLE_IN_TRANSACTION_TIMEOUT" default:"10s" help:"PostgreSQL idle_in_transaction_session_timeout of userd's sessions; 0 leaves the server's setting."`
}

// Validate checks the bounds.
func (b Bounds) Validate() error {
	if b.RequestTimeout < 100*time.Millisecond || b.RequestTimeout > 10*time.Minute {
		return fmt.Errorf("USERD_REQUEST_TIMEOUT (--request-timeout) must be between 100ms and 10m, got %s", b.RequestTimeout)
	}
	if b.DBAcquireTimeout <= 0 || b.DBAcquireTimeout > b.RequestTimeout {
		return fmt.Errorf("USERD_DB_ACQUIRE_TIMEOUT (--db-acquire-timeout) must be positive and at most USERD_REQUEST_TIMEOUT (%s), got %s",
			b.RequestTimeout, b.DBAcquireTimeout)
	}
	for _, s := range []struct {
		name string
		d    time.Duration
	}{
		{"USERD_DB_STATEMENT_TIMEOUT (--db-statement-timeout)", b.DBStatementTimeout},
		{"USERD_DB_LOCK_TIMEOUT (--db-lock-timeout)", b.DBLockTimeout},
		{"USERD_DB_IDLE_IN_TRANSACTION_TIMEOUT (--db-idle-in-transaction-timeout)", b.DBIdleInTransactionTimeout},
	} {
		// PostgreSQL counts these in whole milliseconds, and 0 is "off".
		if s.d != 0 && (s.d < time.Millisecond || s.d%time.Millisecond != 0) {
			return fmt.Errorf("%s must be 0 or a whole number of milliseconds, got %s", s.name, s.d)
		}
	}
	return nil
}

// Validate checks every setting and names the one to fix. Values only
// their own packages can parse (DATABASE_URL, USERD_SERVICE_TOKENS,
// CLERK_WEBHOOK_SECRET) are checked by internal/app before anything starts.
func (s Serve) Validate() error {
	if err := s.Database.Validate(); err != nil {
		return err
	}
	if err := s.StandbyReads.Validate(); err != nil {
		return err
	}
	if s.ReadURL != "" && s.Database.Embedded() {
		return errors.New("USERD_DATABASE_READ_URL (--database-read-url) needs DATABASE_URL: the embedded PostgreSQL has no standbys")
	}
	if err := s.Log.Validate(); err != nil {
		return err
	}
	if s.AccessLogReads < 0 || s.AccessLogReads > 1_000_000 {
		return fmt.Errorf("USERD_ACCESS_LOG_READS (--access-log-reads) must be between 0 and 1000000, got %d", s.AccessLogReads)
	}
	if s.GRPCAddr != Off {
		if err := validAddr("USERD_GRPC_ADDR (--grpc-addr)", s.GRPCAddr); err != nil {
			return err
		}
	}
	if s.HTTPAddr != Off {
		if err := validAddr("USERD_HTTP_ADDR (--http-addr)", s.HTTPAddr); err != nil {
			return err
		}
	}
	if s.OpsAddr != Off {
		if err := validAddr("USERD_OPS_ADDR (--ops-addr)", s.OpsAddr); err != nil {
			return err
		}
	}
	if s.WebhookAddr != Off {
		if err := validAddr("USERD_WEBHOOK_ADDR (--webhook-addr)", s.WebhookAddr); err != nil {
			return err
		}
	}
	if err := s.Clerk.Validate(); err != nil {
		return err
	}
	if err := s.ClerkSync.Validate(s.SecretKey); err != nil {
		return err
	}
	if err := s.Users.Validate(); err != nil {
		return err
	}
	if s.ShutdownGrace < 0 {
		return fmt.Errorf("USERD_SHUTDOWN_GRACE (--shutdown-grace) must not be negative, got %s", s.ShutdownGrace)
	}
	if err := s.Bounds.Validate(); err != nil {
		return err
	}
	if err := s.Limits.Validate(); err != nil {
		return err
	}
	if err := s.Organizations.Validate(); err != nil {
		return err
	}
	if err := s.Console.Validate(); err != nil {
		return err
	}
	if s.Console.Enabled() && s.JWKSURL == "" && s.JWTKey == "" {
		return errors.New("USERD_CONSOLE_ADDR (--console-addr) needs CLERK_JWKS_URL or CLERK_JWT_KEY: operators sign in with Clerk session tokens")
	}
	if err := s.Stripe.Validate(); err != nil {
		return err
	}
	return s.Feed.Validate()
}

// Console configures the operator console (internal/console).
type Console struct {
	ConsoleAddr       string        `name:"console-addr" env:"USERD_CONSOLE_ADDR" default:"off" help:"Operator console listen address (browser pages: search, accounts, audited corrections), or \"off\". Serve it behind TLS: its cookies are Secure."`
	ConsoleOrg        string        `name:"console-org" env:"USERD_CONSOLE_ORG" help:"Clerk organization id (org_...) whose members are operators when their session is in it: role org:admin or org:support is the console role support, any other role viewer. Empty: only the userd_role claim grants a role."`
	ConsoleSessionKey string        `name:"console-session-key" env:"USERD_CONSOLE_SESSION_KEY" help:"Secret (at least 32 bytes) that signs console session cookies; the same on every replica. Empty: a random key per process (operators sign in again after a restart or on another replica). Prefer the environment variable."`
	ConsoleSessionTTL time.Duration `name:"console-session-ttl" env:"USERD_CONSOLE_SESSION_TTL" default:"30m" help:"How long a console sign-in lasts."`
}

// Enabled reports whether the console is served.
func (c Console) Enabled() bool { return c.ConsoleAddr != "" && c.ConsoleAddr != Off }

// Validate checks the console settings.
func (c Console) Validate() error {
	if !c.Enabled() {
		return nil
	}
	if err := validAddr("USERD_CONSOLE_ADDR (--console-addr)", c.ConsoleAddr); err != nil {
		return err
	}
	if c.ConsoleOrg != "" && !strings.HasPrefix(c.ConsoleOrg, "org_") {
		return errors.New("USERD_CONSOLE_ORG (--console-org) must be a Clerk organization id (org_...)")
	}
	if c.ConsoleSessionKey != "" && len(c.ConsoleSessionKey) < 32 {
		return errors.New("USERD_CONSOLE_SESSION_KEY (--console-session-key) must be at least 32 bytes")
	}
	if c.ConsoleSessionTTL < time.Minute || c.ConsoleSessionTTL > 12*time.Hour {
		return fmt.Errorf("USERD_CONSOLE_SESSION_TTL (--console-session-ttl) must be between 1m and 12h, got %s", c.ConsoleSessionTTL)
	}
	return nil
}

// Organizations says which Clerk organization permissions userd requires
// of end users acting on an organization's account.
type Organizations struct {
	OrgSpendPermission  string `name:"org-spend-permission" env:"USERD_ORG_SPEND_PERMISSION" help:"Clerk organization permission an end user needs to spend from its organization's account (e.g. org:credits:spend), in its session token and in its mirrored membership. Empty: any live member may spend."`
	OrgManagePermission string `name:"org-manage-permission" env:"USERD_ORG_MANAGE_PERMISSION" default:"org:credits:manage" help:"Clerk organization permission that lets an end user set members' spending caps, besides the role org:admin. Empty: org:admin only."`
}

// Validate checks the organization permissions: Clerk's custom permission
// keys, "org:<feature>:<permission>".
func (o Organizations) Validate() error {
	for _, s := range []struct{ name, v string }{
		{"USERD_ORG_SPEND_PERMISSION (--org-spend-permission)", o.OrgSpendPermission},
		{"USERD_ORG_MANAGE_PERMISSION (--org-manage-permission)", o.OrgManagePermission},
	} {
		if s.v == "" {
			continue
		}
		parts := strings.Split(s.v, ":")
		if len(parts) != 3 || parts[0] != "org" || parts[1] == "" || parts[2] == "" || strings.ContainsAny(s.v, " ,") {
			return fmt.Errorf("%s must be a Clerk permission key org:<feature>:<permission>, got %q", s.name, s.v)
		}
		if strings.HasPrefix(parts[1], "sys_") {
			return fmt.Errorf("%s: Clerk's system permissions (org:sys_*) never appear in session tokens; use a custom permission, got %q", s.name, s.v)
		}
	}
	return nil
}

// Off switches a listener off.
const Off = "off"

// Clerk configures the Clerk integration.
type Clerk struct {
	WebhookSecret     string        `name:"clerk-webhook-secret" env:"CLERK_WEBHOOK_SECRET" help:"Signing secret(s) of the Clerk webhook endpoint (whsec_...), comma-separated to rotate. Unset: every delivery is rejected. Prefer the environment variable over the flag."`
	WebhookTolerance  time.Duration `name:"webhook-tolerance" env:"USERD_WEBHOOK_TOLERANCE" default:"5m" help:"Accepted distance between a delivery's svix-timestamp and now (replay window)."`
	WebhookRetention  time.Duration `name:"webhook-retention" env:"USERD_WEBHOOK_RETENTION" default:"168h" help:"How long processed Svix message ids are remembered for deduplication (Svix retries for about 27h); 0 keeps them forever."`
	JWTKey            string        `name:"clerk-jwt-key" env:"CLERK_JWT_KEY" help:"PEM public key of the Clerk instance, to verify session tokens without network."`
	JWKSURL           string        `name:"clerk-jwks-url" env:"CLERK_JWKS_URL" help:"JWKS URL of the Clerk instance (https://<frontend-api>/.well-known/jwks.json), cached."`
	Issuer            string        `name:"clerk-issuer" env:"CLERK_ISSUER" help:"Required iss of session tokens (the instance's Frontend API URL); unchecked when empty."`
	AuthorizedParties string        `name:"clerk-authorized-parties" env:"CLERK_AUTHORIZED_PARTIES" help:"Comma-separated origins allowed as the azp of session tokens; unchecked when empty."`
	ClerkAPI          `embed:""`
	JWTLeeway         time.Duration `name:"jwt-leeway" env:"USERD_JWT_LEEWAY" default:"5s" help:"Clock leeway for the exp and nbf of session tokens."`
	JWTMaxLifetime    time.Duration `name:"jwt-max-lifetime" env:"USERD_JWT_MAX_LIFETIME" default:"5m" help:"Longest lifetime (exp - iat) of an accepted session token, and the longest one may have left; Clerk's session tokens live 60s."`
	JWKSMinRefresh    time.Duration `name:"jwks-min-refresh" env:"USERD_JWKS_MIN_REFRESH" default:"30s" help:"Least time between JWKS fetches caused by tokens with an unknown kid."`
}

// Parties returns the authorized parties as a list.
func (c Clerk) Parties() []string { return splitList(c.AuthorizedParties) }

// CORSOriginList returns the CORS origins as a list.
func (s Serve) CORSOriginList() []string { return splitList(s.CORSOrigins) }

// splitList reads a comma-separated setting, ignoring blanks.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// Validate checks the Clerk settings; messages never contain a secret.
func (c Clerk) Validate() error {
	if c.WebhookTolerance < time.Second || c.WebhookTolerance > time.Hour {
		return fmt.Errorf("USERD_WEBHOOK_TOLERANCE (--webhook-tolerance) must be between 1s and 1h, got %s", c.WebhookTolerance)
	}
	if c.WebhookRetention != 0 && c.WebhookRetention < 48*time.Hour {
		return fmt.Errorf("USERD_WEBHOOK_RETENTION (--webhook-retention) must be 0 (forever) or at least 48h, longer than Svix retries; got %s", c.WebhookRetention)
	}
	if c.JWTKey != "" && c.JWKSURL != "" {
		return errors.New("set only one of CLERK_JWT_KEY (--clerk-jwt-key) and CLERK_JWKS_URL (--clerk-jwks-url)")
	}
	if c.JWKSURL != "" {
		if err := absoluteURL("CLERK_JWKS_URL (--clerk-jwks-url)", c.JWKSURL); err != nil {
			return err
		}
	}
	if err := c.ClerkAPI.Validate(); err != nil {
		return err
	}
	if c.JWTLeeway < 0 || c.JWTLeeway > time.Minute {
		return fmt.Errorf("USERD_JWT_LEEWAY (--jwt-leeway) must be between 0 and 1m, got %s", c.JWTLeeway)
	}
	if c.JWTMaxLifetime < time.Minute {
		return fmt.Errorf("USERD_JWT_MAX_LIFETIME (--jwt-max-lifetime) must be at least 1m, the lifetime of Clerk's session tokens; got %s", c.JWTMaxLifetime)
	}
	if c.JWKSMinRefresh < time.Second {
		return fmt.Errorf("USERD_JWKS_MIN_REFRESH (--jwks-min-refresh) must be at least 1s, got %s", c.JWKSMinRefresh)
	}
	return nil
}

// ClerkAPI says how userd calls Clerk's Backend API.
type ClerkAPI struct {
	SecretKey string `name:"clerk-secret-key" env:"CLERK_SECRET_KEY" help:"Clerk Backend API secret key (sk_...): fetches a signing-in user's profile before its webhook arrives, and lists users for the Clerk sync."`
	APIURL    string `name:"clerk-api-url" env:"CLERK_API_URL" default:"https://api.clerk.com" help:"Clerk Backend API base URL."`
	APIRate   int    `name:"clerk-api-rate" env:"USERD_CLERK_API_RATE" default:"0" help:"Backend API requests userd may make per 10 s, kept to 90% of it; 0: the instance's limit, from the key (sk_live_: 1000, otherwise 100). Lower it to leave room for other backends using the same key."`
	// The retry bounds apply to the Clerk sync, the only caller that
	// retries (a signing-in user's profile is fetched once).
	MaxRetryAfter time.Duration `name:"clerk-api-max-retry-after" env:"USERD_CLERK_API_MAX_RETRY_AFTER" default:"60s" help:"Longest wait a Retry-After of the Backend API is honoured for; a longer one is cut to this (a 429 asking for hours must not stall a sync)."`
	MaxRetryTime  time.Duration `name:"clerk-api-max-retry-time" env:"USERD_CLERK_API_MAX_RETRY_TIME" default:"5m" help:"Longest time one Backend API call of a Clerk sync is retried, attempts and waits together, before the run stops with an error."`
}

// Validate checks the Backend API settings.
func (c ClerkAPI) Validate() error {
	if err := absoluteURL("CLERK_API_URL (--clerk-api-url)", c.APIURL); err != nil {
		return err
	}
	if c.SecretKey != "" && !strings.HasPrefix(c.SecretKey, "sk_") {
		return errors.New(`CLERK_SECRET_KEY (--clerk-secret-key) must start with "sk_" (Clerk dashboard, API keys)`)
	}
	if c.MaxRetryAfter < time.Second || c.MaxRetryAfter > 10*time.Minute {
		return fmt.Errorf("USERD_CLERK_API_MAX_RETRY_AFTER (--clerk-api-max-retry-after) must be between 1s and 10m, got %s", c.MaxRetryAfter)
	}
	if c.MaxRetryTime < c.MaxRetryAfter || c.MaxRetryTime > time.Hour {
		return fmt.Errorf("USERD_CLERK_API_MAX_RETRY_TIME (--clerk-api-max-retry-time) must be between USERD_CLERK_API_MAX_RETRY_AFTER (%s) and 1h, got %s", c.MaxRetryAfter, c.MaxRetryTime)
	}
	if c.APIRate < 0 {
		// The least budget the client accepts is its own rule, checked by
		// app.CheckSettings when it builds the client.
		return fmt.Errorf("USERD_CLERK_API_RATE (--clerk-api-rate) must not be negative, got %d", c.APIRate)
	}
	return nil
}

// ClerkSync configures the periodic reconcile with Clerk inside `userd
// serve` (the same run as `userd sync-clerk`).
type ClerkSync struct {
	SyncInterval      time.Duration `name:"clerk-sync-interval" env:"USERD_CLERK_SYNC_INTERVAL" default:"0s" help:"Reconcile every user with Clerk's Backend API this often, one replica at a time (as userd sync-clerk does); 0 turns it off. At least 1m; needs CLERK_SECRET_KEY."`
	SyncDeleteMissing bool          `name:"clerk-sync-delete-missing" env:"USERD_CLERK_SYNC_DELETE_MISSING" default:"false" help:"Let the periodic reconcile also mark deleted the users Clerk no longer has (each confirmed missing first), within USERD_CLERK_SYNC_MAX_DELETE_SHARE."`
	MaxDeleteShare    float64       `name:"clerk-sync-max-delete-share" env:"USERD_CLERK_SYNC_MAX_DELETE_SHARE" default:"0.1" help:"Safety stop of deleting missing users: refuse when more than this share of the live users would be deleted (a wrong key pointing at an empty instance); between 0 and 1."`
	SyncMaxRunTime    time.Duration `name:"clerk-sync-max-run-time" env:"USERD_CLERK_SYNC_MAX_RUN_TIME" default:"6h" help:"Longest a Clerk sync run may take (it holds the fleet-wide sync lock meanwhile); past it the run stops with an error, keeping what it applied."`
}

// MinSyncInterval is the shortest periodic reconcile interval.
const MinSyncInterval = time.Minute

// Validate checks the sync settings; secretKey is CLERK_SECRET_KEY.
func (c ClerkSync) Validate(secretKey string) error {
	if c.SyncInterval != 0 && c.SyncInterval < MinSyncInterval {
		return fmt.Errorf("USERD_CLERK_SYNC_INTERVAL (--clerk-sync-interval) must be 0 (off) or at least %s, got %s", MinSyncInterval, c.SyncInterval)
	}
	if err := ValidRunTime("USERD_CLERK_SYNC_MAX_RUN_TIME (--clerk-sync-max-run-time)", c.SyncMaxRunTime); err != nil {
		return err
	}
	if c.SyncInterval > 0 && secretKey == "" {
		return errors.New("USERD_CLERK_SYNC_INTERVAL (--clerk-sync-interval) needs CLERK_SECRET_KEY (--clerk-secret-key) to list Clerk's users")
	}
	return ValidDeleteShare("USERD_CLERK_SYNC_MAX_DELETE_SHARE (--clerk-sync-max-delete-share)", c.MaxDeleteShare)
}

// ValidRunTime checks the longest run of a Clerk sync.
func ValidRunTime(name string, d time.Duration) error {
	if d < time.Minute {
		return fmt.Errorf("%s must be at least 1m, got %s", name, d)
	}
	return nil
}

// ValidDeleteShare checks a share of users that may be deleted.
func ValidDeleteShare(name string, share float64) error {
	if !(share >= 0 && share <= 1) { // also refuses NaN
		return fmt.Errorf("%s must be between 0 and 1, got %v", name, share)
	}
	return nil
}

// Users configures what userd does with the users it mirrors, whichever
// command creates or deletes them.
type Users struct {
	InitialCredits      int64 `name:"initial-credits" env:"USERD_INITIAL_CREDITS" default:"10" help:"Credits a new user starts with."`
	KeepDeletedUserData bool  `name:"keep-deleted-user-data" env:"USERD_KEEP_DELETED_USER_DATA" default:"false" help:"Keep the email, names and image URL of users deleted in Clerk, and the name, slug and image URL of deleted organizations; by default a deletion erases them (the tombstone, ledger and plan history stay either way)."`
	OrgInitialCredits   int64 `name:"org-initial-credits" env:"USERD_ORG_INITIAL_CREDITS" default:"0" help:"Credits a new organization's account starts with (a ledger entry when above 0)."`
}

// Validate checks the user settings.
func (u Users) Validate() error {
	if u.InitialCredits < 0 || u.InitialCredits > users.MaxAmount {
		return fmt.Errorf("USERD_INITIAL_CREDITS (--initial-credits) must be between 0 and %d, got %d", int64(users.MaxAmount), u.InitialCredits)
	}
	if u.OrgInitialCredits < 0 || u.OrgInitialCredits > users.MaxAmount {
		return fmt.Errorf("USERD_ORG_INITIAL_CREDITS (--org-initial-credits) must be between 0 and %d, got %d", int64(users.MaxAmount), u.OrgInitialCredits)
	}
	return nil
}

func absoluteURL(name, s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fmt.Errorf("%s must be an absolute http(s) URL", name)
	}
	return nil
}

func validAddr(name, addr string) error {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("%s must be host:port or :port, got %q", name, addr)
	}
	return nil
}

// Log configures logging.
type Log struct {
	LogFormat string `name:"log-format" env:"USERD_LOG_FORMAT" default:"auto" help:"Log format: json, text, or auto (text on a terminal, else json)."`
	LogLevel  string `name:"log-level" env:"USERD_LOG_LEVEL" default:"info" help:"Minimum log level."`
}

// Validate checks the log settings, naming both the variable and the flag.
func (l Log) Validate() error {
	switch l.LogFormat {
	case "auto", "json", "text":
	default:
		return fmt.Errorf("USERD_LOG_FORMAT (--log-format) must be auto, json or text, got %q", l.LogFormat)
	}
	switch l.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("USERD_LOG_LEVEL (--log-level) must be debug, info, warn or error, got %q", l.LogLevel)
	}
	return nil
}
