// Package users is userd's domain: the rules for creating users, moving
// credits and changing plans. It knows nothing of protobuf, HTTP or SQL; it
// speaks to storage through the Store interface below (implemented by
// internal/store over PostgreSQL) and returns *apperr.Error for everything a
// caller may see.
package users

import (
	"context"
	"errors"
	"time"

	"github.com/google/uuid"
)

// Plan is a commercial plan.
type Plan string

// Plans. The values are what the database stores.
const (
	PlanFree       Plan = "FREE"
	PlanPro        Plan = "PRO"
	PlanEnterprise Plan = "ENTERPRISE"
)

// Valid reports whether p is a known plan.
func (p Plan) Valid() bool {
	switch p {
	case PlanFree, PlanPro, PlanEnterprise:
		return true
	}
	return false
}

// TxKind says why a ledger entry exists.
type TxKind string

// Ledger entry kinds. The values are what the database stores.
const (
	TxInitial   TxKind = "INITIAL"
	TxDeduct    TxKind = "DEDUCT"
	TxGrant     TxKind = "GRANT"
	TxPlanBonus TxKind = "PLAN_BONUS"
)

// User is one user as stored.
type User struct {
	ID          uuid.UUID
	ClerkUserID string
	Email       string // "" when the user has none
	FirstName   string
	LastName    string
	ImageURL    string
	Plan        Plan
	Credits     int64
	// ClerkUpdatedAt is Clerk's updated_at (ms) of the stored profile, 0 if
	// unknown.
	ClerkUpdatedAt int64
	CreatedAt      time.Time
	UpdatedAt      time.Time
	// DeletedAt is set once Clerk deleted the user.
	DeletedAt *time.Time
}

// Transaction is one ledger entry.
type Transaction struct {
	ID int64
	// UserID is the id of the account the entry belongs to: for a personal
	// account, its owner's user id (AccountID, kept for callers that name
	// users).
	UserID         uuid.UUID
	AccountID      uuid.UUID
	Delta          int64
	BalanceAfter   int64
	Kind           TxKind
	Reason         string
	IdempotencyKey string // "" for entries userd makes itself
	// ActorUserID is the user who acted (for a personal account its owner,
	// for an organization account the member who spent); uuid.Nil when
	// userd acted (the initial credits) or a service named no user.
	ActorUserID uuid.UUID
	// ActorClerkUserID is the Clerk id of the user who acted, when the
	// listing read it (ListAccountCreditTransactions); "" otherwise.
	ActorClerkUserID string
	// Service is the name of the service token that made the call; "" for
	// an end user's own call and for entries userd makes itself.
	Service   string
	CreatedAt time.Time
}

// PlanChange is one applied SetPlan.
type PlanChange struct {
	ID int64
	// UserID is the account's id, as for Transaction.
	UserID         uuid.UUID
	AccountID      uuid.UUID
	PreviousPlan   Plan
	Plan           Plan
	BonusCredits   int64
	TransactionID  int64 // 0 when BonusCredits == 0
	Reason         string
	IdempotencyKey string
	// ActorUserID and Service: who made the change, as for Transaction.
	ActorUserID uuid.UUID
	Service     string
	CreatedAt   time.Time
}

// Account owns a plan, a balance, a ledger and an idempotency key space:
// a user's personal account (its id is the user's id) or an
// organization's account.
type Account struct {
	ID uuid.UUID
	// Exactly one owner: OwnerClerkUserID for a personal account,
	// OwnerClerkOrgID for an organization's.
	OwnerClerkUserID string
	OwnerClerkOrgID  string
	Plan             Plan
	Credits          int64
	CreatedAt        time.Time
	UpdatedAt        time.Time
	// ClosedAt is set once the account was closed (its organization was
	// deleted): it refuses spends, grants and plan changes and keeps its
	// ledger.
	ClosedAt *time.Time
	// Members are an organization account's live members (none for a
	// personal account).
	Members []AccountMember
}

