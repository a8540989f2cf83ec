package users

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/userd/userd/internal/apperr"
)

// The operator console's side of the domain: what an operator reads
// (ConsoleStore, Console) and how a correction is audited (AuditEntry,
// WithAudit). Corrections themselves are the Service's own methods
// (GrantCredits, DeductCredits, SetPlan, CloseAccount), called with a
// context that carries an AuditEntry: the store then writes the audit row
// in the correction's transaction.

// Audit actions.
const (
	AuditGrant   = "grant"
	AuditDeduct  = "deduct"
	AuditSetPlan = "set_plan"
	AuditClose   = "close"
)

// AuditEntry is who made a correction and why. The store completes it
// with the account's state before and after, under the account's lock.
type AuditEntry struct {
	// Operator is the operator's Clerk user id; Role the role it acted
	// with.
	Operator string
	Role     string
	// Action is one of the Audit* actions.
	Action string
	// Details is what was asked (amount, plan, ...), shown in the log.
	Details map[string]any
	Reason  string
	// IdempotencyKey is the correction's key (the write's own), recorded
	// with it.
	IdempotencyKey string
}

// DetailsJSON is Details as stored.
func (e AuditEntry) DetailsJSON() ([]byte, error) {
	if e.Details == nil {
		return []byte("{}"), nil
	}
	return json.Marshal(e.Details)
}

type auditKey struct{}

// WithAudit returns ctx carrying e: a write of the Service called with it
// (GrantCredits, DeductCredits, SetPlan, CloseAccount) records e in the
// audit log in the write's own transaction, or fails without writing
// anything. A replay (same idempotency key) records nothing.
func WithAudit(ctx context.Context, e AuditEntry) context.Context {
	return context.WithValue(ctx, auditKey{}, e)
}

// AuditFrom returns the AuditEntry ctx carries, if any (for the store).
func AuditFrom(ctx context.Context) (AuditEntry, bool) {
	e, ok := ctx.Value(auditKey{}).(AuditEntry)
	return e, ok
}

func (e AuditEntry) validate() error {
	var v violations
	if e.Operator == "" {
		v.add("operator", "is required")
	}
	switch e.Action {
	case AuditGrant, AuditDeduct, AuditSetPlan, AuditClose:
	default:
		v.add("action", "is not a console correction")
	}
	if e.IdempotencyKey == "" {
		v.add("idempotency_key", "is required")
	}
	if strings.TrimSpace(e.Reason) == "" {
		v.add("reason", "is required: say why")
	}
	v.text("reason", e.Reason, MaxReason)
	return v.err()
}

// checkAudit validates the AuditEntry ctx carries, if any.
func checkAudit(ctx context.Context) error {
	if e, ok := AuditFrom(ctx); ok {
		return e.validate()
	}
	return nil
}

// ConsoleAccount is an account with its owner, as the console shows it.
type ConsoleAccount struct {
	ID       uuid.UUID
	Plan     Plan
	Credits  int64
	Created  time.Time
	Updated  time.Time
	ClosedAt *time.Time
	// Personal accounts: the owner.
	ClerkUserID   string
	Email         string
	FirstName     string
	LastName      string
	ImageURL      string
	UserCreatedAt *time.Time
	UserDeletedAt *time.Time
	// Organization accounts.
	ClerkOrgID   string
	OrgName      string
	OrgSlug      string
	OrgDeletedAt *time.Time
}

// Deleted reports whether the account's owner was deleted in Clerk.
func (a ConsoleAccount) Deleted() bool { return a.UserDeletedAt != nil || a.OrgDeletedAt != nil }

// Personal reports whether the account is a user's.
func (a ConsoleAccount) Personal() bool { return a.ClerkUserID != "" }

// LedgerEntry is a ledger row as the console lists it.
type LedgerEntry struct {
	ID               int64
	Delta            int64
	BalanceAfter     int64
	Kind             TxKind
	Reason           string
	IdempotencyKey   string
	ActorClerkUserID string
	Service          string
	CreatedAt        time.Time
}

// LedgerFilter selects and pages ledger rows.
type LedgerFilter struct {
	Kind     TxKind
	Member   string
	BeforeID int64
	Limit    int32
}

// FeedTailEvent is one of an account's latest change-feed events.
type FeedTailEvent struct {
	ID               int64
	Kind             string
	CreatedAt        time.Time
	ActorClerkUserID string
	Payload          []byte
}

