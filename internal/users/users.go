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
	ID             int64
	UserID         uuid.UUID
	Delta          int64
	BalanceAfter   int64
	Kind           TxKind
	Reason         string
	IdempotencyKey string // "" for entries userd makes itself
	CreatedAt      time.Time
}

// PlanChange is one applied SetPlan.
type PlanChange struct {
	ID             int64
	UserID         uuid.UUID
	PreviousPlan   Plan
	Plan           Plan
	BonusCredits   int64
	TransactionID  int64 // 0 when BonusCredits == 0
	Reason         string
	IdempotencyKey string
	CreatedAt      time.Time
}

// KeyUse is what a user already did under an idempotency key. One key
// names one operation: a ledger entry of a deduction or grant, or a plan
// change (whose bonus, if any, is a ledger entry under the same key).
type KeyUse struct {
	Transaction  *Transaction
	PlanChangeID int64 // 0: none
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
	// ErrIdempotencyKeyInUse: the user already has an entry with this key.
	ErrIdempotencyKeyInUse = errors.New("idempotency key already used for this user")
)

// Queries are the storage operations, usable inside or outside a
// transaction.
type Queries interface {
	GetLiveUserByClerkID(ctx context.Context, clerkUserID string) (User, error)
	GetLiveUserByID(ctx context.Context, id uuid.UUID) (User, error)
	GetLiveUserByEmail(ctx context.Context, email string) (User, error)
	GetUserByClerkIDIncludingDeleted(ctx context.Context, clerkUserID string) (User, error)
	// LockLiveUserByClerkID locks the row until the transaction ends; every
	// change of a user's balance or plan takes this lock first.
	LockLiveUserByClerkID(ctx context.Context, clerkUserID string) (User, error)
	// InsertUserWithInitialCredits inserts the user and the INITIAL ledger
	// entry of u.Credits; inserted == false, and no error, when a row for the
	// Clerk id already exists.
	InsertUserWithInitialCredits(ctx context.Context, u NewUser) (user User, inserted bool, err error)
	UpdateUserPlanAndCredits(ctx context.Context, id uuid.UUID, plan Plan, credits int64) (User, error)

	InsertCreditTransaction(ctx context.Context, t Transaction) (Transaction, error)
	// LockLiveUserWithKey is LockLiveUserByClerkID that also returns what
	// the user already did under key, in one round trip. A use committed
	// while the lock was awaited may be missed; inserting it again then
	// fails with ErrIdempotencyKeyInUse.
	LockLiveUserWithKey(ctx context.Context, clerkUserID, key string) (User, KeyUse, error)
	// ApplyCreditTransaction sets the user's balance to t.BalanceAfter and
	// inserts t, in one round trip.
	ApplyCreditTransaction(ctx context.Context, t Transaction) (Transaction, error)
	GetCreditTransactionByID(ctx context.Context, id int64) (Transaction, error)
	// ListCreditTransactions returns up to limit entries with id < beforeID
	// (any id when beforeID is 0), newest first.
	ListCreditTransactions(ctx context.Context, userID uuid.UUID, beforeID int64, limit int32) ([]Transaction, error)

	InsertPlanChange(ctx context.Context, c PlanChange) (PlanChange, error)
	GetPlanChangeByKey(ctx context.Context, userID uuid.UUID, key string) (PlanChange, error)

	// LockUserAndEmailHolder locks the user's row (live or tombstone) and
	// the other live user holding email, if any; either may be nil.
	LockUserAndEmailHolder(ctx context.Context, clerkUserID, email string) (self, holder *User, err error)
	// LockLiveUserByEmailExcept locks the live user other than clerkUserID
	// that holds email (case-insensitively), or returns ErrNoRow.
	LockLiveUserByEmailExcept(ctx context.Context, email, clerkUserID string) (User, error)
	// UpdateUserProfile stores cu's profile fields and version.
	UpdateUserProfile(ctx context.Context, id uuid.UUID, cu ClerkUser) (User, error)
	ClearUserEmail(ctx context.Context, id uuid.UUID) error
	// TombstoneUser marks the user deleted, creating a tombstone row when
	// none exists; an earlier deletion time is kept.
	TombstoneUser(ctx context.Context, clerkUserID string) error

	// RecordWebhookEvent records a Svix message id with its outcome; fresh
	// is false when it was already recorded (by a committed transaction,
	// which a concurrent one waits for).
	RecordWebhookEvent(ctx context.Context, messageID, eventType, objectID, outcome string) (fresh bool, err error)
	// DeleteWebhookEventsBefore forgets up to limit messages processed
	// before a time and says how many it forgot.
	DeleteWebhookEventsBefore(ctx context.Context, before time.Time, limit int32) (int64, error)
}

// Store is the storage the domain needs.
type Store interface {
	Queries
	// InTx runs fn in one transaction, committing when fn returns nil. It may
	// run fn again when the database asks for a retry (serialization
	// failure, deadlock), so fn must not have effects outside the database.
	InTx(ctx context.Context, fn func(q Queries) error) error
}
