// Package configtest holds the one configuration fixture of userd's tests:
// a valid `userd serve` configuration, as an operator would write it.
// Validation tests change one field of it at a time; internal/apptest
// derives the configuration of an in-process userd from it (a test
// database, loopback listeners, no Clerk), so that a new setting gets its
// test value here, once.
package configtest

import (
	"strings"
	"time"

	"github.com/userd/userd/internal/config"
)

// Valid returns a configuration that passes config.Serve.Validate and
// app.CheckSettings. It names no reachable server: it is for validation,
// or for callers that replace the addresses (apptest.Config).
func Valid() config.Serve {
	return config.Serve{
		Database:      config.Database{URL: "postgres://u:secretpw@localhost:5432/userd", MaxConns: 16, WriteLanes: 4},
		StandbyReads:  config.StandbyReads{ReadMaxConns: 16, ReadMaxLag: time.Second, ReadTokenWait: 100 * time.Millisecond},
		Log:           config.Log{LogFormat: "json", LogLevel: "info"},
		GRPCAddr:      ":9090",
		HTTPAddr:      ":8080",
		OpsAddr:       ":9091",
		WebhookAddr:   ":8081",
		ServiceTokens: "billing=tok-0123456789abcdef0123456789,worker=sha256:" + strings.Repeat("ab", 32),
		Clerk: config.Clerk{
			WebhookSecret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", WebhookTolerance: 5 * time.Minute, WebhookRetention: 168 * time.Hour,
			JWKSURL:   "https://clerk.example.com/.well-known/jwks.json",
			ClerkAPI:  config.ClerkAPI{APIURL: "https://api.clerk.com", SecretKey: "sk_test_abc", MaxRetryAfter: time.Minute, MaxRetryTime: 5 * time.Minute},
			JWTLeeway: 5 * time.Second, JWTMaxLifetime: 5 * time.Minute, JWKSMinRefresh: 30 * time.Second,
		},
		ClerkSync:     config.ClerkSync{MaxDeleteShare: 0.1, SyncMaxRunTime: 6 * time.Hour},
		Users:         config.Users{InitialCredits: 10},
		ShutdownGrace: 20 * time.Second,
		Bounds: config.Bounds{
			RequestTimeout: 10 * time.Second, DBAcquireTimeout: 2 * time.Second,
			DBStatementTimeout: 5 * time.Second, DBLockTimeout: 2 * time.Second, DBIdleInTransactionTimeout: 10 * time.Second,
		},
		Feed: config.Feed{FeedPollInterval: 100 * time.Millisecond, FeedHeartbeat: 15 * time.Second, FeedRetention: 168 * time.Hour,
			FeedMaxWatches: 4096, FeedMaxWatchesPerUser: 8, FeedMaxWatchesPerService: 256, ReadCache: true, ReadCacheEntries: 100000},
		Limits:        config.DefaultLimits(),
		Organizations: config.Organizations{OrgManagePermission: "org:credits:manage"},
		Console:       config.Console{ConsoleAddr: config.Off, ConsoleSessionTTL: 30 * time.Minute},
		Stripe: config.Stripe{StripeAPIURL: "https://api.stripe.com", StripeAPIRate: 20, StripeMaxRetryTime: time.Minute,
			StripeTolerance: 5 * time.Minute, StripeEventRetention: 720 * time.Hour},
	}
}
