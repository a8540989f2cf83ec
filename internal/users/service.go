package users

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/userd/userd/internal/apperr"
)

// DefaultInitialCredits is what a new user starts with unless configured.
const DefaultInitialCredits = 10

// Service implements userd's operations on users, credits and plans.
type Service struct {
	store          Store
	initialCredits int64
	observer       Observer
	// clerk applies Clerk user states (webhook events, profiles fetched
	// for EnsureUser) in group-committed batches.
	clerk *clerkBatcher
	// now is the clock that ends usage windows left open.
	now func() time.Time
	// clock is Options.Clock: when set, members' spending caps count in
	// its periods instead of the database's.
	clock func() time.Time
}

// Observer learns of committed changes (for metrics). Replays and rolled
// back attempts are not reported.
type Observer interface {
	CreditsMoved(kind TxKind, amount int64)
	UserCreated(source string)
	// ClerkBatchApplied reports a group-committed batch of Clerk events
	// and how many events it carried.
	ClerkBatchApplied(events int)
}

type noObserver struct{}

func (noObserver) CreditsMoved(TxKind, int64) {}
func (noObserver) UserCreated(string)         {}
func (noObserver) ClerkBatchApplied(int)      {}

// Sources of UserCreated.
const (
	SourceAPI     = "api"
	SourceWebhook = "webhook"
)

// Options configures a Service.
type Options struct {
	// InitialCredits is what a new user gets (>= 0).
	InitialCredits int64
	// KeepDeletedUserData keeps the email, names and image of users
	// deleted in Clerk (for teams that must); by default a deletion erases
	// them.
	KeepDeletedUserData bool
	// OrgInitialCredits is what a new organization's account gets (>= 0;
	// a ledger entry when > 0).
	OrgInitialCredits int64
	// Observer, if set, learns of committed changes.
	Observer Observer
	// Clock, if set, is the Service's clock (tests): it ends usage windows
	// left open and says which period members' spending caps count in.
	// Unset, those periods are the database's (the clock of the ledger's
	// times).
	Clock func() time.Time
}

// NewService returns a Service over store.
func NewService(store Store, opts Options) *Service {
	s := &Service{store: store, initialCredits: opts.InitialCredits, observer: opts.Observer, now: time.Now, clock: opts.Clock}
	if opts.Clock != nil {
		s.now = opts.Clock
	}
	if s.observer == nil {
		s.observer = noObserver{}
	}
	s.clerk = newClerkBatcher(store,
		ClerkApplyOptions{InitialCredits: opts.InitialCredits, EraseDeleted: !opts.KeepDeletedUserData,
			OrgInitialCredits: opts.OrgInitialCredits},
		func(n int) { s.observer.ClerkBatchApplied(n) })
	return s
}

// Stop ends the Service's own background work: the group-committed
// batches of Clerk events that webhook deliveries and EnsureUser start.
// Further events are answered Unavailable; batches in flight are cancelled
// (rolled back) and waited for, until ctx ends. userd calls it once its
// servers have stopped and before it closes the database pool.
func (s *Service) Stop(ctx context.Context) error { return s.clerk.stop(ctx) }

// userCreated reports a committed creation.
func (s *Service) userCreated(source string) {
	s.observer.UserCreated(source)
	s.observer.CreditsMoved(TxInitial, s.initialCredits)
}

// Lookup names one user; exactly one field must be set.
type Lookup struct {
	ClerkUserID string
	ID          string
	Email       string
}

// GetUser returns the live user named by l.
func (s *Service) GetUser(ctx context.Context, l Lookup) (User, error) {
	var v violations
	set := 0
	for _, f := range []string{l.ClerkUserID, l.ID, l.Email} {
		if f != "" {
			set++
		}
	}
	if set != 1 {
		v.add("lookup", "exactly one of clerk_user_id, id or email must be set")
		return User{}, v.err()
	}
	var (
		u   User
		err error
	)
	switch {
	case l.ClerkUserID != "":
		if v.clerkUserID("clerk_user_id", l.ClerkUserID); v.err() != nil {
			return User{}, v.err()
		}
		u, err = s.store.GetLiveUserByClerkID(ctx, l.ClerkUserID)
	case l.ID != "":
		id, perr := uuid.Parse(l.ID)
		if perr != nil {
			v.add("id", "must be a UUID")
			return User{}, v.err()
		}
		u, err = s.store.GetLiveUserByID(ctx, id)
	default:
		if v.email("email", l.Email, true); v.err() != nil {
			return User{}, v.err()
		}
		u, err = s.store.GetLiveUserByEmail(ctx, l.Email)
	}
	if err != nil {
		return User{}, userErr(err, "get user")
	}
	return u, nil
}

