package store

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/userd/userd/gen/sqlcdb"
	"github.com/userd/userd/internal/users"
)

func (s *Store) OrgSpend(ctx context.Context, w users.OrgSpendWrite) (users.OrgSpendResult, error) {
	if err := refuseAudit(ctx, "a member's spend"); err != nil {
		return users.OrgSpendResult{}, err
	}
	row, err := s.q.OrgSpend(ctx, s.batched(orgBatchKey(w.ClerkOrgID)), sqlcdb.OrgSpendParams{
		ClerkOrgID:         w.ClerkOrgID,
		MemberClerkUserID:  w.MemberClerkUserID,
		Service:            w.Service,
		RequiredPermission: w.RequiredPermission,
		Amount:             w.Amount,
		Action:             w.Action,
		Reason:             w.Reason,
		IdempotencyKey:     w.IdempotencyKey,
		Now:                w.Now,
	})
	if err != nil {
		return users.OrgSpendResult{}, translate(fmt.Errorf("organization spend: %w", err))
	}
	res := users.OrgSpendResult{
		CreditWriteResult: users.CreditWriteResult{
			Status:    users.WriteStatus(deref(row.Status)),
			Available: deref(row.Available),
			Price:     deref(row.Price),
		},
		AccountID: deref(row.AccountID),
	}
	if t := writtenTransaction(row.TID, res.AccountID, row.TDelta, row.TBalanceAfter, row.TKind, row.TReason, row.TCreatedAt, w.IdempotencyKey, row.TActorUserID, row.TService); t != nil {
		res.Transaction = *t
	}
	if row.Cap != nil {
		res.Cap = capWithPeriod(users.MemberCap{
			Period:      users.CapPeriod(deref(row.Period)),
			Cap:         *row.Cap,
			Spent:       deref(row.Spent),
			PeriodStart: deref(row.PeriodStart),
		})
	}
	return res, nil
}

func (s *Store) SetMemberCap(ctx context.Context, w users.MemberCapWrite) (users.MemberCapWriteResult, error) {
	row, err := s.q.SetMemberCap(ctx, s.db, sqlcdb.SetMemberCapParams{
		ClerkOrgID:        w.ClerkOrgID,
		MemberClerkUserID: w.MemberClerkUserID,
		Period:            string(w.Period),
		Cap:               w.Cap,
		ChangedBy:         w.ChangedBy,
		Now:               w.Now,
	})
	if err != nil {
		return users.MemberCapWriteResult{}, translate(fmt.Errorf("set member cap: %w", err))
	}
	res := users.MemberCapWriteResult{Status: users.WriteStatus(deref(row.Status)), AccountID: deref(row.AccountID)}
	if row.Cap != nil {
		c := users.MemberCap{
			Period:      users.CapPeriod(deref(row.Period)),
			Cap:         *row.Cap,
			Spent:       deref(row.Spent),
			PeriodStart: deref(row.PeriodStart),
			UpdatedAt:   deref(row.UpdatedAt),
			UpdatedBy:   deref(row.UpdatedBy),
		}
		res.Cap = capWithPeriod(c)
	}
	return res, nil
}

func (s *Store) ListMemberCaps(ctx context.Context, clerkOrgID string, now *time.Time) ([]users.MemberCapRead, error) {
	rows, err := s.q.ListMemberCaps(ctx, s.read, sqlcdb.ListMemberCapsParams{ClerkOrgID: clerkOrgID, Now: now})
	if err != nil {
		return nil, translate(fmt.Errorf("list member caps: %w", err))
	}
	out := make([]users.MemberCapRead, len(rows))
	for i, r := range rows {
		out[i] = users.MemberCapRead{ClerkUserID: r.ClerkUserID, MemberCap: *capWithPeriod(users.MemberCap{
			Period:      users.CapPeriod(r.Period),
			Cap:         r.Cap,
			Spent:       r.Spent,
			PeriodStart: r.PeriodStart,
			UpdatedAt:   r.UpdatedAt,
			UpdatedBy:   r.UpdatedBy,
		})}
	}
	return out, nil
}

func (s *Store) CheckOrgAffordability(ctx context.Context, clerkOrgID, member, permission, action string, now *time.Time) (users.OrgAffordabilityRead, error) {
	row, err := s.q.CheckOrgAffordability(ctx, s.read, sqlcdb.CheckOrgAffordabilityParams{
		ClerkOrgID:         clerkOrgID,
		MemberClerkUserID:  member,
		RequiredPermission: permission,
		Action:             action,
		Now:                now,
	})
	if err != nil {
		return users.OrgAffordabilityRead{}, translate(fmt.Errorf("check organization affordability: %w", err))
	}
	read := users.OrgAffordabilityRead{
		Price:        deref(row.Price),
		AccountFound: row.AccountID != nil,
		Available:    deref(row.Available) - row.Due,
		Closed:       row.ClosedAt != nil,
		Member:       row.Member,
		Permitted:    row.Permitted,
	}
	if row.Cap != nil {
		c := users.MemberCap{Period: users.CapPeriod(deref(row.CapPeriod)), Cap: *row.Cap, PeriodStart: row.CapPeriodStart}
		if start := deref(row.CapCounterStart); !start.Before(row.CapPeriodStart) {
			c.Spent = deref(row.CapCounterSpent)
		}
		read.Cap = capWithPeriod(c)
	}
	return read, nil
}

