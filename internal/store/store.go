// Package store implements users.Store over PostgreSQL with pgx/v5 and the
// sqlc-generated queries in gen/sqlc. It is the only package that touches
// the database: it owns transactions, converts sqlc rows into domain types
// and translates PostgreSQL errors (missing rows, unique violations matched
// by constraint name, connection failures) into the domain's errors.
//
// To add a query: write it in db/queries/<table>.sql, run `make generate`,
// add a method here and to users.Queries.
package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/userd/userd/gen/sqlc"
	"github.com/userd/userd/internal/users"
)

// maxTxAttempts bounds how often InTx re-runs a transaction the database
// asked to retry.
const maxTxAttempts = 3

// rollbackTimeout bounds a rollback on a connection that may be dead.
const rollbackTimeout = 5 * time.Second

// Store is users.Store over a pgx pool.
type Store struct {
	queries
	pool *pgxpool.Pool
}

var _ users.Store = (*Store)(nil)

// New returns a Store over pool.
func New(pool *pgxpool.Pool) *Store {
	return &Store{queries: queries{db: pool, q: sqlcdb.New()}, pool: pool}
}

// InTx runs fn in a READ COMMITTED transaction and commits it. Correctness
// rests on row locks and constraints, not on isolation level; a
// serialization failure or deadlock reported by the database re-runs fn up
// to maxTxAttempts times.
func (s *Store) InTx(ctx context.Context, fn func(users.Queries) error) error {
	var err error
	for range maxTxAttempts {
		err = s.inTxOnce(ctx, fn)
		if !retryable(err) {
			break
		}
	}
	return err
}

func (s *Store) inTxOnce(ctx context.Context, fn func(users.Queries) error) (err error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return translate(fmt.Errorf("begin: %w", err))
	}
	defer func() {
		p := recover()
		if err != nil || p != nil {
			// Also on a panic: a transaction left open would hold its row
			// locks and its connection until restart. The rollback error
			// adds nothing: pgx discards a connection it cannot roll back.
			rbCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
			_ = tx.Rollback(rbCtx)
			cancel()
		}
		if p != nil {
			panic(p)
		}
	}()
	if err := fn(queries{db: tx, q: s.q}); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return translate(fmt.Errorf("commit: %w", err))
	}
	return nil
}

// queries implements users.Queries over a pool or a transaction.
type queries struct {
	db sqlcdb.DBTX
	q  *sqlcdb.Queries
}

var _ users.Queries = queries{}

func (s queries) GetLiveUserByClerkID(ctx context.Context, clerkUserID string) (users.User, error) {
	row, err := s.q.GetLiveUserByClerkID(ctx, s.db, clerkUserID)
	return userOut(row, err)
}

func (s queries) GetLiveUserByID(ctx context.Context, id uuid.UUID) (users.User, error) {
	row, err := s.q.GetLiveUserByID(ctx, s.db, id)
	return userOut(row, err)
}

func (s queries) GetLiveUserByEmail(ctx context.Context, email string) (users.User, error) {
	row, err := s.q.GetLiveUserByEmail(ctx, s.db, email)
	return userOut(row, err)
}

func (s queries) GetUserByClerkIDIncludingDeleted(ctx context.Context, clerkUserID string) (users.User, error) {
	row, err := s.q.GetUserByClerkIDIncludingDeleted(ctx, s.db, clerkUserID)
	return userOut(row, err)
}

func (s queries) LockLiveUserByClerkID(ctx context.Context, clerkUserID string) (users.User, error) {
	row, err := s.q.LockLiveUserByClerkID(ctx, s.db, clerkUserID)
	return userOut(row, err)
}

