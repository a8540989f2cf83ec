package store

import (
	"context"
	"fmt"

	"github.com/userd/userd/gen/sqlcdb"
	"github.com/userd/userd/internal/users"
)

func (s *Store) DeductCreditsForAction(ctx context.Context, d users.ActionDeduction) (users.CreditWriteResult, error) {
	if err := refuseAudit(ctx, "a deduction by action"); err != nil {
		return users.CreditWriteResult{}, err
	}
	row, err := s.q.DeductCreditsForAction(ctx, s.batched(userBatchKey(d.ClerkUserID)), sqlcdb.DeductCreditsForActionParams{
		ClerkUserID:    d.ClerkUserID,
		Action:         d.Action,
		IdempotencyKey: d.IdempotencyKey,
		Service:        nullable(d.Service),
	})
	if err != nil {
		return users.CreditWriteResult{}, translate(fmt.Errorf("deduct credits for action: %w", err))
	}
	res := users.CreditWriteResult{
		Status:    users.WriteStatus(deref(row.Status)),
		Available: deref(row.Available),
		Price:     deref(row.Price),
	}
	if t := writtenTransaction(row.TID, deref(row.TUserID), row.TDelta, row.TBalanceAfter, row.TKind, row.TReason,
		row.TCreatedAt, d.IdempotencyKey, row.TActorUserID, row.TService); t != nil {
		ownActor(t, d.ClerkUserID)
		res.Transaction = *t
	}
	return res, nil
}

func (s *Store) CheckAffordability(ctx context.Context, clerkUserID, action string) (users.AffordabilityRead, error) {
	row, err := s.q.CheckAffordability(ctx, s.read, sqlcdb.CheckAffordabilityParams{Action: action, ClerkUserID: clerkUserID})
	if err != nil {
		return users.AffordabilityRead{}, translate(fmt.Errorf("check affordability: %w", err))
	}
	return users.AffordabilityRead{
		Price:     deref(row.Price),
		Available: deref(row.Available) - row.Due,
		UserFound: row.Available != nil,
	}, nil
}

func (s *Store) SetPrice(ctx context.Context, in users.SetPriceInput) (users.SetPriceResult, error) {
	row, err := s.q.SetPrice(ctx, s.db, sqlcdb.SetPriceParams{Action: in.Action, Credits: in.Credits, ChangedBy: in.ChangedBy})
	if err != nil {
		return users.SetPriceResult{}, translate(fmt.Errorf("set price: %w", err))
	}
	res := users.SetPriceResult{Price: users.Price{
		Action:    deref(row.PrAction),
		Credits:   deref(row.PrCredits),
		CreatedAt: deref(row.PrCreatedAt),
		UpdatedAt: deref(row.PrUpdatedAt),
		UpdatedBy: deref(row.PrUpdatedBy),
	}}
	if row.ChangeID != nil {
		res.Change = &users.PriceChange{
			ID:              *row.ChangeID,
			Action:          res.Price.Action,
			PreviousCredits: deref(row.PreviousCredits),
			Credits:         res.Price.Credits,
			ChangedBy:       res.Price.UpdatedBy,
			ChangedAt:       res.Price.UpdatedAt,
		}
	}
	return res, nil
}

func (s *Store) ListPrices(ctx context.Context, after string, limit int32) ([]users.Price, error) {
	rows, err := s.q.ListPrices(ctx, s.read, sqlcdb.ListPricesParams{After: after, RowLimit: limit})
	if err != nil {
		return nil, translate(fmt.Errorf("list prices: %w", err))
	}
	out := make([]users.Price, len(rows))
	for i, r := range rows {
		out[i] = users.Price(r)
	}
	return out, nil
}

func (s *Store) ListPriceChanges(ctx context.Context, action string, beforeID int64, limit int32) ([]users.PriceChange, error) {
	rows, err := s.q.ListPriceChanges(ctx, s.read, sqlcdb.ListPriceChangesParams{Action: action, BeforeID: beforeID, RowLimit: limit})
	if err != nil {
		return nil, translate(fmt.Errorf("list price changes: %w", err))
	}
	out := make([]users.PriceChange, len(rows))
	for i, r := range rows {
		out[i] = users.PriceChange{
			ID:              r.ID,
			Action:          r.Action,
			PreviousCredits: deref(r.PreviousCredits),
			Credits:         r.Credits,
			ChangedBy:       r.ChangedBy,
			ChangedAt:       r.ChangedAt,
		}
	}
	return out, nil
}
