package billing

import (
	"context"
	"fmt"
	"regexp"
	"time"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/users"
)

// The price map lives in the database and is managed through the API
// (SetStripePrice), audited like the price list: every replica reads the
// same map, and a change needs no deploy.

// Kinds of price map entries.
const (
	// KindPlan: a subscription price; its subscriptions give Plan, and
	// each paid invoice of it grants Credits per unit, expiring at the
	// end of the invoice's period.
	KindPlan = "PLAN"
	// KindPack: a one-time price; each unit bought grants Credits that
	// never expire.
	KindPack = "PACK"
)

// Price is one price map entry.
type Price struct {
	PriceID string
	Kind    string
	// Plan is the plan of a KindPlan entry ("" for a pack).
	Plan    users.Plan
	Credits int64
	// UpdatedAt and UpdatedBy say when and by whom the entry was last set.
	UpdatedAt time.Time
	UpdatedBy string
}

// PriceChange is one audited change of the price map.
type PriceChange struct {
	ID      int64
	PriceID string
	// Previous is nil when the change created the entry.
	Previous  *Price
	Kind      string
	Plan      users.Plan
	Credits   int64
	ChangedBy string
	ChangedAt time.Time
}

// priceIDPattern is the form of Stripe price ids (and of the legacy plan
// ids, which subscriptions may still carry).
var priceIDPattern = regexp.MustCompile(`^(price|plan)_[A-Za-z0-9_]{1,250}$`)

// MaxCredits bounds a price map entry's credits (as the price list's).
const MaxCredits = 1_000_000_000_000

func (p Price) validate() error {
	var v []apperr.FieldViolation
	if !priceIDPattern.MatchString(p.PriceID) {
		v = append(v, apperr.FieldViolation{Field: "price_id", Description: `must be a Stripe price id ("price_...")`})
	}
	switch p.Kind {
	case KindPlan:
		if !p.Plan.Valid() {
			v = append(v, apperr.FieldViolation{Field: "plan", Description: "must be FREE, PRO or ENTERPRISE for a PLAN entry"})
		}
	case KindPack:
		if p.Plan != "" {
			v = append(v, apperr.FieldViolation{Field: "plan", Description: "must be empty for a PACK entry"})
		}
		if p.Credits <= 0 {
			v = append(v, apperr.FieldViolation{Field: "credits", Description: "must be positive for a PACK entry"})
		}
	default:
		v = append(v, apperr.FieldViolation{Field: "kind", Description: "must be PLAN or PACK"})
	}
	if p.Credits < 0 || p.Credits > MaxCredits {
		v = append(v, apperr.FieldViolation{Field: "credits", Description: fmt.Sprintf("must be between 0 and %d", int64(MaxCredits))})
	}
	if len(v) > 0 {
		return apperr.InvalidArgument(v...)
	}
	return nil
}

// SetPrice sets a price map entry and records the change with who made it;
// setting what the entry already says changes nothing (changed false).
func (s *Service) SetPrice(ctx context.Context, p Price, changedBy string) (bool, error) {
	if err := p.validate(); err != nil {
		return false, err
	}
	if changedBy == "" {
		return false, fmt.Errorf("set stripe price: no principal to record")
	}
	changed, err := s.store.SetPrice(ctx, p, changedBy)
	if err != nil {
		return false, fmt.Errorf("set stripe price: %w", err)
	}
	return changed, nil
}

// ListPrices returns the whole price map, by price id (it is small: one
// entry per price on sale).
func (s *Service) ListPrices(ctx context.Context) ([]Price, error) {
	var out []Price
	after := ""
	for {
		page, err := s.store.ListPrices(ctx, after, 500)
		if err != nil {
			return nil, fmt.Errorf("list stripe prices: %w", err)
		}
		out = append(out, page...)
		if len(page) < 500 {
			return out, nil
		}
		after = page[len(page)-1].PriceID
	}
}

// ListPriceChanges returns up to limit changes of the price map, newest
// first, with id < beforeID (any when 0).
func (s *Service) ListPriceChanges(ctx context.Context, beforeID int64, limit int32) ([]PriceChange, error) {
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	out, err := s.store.ListPriceChanges(ctx, beforeID, limit)
	if err != nil {
		return nil, fmt.Errorf("list stripe price changes: %w", err)
	}
	return out, nil
}
