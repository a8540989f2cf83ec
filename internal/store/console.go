package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/userd/userd/gen/sqlcdb"
	"github.com/userd/userd/internal/users"
)

// The operator console's reads (users.ConsoleStore) and the audited
// writes of its corrections.

var _ users.ConsoleStore = (*Store)(nil)

// accountOf resolves the account a write is for, on the write's
// connection.
type accountOf func(ctx context.Context, db sqlcdb.DBTX) (uuid.UUID, error)

func personalAccount(clerkUserID string) accountOf {
	return func(ctx context.Context, db sqlcdb.DBTX) (uuid.UUID, error) {
		// A personal account's id is its owner's user id.
		u, err := sqlcdb.New().GetLiveUserByClerkID(ctx, db, clerkUserID)
		return u.ID, err
	}
}

func organizationAccount(clerkOrgID string) accountOf {
	return func(ctx context.Context, db sqlcdb.DBTX) (uuid.UUID, error) {
		return sqlcdb.New().OrgAccountID(ctx, db, clerkOrgID)
	}
}

func accountID(id uuid.UUID) accountOf {
	return func(context.Context, sqlcdb.DBTX) (uuid.UUID, error) { return id, nil }
}

// audited runs write, in one round trip on the pool (group-committed
// with other writes under batchKey, see batched), unless ctx carries
// an AuditEntry (an operator's correction): then in one transaction that
// locks the account and reads its state, runs write, and, if write
// applied a change, records the entry with the state before and after.
// The correction and its audit row commit together or not at all; a
// replay or a refusal (applied == false) records nothing.
func (s *Store) audited(ctx context.Context, account accountOf, batchKey string, write func(db sqlcdb.DBTX) (applied bool, err error)) error {
	e, ok := users.AuditFrom(ctx)
	if !ok {
		_, err := write(s.batched(batchKey))
		return err
	}
	details, err := e.DetailsJSON()
	if err != nil {
		return fmt.Errorf("audit details: %w", err)
	}
	conn, err := s.acquire(ctx)
	if err != nil {
		return translate(fmt.Errorf("audited write: %w", err))
	}
	defer conn.Release()
	tx, err := conn.Begin(ctx)
	if err != nil {
		return translate(fmt.Errorf("audited write: begin: %w", err))
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	id, err := account(ctx, tx)
	var before sqlcdb.LockAccountForAuditRow
	if err == nil {
		before, err = s.q.LockAccountForAudit(ctx, tx, id)
	}
	if errors.Is(err, pgx.ErrNoRows) {
		// No such account: the write reports it (not_found) and changes
		// nothing.
		_, err = write(tx)
		return err
	}
	if err != nil {
		return translate(fmt.Errorf("audited write: lock account: %w", err))
	}
	applied, err := write(tx)
	if err != nil || !applied {
		return err
	}
	if _, err := s.q.InsertOperatorAudit(ctx, tx, sqlcdb.InsertOperatorAuditParams{
		Operator: e.Operator, OperatorRole: e.Role, Action: e.Action, Details: details,
		IdempotencyKey: e.IdempotencyKey, Reason: e.Reason, Before: before.State, AccountID: id,
	}); err != nil {
		return translate(fmt.Errorf("audited write: record: %w", err))
	}
	if err := tx.Commit(ctx); err != nil {
		return translate(fmt.Errorf("audited write: commit: %w", err))
	}
	return nil
}

// refuseAudit fails a write that cannot be audited when ctx asks for it,
// rather than applying it without its audit row.
func refuseAudit(ctx context.Context, op string) error {
	if _, ok := users.AuditFrom(ctx); ok {
		return fmt.Errorf("%s cannot be made as an audited operator correction", op)
	}
	return nil
}

func (s *Store) CloseAccount(ctx context.Context, id uuid.UUID) (status string, err error) {
	err = s.audited(ctx, accountID(id), "", func(db sqlcdb.DBTX) (bool, error) {
		row, err := s.q.CloseAccount(ctx, db, id)
		if err != nil {
			return false, translate(fmt.Errorf("close account: %w", err))
		}
		status = deref(row.Status)
		return status == "applied", nil
	})
	return status, err
}

func (s *Store) SearchAccounts(ctx context.Context, q string, after uuid.UUID, limit int32) ([]users.ConsoleAccount, error) {
	p := sqlcdb.SearchAccountsParams{Query: q, After: after, RowLimit: limit}
	if id, err := uuid.Parse(q); err == nil {
		p.AccountID = &id
	}
	if !isClerkID(q) {
		p.EmailPrefix = q
	}
	rows, err := s.q.SearchAccounts(ctx, s.read, p)
	if err != nil {
		return nil, translate(fmt.Errorf("search accounts: %w", err))
	}
	out := make([]users.ConsoleAccount, len(rows))
	for i, r := range rows {
		out[i] = users.ConsoleAccount{
			ID: r.ID, Plan: users.Plan(r.Plan), Credits: r.Credits, ClosedAt: r.ClosedAt,
			ClerkUserID: deref(r.ClerkUserID), Email: deref(r.Email), FirstName: deref(r.FirstName), LastName: deref(r.LastName),
			UserDeletedAt: r.UserDeletedAt,
			ClerkOrgID:    deref(r.ClerkOrgID), OrgName: deref(r.OrgName), OrgSlug: deref(r.OrgSlug), OrgDeletedAt: r.OrgDeletedAt,
		}
	}
	return out, nil
}

// isClerkID reports whether q looks like a Clerk id rather than the start
// of an email (an email prefix search would then scan for nothing).
func isClerkID(q string) bool {
	for _, p := range []string{"user_", "org_"} {
		if len(q) > len(p) && q[:len(p)] == p {
			return true
		}
	}
	return false
}

func (s *Store) GetConsoleAccount(ctx context.Context, id uuid.UUID) (users.ConsoleAccount, error) {
	r, err := s.q.GetConsoleAccount(ctx, s.read, id)
	if err != nil {
		return users.ConsoleAccount{}, translate(fmt.Errorf("get console account: %w", err))
	}
	return users.ConsoleAccount{
		ID: r.ID, Plan: users.Plan(r.Plan), Credits: r.Credits, Created: r.CreatedAt, Updated: r.UpdatedAt, ClosedAt: r.ClosedAt,
		ClerkUserID: deref(r.ClerkUserID), Email: deref(r.Email), FirstName: deref(r.FirstName), LastName: deref(r.LastName),
		ImageURL: deref(r.ImageURL), UserCreatedAt: r.UserCreatedAt, UserDeletedAt: r.UserDeletedAt,
		ClerkOrgID: deref(r.ClerkOrgID), OrgName: deref(r.OrgName), OrgSlug: deref(r.OrgSlug), OrgDeletedAt: r.OrgDeletedAt,
	}, nil
}

func (s *Store) ListConsoleLedger(ctx context.Context, accountID uuid.UUID, f users.LedgerFilter) ([]users.LedgerEntry, error) {
	rows, err := s.q.ListConsoleLedger(ctx, s.read, sqlcdb.ListConsoleLedgerParams{
		AccountID: accountID, BeforeID: f.BeforeID, Kind: string(f.Kind), Member: f.Member, RowLimit: f.Limit,
	})
	if err != nil {
		return nil, translate(fmt.Errorf("list console ledger: %w", err))
	}
	out := make([]users.LedgerEntry, len(rows))
	for i, r := range rows {
		out[i] = users.LedgerEntry{
			ID: r.ID, Delta: r.Delta, BalanceAfter: r.BalanceAfter, Kind: users.TxKind(r.Kind), Reason: r.Reason,
			IdempotencyKey: deref(r.IdempotencyKey), ActorClerkUserID: r.ActorClerkUserID, Service: deref(r.Service),
			CreatedAt: r.CreatedAt,
		}
	}
	return out, nil
}

func (s *Store) ListConsolePlanChanges(ctx context.Context, accountID uuid.UUID, limit int32) ([]users.PlanChange, error) {
	rows, err := s.q.ListConsolePlanChanges(ctx, s.read, sqlcdb.ListConsolePlanChangesParams{AccountID: accountID, RowLimit: limit})
	if err != nil {
		return nil, translate(fmt.Errorf("list console plan changes: %w", err))
	}
	out := make([]users.PlanChange, len(rows))
	for i, r := range rows {
		out[i] = users.PlanChange{
			ID: r.ID, AccountID: accountID, UserID: accountID, PreviousPlan: users.Plan(r.PreviousPlan), Plan: users.Plan(r.Plan),
			BonusCredits: r.BonusCredits, Reason: r.Reason, CreatedAt: r.CreatedAt, Service: deref(r.Service),
		}
	}
	return out, nil
}

func (s *Store) ListFeedTail(ctx context.Context, clerkUserID, clerkOrgID string, limit int32) ([]users.FeedTailEvent, error) {
	var (
		rows []sqlcdb.ListUserFeedTailRow
		err  error
	)
	if clerkOrgID != "" {
		var orgRows []sqlcdb.ListOrgFeedTailRow
		orgRows, err = s.q.ListOrgFeedTail(ctx, s.read, sqlcdb.ListOrgFeedTailParams{ClerkOrgID: clerkOrgID, RowLimit: limit})
		for _, r := range orgRows {
			rows = append(rows, sqlcdb.ListUserFeedTailRow(r))
		}
	} else {
		rows, err = s.q.ListUserFeedTail(ctx, s.read, sqlcdb.ListUserFeedTailParams{ClerkUserID: clerkUserID, RowLimit: limit})
	}
	if err != nil {
		return nil, translate(fmt.Errorf("list feed tail: %w", err))
	}
	out := make([]users.FeedTailEvent, len(rows))
	for i, r := range rows {
		out[i] = users.FeedTailEvent{ID: r.ID, Kind: r.Kind, CreatedAt: r.CreatedAt, ActorClerkUserID: deref(r.ActorClerkUserID), Payload: r.Payload}
	}
	return out, nil
}

func (s *Store) ListUnappliedWebhookEvents(ctx context.Context, limit int32) ([]users.WebhookDelivery, error) {
	rows, err := s.q.ListUnappliedWebhookEvents(ctx, s.read, limit)
	if err != nil {
		return nil, translate(fmt.Errorf("list unapplied webhook events: %w", err))
	}
	out := make([]users.WebhookDelivery, len(rows))
	for i, r := range rows {
		out[i] = users.WebhookDelivery{SvixID: r.SvixID, EventType: r.EventType, ObjectID: r.ObjectID, Outcome: r.Outcome, ProcessedAt: r.ProcessedAt}
	}
	return out, nil
}

func (s *Store) ListSyncRuns(ctx context.Context) ([]users.SyncRun, error) {
	rows, err := s.q.GetClerkSyncRuns(ctx, s.read)
	if err != nil {
		return nil, translate(fmt.Errorf("list sync runs: %w", err))
	}
	out := make([]users.SyncRun, len(rows))
	for i, r := range rows {
		out[i] = users.SyncRun{Job: "clerk reconcile", StartedAt: r.LastStartedAt, FinishedAt: r.LastFinishedAt, Result: deref(r.LastResult)}
	}
	return out, nil
}

func (s *Store) ListAuditLog(ctx context.Context, accountID uuid.UUID, beforeID int64, limit int32) ([]users.AuditRecord, error) {
	p := sqlcdb.ListOperatorAuditParams{BeforeID: beforeID, RowLimit: limit}
	if accountID != uuid.Nil {
		p.AccountID = &accountID
	}
	rows, err := s.q.ListOperatorAudit(ctx, s.read, p)
	if err != nil {
		return nil, translate(fmt.Errorf("list audit log: %w", err))
	}
	out := make([]users.AuditRecord, len(rows))
	for i, r := range rows {
		out[i] = users.AuditRecord{
			ID: r.ID, CreatedAt: r.CreatedAt, Operator: r.Operator, Role: r.OperatorRole, Action: r.Action,
			AccountID: r.AccountID, Details: r.Details, IdempotencyKey: r.IdempotencyKey, Reason: r.Reason,
			Before: r.Before, After: r.After,
		}
	}
	return out, nil
}

func (s *Store) SumConsoleUsage(ctx context.Context, accountID uuid.UUID, since time.Time) ([]users.DayReasonUsage, error) {
	rows, err := s.q.SumConsoleUsage(ctx, s.read, sqlcdb.SumConsoleUsageParams{AccountID: accountID, Since: since})
	if err != nil {
		return nil, translate(fmt.Errorf("sum console usage: %w", err))
	}
	out := make([]users.DayReasonUsage, len(rows))
	for i, r := range rows {
		out[i] = users.DayReasonUsage{Day: r.Day, Reason: r.Reason, Spent: r.Spent, Granted: r.Granted}
	}
	return out, nil
}
