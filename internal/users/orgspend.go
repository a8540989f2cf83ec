package users

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/userd/userd/internal/apperr"
)

// Spending from an organization's account (issue 20). A member spends
// from its organization's account only while its membership is live, only
// with the permission the caller requires (CreditChange.RequiredPermission,
// set by the transport from USERD_ORG_SPEND_PERMISSION for end users), and
// never past the spending cap an organization admin set for it for the
// current UTC day, week or month. The database checks all of it in the
// spend's own transaction, under the account's row lock (see
// userd_org_spend in db/schema.sql), so a member removed by a committed
// membership deletion cannot spend afterwards, and members racing cannot
// exceed their caps or the balance.

// CapPeriod is the period a member's spending cap counts over: a UTC day,
// an ISO week (from Monday 00:00 UTC) or a calendar month (UTC).
type CapPeriod string

// Cap periods. The values are what the database stores.
const (
	// CapPeriodNone: no cap (SetMemberSpendingCap removes the cap).
	CapPeriodNone  CapPeriod = ""
	CapPeriodDay   CapPeriod = "day"
	CapPeriodWeek  CapPeriod = "week"
	CapPeriodMonth CapPeriod = "month"
)

// Valid reports whether p is a period a cap can have.
func (p CapPeriod) Valid() bool {
	switch p {
	case CapPeriodDay, CapPeriodWeek, CapPeriodMonth:
		return true
	}
	return false
}

// Start is the start of the period of p holding t, in UTC.
func (p CapPeriod) Start(t time.Time) time.Time {
	y, m, d := t.UTC().Date()
	switch p {
	case CapPeriodWeek:
		// Days back to Monday: 0 on a Monday, 6 on a Sunday.
		back := (int(t.UTC().Weekday()) + 6) % 7
		return time.Date(y, m, d-back, 0, 0, 0, 0, time.UTC)
	case CapPeriodMonth:
		return time.Date(y, m, 1, 0, 0, 0, 0, time.UTC)
	}
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}

// End is the end of the period of p that starts at start.
func (p CapPeriod) End(start time.Time) time.Time {
	switch p {
	case CapPeriodWeek:
		return start.AddDate(0, 0, 7)
	case CapPeriodMonth:
		return start.AddDate(0, 1, 0)
	}
	return start.AddDate(0, 0, 1)
}

// MemberCap is a member's spending cap on an organization's account and
// what the member spent in the cap's current period.
type MemberCap struct {
	Period CapPeriod
	Cap    int64
	// Spent is what the member spent from the account in the current
	// period [PeriodStart, PeriodEnd); Remaining is Cap - Spent, at least 0.
	Spent       int64
	Remaining   int64
	PeriodStart time.Time
	PeriodEnd   time.Time
	// UpdatedAt and UpdatedBy say when and by whom the cap was set.
	UpdatedAt time.Time
	UpdatedBy string
}

// MemberCapRead is one cap as the store reads it: Spent is the current
// period's.
type MemberCapRead struct {
	ClerkUserID string
	MemberCap
}