// AccountMember is a live member of an organization account.
type AccountMember struct {
	ClerkUserID string
	// Role is Clerk's role key (e.g. "org:admin").
	Role        string
	Permissions []string
	// CapPeriod is "day", "week" or "month" when the member has a spending
	// cap, "" when not; Cap and Spent are the cap and what the member spent
	// in the current period.
	CapPeriod string
	Cap       int64
	Spent     int64
	// With a cap: Remaining is Cap - Spent (at least 0), the current
	// period is [PeriodStart, PeriodEnd) (UTC), and CapUpdatedAt and
	// CapUpdatedBy say when and by whom the cap was set.
	Remaining    int64
	PeriodStart  time.Time
	PeriodEnd    time.Time
	CapUpdatedAt time.Time
	CapUpdatedBy string
}

// SetCap fills the member's cap fields from c.
func (m *AccountMember) SetCap(c *MemberCap) {
	m.CapPeriod, m.Cap, m.Spent, m.Remaining = string(c.Period), c.Cap, c.Spent, c.Remaining
	m.PeriodStart, m.PeriodEnd, m.CapUpdatedAt, m.CapUpdatedBy = c.PeriodStart, c.PeriodEnd, c.UpdatedAt, c.UpdatedBy
}

// AccountRef names an account: the personal account of ClerkUserID, or,
// when ClerkOrgID is set, the organization's account.
type AccountRef struct {
	ClerkUserID string
	ClerkOrgID  string
}

// WriteStatus is what a keyed write (ChangeCredits, SetPlan) did. The store
// reports expected outcomes as a status, not an error, so that each write
// is one round trip.
type WriteStatus string

// Write statuses.
const (
	// WriteApplied: the change was made.
	WriteApplied WriteStatus = "applied"
	// WriteReplayed: the key already applied the same parameters; the
	// result is the original one and nothing changed.
	WriteReplayed WriteStatus = "replayed"
	// WriteKeyReused: the key already applied something else.
	WriteKeyReused WriteStatus = "key_reused"
	// WriteInsufficient: the balance is below the amount.
	WriteInsufficient WriteStatus = "insufficient"
	// WriteOverflow: the balance would overflow.
	WriteOverflow WriteStatus = "overflow"
	// WriteNotFound: no live user has the Clerk id.
	WriteNotFound WriteStatus = "not_found"
	// WriteUnknownAction: a deduction by action names an action the price
	// list does not have.
	WriteUnknownAction WriteStatus = "unknown_action"
	// WriteClosed: the account is closed (its organization was deleted).
	WriteClosed WriteStatus = "closed"
)

// CreditWrite is a deduction (Delta < 0) or grant (Delta > 0) for the store.
type CreditWrite struct {
	ClerkUserID    string
	Kind           TxKind
	Delta          int64
	Reason         string
	IdempotencyKey string
	// Service is the calling service's name, recorded on the entry ("" for
	// an end user).
	Service string
}

// CreditWriteResult is what ChangeCredits did.
type CreditWriteResult struct {
	Status WriteStatus
	// Available is the balance seen under the lock (after the change when
	// applied); set unless Status is WriteNotFound or WriteKeyReused.
	Available int64
	// Transaction is the entry written (applied) or the original one
	// (replayed).
	Transaction Transaction
	// Price, for a deduction by action, is the price charged (applied,
	// replayed) or asked (insufficient).
	Price int64
}

// ActionDeduction is a deduction of an action's current price for the
// store.
type ActionDeduction struct {
	ClerkUserID    string
	Action         string
	IdempotencyKey string
	// Service: as for CreditWrite.
	Service string
}

// PlanWrite is a plan change for the store.
type PlanWrite struct {
	ClerkUserID    string
	Plan           Plan
	BonusCredits   int64
	Reason         string
	IdempotencyKey string
	// Service: as for CreditWrite.
	Service string
}

// PlanWriteResult is what SetPlan did; User, Change and Bonus are set when
// Status is WriteApplied or WriteReplayed.
type PlanWriteResult struct {
	Status WriteStatus
	SetPlanResult
}