// EnsureUserInput is the profile a missing user is created with.
type EnsureUserInput struct {
	ClerkUserID string
	Email       string
	FirstName   string
	LastName    string
	ImageURL    string
}

func (in EnsureUserInput) validate() error {
	var v violations
	v.clerkUserID("clerk_user_id", in.ClerkUserID)
	v.email("email", in.Email, false)
	v.text("first_name", in.FirstName, MaxName)
	v.text("last_name", in.LastName, MaxName)
	v.imageURL("image_url", in.ImageURL)
	return v.err()
}

// EnsureUser returns the user with in.ClerkUserID, creating it (plan FREE,
// the initial credits as its first ledger entry) when no row exists. created
// is true only for the call that inserted the row. A user deleted in Clerk is
// NotFound and never recreated. The profile is the caller's word: an email
// held by another live user is a Conflict.
func (s *Service) EnsureUser(ctx context.Context, in EnsureUserInput) (User, bool, error) {
	if err := in.validate(); err != nil {
		return User{}, false, err
	}
	return s.ensure(ctx, in.ClerkUserID, func(context.Context) (ClerkUser, error) {
		return ClerkUser{ID: in.ClerkUserID, Email: in.Email, FirstName: in.FirstName, LastName: in.LastName, ImageURL: in.ImageURL}, nil
	})
}

// ProfileSource fetches a user's profile from Clerk (its Backend API, or the
// verified claims of the user's session token), versioned by UpdatedAt > 0.
type ProfileSource func(ctx context.Context) (ClerkUser, error)

// EnsureClerkUser is EnsureUser for a user known only by its Clerk id, as on
// a user's first sign-in before the webhook arrived: fetch is called only
// when the user is missing, and its profile is Clerk's own, so an email
// clash resolves as for webhook events (the newer state keeps the email).
func (s *Service) EnsureClerkUser(ctx context.Context, clerkUserID string, fetch ProfileSource) (User, bool, error) {
	var v violations
	if v.clerkUserID("clerk_user_id", clerkUserID); v.err() != nil {
		return User{}, false, v.err()
	}
	return s.ensure(ctx, clerkUserID, func(ctx context.Context) (ClerkUser, error) {
		cu, err := fetch(ctx)
		if err != nil {
			return ClerkUser{}, err
		}
		// What Clerk answered is not a profile userd can store: Clerk (or
		// whatever answers for it) failing, not the caller — unavailable,
		// to be retried, as for a 5xx of the Backend API.
		var v violations
		if cu.ID != clerkUserID {
			v.add("id", fmt.Sprintf("is %q, not %q", cu.ID, clerkUserID))
		}
		if cu.UpdatedAt <= 0 {
			v.add("updated_at", "is missing")
		}
		cu.checkText(&v, "")
		if err := v.err(); err != nil {
			return ClerkUser{}, apperr.Unavailable(fmt.Errorf("the profile Clerk returned for %s: %w", clerkUserID, err))
		}
		return cu.sanitized(), nil
	})
}

// ensure returns the user, creating it from profile() when missing. A
// profile with UpdatedAt > 0 is Clerk's state of that version.
func (s *Service) ensure(ctx context.Context, clerkUserID string, profile ProfileSource) (u User, created bool, err error) {
	// Most calls are for users that exist: answer them without a
	// transaction or a write.
	u, err = s.store.GetUserByClerkIDIncludingDeleted(ctx, clerkUserID)
	switch {
	case err == nil:
		return existing(u)
	case !errors.Is(err, ErrNoRow):
		return User{}, false, userErr(err, "ensure user")
	}
	cu, err := profile(ctx)
	if err != nil {
		return User{}, false, userErr(err, "ensure user: fetch profile")
	}
	if cu.UpdatedAt > 0 {
		// Clerk's own state: applied exactly like a webhook event, so that
		// one place (the database function) holds the versioning and email
		// rules.
		outcome, err := s.clerk.apply(ctx, ClerkEventWrite{User: cu})
		if err != nil {
			return User{}, false, userErr(err, "ensure user")
		}
		created = outcome == OutcomeCreated
	} else {
		u, created, err = s.createUser(ctx, cu)
		switch {
		case errors.Is(err, ErrEmailInUse):
			// A concurrent call for the same user may have won: its row
			// holds the email, and PostgreSQL reports that unique index
			// rather than the Clerk id one. Only if no row for this user
			// exists is the email really someone else's.
			if u, gerr := s.store.GetUserByClerkIDIncludingDeleted(ctx, clerkUserID); gerr == nil {
				return existing(u)
			}
			return User{}, false, userErr(err, "ensure user")
		case err != nil:
			return User{}, false, userErr(err, "ensure user")
		case created:
			s.userCreated(SourceAPI)
			return u, true, nil
		}
	}
	// Read back what was stored (or what a concurrent call stored first).
	u, err = s.store.GetUserByClerkIDIncludingDeleted(ctx, clerkUserID)
	if err != nil {
		return User{}, false, userErr(err, "ensure user")
	}
	if created {
		s.userCreated(SourceAPI)
		return u, true, nil
	}
	return existing(u)
}

