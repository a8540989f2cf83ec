package store

import (
	"time"

	"github.com/google/uuid"

	"github.com/userd/userd/gen/sqlcdb"
	"github.com/userd/userd/internal/users"
)

// nullable maps a zero value to SQL NULL: the domain uses "" and 0 for
// "absent", the schema uses NULL.
func nullable[T comparable](v T) *T {
	var zero T
	if v == zero {
		return nil
	}
	return &v
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// userOut converts a user read with its personal account's plan and
// balance (every query that reads a user has these columns).
func userOut(r sqlcdb.GetLiveUserByClerkIDRow, err error) (users.User, error) {
	if err != nil {
		return users.User{}, translate(err)
	}
	return users.User{
		ID:             r.ID,
		ClerkUserID:    r.ClerkUserID,
		Email:          deref(r.Email),
		FirstName:      deref(r.FirstName),
		LastName:       deref(r.LastName),
		ImageURL:       deref(r.ImageURL),
		Plan:           users.Plan(r.Plan),
		Credits:        r.Credits,
		ClerkUpdatedAt: deref(r.ClerkUpdatedAt),
		CreatedAt:      r.CreatedAt,
		UpdatedAt:      r.UpdatedAt,
		DeletedAt:      r.DeletedAt,
	}, nil
}

// writtenTransaction is the ledger entry a write function returned in its
// t_* columns (the entry written, or the original one of a replay), or nil
// when the id is NULL: it wrote or found none.
func writtenTransaction(id *int64, accountID uuid.UUID, delta, balanceAfter *int64, kind, reason *string,
	createdAt *time.Time, key string, actor *uuid.UUID, service *string) *users.Transaction {
	if id == nil {
		return nil
	}
	return &users.Transaction{
		ID:             *id,
		UserID:         accountID,
		AccountID:      accountID,
		Delta:          deref(delta),
		BalanceAfter:   deref(balanceAfter),
		Kind:           users.TxKind(deref(kind)),
		Reason:         deref(reason),
		IdempotencyKey: key,
		ActorUserID:    deref(actor),
		Service:        deref(service),
		CreatedAt:      deref(createdAt),
	}
}

// ownActor names the owner as the actor of an entry on its personal
// account: the personal write functions record the user itself as the
// actor (actor_user_id = the account's id = the user's), and the ledger
// reads return its Clerk id, so the write's answer says the same.
func ownActor(t *users.Transaction, clerkUserID string) {
	if t != nil && t.ActorUserID != uuid.Nil && t.ActorUserID == t.AccountID {
		t.ActorClerkUserID = clerkUserID
	}
}

// accountOut converts an account read (personal: ownerUser set;
// organization: ownerOrg set).
func accountOut(id uuid.UUID, plan string, credits int64, createdAt, updatedAt time.Time, closedAt *time.Time,
	ownerUser, ownerOrg string) users.Account {
	return users.Account{
		ID:               id,
		OwnerClerkUserID: ownerUser,
		OwnerClerkOrgID:  ownerOrg,
		Plan:             users.Plan(plan),
		Credits:          credits,
		CreatedAt:        createdAt,
		UpdatedAt:        updatedAt,
		ClosedAt:         closedAt,
	}
}