// capWithPeriod fills a cap's Remaining and period bounds.
func capWithPeriod(c users.MemberCap) *users.MemberCap {
	c.Remaining = max(c.Cap-c.Spent, 0)
	c.PeriodStart = c.PeriodStart.UTC()
	c.PeriodEnd = c.Period.End(c.PeriodStart)
	return &c
}

func (s *Store) OrgChangeCredits(ctx context.Context, w users.OrgCreditWrite) (res users.OrgSpendResult, err error) {
	err = s.audited(ctx, organizationAccount(w.ClerkOrgID), orgBatchKey(w.ClerkOrgID), func(db sqlcdb.DBTX) (bool, error) {
		res, err = s.orgChangeCredits(ctx, db, w)
		return res.Status == users.WriteApplied, err
	})
	return res, err
}

func (s *Store) orgChangeCredits(ctx context.Context, db sqlcdb.DBTX, w users.OrgCreditWrite) (users.OrgSpendResult, error) {
	row, err := s.q.OrgChangeCredits(ctx, db, sqlcdb.OrgChangeCreditsParams{
		ClerkOrgID:       w.ClerkOrgID,
		ActorClerkUserID: w.ActorClerkUserID,
		Service:          w.Service,
		Kind:             string(w.Kind),
		Delta:            w.Delta,
		Reason:           w.Reason,
		IdempotencyKey:   w.IdempotencyKey,
	})
	if err != nil {
		return users.OrgSpendResult{}, translate(fmt.Errorf("organization change credits: %w", err))
	}
	res := users.OrgSpendResult{
		CreditWriteResult: users.CreditWriteResult{Status: users.WriteStatus(deref(row.Status)), Available: deref(row.Available)},
		AccountID:         deref(row.AccountID),
	}
	if t := writtenTransaction(row.TID, res.AccountID, row.TDelta, row.TBalanceAfter, row.TKind, row.TReason, row.TCreatedAt, w.IdempotencyKey, row.TActorUserID, row.TService); t != nil {
		res.Transaction = *t
	}
	return res, nil
}

func (s *Store) ListAccountMembers(ctx context.Context, clerkOrgID string, now *time.Time) ([]users.AccountMember, error) {
	rows, err := s.q.ListAccountMembers(ctx, s.read, sqlcdb.ListAccountMembersParams{ClerkOrgID: clerkOrgID, Now: now})
	if err != nil {
		return nil, translate(fmt.Errorf("list account members: %w", err))
	}
	out := make([]users.AccountMember, len(rows))
	for i, r := range rows {
		m := users.AccountMember{ClerkUserID: r.ClerkUserID, Role: r.Role, Permissions: r.Permissions}
		if r.Cap != nil {
			c := users.MemberCap{
				Period:      users.CapPeriod(deref(r.CapPeriod)),
				Cap:         *r.Cap,
				PeriodStart: r.CapPeriodStart,
				UpdatedAt:   deref(r.CapUpdatedAt),
				UpdatedBy:   deref(r.CapUpdatedBy),
			}
			if start := deref(r.CapCounterStart); !start.Before(r.CapPeriodStart) {
				c.Spent = deref(r.CapCounterSpent)
			}
			m.SetCap(capWithPeriod(c))
		}
		out[i] = m
	}
	return out, nil
}

func (s *Store) OrgAccountID(ctx context.Context, clerkOrgID string) (uuid.UUID, error) {
	id, err := s.q.OrgAccountID(ctx, s.read, clerkOrgID)
	if err != nil {
		return uuid.Nil, translate(fmt.Errorf("organization account id: %w", err))
	}
	return id, nil
}