// createUser inserts cu with the initial credits and their ledger entry,
// unless a row for the Clerk id exists (created == false, no error).
func (s *Service) createUser(ctx context.Context, cu ClerkUser) (User, bool, error) {
	return s.store.InsertUserWithInitialCredits(ctx, NewUser{
		ClerkUserID:    cu.ID,
		Email:          cu.Email,
		FirstName:      cu.FirstName,
		LastName:       cu.LastName,
		ImageURL:       cu.ImageURL,
		Credits:        s.initialCredits,
		ClerkUpdatedAt: cu.UpdatedAt,
	})
}

func existing(u User) (User, bool, error) {
	if u.DeletedAt != nil {
		return User{}, false, &apperr.Error{
			Kind:    apperr.KindNotFound,
			Message: "user was deleted in Clerk",
			Reason:  apperr.ReasonUserDeleted,
		}
	}
	return u, false, nil
}

// CreditChange is a request to deduct or grant credits.
type CreditChange struct {
	ClerkUserID string
	Amount      int64
	// Action, for a deduction only, charges the action's current price
	// instead of Amount (exactly one of them is set); the action is then
	// the ledger entry's reason, so Reason must be empty.
	Action         string
	IdempotencyKey string
	Reason         string
	// Service is the name of the calling service, recorded on the ledger
	// entry with the user as the actor; "" for the user itself.
	Service string
	// ClerkOrgID, when set, names the organization whose account the
	// change is for (DeductCredits, GrantCredits); ClerkUserID is then the
	// member acting (required for a deduction, optional for a service's
	// grant).
	ClerkOrgID string
	// RequiredPermission, for a deduction from an organization's account,
	// is the organization permission the member's membership must hold
	// (the transport sets it for end users from USERD_ORG_SPEND_PERMISSION);
	// "" requires none beyond a live membership.
	RequiredPermission string
	// ExpiresAt, when set, makes the grant expire then (see the allowances issue).
	ExpiresAt time.Time
	// GrantSource names where a grant came from, e.g. STRIPE_INVOICE, STRIPE_PURCHASE; "" is a plain grant.
	GrantSource string
}

func (c CreditChange) validate(kind TxKind) error {
	var v violations
	v.clerkUserID("clerk_user_id", c.ClerkUserID)
	if kind == TxDeduct {
		Cost{Amount: c.Amount, Action: c.Action}.validate(&v)
	} else {
		v.amount("amount", c.Amount, false)
		if c.Action != "" {
			v.add("action", "only deductions are priced by action")
		}
	}
	v.idempotencyKey("idempotency_key", c.IdempotencyKey)
	v.text("reason", c.Reason, MaxReason)
	if c.Action != "" && c.Reason != "" {
		v.add("reason", "must be empty with action: the action is the ledger reason")
	}
	return v.err()
}

// DeductCredits subtracts c.Amount, or c.Action's current price, from the
// user's balance and records it in the ledger, atomically. It never drives
// a balance negative: a balance lower than the amount fails with
// KindInsufficientCredits and changes nothing; so does an action the price
// list does not have, as an invalid argument. A retry with the same key
// and parameters returns the original entry (for an action, at the price
// charged then).
func (s *Service) DeductCredits(ctx context.Context, c CreditChange) (CreditResult, error) {
	if c.ClerkOrgID != "" {
		return s.deductFromOrganization(ctx, c)
	}
	if c.Action != "" {
		if err := c.validate(TxDeduct); err != nil {
			return CreditResult{}, err
		}
		return s.deductForAction(ctx, c)
	}
	return s.changeCredits(ctx, c, TxDeduct)
}

