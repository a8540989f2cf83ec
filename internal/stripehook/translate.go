package stripehook

import (
	"github.com/stripe/stripe-go/v82"

	"github.com/userd/userd/internal/billing"
	"github.com/userd/userd/internal/stripeapi"
)

// Translate turns a verified Stripe event into billing's terms
// (stripeapi.TranslateEvent: shared with sync-stripe's replay of listed
// events, so both read an event the same way).
func Translate(e stripe.Event) (billing.Event, error) { return stripeapi.TranslateEvent(e) }
