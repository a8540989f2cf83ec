package users

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

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
}

// Observer learns of committed changes (for metrics). Replays and rolled
// back attempts are not reported.
type Observer interface {
	CreditsMoved(kind TxKind, amount int64)
	UserCreated(source string)
}

type noObserver struct{}

func (noObserver) CreditsMoved(TxKind, int64) {}
func (noObserver) UserCreated(string)         {}

// Sources of UserCreated.
const (
	SourceAPI     = "api"
	SourceWebhook = "webhook"
)

// NewService returns a Service that gives new users initialCredits (>= 0).
func NewService(store Store, initialCredits int64) *Service {
	return &Service{store: store, initialCredits: initialCredits, observer: noObserver{}}
}

// SetObserver reports committed changes to o.
func (s *Service) SetObserver(o Observer) { s.observer = o }

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
		switch {
		case err != nil:
			return ClerkUser{}, err
		case cu.ID != clerkUserID:
			return ClerkUser{}, fmt.Errorf("profile source returned user %q for %q", cu.ID, clerkUserID)
		case cu.UpdatedAt <= 0:
			return ClerkUser{}, fmt.Errorf("profile source returned no version for %q", clerkUserID)
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
	err = s.store.InTx(ctx, func(q Queries) error {
		email := cu.Email
		if cu.UpdatedAt > 0 {
			var txErr error
			if email, txErr = s.claimEmail(ctx, q, cu); txErr != nil {
				return txErr
			}
		}
		var txErr error
		u, created, txErr = s.createUser(ctx, q, cu.withEmail(email))
		return txErr
	})
	switch {
	case errors.Is(err, ErrEmailInUse):
		// A concurrent call for the same user may have won: its row holds
		// the email, and PostgreSQL reports that unique index rather than
		// the Clerk id one. Only if no row for this user exists is the
		// email really someone else's.
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
	// Another call inserted the row between our read and our insert.
	u, err = s.store.GetUserByClerkIDIncludingDeleted(ctx, clerkUserID)
	if err != nil {
		return User{}, false, userErr(err, "ensure user")
	}
	return existing(u)
}

// inTxRetrying runs fn in a transaction, and again (up to attempts in
// all) while it fails with retryOn: a constraint a racing transaction won,
// which the next attempt sees.
func (s *Service) inTxRetrying(ctx context.Context, retryOn error, attempts int, fn func(Queries) error) error {
	var err error
	for range attempts {
		if err = s.store.InTx(ctx, fn); !errors.Is(err, retryOn) {
			return err
		}
	}
	return err
}

// createUser inserts cu with the initial credits and their ledger entry,
// unless a row for the Clerk id exists (created == false, no error).
func (s *Service) createUser(ctx context.Context, q Queries, cu ClerkUser) (User, bool, error) {
	return q.InsertUserWithInitialCredits(ctx, NewUser{
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
	ClerkUserID    string
	Amount         int64
	IdempotencyKey string
	Reason         string
}

func (c CreditChange) validate() error {
	var v violations
	v.clerkUserID("clerk_user_id", c.ClerkUserID)
	v.amount("amount", c.Amount, false)
	v.idempotencyKey("idempotency_key", c.IdempotencyKey)
	v.text("reason", c.Reason, MaxReason)
	return v.err()
}

// DeductCredits subtracts c.Amount from the user's balance and records it in
// the ledger, atomically. It never drives a balance negative: a balance
// lower than the amount fails with KindInsufficientCredits and changes
// nothing. A retry with the same key and parameters returns the original
// entry.
func (s *Service) DeductCredits(ctx context.Context, c CreditChange) (Transaction, error) {
	return s.changeCredits(ctx, c, TxDeduct)
}

// GrantCredits adds c.Amount to the user's balance; otherwise as
// DeductCredits.
func (s *Service) GrantCredits(ctx context.Context, c CreditChange) (Transaction, error) {
	return s.changeCredits(ctx, c, TxGrant)
}

func (s *Service) changeCredits(ctx context.Context, c CreditChange, kind TxKind) (Transaction, error) {
	if err := c.validate(); err != nil {
		return Transaction{}, err
	}
	delta := c.Amount
	if kind == TxDeduct {
		delta = -c.Amount
	}
	var (
		t        Transaction
		replayed bool
		err      error
	)
	// A second attempt only when a racing retry with the same key
	// committed while this one waited for the lock: it then replays.
	err = s.inTxRetrying(ctx, ErrIdempotencyKeyInUse, 2, func(q Queries) error {
		replayed = false
		u, use, err := q.LockLiveUserWithKey(ctx, c.ClerkUserID, c.IdempotencyKey)
		if err != nil {
			return err
		}
		if use.PlanChangeID != 0 {
			return keyReused() // the key named a plan change
		}
		if prev := use.Transaction; prev != nil {
			if prev.Kind != kind || prev.Delta != delta || prev.Reason != c.Reason {
				return keyReused()
			}
			t, replayed = *prev, true
			return nil
		}
		balance, err := applyDelta(u.Credits, delta)
		if err != nil {
			return err
		}
		t, err = q.ApplyCreditTransaction(ctx, Transaction{
			UserID:         u.ID,
			Delta:          delta,
			BalanceAfter:   balance,
			Kind:           kind,
			Reason:         c.Reason,
			IdempotencyKey: c.IdempotencyKey,
		})
		return err
	})
	if err != nil {
		return Transaction{}, userErr(err, strings.ToLower(string(kind))+" credits")
	}
	if !replayed {
		s.observer.CreditsMoved(kind, c.Amount)
	}
	return t, nil
}

// applyDelta returns balance+delta, refusing a negative or overflowing
// result.
func applyDelta(balance, delta int64) (int64, error) {
	if delta < 0 && balance < -delta {
		return 0, apperr.InsufficientCredits(-delta, balance)
	}
	if delta > 0 && balance > math.MaxInt64-delta {
		return 0, apperr.InvalidArgument(apperr.FieldViolation{
			Field: "amount", Description: "would overflow the balance",
		})
	}
	return balance + delta, nil
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

// SetPlanResult is the outcome of SetPlan.
type SetPlanResult struct {
	// User is the user as it is after the call.
	User User
	// Change is the applied change (the original one for a retry).
	Change PlanChange
	// Bonus is the ledger entry of the bonus credits, if any.
	Bonus *Transaction
}

// SetPlan moves the user to in.Plan and grants in.BonusCredits in the same
// transaction. A retry with the same key and parameters returns the original
// change.
func (s *Service) SetPlan(ctx context.Context, in SetPlanInput) (SetPlanResult, error) {
	if err := in.validate(); err != nil {
		return SetPlanResult{}, err
	}
	var (
		res      SetPlanResult
		replayed bool
		err      error
	)
	// A second attempt only when a racing call with the same key committed
	// while this one waited for the lock: it then sees it.
	err = s.inTxRetrying(ctx, ErrIdempotencyKeyInUse, 2, func(q Queries) error {
		var txErr error
		res, replayed, txErr = s.setPlanOnce(ctx, q, in)
		return txErr
	})
	if err != nil {
		return SetPlanResult{}, userErr(err, "set plan")
	}
	if !replayed && in.BonusCredits > 0 {
		s.observer.CreditsMoved(TxPlanBonus, in.BonusCredits)
	}
	return res, nil
}

func (s *Service) setPlanOnce(ctx context.Context, q Queries, in SetPlanInput) (res SetPlanResult, replayed bool, err error) {
	u, use, err := q.LockLiveUserWithKey(ctx, in.ClerkUserID, in.IdempotencyKey)
	if err != nil {
		return res, false, err
	}
	if use.PlanChangeID != 0 {
		prev, err := q.GetPlanChangeByKey(ctx, u.ID, in.IdempotencyKey)
		if err != nil {
			return res, false, err
		}
		if prev.Plan != in.Plan || prev.BonusCredits != in.BonusCredits || prev.Reason != in.Reason {
			return res, false, keyReused()
		}
		res.User, res.Change = u, prev
		if prev.TransactionID != 0 {
			t, err := q.GetCreditTransactionByID(ctx, prev.TransactionID)
			if err != nil {
				return res, false, err
			}
			res.Bonus = &t
		}
		return res, true, nil
	}
	if use.Transaction != nil {
		return res, false, keyReused() // the key named a deduction or grant
	}
	balance, err := applyDelta(u.Credits, in.BonusCredits)
	if err != nil {
		return res, false, err
	}
	change := PlanChange{
		UserID:         u.ID,
		PreviousPlan:   u.Plan,
		Plan:           in.Plan,
		BonusCredits:   in.BonusCredits,
		Reason:         in.Reason,
		IdempotencyKey: in.IdempotencyKey,
	}
	if in.BonusCredits > 0 {
		t, err := q.InsertCreditTransaction(ctx, Transaction{
			UserID:         u.ID,
			Delta:          in.BonusCredits,
			BalanceAfter:   balance,
			Kind:           TxPlanBonus,
			Reason:         in.Reason,
			IdempotencyKey: in.IdempotencyKey,
		})
		if err != nil {
			return res, false, err
		}
		res.Bonus = &t
		change.TransactionID = t.ID
	}
	if res.User, err = q.UpdateUserPlanAndCredits(ctx, u.ID, in.Plan, balance); err != nil {
		return res, false, err
	}
	res.Change, err = q.InsertPlanChange(ctx, change)
	return res, false, err
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
	switch {
	case pageSize < 0 || pageSize > MaxPageSize:
		v.add("page_size", "must be between 0 and 500")
	case pageSize == 0:
		pageSize = DefaultPageSize
	}
	before, err := decodePageToken(pageToken)
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
		page.NextPageToken = encodePageToken(ts[pageSize-1].ID)
	}
	return page, nil
}

// Page tokens are opaque to callers: a version prefix and the id of the last
// entry returned.
const pageTokenPrefix = "ct1:"

func encodePageToken(lastID int64) string {
	return base64.RawURLEncoding.EncodeToString([]byte(pageTokenPrefix + strconv.FormatInt(lastID, 10)))
}

func decodePageToken(tok string) (int64, error) {
	if tok == "" {
		return 0, nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return 0, err
	}
	s, ok := strings.CutPrefix(string(raw), pageTokenPrefix)
	if !ok {
		return 0, errors.New("bad page token prefix")
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
