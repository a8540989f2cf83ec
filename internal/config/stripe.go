package config

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Stripe configures Stripe billing (issue 22): the webhook endpoint's
// secrets and the API key userd creates customers and reads subscriptions
// with.
type Stripe struct {
	StripeWebhookSecrets string        `name:"stripe-webhook-secrets" env:"USERD_STRIPE_WEBHOOK_SECRETS" help:"Signing secret(s) of the Stripe webhook endpoint (whsec_...), comma-separated to rotate. Unset: POST /webhooks/stripe refuses every delivery. Prefer the environment variable over the flag."`
	StripeSecretKey      string        `name:"stripe-secret-key" env:"STRIPE_SECRET_KEY" help:"Stripe secret key (sk_... or a restricted rk_... with read access to customers, subscriptions, Checkout Sessions and events, write access to customers). Unset: subscription events cannot be applied (answered 5xx, Stripe retries) and EnsureBillingCustomer fails."`
	StripeAPIURL         string        `name:"stripe-api-url" env:"USERD_STRIPE_API_URL" default:"https://api.stripe.com" help:"Stripe API base URL (stripe-mock or a fake in tests)."`
	StripeAPIRate        float64       `name:"stripe-api-rate" env:"USERD_STRIPE_API_RATE" default:"20" help:"Stripe API calls per second userd makes at most (Stripe allows 100 in live mode, 25 in test mode)."`
	StripeMaxRetryTime   time.Duration `name:"stripe-api-max-retry-time" env:"USERD_STRIPE_API_MAX_RETRY_TIME" default:"1m" help:"Longest time one Stripe API call is retried (429, 5xx, network errors), attempts and waits together."`
	StripeTolerance      time.Duration `name:"stripe-webhook-tolerance" env:"USERD_STRIPE_WEBHOOK_TOLERANCE" default:"5m" help:"Accepted distance between a delivery's signed timestamp (Stripe-Signature t=) and now."`
	StripeEventRetention time.Duration `name:"stripe-event-retention" env:"USERD_STRIPE_EVENT_RETENTION" default:"720h" help:"How long applied Stripe event ids are remembered (Stripe retries for three days and keeps events 30 days); 0 keeps them forever."`
}

// Validate checks the Stripe settings; messages never contain a secret.
func (s Stripe) Validate() error {
	if err := absoluteURL("USERD_STRIPE_API_URL (--stripe-api-url)", s.StripeAPIURL); err != nil {
		return err
	}
	if s.StripeSecretKey != "" && !strings.HasPrefix(s.StripeSecretKey, "sk_") && !strings.HasPrefix(s.StripeSecretKey, "rk_") {
		return errors.New(`STRIPE_SECRET_KEY (--stripe-secret-key) must start with "sk_" or "rk_" (Stripe dashboard, Developers, API keys)`)
	}
	if s.StripeAPIRate <= 0 || s.StripeAPIRate > 100 {
		return fmt.Errorf("USERD_STRIPE_API_RATE (--stripe-api-rate) must be above 0 and at most 100, got %g", s.StripeAPIRate)
	}
	if s.StripeMaxRetryTime < time.Second || s.StripeMaxRetryTime > time.Hour {
		return fmt.Errorf("USERD_STRIPE_API_MAX_RETRY_TIME (--stripe-api-max-retry-time) must be between 1s and 1h, got %s", s.StripeMaxRetryTime)
	}
	if s.StripeTolerance < time.Second || s.StripeTolerance > time.Hour {
		return fmt.Errorf("USERD_STRIPE_WEBHOOK_TOLERANCE (--stripe-webhook-tolerance) must be between 1s and 1h, got %s", s.StripeTolerance)
	}
	if s.StripeEventRetention != 0 && s.StripeEventRetention < 96*time.Hour {
		return fmt.Errorf("USERD_STRIPE_EVENT_RETENTION (--stripe-event-retention) must be 0 (forever) or at least 96h, longer than Stripe's three days of retries; got %s", s.StripeEventRetention)
	}
	return nil
}