// WebhookDelivery is a processed Clerk delivery.
type WebhookDelivery struct {
	SvixID      string
	EventType   string
	ObjectID    string
	Outcome     string
	ProcessedAt time.Time
}

// SyncRun is the last run of a sync job.
type SyncRun struct {
	Job        string
	StartedAt  time.Time
	FinishedAt *time.Time
	Result     string
}

// AuditRecord is a row of the audit log.
type AuditRecord struct {
	ID             int64
	CreatedAt      time.Time
	Operator       string
	Role           string
	Action         string
	AccountID      uuid.UUID
	Details        []byte
	IdempotencyKey string
	Reason         string
	Before         []byte
	After          []byte
}

// DayReasonUsage is what an account's ledger moved on one UTC day for one
// reason.
type DayReasonUsage struct {
	Day     time.Time
	Reason  string
	Spent   int64
	Granted int64
}

// ConsoleStore is the storage of the console's reads and of CloseAccount.
type ConsoleStore interface {
	// SumConsoleUsage sums the account's ledger since since by UTC day
	// and reason, in order.
	SumConsoleUsage(ctx context.Context, accountID uuid.UUID, since time.Time) ([]DayReasonUsage, error)
	// SearchAccounts returns up to limit accounts with ids after after
	// that match q (see the query for what matches).
	SearchAccounts(ctx context.Context, q string, after uuid.UUID, limit int32) ([]ConsoleAccount, error)
	// GetConsoleAccount reads one account (ErrNoRow: none).
	GetConsoleAccount(ctx context.Context, id uuid.UUID) (ConsoleAccount, error)
	ListConsoleLedger(ctx context.Context, accountID uuid.UUID, f LedgerFilter) ([]LedgerEntry, error)
	ListConsolePlanChanges(ctx context.Context, accountID uuid.UUID, limit int32) ([]PlanChange, error)
	// ListFeedTail reads the latest events of a user's (clerkOrgID "")
	// or an organization's stream, newest first.
	ListFeedTail(ctx context.Context, clerkUserID, clerkOrgID string, limit int32) ([]FeedTailEvent, error)
	ListUnappliedWebhookEvents(ctx context.Context, limit int32) ([]WebhookDelivery, error)
	ListSyncRuns(ctx context.Context) ([]SyncRun, error)
	// ListAuditLog pages through the audit log, newest first (accountID
	// uuid.Nil: every account).
	ListAuditLog(ctx context.Context, accountID uuid.UUID, beforeID int64, limit int32) ([]AuditRecord, error)
	// CloseAccount closes an account (status "applied", "already_closed"
	// or "not_found"), audited when ctx carries an AuditEntry.
	CloseAccount(ctx context.Context, accountID uuid.UUID) (status string, err error)
}

// Console answers the operator console's reads and closes accounts; its
// other corrections are the Service's methods.
type Console struct {
	store ConsoleStore
}

// NewConsole returns the console's reads over store.
func NewConsole(store ConsoleStore) *Console { return &Console{store: store} }

// MaxSearchLength bounds a search query.
const MaxSearchLength = 320

// Search finds accounts matching q (trimmed): an email prefix, a Clerk
// user or organization id, an organization slug, or an account id.
func (c *Console) Search(ctx context.Context, q string, after uuid.UUID, limit int32) ([]ConsoleAccount, error) {
	q = strings.TrimSpace(q)
	if q == "" {
		return nil, nil
	}
	if len(q) > MaxSearchLength {
		return nil, apperr.InvalidArgument(apperr.FieldViolation{Field: "q", Description: fmt.Sprintf("must be at most %d bytes", MaxSearchLength)})
	}
	as, err := c.store.SearchAccounts(ctx, q, after, limit)
	if err != nil {
		return nil, fmt.Errorf("search accounts: %w", err)
	}
	return as, nil
}

// Account reads one account; NotFound when there is none.
func (c *Console) Account(ctx context.Context, id uuid.UUID) (ConsoleAccount, error) {
	a, err := c.store.GetConsoleAccount(ctx, id)
	if errors.Is(err, ErrNoRow) {
		return ConsoleAccount{}, apperr.NotFound("account not found")
	}
	if err != nil {
		return ConsoleAccount{}, fmt.Errorf("get account: %w", err)
	}
	return a, nil
}

