package users

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/userd/userd/internal/apperr"
)

// The price list lives in the database and is managed through the API
// (SetPrice), not loaded from configuration: every replica then charges the
// same price at the same moment, a change needs no deploy, and each change
// is audited with who made it. (Prices in configuration would differ
// between replicas for the length of a rolling deploy.)

// Price is what one use of a named action costs.
type Price struct {
	Action  string
	Credits int64
	// CreatedAt is when the action was first priced, UpdatedAt when the
	// current price took effect.
	CreatedAt time.Time
	UpdatedAt time.Time
	// UpdatedBy is the principal that set the current price.
	UpdatedBy string
}

// PriceChange is one audited change of the price list.
type PriceChange struct {
	ID     int64
	Action string
	// PreviousCredits is 0 when the change created the action.
	PreviousCredits int64
	Credits         int64
	ChangedBy       string
	ChangedAt       time.Time
}

// SetPriceInput is a request to set an action's price.
type SetPriceInput struct {
	Action  string
	Credits int64
	// ChangedBy names the principal making the change, for the audit
	// history; the transport sets it from the caller's credentials.
	ChangedBy string
}

func (in SetPriceInput) validate() error {
	var v violations
	v.action("action", in.Action)
	v.amount("credits", in.Credits, false)
	if in.ChangedBy == "" {
		// Never from a caller: the transport sets it.
		return fmt.Errorf("set price: no principal to record")
	}
	return v.err()
}

// SetPriceResult is what SetPrice did.
type SetPriceResult struct {
	// Price is the price in effect after the call.
	Price Price
	// Change is the change recorded, or nil when the action already had
	// this price (nothing was written).
	Change *PriceChange
}

// SetPrice sets the price of in.Action, creating the action if it is new,
// and records the change with who made it and when. Deductions by action
// in flight finish at the old price first (the change waits for them);
// setting the price already in effect changes nothing.
func (s *Service) SetPrice(ctx context.Context, in SetPriceInput) (SetPriceResult, error) {
	if err := in.validate(); err != nil {
		return SetPriceResult{}, err
	}
	res, err := s.store.SetPrice(ctx, in)
	if err != nil {
		return SetPriceResult{}, userErr(err, "set price")
	}
	return res, nil
}

// PricePage is one page of the price list.
type PricePage struct {
	Prices []Price
	// NextPageToken is "" on the last page.
	NextPageToken string
}

// Page sizes of the price list and its history.
const (
	DefaultPricePageSize = 100
	MaxPricePageSize     = 1000
)

// Page token prefixes: a version and what the token pages through.
const (
	pricesTokenPrefix       = "pr1:"
	priceChangesTokenPrefix = "pc1:"
)

// ListPrices returns the price list, by action name.
func (s *Service) ListPrices(ctx context.Context, pageSize int32, pageToken string) (PricePage, error) {
	var v violations
	pageSize = v.pageSize("page_size", pageSize, DefaultPricePageSize, MaxPricePageSize)
	after, err := decodePageToken(pricesTokenPrefix, pageToken)
	if err == nil && after != "" && !validAction(after) {
		err = fmt.Errorf("bad action in page token")
	}
	if err != nil {
		v.add("page_token", "is not a token returned by this API")
	}
	if err := v.err(); err != nil {
		return PricePage{}, err
	}
	ps, err := s.store.ListPrices(ctx, after, pageSize+1)
	if err != nil {
		return PricePage{}, userErr(err, "list prices")
	}
	page := PricePage{Prices: ps}
	if len(ps) > int(pageSize) {
		page.Prices = ps[:pageSize]
		page.NextPageToken = encodePageToken(pricesTokenPrefix, ps[pageSize-1].Action)
	}
	return page, nil
}

// PriceChangePage is one page of the price list's history.
type PriceChangePage struct {
	Changes []PriceChange
	// NextPageToken is "" on the last page.
	NextPageToken string
}