// OrgSpendStore is what the store does for spending from organization
// accounts; each call is one round trip.
type OrgSpendStore interface {
	// OrgSpend deducts from an organization's account on behalf of a
	// member, checking the membership, the permission and the member's cap
	// under the account's row lock, or reports why not.
	OrgSpend(ctx context.Context, w OrgSpendWrite) (OrgSpendResult, error)
	// SetMemberCap sets or removes a member's cap, under the account's
	// row lock, with its audit row and feed event.
	SetMemberCap(ctx context.Context, w MemberCapWrite) (MemberCapWriteResult, error)
	// ListMemberCaps returns the caps on an organization's account with
	// each member's spending in the period of now (nil: the database's
	// clock), by member.
	ListMemberCaps(ctx context.Context, clerkOrgID string, now *time.Time) ([]MemberCapRead, error)
	// CheckOrgAffordability reads, without locking, what a member's
	// deduction would be checked against.
	CheckOrgAffordability(ctx context.Context, clerkOrgID, member, permission, action string, now *time.Time) (OrgAffordabilityRead, error)
	// OrgAccountID returns the id of an organization's account (ErrNoRow:
	// none).
	OrgAccountID(ctx context.Context, clerkOrgID string) (uuid.UUID, error)
	// ListAccountCreditTransactions returns up to limit entries of the
	// account with id < beforeID (any when 0), newest first, only those
	// where member acted unless member is "", with their actors' Clerk ids.
	ListAccountCreditTransactions(ctx context.Context, accountID uuid.UUID, member string, beforeID int64, limit int32) ([]Transaction, error)
	// OrgChangeCredits grants to an organization's account, for a
	// service (no membership or cap applies).
	OrgChangeCredits(ctx context.Context, w OrgCreditWrite) (OrgSpendResult, error)
	// SummarizeUsageByMember sums an account's entries in [start, end) by
	// the user who acted, up to limit members.
	SummarizeUsageByMember(ctx context.Context, accountID uuid.UUID, start, end time.Time, limit int32) ([]MemberUsage, error)
	// OrgSetPlan changes an organization's plan and grants the bonus,
	// for a service, in one round trip.
	OrgSetPlan(ctx context.Context, w OrgPlanWrite) (PlanWriteResult, error)
	// ListAccountMembers returns an organization's live members with
	// their caps and spending in the period of now (nil: the database's
	// clock), by Clerk user id.
	ListAccountMembers(ctx context.Context, clerkOrgID string, now *time.Time) ([]AccountMember, error)
}

// OrgCreditWrite is a grant to an organization's account for the store.
type OrgCreditWrite struct {
	ClerkOrgID string
	// ActorClerkUserID, when set, is the user the service acted for.
	ActorClerkUserID string
	Service          string
	Kind             TxKind
	Delta            int64
	Reason           string
	IdempotencyKey   string
}

