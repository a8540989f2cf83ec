package users

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/userd/userd/internal/apperr"
)

// Grants with expiry, the plan catalog and periodic allowances (issue 21).
//
// An account's balance is its pool of credits that never expire plus its
// expiring grants' remainders. A deduction takes from the grants that
// expire soonest first (ties: the older grant), then from the pool; a
// grant's unused remainder leaves the balance at its expiry through a
// ledger entry of kind EXPIRE, so the balance is always the ledger's sum.
// The catalog gives each plan an allowance per period (granted at each
// period's start, anchored at the account's creation, UTC, expiring at its
// end), a rollover cap and a one-time upgrade bonus. The rules live in SQL
// (db/migrations/00022_credit_grants.sql); this file validates and
// translates.

// Ledger entry kinds of issue 21.
const (
	// TxAllowance is a period's allowance, granted by userd.
	TxAllowance TxKind = "ALLOWANCE"
	// TxExpire takes an expired grant's unused remainder out of the
	// balance (negative).
	TxExpire TxKind = "EXPIRE"
)

// Grant sources: what an expiring grant came from. The values are what
// the database stores.
const (
	GrantSourceGrant     = "GRANT"
	GrantSourceAllowance = "ALLOWANCE"
	GrantSourcePurchase  = "PURCHASE"
	GrantSourceRefund    = "REFUND"
	GrantSourceSupport   = "SUPPORT"
	GrantSourceBonus     = "BONUS"
)

// grantSources are the sources a caller may name (ALLOWANCE is userd's).
var grantSources = map[string]bool{
	GrantSourceGrant: true, GrantSourcePurchase: true, GrantSourceRefund: true,
	GrantSourceSupport: true, GrantSourceBonus: true,
}

// MaxGrantLifetime bounds how far ahead a grant's expiry may be.
const MaxGrantLifetime = 100 * 365 * 24 * time.Hour

// Allowance periods (anchored at each account's creation, unlike the
// calendar periods of usage summaries and caps).
const (
	AllowanceDaily   = "day"
	AllowanceWeekly  = "week"
	AllowanceMonthly = "month"
)

// Grant is one expiring grant of an account.
type Grant struct {
	ID          int64
	AccountID   uuid.UUID
	Source      string
	Amount      int64
	Remaining   int64
	EffectiveAt time.Time
	ExpiresAt   time.Time
	// PeriodStart is the period an ALLOWANCE grant is for (nil otherwise).
	PeriodStart *time.Time
	// TransactionID is the ledger entry that granted it.
	TransactionID int64
}

// AccountGrants is what ListGrants returns for an account.
type AccountGrants struct {
	AccountID uuid.UUID
	Plan      Plan
	// Balance is what the account can spend now: NonExpiring plus the
	// live grants' remainders.
	Balance int64
	// NonExpiring is the pool of credits that never expire.
	NonExpiring int64
	// Grants are the live expiring grants, soonest expiry first (the order
	// deductions take from them).
	Grants []Grant
	// NextRefillAt and NextRefillAmount are the next allowance (zero time
	// and 0 when the plan has no allowance). The amount is the plan's
	// allowance; what rolls over is added then.
	NextRefillAt     time.Time
	NextRefillAmount int64
}

// PlanAllowance is one plan's entry in the catalog.
type PlanAllowance struct {
	Plan Plan
	// Allowance is granted at the start of each Period ("day", "week",
	// "month") and expires at its end.
	Allowance int64
	Period    string
	// RolloverCap is how much unused allowance carries into the next
	// period (0: none).
	RolloverCap int64
	// UpgradeBonus is granted once per account on its first upgrade to
	// this plan (credits that never expire).
	UpgradeBonus int64
	UpdatedAt    time.Time
	// UpdatedBy is the principal that set the entry (ChangedBy on input).
	UpdatedBy string
}

func (p PlanAllowance) validate() error {
	var v violations
	v.plan("plan", p.Plan)
	v.amount("allowance", p.Allowance, true)
	switch p.Period {
	case AllowanceDaily, AllowanceWeekly, AllowanceMonthly:
	default:
		v.add("period", "must be day, week or month")
	}
	v.amount("rollover_cap", p.RolloverCap, true)
	v.amount("upgrade_bonus", p.UpgradeBonus, true)
	if err := v.err(); err != nil {
		return err
	}
	if p.UpdatedBy == "" {
		// Never from a caller: the transport sets it.
		return errors.New("set plan allowance: no principal to record")
	}
	return nil
}

