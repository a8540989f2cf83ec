package store

import (
	"context"
	"fmt"
	"time"

	"github.com/userd/userd/gen/sqlcdb"
	"github.com/userd/userd/internal/users"
)

// Expiring grants, the plan catalog and the allowance job (issue 21; the
// rules are in db/migrations/00022_credit_grants.sql).

// GrantExpiringCredits implements users.GrantStore in one round trip.
func (s *Store) GrantExpiringCredits(ctx context.Context, w users.ExpiringGrantWrite) (users.CreditWriteResult, error) {
	row, err := s.q.GrantExpiringCredits(ctx, s.batched(accountBatchKey(w.ClerkUserID, w.ClerkOrgID)), sqlcdb.GrantExpiringCreditsParams{
		ClerkUserID:    w.ClerkUserID,
		ClerkOrgID:     w.ClerkOrgID,
		Service:        w.Service,
		Amount:         w.Amount,
		Reason:         w.Reason,
		IdempotencyKey: w.IdempotencyKey,
		Source:         w.Source,
		ExpiresAt:      w.ExpiresAt,
		Now:            w.Now,
	})
	if err != nil {
		return users.CreditWriteResult{}, translate(fmt.Errorf("grant expiring credits: %w", err))
	}
	res := users.CreditWriteResult{Status: users.WriteStatus(deref(row.Status)), Available: deref(row.Available)}
	if t := writtenTransaction(row.TID, deref(row.AccountID), row.TDelta, row.TBalanceAfter, row.TKind, row.TReason,
		row.TCreatedAt, w.IdempotencyKey, row.TActorUserID, row.TService); t != nil {
		ownActor(t, w.ClerkUserID)
		res.Transaction = *t
	}
	return res, nil
}

// GetAccountGrants implements users.GrantStore: the account (one round
// trip), then its live grants (a second, only when it has some).
func (s *Store) GetAccountGrants(ctx context.Context, ref users.AccountRef, now time.Time) (users.AccountGrants, error) {
	a, err := s.q.GetGrantsAccount(ctx, s.read, sqlcdb.GetGrantsAccountParams{
		ClerkUserID: ref.ClerkUserID, ClerkOrgID: ref.ClerkOrgID, Now: now,
	})
	if err != nil {
		return users.AccountGrants{}, translate(fmt.Errorf("get grants account: %w", err))
	}
	out := users.AccountGrants{
		AccountID:   a.ID,
		Plan:        users.Plan(a.Plan),
		Balance:     a.Credits - a.Due,
		NonExpiring: a.Credits - a.ExpiringCredits,
	}
	if a.ExpiringCredits > 0 {
		rows, err := s.q.ListLiveGrants(ctx, s.read, sqlcdb.ListLiveGrantsParams{AccountID: a.ID, Now: now})
		if err != nil {
			return users.AccountGrants{}, translate(fmt.Errorf("list live grants: %w", err))
		}
		out.Grants = make([]users.Grant, len(rows))
		for i, g := range rows {
			out.Grants[i] = users.Grant{
				ID: g.ID, AccountID: g.AccountID, Source: g.Source, Amount: g.Amount, Remaining: g.Remaining,
				EffectiveAt: g.EffectiveAt, ExpiresAt: g.ExpiresAt, PeriodStart: g.PeriodStart,
				TransactionID: g.TransactionID,
			}
		}
	}
	if deref(a.Allowance) > 0 && a.ClosedAt == nil {
		out.NextRefillAmount = *a.Allowance
		if a.NextRefillAt != nil && a.NextRefillAt.After(now) {
			out.NextRefillAt = *a.NextRefillAt
		} else {
			// Never refilled, or due: the job grants the current period at
			// its next run, then the next period starts here.
			next, err := s.q.NextAllowancePeriod(ctx, s.read, sqlcdb.NextAllowancePeriodParams{
				Anchor: a.CreatedAt, Period: deref(a.Period), Now: now,
			})
			if err != nil {
				return users.AccountGrants{}, translate(fmt.Errorf("next allowance period: %w", err))
			}
			out.NextRefillAt = next
		}
	}
	return out, nil
}

// SetPlanAllowance implements users.GrantStore in one round trip.
func (s *Store) SetPlanAllowance(ctx context.Context, p users.PlanAllowance) (bool, error) {
	row, err := s.q.SetPlanAllowance(ctx, s.db, sqlcdb.SetPlanAllowanceParams{
		Plan: string(p.Plan), Allowance: p.Allowance, Period: p.Period, RolloverCap: p.RolloverCap,
		UpgradeBonus: p.UpgradeBonus, ChangedBy: p.UpdatedBy,
	})
	if err != nil {
		return false, translate(fmt.Errorf("set plan allowance: %w", err))
	}
	return deref(row.Status) == "applied", nil
}

// ListPlanCatalog implements users.GrantStore.
func (s *Store) ListPlanCatalog(ctx context.Context) ([]users.PlanAllowance, error) {
	rows, err := s.q.ListPlanCatalog(ctx, s.db)
	if err != nil {
		return nil, translate(fmt.Errorf("list plan catalog: %w", err))
	}
	out := make([]users.PlanAllowance, len(rows))
	for i, r := range rows {
		out[i] = users.PlanAllowance{
			Plan: users.Plan(r.Plan), Allowance: r.Allowance, Period: r.Period, RolloverCap: r.RolloverCap,
			UpgradeBonus: r.UpgradeBonus, UpdatedAt: r.UpdatedAt, UpdatedBy: r.UpdatedBy,
		}
	}
	return out, nil
}

// RunAllowances implements users.GrantStore: one batch, one transaction.
func (s *Store) RunAllowances(ctx context.Context, now time.Time, batchSize int32) (users.AllowanceBatch, error) {
	row, err := s.q.RunAllowances(ctx, s.db, sqlcdb.RunAllowancesParams{Now: now, BatchSize: batchSize})
	if err != nil {
		return users.AllowanceBatch{}, translate(fmt.Errorf("run allowances: %w", err))
	}
	return users.AllowanceBatch{
		Accounts: int(deref(row.Accounts)), Expired: int(deref(row.Expired)), Granted: deref(row.Granted),
	}, nil
}

// allowanceLockKey is the advisory lock of allowance job runs: the first
// eight bytes of sha256("userd allowances") as a big-endian int64, as
// clerkSyncLockKey is made.
const allowanceLockKey int64 = -7788426088951733767

// RunAllowanceJob runs run while holding the allowance job's lock, so that
// one run at a time goes on across every replica (the Clerk sync's
// mechanism: a session advisory lock on a connection set aside for the
// run). started is false, without running, when another session holds it.
func (s *Store) RunAllowanceJob(ctx context.Context, run func(context.Context)) (started bool, err error) {
	return s.withSessionLock(ctx, allowanceLockKey, func(ctx context.Context) error {
		run(ctx)
		return nil
	})
}
