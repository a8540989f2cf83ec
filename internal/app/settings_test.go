package app_test

import (
	"strings"
	"testing"
	"time"

	"github.com/userd/userd/internal/app"
	"github.com/userd/userd/internal/config"
)

func valid() config.Serve {
	return config.Serve{
		Database:      config.Database{URL: "postgres://u:secretpw@localhost:5432/userd", MaxConns: 16},
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
		Feed: config.Feed{FeedPollInterval: 100 * time.Millisecond, FeedHeartbeat: 15 * time.Second, FeedRetention: 168 * time.Hour},
	}
}

// TestCheckSettings: the settings that only their own packages parse are
// refused before anything starts, by name and without the secret.
func TestCheckSettings(t *testing.T) {
	t.Parallel()
	if err := app.CheckSettings(valid()); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
	cases := []struct {
		name   string
		change func(*config.Serve)
		want   string // the setting the message must name
	}{
		{"BadDatabaseURL", func(c *config.Serve) { c.Database.URL = "postgres://u:secretpw@host:notaport/db" }, "DATABASE_URL"},
		{"SecretWithoutPrefix", func(c *config.Serve) { c.WebhookSecret = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }, "CLERK_WEBHOOK_SECRET"},
		{"SecretIsASignature", func(c *config.Serve) { c.WebhookSecret = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=" }, "CLERK_WEBHOOK_SECRET"},
		{"SecondSecretNotBase64", func(c *config.Serve) { c.WebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw,whsec_!!!" }, "secret #2"},
		{"ShortServiceToken", func(c *config.Serve) { c.ServiceTokens = "billing=secretpw" }, "USERD_SERVICE_TOKENS"},
		{"ServiceTokenNoName", func(c *config.Serve) { c.ServiceTokens = "=tok-0123456789abcdef0123456789" }, "USERD_SERVICE_TOKENS"},
		{"ServiceTokenTwice", func(c *config.Serve) {
			c.ServiceTokens = "a=tok-0123456789abcdef0123456789,a=tok-0123456789abcdef0123456780"
		}, "USERD_SERVICE_TOKENS"},
		{"ServiceTokenBadHash", func(c *config.Serve) { c.ServiceTokens = "a=sha256:xyz" }, "USERD_SERVICE_TOKENS"},
		{"ConfigValidateToo", func(c *config.Serve) { c.GRPCAddr = "9090" }, "USERD_GRPC_ADDR"},
		{"TinyAPIRate", func(c *config.Serve) { c.APIRate = 5 }, "USERD_CLERK_API_RATE"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := valid()
			tc.change(&c)
			err := app.CheckSettings(c)
			if err == nil {
				t.Fatal("CheckSettings accepted the config")
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