// ExpiringGrantWrite is a grant with an expiry, for the store.
type ExpiringGrantWrite struct {
	// ClerkOrgID names an organization's account ("" for ClerkUserID's
	// personal account); ClerkUserID is then the member the service acted
	// for ("" for none).
	ClerkUserID    string
	ClerkOrgID     string
	Service        string
	Amount         int64
	Reason         string
	IdempotencyKey string
	Source         string
	ExpiresAt      time.Time
	Now            time.Time
}

// AllowanceBatch is what one batch of the expiry and refill job did.
type AllowanceBatch struct {
	// Accounts is how many accounts the batch processed; Expired how many
	// of them had grants expired; Granted the allowance credits granted.
	Accounts int
	Expired  int
	Granted  int64
}

// GrantStore is what the store does for grants, the catalog and the job.
type GrantStore interface {
	GrantExpiringCredits(ctx context.Context, w ExpiringGrantWrite) (CreditWriteResult, error)
	GetAccountGrants(ctx context.Context, ref AccountRef, now time.Time) (AccountGrants, error)
	SetPlanAllowance(ctx context.Context, p PlanAllowance) (applied bool, err error)
	ListPlanCatalog(ctx context.Context) ([]PlanAllowance, error)
	RunAllowances(ctx context.Context, now time.Time, batchSize int32) (AllowanceBatch, error)
}

// deductionHasNoGrantFields refuses the grant-only fields on a deduction.
func (c CreditChange) deductionHasNoGrantFields(v *violations) {
	if !c.ExpiresAt.IsZero() {
		v.add("expires_at", "only grants expire")
	}
	if c.GrantSource != "" {
		v.add("grant_source", "only grants have a source")
	}
}

// validateExpiry checks the expiry and source of a grant at now.
func (c CreditChange) validateExpiry(v *violations, now time.Time) {
	if c.GrantSource != "" && !grantSources[c.GrantSource] {
		v.add("grant_source", "must be GRANT, PURCHASE, REFUND, SUPPORT or BONUS")
	}
	if c.ExpiresAt.IsZero() {
		return
	}
	switch {
	case !c.ExpiresAt.After(now):
		v.add("expires_at", "must be in the future")
	case c.ExpiresAt.Sub(now) > MaxGrantLifetime:
		v.add("expires_at", "must be within 100 years")
	}
}

// grantExpiring is GrantCredits with an expiry (personal or organization).
func (s *Service) grantExpiring(ctx context.Context, c CreditChange) (CreditResult, error) {
	var v violations
	now := s.now()
	if c.ClerkOrgID != "" {
		v.clerkOrgID("clerk_org_id", c.ClerkOrgID)
		if c.ClerkUserID != "" {
			v.clerkUserID("clerk_user_id", c.ClerkUserID)
		}
	} else {
		v.clerkUserID("clerk_user_id", c.ClerkUserID)
	}
	v.amount("amount", c.Amount, false)
	if c.Action != "" {
		v.add("action", "only deductions are priced by action")
	}
	if c.RequiredPermission != "" {
		v.add("required_permission", "only deductions require a permission")
	}
	v.idempotencyKey("idempotency_key", c.IdempotencyKey)
	v.text("reason", c.Reason, MaxReason)
	c.validateExpiry(&v, now)
	if err := v.err(); err != nil {
		return CreditResult{}, err
	}
	source := c.GrantSource
	if source == "" {
		source = GrantSourceGrant
	}
	res, err := s.store.GrantExpiringCredits(ctx, ExpiringGrantWrite{
		ClerkUserID: c.ClerkUserID, ClerkOrgID: c.ClerkOrgID, Service: c.Service, Amount: c.Amount,
		Reason: c.Reason, IdempotencyKey: c.IdempotencyKey, Source: source,
		ExpiresAt: c.ExpiresAt.UTC().Truncate(time.Microsecond), Now: now,
	})
	const op = "grant expiring credits"
	if err != nil {
		return CreditResult{}, userErr(err, op)
	}
	switch res.Status {
	case WriteApplied:
		s.observer.CreditsMoved(TxGrant, c.Amount)
		return CreditResult{Transaction: res.Transaction}, nil
	case WriteReplayed:
		return CreditResult{Transaction: res.Transaction, Replayed: true}, nil
	}
	if c.ClerkOrgID != "" {
		return CreditResult{}, orgWriteErr(res.Status, c.Amount, res.Available, nil, "", "amount", op)
	}
	if res.Status == WriteClosed {
		return CreditResult{}, apperr.AccountClosed()
	}
	return CreditResult{}, writeErr(res.Status, c.Amount, res.Available, "amount", op)
}