// grantToOrganization adds c.Amount to the account of c.ClerkOrgID, for a
// service (the transport lets only services grant); c.ClerkUserID, when
// set, is recorded as the user the service acted for.
func (s *Service) grantToOrganization(ctx context.Context, c CreditChange) (CreditResult, error) {
	var v violations
	v.clerkOrgID("clerk_org_id", c.ClerkOrgID)
	if c.ClerkUserID != "" {
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
	c.validateExpiry(&v, time.Time{})
	if err := v.err(); err != nil {
		return CreditResult{}, err
	}
	return s.orgChangeCredits(ctx, c, TxGrant, c.Amount, "grant credits to organization")
}

// DeductFromOrganizationForService deducts c.Amount from the account of
// c.ClerkOrgID for the backend service c.Service, with no member acting:
// no membership, permission or cap applies, and the ledger entry names the
// service alone (no actor). It is for in-process callers taking back what a
// service gave the organization — billing's refunds and lost disputes of a
// credit pack (internal/billing) — and is not on the API, where a deduction
// from an organization names the member who spends. Never below zero:
// KindInsufficientCredits as DeductCredits.
func (s *Service) DeductFromOrganizationForService(ctx context.Context, c CreditChange) (CreditResult, error) {
	if err := checkAudit(ctx); err != nil {
		return CreditResult{}, err
	}
	var v violations
	v.clerkOrgID("clerk_org_id", c.ClerkOrgID)
	if c.ClerkUserID != "" {
		v.add("clerk_user_id", "must be empty: no member acts")
	}
	if c.Service == "" {
		v.add("service", "is required: the ledger entry names it")
	}
	v.amount("amount", c.Amount, false)
	if c.Action != "" {
		v.add("action", "only amounts are deducted for a service")
	}
	if c.RequiredPermission != "" {
		v.add("required_permission", "no member acts")
	}
	c.deductionHasNoGrantFields(&v)
	v.idempotencyKey("idempotency_key", c.IdempotencyKey)
	v.text("reason", c.Reason, MaxReason)
	if err := v.err(); err != nil {
		return CreditResult{}, err
	}
	return s.orgChangeCredits(ctx, c, TxDeduct, -c.Amount, "deduct credits from organization for a service")
}

// orgChangeCredits writes a validated grant or service deduction on an
// organization's account.
func (s *Service) orgChangeCredits(ctx context.Context, c CreditChange, kind TxKind, delta int64, op string) (CreditResult, error) {
	res, err := s.store.OrgChangeCredits(ctx, OrgCreditWrite{
		ClerkOrgID:       c.ClerkOrgID,
		ActorClerkUserID: c.ClerkUserID,
		Service:          c.Service,
		Kind:             kind,
		Delta:            delta,
		Reason:           c.Reason,
		IdempotencyKey:   c.IdempotencyKey,
	})
	if err != nil {
		return CreditResult{}, userErr(err, op)
	}
	switch res.Status {
	case WriteApplied:
		s.observer.CreditsMoved(kind, c.Amount)
		return CreditResult{Transaction: res.Transaction}, nil
	case WriteReplayed:
		return CreditResult{Transaction: res.Transaction, Replayed: true}, nil
	}
	return CreditResult{}, orgWriteErr(res.Status, c.Amount, res.Available, nil, "", "amount", op)
}

// accountMembers returns an organization's live members with their caps
// and what each spent in its cap's current period.
func (s *Service) accountMembers(ctx context.Context, clerkOrgID string) ([]AccountMember, error) {
	ms, err := s.store.ListAccountMembers(ctx, clerkOrgID, s.capNow())
	if err != nil {
		return nil, userErr(err, "get account members")
	}
	return ms, nil
}

// OrgSpendWrite is a deduction from an organization's account for the
// store: by Amount, or by one use of Action at its current price.
type OrgSpendWrite struct {
	ClerkOrgID         string
	MemberClerkUserID  string
	Service            string
	RequiredPermission string
	Amount             int64
	Action             string
	Reason             string
	IdempotencyKey     string
	// Now, when set, is the time whose period the member's cap counts in;
	// nil: the database's clock (the one the ledger's times are in).
	Now *time.Time
}

// OrgSpendResult is what OrgSpend did.
type OrgSpendResult struct {
	// Status, Available, Transaction and Price as for ChangeCredits and
	// DeductCreditsForAction.
	CreditWriteResult
	AccountID uuid.UUID
	// Cap is the member's cap (nil without one): after the spend when
	// applied, what refused it when WriteCapReached.
	Cap *MemberCap
}

// Statuses of a spend from an organization's account, besides those of
// the personal path.
const (
	// WriteNotMember: the acting user has no live membership.
	WriteNotMember WriteStatus = "not_member"
	// WriteMissingPermission: the membership lacks the required
	// permission.
	WriteMissingPermission WriteStatus = "missing_permission"
	// WriteUserNotFound: the member is not a live user.
	WriteUserNotFound WriteStatus = "user_not_found"
	// WriteCapReached: the amount exceeds what is left of the member's
	// cap for the period.
	WriteCapReached WriteStatus = "cap_reached"
	// WriteUnchanged: the cap asked for is already in effect.
	WriteUnchanged WriteStatus = "unchanged"
)

// MemberCapWrite is a cap change for the store.
type MemberCapWrite struct {
	ClerkOrgID        string
	MemberClerkUserID string
	Period            CapPeriod
	Cap               int64
	ChangedBy         string
	Now               *time.Time
}

// MemberCapWriteResult is what SetMemberCap did: Cap is the cap after the
// call (nil: none).
type MemberCapWriteResult struct {
	Status    WriteStatus
	AccountID uuid.UUID
	Cap       *MemberCap
}

// OrgAffordabilityRead is what the store read for CanAfford from an
// organization's account.
type OrgAffordabilityRead struct {
	// Price is the action's price; 0 when unknown or not asked.
	Price int64
	// AccountFound says the organization has an account; Available is
	// its balance, Closed whether it is closed.
	AccountFound bool
	Available    int64
	Closed       bool
	// Member: the user's membership is live; Permitted: and it holds the
	// required permission (any, when none is required).
	Member    bool
	Permitted bool
	// Cap is the member's cap with its current period's spending, or nil.
	Cap *MemberCap
}

// capNow is the time a member's cap counts in: the Service's clock when
// one was injected (tests), else nil, the database's.
func (s *Service) capNow() *time.Time {
	if s.clock == nil {
		return nil
	}
	t := s.clock()
	return &t
}

// validateOrg checks the fields of a deduction from an organization's
// account beyond those of a personal one.
func (c CreditChange) validateOrg(v *violations) {
	v.clerkOrgID("clerk_org_id", c.ClerkOrgID)
	if c.RequiredPermission != "" {
		v.text("required_permission", c.RequiredPermission, MaxPermission)
	}
}

// deductFromOrganization deducts c.Amount, or c.Action's current price,
// from the account of c.ClerkOrgID on behalf of its member c.ClerkUserID.
func (s *Service) deductFromOrganization(ctx context.Context, c CreditChange) (CreditResult, error) {
	err := c.validate(TxDeduct)
	var v violations
	if e, ok := apperr.As(err); ok {
		v = e.Violations
	} else if err != nil {
		return CreditResult{}, err
	}
	c.validateOrg(&v)
	if err := v.err(); err != nil {
		return CreditResult{}, err
	}
	res, err := s.store.OrgSpend(ctx, OrgSpendWrite{
		ClerkOrgID:         c.ClerkOrgID,
		MemberClerkUserID:  c.ClerkUserID,
		Service:            c.Service,
		RequiredPermission: c.RequiredPermission,
		Amount:             c.Amount,
		Action:             c.Action,
		Reason:             c.Reason,
		IdempotencyKey:     c.IdempotencyKey,
		Now:                s.capNow(),
	})
	const op = "deduct credits from organization"
	if err != nil {
		return CreditResult{}, userErr(err, op)
	}
	required := c.Amount
	if c.Action != "" {
		required = res.Price
	}
	switch res.Status {
	case WriteApplied:
		s.observer.CreditsMoved(TxDeduct, required)
		return CreditResult{Transaction: res.Transaction}, nil
	case WriteReplayed:
		return CreditResult{Transaction: res.Transaction, Replayed: true}, nil
	}
	field := "amount"
	if c.Action != "" {
		field = "action"
	}
	return CreditResult{}, orgWriteErr(res.Status, required, res.Available, res.Cap, c.RequiredPermission, field, op)
}

// orgWriteErr is the error of a write to an organization's account that
// did not apply.
func orgWriteErr(st WriteStatus, required, available int64, capState *MemberCap, permission, amountField, op string) error {
	switch st {
	case WriteNotFound:
		return apperr.NotFound("organization not found")
	case WriteClosed:
		return apperr.AccountClosed()
	case WriteNotMember:
		return apperr.NotOrganizationMember()
	case WriteMissingPermission:
		return apperr.MissingOrganizationPermission(permission)
	case WriteUserNotFound:
		return apperr.NotFound("user not found")
	case WriteUnknownAction:
		return unknownAction()
	case WriteCapReached:
		if capState == nil {
			return fmt.Errorf("%s: cap reached without a cap", op)
		}
		return apperr.MemberCapReached(capState.Cap, capState.Spent, capState.Remaining, required, string(capState.Period))
	}
	return writeErr(st, required, available, amountField, op)
}

// SetMemberCapInput is a request to set or remove a member's spending cap
// on its organization's account.
type SetMemberCapInput struct {
	ClerkOrgID        string
	MemberClerkUserID string
	// Period is the cap's period; CapPeriodNone removes the cap.
	Period CapPeriod
	// Cap is what the member may spend per Period (>= 0; 0 forbids
	// spending).
	Cap int64
	// ChangedBy names the principal making the change (a Clerk user id,
	// or "service:<name>"), for the audit history; the transport sets it
	// from the caller's credentials.
	ChangedBy string
}

func (in SetMemberCapInput) validate() error {
	var v violations
	v.clerkOrgID("clerk_org_id", in.ClerkOrgID)
	v.clerkUserID("member_clerk_user_id", in.MemberClerkUserID)
	switch {
	case in.Period == CapPeriodNone:
		if in.Cap != 0 {
			v.add("cap", "must be 0 when the cap is removed (no period)")
		}
	case !in.Period.Valid():
		v.add("period", `must be "day", "week", "month", or empty to remove the cap`)
	default:
		v.amount("cap", in.Cap, true)
	}
	if in.ChangedBy == "" {
		// Never from a caller: the transport sets it.
		return fmt.Errorf("set member spending cap: no principal to record")
	}
	return v.err()
}

// SetMemberCapResult is what SetMemberSpendingCap did.
type SetMemberCapResult struct {
	// Cap is the member's cap after the call, nil when it has none.
	Cap *MemberCap
	// Changed is false when the cap asked for was already in effect (or
	// there was none to remove): nothing was written.
	Changed bool
}

// SetMemberSpendingCap sets the cap on what in.MemberClerkUserID may
// spend from its organization's account per UTC day, week or month, or
// removes it, and records who did it and when (the audit history and a
// member_cap.changed event). Only a live member can be given a cap. A new
// cap counts what the member already spent in the current period; changing
// the amount of a cap keeps its period's count. Spends in flight finish
// first (the change waits for them).
func (s *Service) SetMemberSpendingCap(ctx context.Context, in SetMemberCapInput) (SetMemberCapResult, error) {
	if err := in.validate(); err != nil {
		return SetMemberCapResult{}, err
	}
	res, err := s.store.SetMemberCap(ctx, MemberCapWrite{
		ClerkOrgID:        in.ClerkOrgID,
		MemberClerkUserID: in.MemberClerkUserID,
		Period:            in.Period,
		Cap:               in.Cap,
		ChangedBy:         in.ChangedBy,
		Now:               s.capNow(),
	})
	const op = "set member spending cap"
	if err != nil {
		return SetMemberCapResult{}, userErr(err, op)
	}
	switch res.Status {
	case WriteApplied:
		return SetMemberCapResult{Cap: res.Cap, Changed: true}, nil
	case WriteUnchanged:
		return SetMemberCapResult{Cap: res.Cap}, nil
	}
	return SetMemberCapResult{}, orgWriteErr(res.Status, 0, 0, nil, "", "cap", op)
}

// ListMemberSpendingCaps returns the caps on the organization's account,
// by member, each with what the member spent in its current period.
func (s *Service) ListMemberSpendingCaps(ctx context.Context, clerkOrgID string) ([]MemberCapRead, error) {
	var v violations
	if v.clerkOrgID("clerk_org_id", clerkOrgID); v.err() != nil {
		return nil, v.err()
	}
	caps, err := s.store.ListMemberCaps(ctx, clerkOrgID, s.capNow())
	if err != nil {
		return nil, userErr(err, "list member spending caps")
	}
	return caps, nil
}

// AffordQuery asks whether a deduction of Cost would be allowed: from
// the personal account of ClerkUserID, or, with ClerkOrgID, from the
// organization's account by its member ClerkUserID holding
// RequiredPermission ("" for none).
type AffordQuery struct {
	ClerkUserID        string
	ClerkOrgID         string
	RequiredPermission string
	Cost               Cost
}

// CanAffordFor is CanAfford for a personal account or, with q.ClerkOrgID,
// for a member spending from its organization's account: the member must
// be allowed to spend (as a deduction would check: live membership,
// permission, open account), and Allowed says whether both the balance and
// what is left of the member's cap cover the cost.
func (s *Service) CanAffordFor(ctx context.Context, q AffordQuery) (Affordability, error) {
	if q.ClerkOrgID == "" {
		return s.CanAfford(ctx, q.ClerkUserID, q.Cost)
	}
	return s.canAffordFromOrganization(ctx, q.ClerkOrgID, q.ClerkUserID, q.RequiredPermission, q.Cost)
}

// canAffordFromOrganization is CanAffordFor a member of an organization.
func (s *Service) canAffordFromOrganization(ctx context.Context, clerkOrgID, member, permission string, cost Cost) (Affordability, error) {
	var v violations
	v.clerkOrgID("clerk_org_id", clerkOrgID)
	v.clerkUserID("clerk_user_id", member)
	cost.validate(&v)
	if permission != "" {
		v.text("required_permission", permission, MaxPermission)
	}
	if err := v.err(); err != nil {
		return Affordability{}, err
	}
	read, err := s.store.CheckOrgAffordability(ctx, clerkOrgID, member, permission, cost.Action, s.capNow())
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
	switch {
	case !read.AccountFound:
		return Affordability{}, apperr.NotFound("organization not found")
	case read.Closed:
		return Affordability{}, apperr.AccountClosed()
	case !read.Member:
		return Affordability{}, apperr.NotOrganizationMember()
	case !read.Permitted:
		return Affordability{}, apperr.MissingOrganizationPermission(permission)
	}
	a := Affordability{Required: required, Available: read.Available, Cap: read.Cap}
	a.Allowed = read.Available >= required && (read.Cap == nil || read.Cap.Remaining >= required)
	return a, nil
}

// LedgerQuery asks for one page of an account's ledger: the personal
// account of ClerkUserID, or, with ClerkOrgID, the organization's account,
// whose entries MemberClerkUserID (optional) filters to those where that
// member acted.
type LedgerQuery struct {
	ClerkUserID       string
	ClerkOrgID        string
	MemberClerkUserID string
	PageSize          int32
	PageToken         string
}

// ListAccountCreditTransactions returns an account's ledger, newest first:
// ListCreditTransactions for a personal account; for an organization's
// account, every entry (or a member's), each naming the user who acted
// (ActorClerkUserID, "" for a service that named none).
func (s *Service) ListAccountCreditTransactions(ctx context.Context, q LedgerQuery) (TransactionPage, error) {
	if q.ClerkOrgID == "" {
		if q.MemberClerkUserID != "" {
			return TransactionPage{}, apperr.InvalidArgument(apperr.FieldViolation{
				Field: "member_clerk_user_id", Description: "filters an organization's ledger only"})
		}
		return s.ListCreditTransactions(ctx, q.ClerkUserID, q.PageSize, q.PageToken)
	}
	var v violations
	v.clerkOrgID("clerk_org_id", q.ClerkOrgID)
	if q.MemberClerkUserID != "" {
		v.clerkUserID("member_clerk_user_id", q.MemberClerkUserID)
	}
	pageSize := v.pageSize("page_size", q.PageSize, DefaultPageSize, MaxPageSize)
	before, err := decodeIDPageToken(ledgerTokenPrefix, q.PageToken)
	if err != nil {
		v.add("page_token", "is not a token returned by this API")
	}
	if err := v.err(); err != nil {
		return TransactionPage{}, err
	}
	const op = "list organization credit transactions"
	id, err := s.store.OrgAccountID(ctx, q.ClerkOrgID)
	if errors.Is(err, ErrNoRow) {
		return TransactionPage{}, apperr.NotFound("organization not found")
	}
	if err != nil {
		return TransactionPage{}, userErr(err, op)
	}
	// One extra row tells whether another page follows.
	ts, err := s.store.ListAccountCreditTransactions(ctx, id, q.MemberClerkUserID, before, pageSize+1)
	if err != nil {
		return TransactionPage{}, userErr(err, op)
	}
	page := TransactionPage{Transactions: ts}
	if len(ts) > int(pageSize) {
		page.Transactions = ts[:pageSize]
		page.NextPageToken = encodePageToken(ledgerTokenPrefix, strconv.FormatInt(ts[pageSize-1].ID, 10))
	}
	return page, nil
}

// OrgPlanWrite is a plan change of an organization's account for the
// store.
type OrgPlanWrite struct {
	ClerkOrgID     string
	Service        string
	Plan           Plan
	BonusCredits   int64
	Reason         string
	IdempotencyKey string
}

// setOrganizationPlan is SetPlan for an organization's account (the
// transport lets only services change plans).
func (s *Service) setOrganizationPlan(ctx context.Context, in SetPlanInput) (SetPlanResult, error) {
	var v violations
	v.clerkOrgID("clerk_org_id", in.ClerkOrgID)
	if in.ClerkUserID != "" {
		v.add("clerk_user_id", "must be empty with clerk_org_id")
	}
	v.plan("plan", in.Plan)
	v.amount("bonus_credits", in.BonusCredits, true)
	v.idempotencyKey("idempotency_key", in.IdempotencyKey)
	v.text("reason", in.Reason, MaxReason)
	if err := v.err(); err != nil {
		return SetPlanResult{}, err
	}
	const op = "set organization plan"
	res, err := s.store.OrgSetPlan(ctx, OrgPlanWrite{
		ClerkOrgID: in.ClerkOrgID, Service: in.Service, Plan: in.Plan, BonusCredits: in.BonusCredits,
		Reason: in.Reason, IdempotencyKey: in.IdempotencyKey,
	})
	if err != nil {
		return SetPlanResult{}, userErr(err, op)
	}
	switch res.Status {
	case WriteApplied:
		if in.BonusCredits > 0 {
			s.observer.CreditsMoved(TxPlanBonus, in.BonusCredits)
		}
		return res.SetPlanResult, nil
	case WriteReplayed:
		r := res.SetPlanResult
		r.Replayed = true
		return r, nil
	}
	return SetPlanResult{}, orgWriteErr(res.Status, in.BonusCredits, 0, nil, "", "bonus_credits", op)
}

// MemberUsage sums the entries of an organization's account that one
// member acted for (ClerkUserID "" for the entries no user acted for:
// services' grants).
type MemberUsage struct {
	ClerkUserID string
	UsageTotals
}

// MaxUsageMembers is the most members a summary by member lists.
const MaxUsageMembers = 1000

// SummarizeUsageByMember sums the entries of the organization's account
// created in [start, end) by the member who acted, those that moved the
// most credits first (at most MaxUsageMembers). A zero end is now; a zero
// start is DefaultUsageWindow before end.
func (s *Service) SummarizeUsageByMember(ctx context.Context, clerkOrgID string, start, end time.Time) ([]MemberUsage, error) {
	var v violations
	v.clerkOrgID("clerk_org_id", clerkOrgID)
	if end.IsZero() {
		end = s.now()
	}
	if start.IsZero() {
		start = end.Add(-DefaultUsageWindow)
	}
	start, end = ceilMicrosecond(start), ceilMicrosecond(end)
	if !end.After(start) {
		v.add("end_time", "must be after start_time")
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	const op = "summarize usage by member"
	id, err := s.store.OrgAccountID(ctx, clerkOrgID)
	if errors.Is(err, ErrNoRow) {
		return nil, apperr.NotFound("organization not found")
	}
	if err != nil {
		return nil, userErr(err, op)
	}
	ms, err := s.store.SummarizeUsageByMember(ctx, id, start, end, MaxUsageMembers)
	if err != nil {
		return nil, userErr(err, op)
	}
	return ms, nil
}