// ClerkEventWrite is one verified Clerk delivery for ApplyClerkEvents:
// about a user (Org and Membership nil), an organization (Org set) or a
// membership (Membership set).
type ClerkEventWrite struct {
	MessageID string
	Type      string
	// Deleted marks a deletion: user.deleted (only User.ID is used),
	// organization.deleted (only Org.ID) or organizationMembership.deleted.
	Deleted    bool
	User       ClerkUser
	Org        *ClerkOrganization
	Membership *ClerkMembership
}

// lockKey orders the events of a batch: the rows an event locks are
// taken in this order across a batch, so that two batches touching the
// same rows rarely wait for each other in a cycle. An organization's events
// come before its memberships' (an organization event locks the
// organization, then its account; a membership event its account, then the
// membership), organizations before users ("org_" < "user_").
func (e ClerkEventWrite) lockKey() string {
	switch {
	case e.Org != nil:
		return e.Org.ID + "\x00a"
	case e.Membership != nil:
		return e.Membership.OrgID + "\x00b"
	}
	return e.User.ID
}

// ClerkApplyOptions are the settings ApplyClerkEvents applies events with.
type ClerkApplyOptions struct {
	// InitialCredits is what a new user gets.
	InitialCredits int64
	// EraseDeleted erases the personal data (email, names, image) of a
	// user when its deletion is applied, and the name, slug and image of
	// a deleted organization; the tombstone, ledger and plan history stay.
	EraseDeleted bool
	// OrgInitialCredits is what a new organization's account gets.
	OrgInitialCredits int64
}

// ClerkEventResult is what applying one event did: an outcome, or
// OutcomeRetry with the SQLSTATE of the failure (the event changed
// nothing and may be applied again).
type ClerkEventResult struct {
	Outcome   EventOutcome
	ErrorCode string
}

// NewUser is what InsertUserWithInitialCredits stores.
type NewUser struct {
	ClerkUserID    string
	Email          string
	FirstName      string
	LastName       string
	ImageURL       string
	Credits        int64
	ClerkUpdatedAt int64
}

// Errors the Store returns for expected outcomes. Anything else it returns is
// either an *apperr.Error (database unavailable) or unexpected.
var (
	// ErrNoRow: the row asked for does not exist.
	ErrNoRow = errors.New("no such row")
	// ErrEmailInUse: another live user holds the email.
	ErrEmailInUse = errors.New("email held by another live user")
	// ErrIdempotencyKeyInUse: the user already has an entry with this key
	// (a key written by a replica older than the one key space).
	ErrIdempotencyKeyInUse = errors.New("idempotency key already used for this user")
)