// ListGrants returns the live expiring grants of the account ref names
// (as GetAccount), its pool of credits that never expire and its next
// allowance. Grants that are due but not yet expired by the job are not
// listed, and not counted in Balance.
func (s *Service) ListGrants(ctx context.Context, ref AccountRef) (AccountGrants, error) {
	var v violations
	if ref.ClerkOrgID != "" {
		v.clerkOrgID("clerk_org_id", ref.ClerkOrgID)
	} else {
		v.clerkUserID("clerk_user_id", ref.ClerkUserID)
	}
	if err := v.err(); err != nil {
		return AccountGrants{}, err
	}
	g, err := s.store.GetAccountGrants(ctx, ref, s.now())
	if errors.Is(err, ErrNoRow) {
		return AccountGrants{}, apperr.NotFound("account not found")
	}
	if err != nil {
		return AccountGrants{}, userErr(err, "list grants")
	}
	return g, nil
}

// GetPlanCatalog returns the catalog: one entry per plan that has one.
// Empty: no allowances (today's behaviour).
func (s *Service) GetPlanCatalog(ctx context.Context) ([]PlanAllowance, error) {
	c, err := s.store.ListPlanCatalog(ctx)
	if err != nil {
		return nil, userErr(err, "get plan catalog")
	}
	return c, nil
}

// SetPlanAllowance sets p.Plan's catalog entry and audits the change (who:
// p.UpdatedBy, set by the transport). It applies to each account from its
// next period; an account that was never refilled gets its current period
// at the job's next run. applied is false when the entry was already so.
func (s *Service) SetPlanAllowance(ctx context.Context, p PlanAllowance) (PlanAllowance, bool, error) {
	if p.Period == "" {
		p.Period = AllowanceMonthly
	}
	if err := p.validate(); err != nil {
		return PlanAllowance{}, false, err
	}
	applied, err := s.store.SetPlanAllowance(ctx, p)
	if err != nil {
		return PlanAllowance{}, false, userErr(err, "set plan allowance")
	}
	catalog, err := s.store.ListPlanCatalog(ctx)
	if err != nil {
		return PlanAllowance{}, false, userErr(err, "set plan allowance")
	}
	for _, e := range catalog {
		if e.Plan == p.Plan {
			return e, applied, nil
		}
	}
	return PlanAllowance{}, false, fmt.Errorf("set plan allowance: %s missing after the write", p.Plan)
}

// AllowanceRun is what one run of the expiry and refill job did.
type AllowanceRun struct {
	Batches  int
	Accounts int
	Expired  int
	Granted  int64
}

// DefaultAllowanceBatch is how many accounts one transaction of the job
// processes.
const DefaultAllowanceBatch = 500

// RunAllowances runs the expiry and refill job once at the Service's
// clock: batches of one transaction each until no account is due. Safe to
// run on several replicas at once (accounts in another batch are skipped
// and every grant is exactly once per account and period by constraint);
// userd runs it on one replica at a time (store.RunAllowanceJob).
func (s *Service) RunAllowances(ctx context.Context, batchSize int32) (AllowanceRun, error) {
	if batchSize <= 0 {
		batchSize = DefaultAllowanceBatch
	}
	now := s.now()
	var run AllowanceRun
	for {
		b, err := s.store.RunAllowances(ctx, now, batchSize)
		if err != nil {
			return run, userErr(err, "run allowances")
		}
		run.Batches++
		run.Accounts += b.Accounts
		run.Expired += b.Expired
		run.Granted += b.Granted
		if b.Granted > 0 {
			s.observer.CreditsMoved(TxAllowance, b.Granted)
		}
		if b.Accounts == 0 {
			return run, nil
		}
	}
}
