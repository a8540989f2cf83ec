package telemetry

import "github.com/prometheus/client_golang/prometheus"

// StripeMetrics counts the Stripe webhook endpoint's deliveries
// (stripehook.Recorder), beside the Clerk endpoint's.
type StripeMetrics struct {
	events, rejected *prometheus.CounterVec
}

// NewStripeMetrics registers the Stripe endpoint's counters on m's registry.
func NewStripeMetrics(m *Metrics) *StripeMetrics {
	s := &StripeMetrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "userd_stripe_webhook_events_total",
			Help: "Verified Stripe webhook deliveries by event type and outcome (applied, duplicate, ignored, bad_payload, cannot_apply, unavailable, internal).",
		}, []string{"type", "outcome"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "userd_stripe_webhook_rejected_total",
			Help: "Stripe webhook deliveries refused before their content was trusted, by reason (bad_signature, timestamp_out_of_tolerance, missing_headers, malformed_timestamp, body_too_large, unreadable_body, secret_not_configured, api_version_mismatch). Only a sample of them is logged.",
		}, []string{"reason"}),
	}
	m.Registry.MustRegister(s.events, s.rejected)
	return s
}

// StripeWebhookEvent counts one verified delivery.
func (s *StripeMetrics) StripeWebhookEvent(eventType, outcome string) {
	s.events.WithLabelValues(eventType, outcome).Inc()
}

// StripeWebhookRejected counts one refused delivery.
func (s *StripeMetrics) StripeWebhookRejected(reason string) {
	s.rejected.WithLabelValues(reason).Inc()
}
