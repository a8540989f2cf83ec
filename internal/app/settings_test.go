package app_test

import (
	"strings"
	"testing"

	"github.com/userd/userd/internal/app"
	"github.com/userd/userd/internal/config"
	"github.com/userd/userd/internal/config/configtest"
)

// TestCheckSettings: the settings that only their own packages parse are
// refused before anything starts, by name and without the secret.
func TestCheckSettings(t *testing.T) {
	t.Parallel()
	if err := app.CheckSettings(configtest.Valid()); err != nil {
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
			c := configtest.Valid()
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