// Ledger lists an account's ledger, newest first.
func (c *Console) Ledger(ctx context.Context, accountID uuid.UUID, f LedgerFilter) ([]LedgerEntry, error) {
	if f.Kind != "" {
		switch f.Kind {
		case TxInitial, TxDeduct, TxGrant, TxPlanBonus, TxAllowance, TxExpire:
		default:
			return nil, apperr.InvalidArgument(apperr.FieldViolation{Field: "kind", Description: "is not a ledger kind"})
		}
	}
	es, err := c.store.ListConsoleLedger(ctx, accountID, f)
	if err != nil {
		return nil, fmt.Errorf("list ledger: %w", err)
	}
	return es, nil
}

// PlanChanges lists an account's latest plan changes.
func (c *Console) PlanChanges(ctx context.Context, accountID uuid.UUID, limit int32) ([]PlanChange, error) {
	pcs, err := c.store.ListConsolePlanChanges(ctx, accountID, limit)
	if err != nil {
		return nil, fmt.Errorf("list plan changes: %w", err)
	}
	return pcs, nil
}

// Usage sums the account's ledger of the last days UTC days (today
// included) by day and reason.
func (c *Console) Usage(ctx context.Context, accountID uuid.UUID, now time.Time, days int) ([]DayReasonUsage, time.Time, error) {
	since := now.UTC().Truncate(24*time.Hour).AddDate(0, 0, -(days - 1))
	us, err := c.store.SumConsoleUsage(ctx, accountID, since)
	if err != nil {
		return nil, since, fmt.Errorf("sum usage: %w", err)
	}
	return us, since, nil
}

// FeedTail reads the latest change-feed events of the account's stream.
func (c *Console) FeedTail(ctx context.Context, a ConsoleAccount, limit int32) ([]FeedTailEvent, error) {
	evs, err := c.store.ListFeedTail(ctx, a.ClerkUserID, a.ClerkOrgID, limit)
	if err != nil {
		return nil, fmt.Errorf("read feed: %w", err)
	}
	return evs, nil
}

// UnappliedWebhooks lists the latest deliveries processed but not applied.
func (c *Console) UnappliedWebhooks(ctx context.Context, limit int32) ([]WebhookDelivery, error) {
	ws, err := c.store.ListUnappliedWebhookEvents(ctx, limit)
	if err != nil {
		return nil, fmt.Errorf("list webhook events: %w", err)
	}
	return ws, nil
}

// SyncRuns lists the sync jobs' last runs.
func (c *Console) SyncRuns(ctx context.Context) ([]SyncRun, error) {
	rs, err := c.store.ListSyncRuns(ctx)
	if err != nil {
		return nil, fmt.Errorf("list sync runs: %w", err)
	}
	return rs, nil
}

// AuditLog pages through the audit log.
func (c *Console) AuditLog(ctx context.Context, accountID uuid.UUID, beforeID int64, limit int32) ([]AuditRecord, error) {
	rs, err := c.store.ListAuditLog(ctx, accountID, beforeID, limit)
	if err != nil {
		return nil, fmt.Errorf("list audit log: %w", err)
	}
	return rs, nil
}

// CloseAccount closes an account: it then refuses spends, grants and plan
// changes and keeps its ledger. Only an operator closes accounts, so ctx
// must carry the AuditEntry (action AuditClose) recorded with it. Closing
// a closed account changes nothing and is no error (replayed == true).
func (c *Console) CloseAccount(ctx context.Context, accountID uuid.UUID) (replayed bool, err error) {
	e, ok := AuditFrom(ctx)
	if !ok {
		return false, apperr.PermissionDenied("closing an account is an audited operator correction")
	}
	if e.Action != AuditClose {
		return false, apperr.InvalidArgument(apperr.FieldViolation{Field: "action", Description: "must be close"})
	}
	if err := e.validate(); err != nil {
		return false, err
	}
	st, err := c.store.CloseAccount(ctx, accountID)
	if err != nil {
		return false, fmt.Errorf("close account: %w", err)
	}
	switch st {
	case "applied":
		return false, nil
	case "already_closed":
		return true, nil
	case "not_found":
		return false, apperr.NotFound("account not found")
	}
	return false, fmt.Errorf("close account: unexpected status %q", st)
}