func (s queries) InsertUserWithInitialCredits(ctx context.Context, u users.NewUser) (users.User, bool, error) {
	row, err := s.q.InsertUserWithInitialCredits(ctx, s.db, sqlcdb.InsertUserWithInitialCreditsParams{
		ClerkUserID:    u.ClerkUserID,
		Email:          nullable(u.Email),
		FirstName:      nullable(u.FirstName),
		LastName:       nullable(u.LastName),
		ImageURL:       nullable(u.ImageURL),
		Credits:        u.Credits,
		ClerkUpdatedAt: nullable(u.ClerkUpdatedAt),
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return users.User{}, false, nil
	}
	out, err := userOut(sqlcdb.User(row), err)
	return out, err == nil, err
}

func (s queries) UpdateUserPlanAndCredits(ctx context.Context, id uuid.UUID, plan users.Plan, credits int64) (users.User, error) {
	row, err := s.q.UpdateUserPlanAndCredits(ctx, s.db, sqlcdb.UpdateUserPlanAndCreditsParams{
		ID: id, Plan: string(plan), Credits: credits,
	})
	return userOut(row, err)
}

func (s queries) InsertCreditTransaction(ctx context.Context, t users.Transaction) (users.Transaction, error) {
	row, err := s.q.InsertCreditTransaction(ctx, s.db, sqlcdb.InsertCreditTransactionParams{
		UserID:         t.UserID,
		Delta:          t.Delta,
		BalanceAfter:   t.BalanceAfter,
		Kind:           string(t.Kind),
		Reason:         t.Reason,
		IdempotencyKey: nullable(t.IdempotencyKey),
	})
	return transactionOut(row, err)
}

func (s queries) LockLiveUserWithKey(ctx context.Context, clerkUserID, key string) (users.User, users.KeyUse, error) {
	row, err := s.q.LockLiveUserWithKey(ctx, s.db, sqlcdb.LockLiveUserWithKeyParams{
		ClerkUserID: clerkUserID, IdempotencyKey: key,
	})
	u, err := userOut(row.User, err)
	if err != nil {
		return u, users.KeyUse{}, err
	}
	use := users.KeyUse{PlanChangeID: deref(row.PlanChangeID)}
	if row.TxID != nil {
		use.Transaction = &users.Transaction{
			ID:             *row.TxID,
			UserID:         u.ID,
			Delta:          deref(row.TxDelta),
			BalanceAfter:   deref(row.TxBalanceAfter),
			Kind:           users.TxKind(deref(row.TxKind)),
			Reason:         deref(row.TxReason),
			IdempotencyKey: key,
			CreatedAt:      deref(row.TxCreatedAt),
		}
	}
	return u, use, nil
}

func (s queries) ApplyCreditTransaction(ctx context.Context, t users.Transaction) (users.Transaction, error) {
	row, err := s.q.ApplyCreditTransaction(ctx, s.db, sqlcdb.ApplyCreditTransactionParams{
		UserID:         t.UserID,
		Delta:          t.Delta,
		BalanceAfter:   t.BalanceAfter,
		Kind:           string(t.Kind),
		Reason:         t.Reason,
		IdempotencyKey: nullable(t.IdempotencyKey),
	})
	return transactionOut(row, err)
}

func (s queries) GetCreditTransactionByID(ctx context.Context, id int64) (users.Transaction, error) {
	row, err := s.q.GetCreditTransactionByID(ctx, s.db, id)
	return transactionOut(row, err)
}

func (s queries) ListCreditTransactions(ctx context.Context, userID uuid.UUID, beforeID int64, limit int32) ([]users.Transaction, error) {
	rows, err := s.q.ListCreditTransactions(ctx, s.db, sqlcdb.ListCreditTransactionsParams{
		UserID: userID, BeforeID: beforeID, RowLimit: limit,
	})
	if err != nil {
		return nil, translate(fmt.Errorf("list credit transactions: %w", err))
	}
	out := make([]users.Transaction, len(rows))
	for i, r := range rows {
		out[i] = transactionFrom(r)
	}
	return out, nil
}

func (s queries) InsertPlanChange(ctx context.Context, c users.PlanChange) (users.PlanChange, error) {
	row, err := s.q.InsertPlanChange(ctx, s.db, sqlcdb.InsertPlanChangeParams{
		UserID:         c.UserID,
		PreviousPlan:   string(c.PreviousPlan),
		Plan:           string(c.Plan),
		BonusCredits:   c.BonusCredits,
		TransactionID:  nullable(c.TransactionID),
		Reason:         c.Reason,
		IdempotencyKey: c.IdempotencyKey,
	})
	return planChangeOut(row, err)
}

func (s queries) GetPlanChangeByKey(ctx context.Context, userID uuid.UUID, key string) (users.PlanChange, error) {
	row, err := s.q.GetPlanChangeByKey(ctx, s.db, sqlcdb.GetPlanChangeByKeyParams{
		UserID: userID, IdempotencyKey: key,
	})
	return planChangeOut(row, err)
}

func (s queries) LockUserAndEmailHolder(ctx context.Context, clerkUserID, email string) (*users.User, *users.User, error) {
	rows, err := s.q.LockUserAndEmailHolder(ctx, s.db, sqlcdb.LockUserAndEmailHolderParams{ClerkUserID: clerkUserID, Email: email})
	if err != nil {
		return nil, nil, translate(err)
	}
	var self, holder *users.User
	for _, r := range rows {
		u, _ := userOut(r, nil)
		if u.ClerkUserID == clerkUserID {
			self = &u
		} else {
			holder = &u
		}
	}
	return self, holder, nil
}

func (s queries) LockLiveUserByEmailExcept(ctx context.Context, email, clerkUserID string) (users.User, error) {
	row, err := s.q.LockLiveUserByEmailExcept(ctx, s.db, sqlcdb.LockLiveUserByEmailExceptParams{
		Email: email, ClerkUserID: clerkUserID,
	})
	return userOut(row, err)
}

func (s queries) UpdateUserProfile(ctx context.Context, id uuid.UUID, cu users.ClerkUser) (users.User, error) {
	row, err := s.q.UpdateUserProfile(ctx, s.db, sqlcdb.UpdateUserProfileParams{
		ID:             id,
		Email:          nullable(cu.Email),
		FirstName:      nullable(cu.FirstName),
		LastName:       nullable(cu.LastName),
		ImageURL:       nullable(cu.ImageURL),
		ClerkUpdatedAt: nullable(cu.UpdatedAt),
	})
	return userOut(row, err)
}

func (s queries) ClearUserEmail(ctx context.Context, id uuid.UUID) error {
	return translate(s.q.ClearUserEmail(ctx, s.db, id))
}

func (s queries) TombstoneUser(ctx context.Context, clerkUserID string) error {
	_, err := s.q.TombstoneUser(ctx, s.db, clerkUserID)
	return translate(err)
}

func (s queries) RecordWebhookEvent(ctx context.Context, messageID, eventType, objectID, outcome string) (bool, error) {
	_, err := s.q.InsertWebhookEvent(ctx, s.db, sqlcdb.InsertWebhookEventParams{
		SvixID: messageID, EventType: eventType, ObjectID: objectID, Outcome: outcome,
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	return err == nil, translate(err)
}

func (s queries) DeleteWebhookEventsBefore(ctx context.Context, before time.Time, limit int32) (int64, error) {
	n, err := s.q.DeleteWebhookEventsBefore(ctx, s.db, sqlcdb.DeleteWebhookEventsBeforeParams{Before: before, RowLimit: limit})
	return n, translate(err)
}