func (s *Store) ListAccountCreditTransactions(ctx context.Context, accountID uuid.UUID, member string, beforeID int64, limit int32) ([]users.Transaction, error) {
	var (
		rows []sqlcdb.ListAccountCreditTransactionsRow
		err  error
	)
	if member == "" {
		rows, err = s.q.ListAccountCreditTransactions(ctx, s.read, sqlcdb.ListAccountCreditTransactionsParams{
			AccountID: accountID, BeforeID: beforeID, RowLimit: limit,
		})
	} else {
		var of []sqlcdb.ListMemberCreditTransactionsRow
		of, err = s.q.ListMemberCreditTransactions(ctx, s.read, sqlcdb.ListMemberCreditTransactionsParams{
			AccountID: accountID, MemberClerkUserID: member, BeforeID: beforeID, RowLimit: limit,
		})
		rows = make([]sqlcdb.ListAccountCreditTransactionsRow, len(of))
		for i, r := range of {
			rows[i] = sqlcdb.ListAccountCreditTransactionsRow(r)
		}
	}
	if err != nil {
		return nil, translate(fmt.Errorf("list account credit transactions: %w", err))
	}
	out := make([]users.Transaction, len(rows))
	for i, r := range rows {
		out[i] = users.Transaction{
			ID:               r.ID,
			UserID:           r.UserID,
			AccountID:        r.UserID,
			Delta:            r.Delta,
			BalanceAfter:     r.BalanceAfter,
			Kind:             users.TxKind(r.Kind),
			Reason:           r.Reason,
			IdempotencyKey:   deref(r.IdempotencyKey),
			CreatedAt:        r.CreatedAt,
			ActorUserID:      deref(r.ActorUserID),
			ActorClerkUserID: deref(r.ActorClerkUserID),
			Service:          deref(r.Service),
		}
	}
	return out, nil
}

func (s *Store) OrgSetPlan(ctx context.Context, w users.OrgPlanWrite) (res users.PlanWriteResult, err error) {
	err = s.audited(ctx, organizationAccount(w.ClerkOrgID), orgBatchKey(w.ClerkOrgID), func(db sqlcdb.DBTX) (bool, error) {
		res, err = s.orgSetPlan(ctx, db, w)
		return res.Status == users.WriteApplied, err
	})
	return res, err
}

func (s *Store) orgSetPlan(ctx context.Context, db sqlcdb.DBTX, w users.OrgPlanWrite) (users.PlanWriteResult, error) {
	row, err := s.q.OrgSetPlan(ctx, db, sqlcdb.OrgSetPlanParams{
		ClerkOrgID:     w.ClerkOrgID,
		Service:        w.Service,
		Plan:           string(w.Plan),
		Bonus:          w.BonusCredits,
		Reason:         w.Reason,
		IdempotencyKey: w.IdempotencyKey,
	})
	if err != nil {
		return users.PlanWriteResult{}, translate(fmt.Errorf("set organization plan: %w", err))
	}
	res := users.PlanWriteResult{Status: users.WriteStatus(deref(row.Status))}
	if row.AID == nil || row.PcID == nil {
		return res, nil
	}
	res.Account = users.Account{
		ID:              *row.AID,
		OwnerClerkOrgID: w.ClerkOrgID,
		Plan:            users.Plan(deref(row.APlan)),
		Credits:         deref(row.ACredits),
		CreatedAt:       deref(row.ACreatedAt),
		UpdatedAt:       deref(row.AUpdatedAt),
		ClosedAt:        row.AClosedAt,
	}
	res.Change = users.PlanChange{
		ID:             *row.PcID,
		UserID:         *row.AID,
		AccountID:      *row.AID,
		PreviousPlan:   users.Plan(deref(row.PcPreviousPlan)),
		Plan:           users.Plan(deref(row.PcPlan)),
		BonusCredits:   deref(row.PcBonusCredits),
		TransactionID:  deref(row.TID),
		Reason:         deref(row.PcReason),
		IdempotencyKey: w.IdempotencyKey,
		ActorUserID:    deref(row.PcActorUserID),
		Service:        deref(row.PcService),
		CreatedAt:      deref(row.PcCreatedAt),
	}
	res.Bonus = writtenTransaction(row.TID, *row.AID, row.TDelta, row.TBalanceAfter, row.TKind, row.TReason,
		row.TCreatedAt, w.IdempotencyKey, row.PcActorUserID, row.PcService)
	return res, nil
}

func (s *Store) SummarizeUsageByMember(ctx context.Context, accountID uuid.UUID, start, end time.Time, limit int32) ([]users.MemberUsage, error) {
	rows, err := s.q.SummarizeUsageByMember(ctx, s.read, sqlcdb.SummarizeUsageByMemberParams{
		AccountID: accountID, StartTime: start, EndTime: end, RowLimit: limit,
	})
	if err != nil {
		return nil, translate(fmt.Errorf("summarize usage by member: %w", err))
	}
	out := make([]users.MemberUsage, len(rows))
	for i, r := range rows {
		out[i] = users.MemberUsage{ClerkUserID: r.ClerkUserID,
			UsageTotals: users.UsageTotals{Spent: r.Spent, Granted: r.Granted, Entries: r.Entries}}
	}
	return out, nil
}