// GrantCredits adds c.Amount to the user's balance; otherwise as
// DeductCredits.
func (s *Service) GrantCredits(ctx context.Context, c CreditChange) (CreditResult, error) {
	if c.ClerkOrgID != "" {
		return s.grantToOrganization(ctx, c)
	}
	return s.changeCredits(ctx, c, TxGrant)
}

func (s *Service) changeCredits(ctx context.Context, c CreditChange, kind TxKind) (CreditResult, error) {
	if err := c.validate(kind); err != nil {
		return CreditResult{}, err
	}
	delta := c.Amount
	if kind == TxDeduct {
		delta = -c.Amount
	}
	res, err := s.store.ChangeCredits(ctx, CreditWrite{
		ClerkUserID:    c.ClerkUserID,
		Kind:           kind,
		Delta:          delta,
		Reason:         c.Reason,
		IdempotencyKey: c.IdempotencyKey,
		Service:        c.Service,
	})
	op := strings.ToLower(string(kind)) + " credits"
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
	return CreditResult{}, writeErr(res.Status, c.Amount, res.Available, "amount", op)
}

// writeErr is the error of a keyed write that did not apply.
func writeErr(st WriteStatus, amount, available int64, amountField, op string) error {
	switch st {
	case WriteNotFound:
		return apperr.NotFound("user not found")
	case WriteKeyReused:
		return keyReused()
	case WriteInsufficient:
		return apperr.InsufficientCredits(amount, available)
	case WriteOverflow:
		return apperr.InvalidArgument(apperr.FieldViolation{
			Field: amountField, Description: "would overflow the balance",
		})
	}
	return fmt.Errorf("%s: unexpected write status %q", op, st)
}

func keyReused() error {
	return apperr.Conflict(apperr.ReasonIdempotencyKeyReused,
		"idempotency key was already used for this user with different parameters")
}

// SetPlanInput is a request to change a user's plan.
type SetPlanInput struct {
	ClerkUserID    string
	Plan           Plan
	BonusCredits   int64
	IdempotencyKey string
	Reason         string
	// Service: as for CreditChange.
	Service string
	// ClerkOrgID, when set, changes the plan of the organization's
	// account instead (a service's call; ClerkUserID must then be empty).
	ClerkOrgID string
}

func (in SetPlanInput) validate() error {
	var v violations
	v.clerkUserID("clerk_user_id", in.ClerkUserID)
	v.plan("plan", in.Plan)
	v.amount("bonus_credits", in.BonusCredits, true)
	v.idempotencyKey("idempotency_key", in.IdempotencyKey)
	v.text("reason", in.Reason, MaxReason)
	return v.err()
}

// CreditResult is the outcome of DeductCredits and GrantCredits: the
// ledger entry and whether the call was a replay.
type CreditResult struct {
	// Transaction is the entry this call wrote, or, for a replay, the one
	// the key's first call wrote (its balance is the balance then, not now).
	Transaction
	// Replayed: the key had already applied these parameters; this call
	// changed nothing and returns the original result.
	Replayed bool
}

// SetPlanResult is the outcome of SetPlan.
type SetPlanResult struct {
	// User is the user as it is after the call (zero for an
	// organization's account).
	User User
	// Account is the organization's account after the call (zero for a
	// personal plan change: see User).
	Account Account
	// Change is the applied change (the original one for a retry).
	Change PlanChange
	// Bonus is the ledger entry of the bonus credits, if any.
	Bonus *Transaction
	// Replayed: the key had already applied this change; this call changed
	// nothing and returns the original change.
	Replayed bool
}