// Store is the storage the domain needs. Every write is one call (one
// round trip, one statement or server-side function); the store reports
// expected outcomes as values, not errors.
type Store interface {
	// OrgSpendStore: spending from organization accounts and members'
	// caps (orgspend.go).
	OrgSpendStore
	// GrantStore: expiring grants, the plan catalog and the allowance job
	// (grants.go).
	GrantStore

	GetLiveUserByClerkID(ctx context.Context, clerkUserID string) (User, error)
	GetLiveUserByID(ctx context.Context, id uuid.UUID) (User, error)
	GetLiveUserByEmail(ctx context.Context, email string) (User, error)
	GetUserByClerkIDIncludingDeleted(ctx context.Context, clerkUserID string) (User, error)
	// InsertUserWithInitialCredits inserts the user, its personal account
	// and the INITIAL ledger entry of u.Credits; inserted == false, and no
	// error, when a row for the Clerk id already exists.
	InsertUserWithInitialCredits(ctx context.Context, u NewUser) (user User, inserted bool, err error)
	// GetPersonalAccount returns the personal account of a live user
	// (ErrNoRow when there is no such user).
	GetPersonalAccount(ctx context.Context, clerkUserID string) (Account, error)
	// GetOrganizationAccount returns the account of an organization, by
	// its Clerk id, without its members (ErrNoRow when there is none).
	GetOrganizationAccount(ctx context.Context, clerkOrgID string) (Account, error)

	// ChangeCredits applies a deduction or grant to a user's personal
	// account in one round trip: it locks the account, claims the key in
	// the account's one key space, moves the balance and writes the ledger
	// entry (with the user as actor and w.Service), or reports why not.
	ChangeCredits(ctx context.Context, w CreditWrite) (CreditWriteResult, error)
	// DeductCreditsForAction charges one use of an action at the price in
	// effect when it commits, in one round trip, under the same lock and
	// key space as ChangeCredits.
	DeductCreditsForAction(ctx context.Context, d ActionDeduction) (CreditWriteResult, error)
	// SetPlan changes the plan and grants the bonus in one round trip,
	// under the same lock and key space as ChangeCredits.
	SetPlan(ctx context.Context, w PlanWrite) (PlanWriteResult, error)
	// ListCreditTransactions returns up to limit entries with id < beforeID
	// (any id when beforeID is 0), newest first.
	ListCreditTransactions(ctx context.Context, userID uuid.UUID, beforeID int64, limit int32) ([]Transaction, error)

	// SummarizeUsage sums a live user's ledger over a window in one
	// statement (ErrNoRow when there is no such user).
	SummarizeUsage(ctx context.Context, scan UsageScan) (UsageRows, error)
	// CheckAffordability reads an action's price and a user's balance in
	// one round trip.
	CheckAffordability(ctx context.Context, clerkUserID, action string) (AffordabilityRead, error)

	// SetPrice sets an action's price and records the change in one round
	// trip.
	SetPrice(ctx context.Context, in SetPriceInput) (SetPriceResult, error)
	// ListPrices returns up to limit prices with actions after after, by
	// action.
	ListPrices(ctx context.Context, after string, limit int32) ([]Price, error)
	// ListPriceChanges returns up to limit changes of action (all when "")
	// with id < beforeID (any id when 0), newest first.
	ListPriceChanges(ctx context.Context, action string, beforeID int64, limit int32) ([]PriceChange, error)

	// ApplyClerkEvents applies verified Clerk deliveries in one round trip
	// and one transaction, each event on its own (one that fails leaves the
	// others applied), and returns one result per event, in order.
	ApplyClerkEvents(ctx context.Context, events []ClerkEventWrite, opts ClerkApplyOptions) ([]ClerkEventResult, error)
	// DeleteWebhookEventsBefore forgets up to limit messages processed
	// before a time and says how many it forgot.
	DeleteWebhookEventsBefore(ctx context.Context, before time.Time, limit int32) (int64, error)

	// GetClerkVersions returns the stored version of each of the Clerk ids
	// that has a row (deleted or not), in no particular order.
	GetClerkVersions(ctx context.Context, clerkUserIDs []string) ([]ClerkVersion, error)
	// ListLiveClerkUserIDs returns up to limit Clerk ids of live users
	// greater than after, in order.
	ListLiveClerkUserIDs(ctx context.Context, after string, limit int32) ([]string, error)

	// OrganizationsOf returns the Clerk ids of the live organizations the
	// user has a live membership of, in order.
	OrganizationsOf(ctx context.Context, clerkUserID string) ([]string, error)
	// GetOrganization returns an organization (deleted or not) with its
	// account and live members in one round trip (ErrNoRow: none).
	GetOrganization(ctx context.Context, clerkOrgID string) (Organization, error)
	// GetClerkOrgVersions returns the stored version of each of the
	// organizations that has a row (deleted or not), in no order.
	GetClerkOrgVersions(ctx context.Context, clerkOrgIDs []string) ([]ClerkVersion, error)
	// ListLiveClerkOrgIDs returns up to limit Clerk ids of live
	// organizations greater than after, in order.
	ListLiveClerkOrgIDs(ctx context.Context, after string, limit int32) ([]string, error)
	// GetClerkMembershipVersions returns the stored version of each of
	// the memberships that has a row (deleted or not), in no order.
	GetClerkMembershipVersions(ctx context.Context, clerkMembershipIDs []string) ([]ClerkVersion, error)
	// ListLiveMemberships returns the live memberships of an
	// organization, by membership id.
	ListLiveMemberships(ctx context.Context, clerkOrgID string) ([]Membership, error)
}