// ListPriceChanges returns the audited changes of action ("" for every
// action), newest first.
func (s *Service) ListPriceChanges(ctx context.Context, action string, pageSize int32, pageToken string) (PriceChangePage, error) {
	var v violations
	if action != "" {
		v.action("action", action)
	}
	pageSize = v.pageSize("page_size", pageSize, DefaultPricePageSize, MaxPricePageSize)
	before, err := decodeIDPageToken(priceChangesTokenPrefix, pageToken)
	if err != nil {
		v.add("page_token", "is not a token returned by this API")
	}
	if err := v.err(); err != nil {
		return PriceChangePage{}, err
	}
	cs, err := s.store.ListPriceChanges(ctx, action, before, pageSize+1)
	if err != nil {
		return PriceChangePage{}, userErr(err, "list price changes")
	}
	page := PriceChangePage{Changes: cs}
	if len(cs) > int(pageSize) {
		page.Changes = cs[:pageSize]
		page.NextPageToken = encodePageToken(priceChangesTokenPrefix, strconv.FormatInt(cs[pageSize-1].ID, 10))
	}
	return page, nil
}

// Cost is what a CanAfford check asks about: exactly one of Amount and
// Action.
type Cost struct {
	Amount int64
	Action string
}

// validate checks that exactly one of Amount and Action is set.
func (c Cost) validate(v *violations) {
	switch {
	case c.Action == "":
		v.amount("amount", c.Amount, false)
	case c.Amount != 0:
		v.add("action", "set either amount or action, not both")
	default:
		v.action("action", c.Action)
	}
}

// Affordability is the answer of CanAfford.
type Affordability struct {
	// Required is the amount, or the action's current price.
	Required int64
	// Available is the user's balance.
	Available int64
	// Allowed is Available >= Required (and, for a member spending from
	// an organization's account, Cap.Remaining >= Required).
	Allowed bool
	// Cap is the member's spending cap, when CanAffordFor asked for a
	// member of an organization with a cap; nil otherwise.
	Cap *MemberCap
}

// AffordabilityRead is what the store read for CanAfford.
type AffordabilityRead struct {
	// Price is the action's price; 0 when the action is unknown (or none
	// was asked for).
	Price int64
	// Available is the user's balance, when UserFound.
	Available int64
	UserFound bool
}

// CanAfford says whether the user's balance covers cost, without changing
// anything. The answer can be stale by the time a deduction follows; only
// a deduction decides.
func (s *Service) CanAfford(ctx context.Context, clerkUserID string, cost Cost) (Affordability, error) {
	var v violations
	v.clerkUserID("clerk_user_id", clerkUserID)
	cost.validate(&v)
	if err := v.err(); err != nil {
		return Affordability{}, err
	}
	read, err := s.store.CheckAffordability(ctx, clerkUserID, cost.Action)
	if err != nil {
		return Affordability{}, userErr(err, "can afford")
	}
	required := cost.Amount
	if cost.Action != "" {
		if read.Price == 0 {
			return Affordability{}, unknownAction()
		}
		required = read.Price
	}
	if !read.UserFound {
		return Affordability{}, apperr.NotFound("user not found")
	}
	return Affordability{Required: required, Available: read.Available, Allowed: read.Available >= required}, nil
}

// unknownAction is an invalid argument that callers can also tell apart
// by its reason, without reading descriptions.
func unknownAction() error {
	e := apperr.InvalidArgument(apperr.FieldViolation{Field: "action", Description: "is not in the price list"})
	e.Reason = apperr.ReasonUnknownAction
	return e
}

// deductForAction charges one use of c.Action at its current price.
func (s *Service) deductForAction(ctx context.Context, c CreditChange) (CreditResult, error) {
	res, err := s.store.DeductCreditsForAction(ctx, ActionDeduction{
		ClerkUserID: c.ClerkUserID, Action: c.Action, IdempotencyKey: c.IdempotencyKey, Service: c.Service,
	})
	if err != nil {
		return CreditResult{}, userErr(err, "deduct credits for action")
	}
	switch res.Status {
	case WriteApplied:
		s.observer.CreditsMoved(TxDeduct, res.Price)
		return CreditResult{Transaction: res.Transaction}, nil
	case WriteReplayed:
		return CreditResult{Transaction: res.Transaction, Replayed: true}, nil
	case WriteUnknownAction:
		return CreditResult{}, unknownAction()
	}
	return CreditResult{}, writeErr(res.Status, res.Price, res.Available, "action", "deduct credits for action")
}