// SetPlan moves the user to in.Plan and grants in.BonusCredits in the same
// transaction. A retry with the same key and parameters returns the original
// change.
func (s *Service) SetPlan(ctx context.Context, in SetPlanInput) (SetPlanResult, error) {
	if in.ClerkOrgID != "" {
		return s.setOrganizationPlan(ctx, in)
	}
	if err := in.validate(); err != nil {
		return SetPlanResult{}, err
	}
	res, err := s.store.SetPlan(ctx, PlanWrite{
		ClerkUserID:    in.ClerkUserID,
		Plan:           in.Plan,
		BonusCredits:   in.BonusCredits,
		Reason:         in.Reason,
		IdempotencyKey: in.IdempotencyKey,
		Service:        in.Service,
	})
	if err != nil {
		return SetPlanResult{}, userErr(err, "set plan")
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
	return SetPlanResult{}, writeErr(res.Status, in.BonusCredits, 0, "bonus_credits", "set plan")
}

// GetAccount returns the account ref names: the personal account of a live
// user (ref.ClerkUserID alone), or an organization's account
// (ref.ClerkOrgID), closed or not. NotFound when there is none.
func (s *Service) GetAccount(ctx context.Context, ref AccountRef) (Account, error) {
	var v violations
	if ref.ClerkOrgID != "" {
		v.clerkOrgID("clerk_org_id", ref.ClerkOrgID)
	} else {
		v.clerkUserID("clerk_user_id", ref.ClerkUserID)
	}
	if err := v.err(); err != nil {
		return Account{}, err
	}
	var (
		a   Account
		err error
	)
	if ref.ClerkOrgID != "" {
		a, err = s.store.GetOrganizationAccount(ctx, ref.ClerkOrgID)
	} else {
		a, err = s.store.GetPersonalAccount(ctx, ref.ClerkUserID)
	}
	if errors.Is(err, ErrNoRow) {
		return Account{}, apperr.NotFound("account not found")
	}
	if err != nil {
		return Account{}, userErr(err, "get account")
	}
	if ref.ClerkOrgID != "" {
		// The live members, with their caps and spending (orgspend.go).
		if a.Members, err = s.accountMembers(ctx, ref.ClerkOrgID); err != nil {
			return Account{}, err
		}
	}
	return a, nil
}

// TransactionPage is one page of a user's ledger.
type TransactionPage struct {
	Transactions []Transaction
	// NextPageToken is "" on the last page.
	NextPageToken string
}

// ListCreditTransactions returns the user's ledger, newest first.
func (s *Service) ListCreditTransactions(ctx context.Context, clerkUserID string, pageSize int32, pageToken string) (TransactionPage, error) {
	var v violations
	v.clerkUserID("clerk_user_id", clerkUserID)
	pageSize = v.pageSize("page_size", pageSize, DefaultPageSize, MaxPageSize)
	before, err := decodeIDPageToken(ledgerTokenPrefix, pageToken)
	if err != nil {
		v.add("page_token", "is not a token returned by this API")
	}
	if err := v.err(); err != nil {
		return TransactionPage{}, err
	}
	u, err := s.store.GetLiveUserByClerkID(ctx, clerkUserID)
	if err != nil {
		return TransactionPage{}, userErr(err, "list credit transactions")
	}
	// One extra row tells whether another page follows.
	ts, err := s.store.ListCreditTransactions(ctx, u.ID, before, pageSize+1)
	if err != nil {
		return TransactionPage{}, userErr(err, "list credit transactions")
	}
	page := TransactionPage{Transactions: ts}
	if len(ts) > int(pageSize) {
		page.Transactions = ts[:pageSize]
		page.NextPageToken = encodePageToken(ledgerTokenPrefix, strconv.FormatInt(ts[pageSize-1].ID, 10))
	}
	return page, nil
}

// Page tokens are opaque to callers: a prefix naming a version and what
// the token pages through, then where the last page ended.
const ledgerTokenPrefix = "ct1:"

func encodePageToken(prefix, last string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(prefix + last))
}

// decodePageToken returns where the page before tok ended, "" for no
// token.
func decodePageToken(prefix, tok string) (string, error) {
	if tok == "" {
		return "", nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return "", err
	}
	s, ok := strings.CutPrefix(string(raw), prefix)
	if !ok || s == "" {
		return "", errors.New("bad page token prefix")
	}
	return s, nil
}

// decodeIDPageToken is decodePageToken for tokens that end at a row id; 0
// for no token.
func decodeIDPageToken(prefix, tok string) (int64, error) {
	s, err := decodePageToken(prefix, tok)
	if err != nil || s == "" {
		return 0, err
	}
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, errors.New("bad page token id")
	}
	return id, nil
}

// userErr turns a store error into what the caller sees: the store's
// expected outcomes become domain errors, *apperr.Error passes through, and
// anything else is wrapped as internal with the operation for context.
func userErr(err error, op string) error {
	switch {
	case errors.Is(err, ErrNoRow):
		return apperr.NotFound("user not found")
	case errors.Is(err, ErrEmailInUse):
		return apperr.Conflict(apperr.ReasonEmailInUse, "email is already used by another user")
	case errors.Is(err, ErrIdempotencyKeyInUse):
		return keyReused()
	}
	// An *apperr.Error (say, Unavailable) in the chain keeps its kind.
	return fmt.Errorf("%s: %w", op, err)
}
