package config_test

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/userd/userd/internal/config"
	"github.com/userd/userd/internal/config/configtest"
)

func TestValidate(t *testing.T) {
	t.Parallel()
	if err := configtest.Valid().Validate(); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
	cases := []struct {
		name   string
		change func(*config.Serve)
		want   string // the setting the message must name
	}{
		{"ZeroMaxConns", func(c *config.Serve) { c.Database.MaxConns = 0 }, "USERD_DB_MAX_CONNS"},
		{"BadGRPCAddr", func(c *config.Serve) { c.GRPCAddr = "9090" }, "USERD_GRPC_ADDR"},
		{"NegativeInitialCredits", func(c *config.Serve) { c.InitialCredits = -1 }, "USERD_INITIAL_CREDITS"},
		{"ZeroReadMaxConns", func(c *config.Serve) { c.ReadMaxConns = 0 }, "USERD_DB_READ_MAX_CONNS"},
		{"TinyReadMaxLag", func(c *config.Serve) { c.ReadMaxLag = time.Millisecond }, "USERD_READ_MAX_LAG"},
		{"NegativeReadTokenWait", func(c *config.Serve) { c.ReadTokenWait = -time.Second }, "USERD_READ_TOKEN_WAIT"},
		{"LongReadTokenWait", func(c *config.Serve) { c.ReadTokenWait = time.Minute }, "USERD_READ_TOKEN_WAIT"},
		{"ReadURLWithEmbedded", func(c *config.Serve) { c.ReadURL, c.Database.URL = "postgres://s1/userd", "" }, "USERD_DATABASE_READ_URL"},
		{"HugeInitialCredits", func(c *config.Serve) { c.InitialCredits = 1 << 62 }, "USERD_INITIAL_CREDITS"},
		{"NegativeGrace", func(c *config.Serve) { c.ShutdownGrace = -time.Second }, "USERD_SHUTDOWN_GRACE"},
		{"BadLogFormat", func(c *config.Serve) { c.LogFormat = "xml" }, "USERD_LOG_FORMAT"},
		{"BadWebhookAddr", func(c *config.Serve) { c.WebhookAddr = "localhost" }, "USERD_WEBHOOK_ADDR"},
		{"ShortRetention", func(c *config.Serve) { c.WebhookRetention = time.Hour }, "USERD_WEBHOOK_RETENTION"},
		{"ZeroTolerance", func(c *config.Serve) { c.WebhookTolerance = 0 }, "USERD_WEBHOOK_TOLERANCE"},
		{"BadOpsAddr", func(c *config.Serve) { c.OpsAddr = "metrics" }, "USERD_OPS_ADDR"},
		{"BadHTTPAddr", func(c *config.Serve) { c.HTTPAddr = "8080" }, "USERD_HTTP_ADDR"},
		{"BothJWTKeySources", func(c *config.Serve) { c.JWTKey = "MIIB" }, "CLERK_JWT_KEY"},
		{"RelativeJWKSURL", func(c *config.Serve) { c.JWKSURL = "/jwks" }, "CLERK_JWKS_URL"},
		{"SecretKeyNotSK", func(c *config.Serve) { c.SecretKey = "pk_test_secretpw" }, "CLERK_SECRET_KEY"},
		{"HugeLeeway", func(c *config.Serve) { c.JWTLeeway = time.Hour }, "USERD_JWT_LEEWAY"},
		{"ShortJWTMaxLifetime", func(c *config.Serve) { c.JWTMaxLifetime = 30 * time.Second }, "USERD_JWT_MAX_LIFETIME"},
		{"TinyJWKSRefresh", func(c *config.Serve) { c.JWKSMinRefresh = time.Millisecond }, "USERD_JWKS_MIN_REFRESH"},
		{"BadLogLevel", func(c *config.Serve) { c.LogLevel = "loud" }, "USERD_LOG_LEVEL"},
		{"NegativeAccessLogReads", func(c *config.Serve) { c.AccessLogReads = -1 }, "USERD_ACCESS_LOG_READS"},
		{"ZeroRequestTimeout", func(c *config.Serve) { c.RequestTimeout = 0 }, "USERD_REQUEST_TIMEOUT"},
		{"HugeRequestTimeout", func(c *config.Serve) { c.RequestTimeout = time.Hour }, "USERD_REQUEST_TIMEOUT"},
		{"ZeroAcquireTimeout", func(c *config.Serve) { c.DBAcquireTimeout = 0 }, "USERD_DB_ACQUIRE_TIMEOUT"},
		{"AcquireBeyondRequest", func(c *config.Serve) { c.DBAcquireTimeout = 11 * time.Second }, "USERD_DB_ACQUIRE_TIMEOUT"},
		{"NegativeStatementTimeout", func(c *config.Serve) { c.DBStatementTimeout = -time.Second }, "USERD_DB_STATEMENT_TIMEOUT"},
		{"SubMillisecondLockTimeout", func(c *config.Serve) { c.DBLockTimeout = 1500 * time.Microsecond }, "USERD_DB_LOCK_TIMEOUT"},
		{"NegativeIdleInTxTimeout", func(c *config.Serve) { c.DBIdleInTransactionTimeout = -1 }, "USERD_DB_IDLE_IN_TRANSACTION_TIMEOUT"},
		{"NegativeAPIRate", func(c *config.Serve) { c.APIRate = -1 }, "USERD_CLERK_API_RATE"},
		{"ShortSyncInterval", func(c *config.Serve) { c.SyncInterval = time.Second }, "USERD_CLERK_SYNC_INTERVAL"},
		{"SyncWithoutSecretKey", func(c *config.Serve) { c.SyncInterval, c.SecretKey = time.Hour, "" }, "CLERK_SECRET_KEY"},
		{"DeleteShareAboveOne", func(c *config.Serve) { c.MaxDeleteShare = 1.5 }, "USERD_CLERK_SYNC_MAX_DELETE_SHARE"},
		{"DeleteShareNaN", func(c *config.Serve) { c.MaxDeleteShare = math.NaN() }, "USERD_CLERK_SYNC_MAX_DELETE_SHARE"},
		{"TinyFeedPoll", func(c *config.Serve) { c.FeedPollInterval = time.Millisecond }, "USERD_FEED_POLL_INTERVAL"},
		{"SlowFeedPoll", func(c *config.Serve) { c.FeedPollInterval = time.Minute }, "USERD_FEED_POLL_INTERVAL"},
		{"ZeroFeedHeartbeat", func(c *config.Serve) { c.FeedHeartbeat = 0 }, "USERD_FEED_HEARTBEAT"},
		{"ShortFeedRetention", func(c *config.Serve) { c.FeedRetention = time.Minute }, "USERD_FEED_RETENTION"},
		{"ZeroFeedMaxWatches", func(c *config.Serve) { c.FeedMaxWatches = 0 }, "USERD_FEED_MAX_WATCHES"},
		{"ZeroWatchesPerUser", func(c *config.Serve) { c.FeedMaxWatchesPerUser = 0 }, "USERD_FEED_MAX_WATCHES_PER_USER"},
		{"NegativeWatchesPerService", func(c *config.Serve) { c.FeedMaxWatchesPerService = -1 }, "USERD_FEED_MAX_WATCHES_PER_SERVICE"},
		{"ZeroGRPCMaxConns", func(c *config.Serve) { c.GRPCMaxConns = 0 }, "USERD_GRPC_MAX_CONNS"},
		{"SpendPermissionNotAKey", func(c *config.Serve) { c.OrgSpendPermission = "credits:spend" }, "USERD_ORG_SPEND_PERMISSION"},
		{"SpendPermissionSystem", func(c *config.Serve) { c.OrgSpendPermission = "org:sys_memberships:manage" }, "USERD_ORG_SPEND_PERMISSION"},
		{"SpendPermissionList", func(c *config.Serve) { c.OrgSpendPermission = "org:credits:spend,org:credits:read" }, "USERD_ORG_SPEND_PERMISSION"},
		{"ManagePermissionRole", func(c *config.Serve) { c.OrgManagePermission = "org:admin" }, "USERD_ORG_MANAGE_PERMISSION"},
		{"HugeHTTPMaxConns", func(c *config.Serve) { c.HTTPMaxConns = 10_000_000 }, "USERD_HTTP_MAX_CONNS"},
		{"ZeroWebhookMaxConns", func(c *config.Serve) { c.WebhookMaxConns = 0 }, "USERD_WEBHOOK_MAX_CONNS"},
		{"ZeroOpsMaxConns", func(c *config.Serve) { c.OpsMaxConns = 0 }, "USERD_OPS_MAX_CONNS"},
		{"ZeroHealthWatchMax", func(c *config.Serve) { c.HealthWatchMax = 0 }, "USERD_HEALTH_WATCH_MAX"},
		{"NoMaxConnectionAge", func(c *config.Serve) { c.GRPCMaxConnectionAge = 0 }, "USERD_GRPC_MAX_CONNECTION_AGE"},
		{"NoMaxConnectionIdle", func(c *config.Serve) { c.GRPCMaxConnectionIdle = 0 }, "USERD_GRPC_MAX_CONNECTION_IDLE"},
		{"NoAgeGrace", func(c *config.Serve) { c.GRPCMaxConnectionAgeGrace = 0 }, "USERD_GRPC_MAX_CONNECTION_AGE_GRACE"},
		{"TinyKeepaliveMinTime", func(c *config.Serve) { c.GRPCKeepaliveMinTime = time.Millisecond }, "USERD_GRPC_KEEPALIVE_MIN_TIME"},
		{"NoKeepaliveTime", func(c *config.Serve) { c.GRPCKeepaliveTime = 0 }, "USERD_GRPC_KEEPALIVE_TIME"},
		{"NoKeepaliveTimeout", func(c *config.Serve) { c.GRPCKeepaliveTimeout = 0 }, "USERD_GRPC_KEEPALIVE_TIMEOUT"},
		{"NoReadHeaderTimeout", func(c *config.Serve) { c.HTTPReadHeaderTimeout = 0 }, "USERD_HTTP_READ_HEADER_TIMEOUT"},
		{"LongReadHeaderTimeout", func(c *config.Serve) { c.HTTPReadHeaderTimeout = time.Hour }, "USERD_HTTP_READ_HEADER_TIMEOUT"},
		{"NoIdleTimeout", func(c *config.Serve) { c.HTTPIdleTimeout = 0 }, "USERD_HTTP_IDLE_TIMEOUT"},
		{"WeekIdleTimeout", func(c *config.Serve) { c.HTTPIdleTimeout = 7 * 24 * time.Hour }, "USERD_HTTP_IDLE_TIMEOUT"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := configtest.Valid()
			tc.change(&c)
			err := c.Validate()
			if err == nil {
				t.Fatal("Validate accepted the config")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not name %s", err, tc.want)
			}
			if strings.Contains(err.Error(), "secretpw") || strings.Contains(err.Error(), "MfKQ9r8") || strings.Contains(err.Error(), "g0hM9") {
				t.Errorf("error %q leaks a secret", err)
			}
		})
	}
}
