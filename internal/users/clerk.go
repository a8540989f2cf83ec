package users

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/userd/userd/internal/apperr"
)

// ClerkUser is the part of a Clerk user object that userd mirrors, as of
// Clerk's UpdatedAt.
type ClerkUser struct {
	ID        string
	Email     string // primary email, "" when the user has none
	FirstName string
	LastName  string
	ImageURL  string
	// UpdatedAt is Clerk's updated_at in ms: the version of this state.
	UpdatedAt int64
}

// ClerkEvent is one verified webhook delivery about a user.
type ClerkEvent struct {
	// MessageID is the Svix message id; a redelivery carries the same id.
	MessageID string
	// Type is the Clerk event type (for the record).
	Type string
	// User is the state carried by user.created and user.updated.
	User ClerkUser
}

// EventOutcome says what applying a Clerk event did.
type EventOutcome string

// Outcomes of ApplyClerkUser and DeleteClerkUser.
const (
	// OutcomeCreated: the user did not exist and was created.
	OutcomeCreated EventOutcome = "created"
	// OutcomeUpdated: a newer state replaced the stored one.
	OutcomeUpdated EventOutcome = "updated"
	// OutcomeStale: the stored state is as new or newer; nothing changed.
	OutcomeStale EventOutcome = "stale"
	// OutcomeUserDeleted: the user is deleted; the event cannot revive it.
	OutcomeUserDeleted EventOutcome = "ignored_deleted"
	// OutcomeDeleted: the user was marked deleted (or a tombstone made).
	OutcomeDeleted EventOutcome = "deleted"
	// OutcomeDuplicate: this message id was already applied.
	OutcomeDuplicate EventOutcome = "duplicate"
)

// maxEmailConflictRetries bounds how often ApplyClerkUser re-runs when a
// concurrent event took the email between its check and its write.
const maxEmailConflictRetries = 3

func (e ClerkEvent) validate() error {
	var v violations
	if e.MessageID == "" || len(e.MessageID) > 255 {
		v.add("svix-id", "must be 1 to 255 characters")
	}
	v.clerkUserID("data.id", e.User.ID)
	if e.User.UpdatedAt <= 0 {
		v.add("data.updated_at", "must be a positive timestamp in milliseconds")
	}
	if len(e.User.Email) > MaxEmail {
		v.add("data.email_addresses", "primary email must be at most 320 bytes")
	}
	return v.err()
}

// withEmail returns cu storing email instead of its own (see resolveEmail).
func (cu ClerkUser) withEmail(email string) ClerkUser {
	cu.Email = email
	return cu
}

// sanitized returns cu with every text field storable.
func (cu ClerkUser) sanitized() ClerkUser {
	cu.Email = sanitizeClerkText(cu.Email, MaxEmail)
	cu.FirstName = sanitizeClerkText(cu.FirstName, MaxName)
	cu.LastName = sanitizeClerkText(cu.LastName, MaxName)
	cu.ImageURL = sanitizeClerkText(cu.ImageURL, MaxImageURL)
	return cu
}

// sanitizeClerkText makes text from Clerk storable: PostgreSQL text cannot
// hold NUL bytes or invalid UTF-8, and a signed event must not be refused
// forever for either. Overlong values are cut, not refused, for the same
// reason.
func sanitizeClerkText(s string, max int) string {
	s = strings.ToValidUTF8(strings.ReplaceAll(s, "\x00", ""), "\uFFFD")
	if len(s) <= max {
		return s
	}
	s = s[:max]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

// ApplyClerkUser applies a user.created or user.updated event: it creates
// the user (FREE, initial credits in the ledger) if missing, or stores the
// carried state if it is newer than the stored one. A deleted user stays
// deleted. When another live user holds the email, the newer state wins:
// if the holder's state is older it loses the email, otherwise this user is
// stored without it (its own later event will settle it). The event is
// recorded under its message id in the same transaction, so a redelivery is
// answered with OutcomeDuplicate and changes nothing.
func (s *Service) ApplyClerkUser(ctx context.Context, ev ClerkEvent) (EventOutcome, error) {
	if err := ev.validate(); err != nil {
		return "", err
	}
	ev.User = ev.User.sanitized()

	var (
		outcome EventOutcome
		err     error
	)
	err = s.inTxRetrying(ctx, ErrEmailInUse, maxEmailConflictRetries, func(q Queries) error {
		var txErr error
		outcome, txErr = s.applyClerkUser(ctx, q, ev)
		return txErr
	})
	if errors.Is(err, errDuplicate) {
		return OutcomeDuplicate, nil
	}
	if errors.Is(err, ErrEmailInUse) {
		// Concurrent events kept taking the email; Svix will redeliver.
		return "", apperr.Unavailable(fmt.Errorf("apply clerk user %s: %w", ev.User.ID, err))
	}
	if err != nil {
		return "", userErr(err, "apply clerk user "+ev.User.ID)
	}
	if outcome == OutcomeCreated {
		s.userCreated(SourceWebhook)
	}
	return outcome, nil
}

// errDuplicate rolls back the work of a delivery found to be a redelivery.
var errDuplicate = errors.New("webhook message already applied")

func (s *Service) applyClerkUser(ctx context.Context, q Queries, ev ClerkEvent) (EventOutcome, error) {
	outcome, err := s.upsertClerkUser(ctx, q, ev.User)
	if err != nil {
		return "", err
	}
	// Recording the message last keeps the transaction short; a
	// redelivery that raced this one finds the row (after waiting for this
	// commit) and rolls back, so the effect is applied once.
	fresh, err := q.RecordWebhookEvent(ctx, ev.MessageID, ev.Type, ev.User.ID, string(outcome))
	switch {
	case err != nil:
		return "", err
	case !fresh:
		return OutcomeDuplicate, errDuplicate
	}
	return outcome, nil
}

func (s *Service) upsertClerkUser(ctx context.Context, q Queries, cu ClerkUser) (EventOutcome, error) {
	self, holder, err := q.LockUserAndEmailHolder(ctx, cu.ID, cu.Email)
	if err != nil {
		return "", err
	}
	switch {
	case self != nil && self.DeletedAt != nil:
		return OutcomeUserDeleted, nil
	case self != nil && self.ClerkUpdatedAt >= cu.UpdatedAt:
		return OutcomeStale, nil
	}
	email, err := s.resolveEmail(ctx, q, cu, holder)
	if err != nil {
		return "", err
	}
	if self != nil {
		_, err := q.UpdateUserProfile(ctx, self.ID, cu.withEmail(email))
		return OutcomeUpdated, err
	}
	_, created, err := s.createUser(ctx, q, cu.withEmail(email))
	if err != nil {
		return "", err
	}
	if !created {
		// Another transaction created the user after our lock found
		// nothing; start over to see its row.
		return s.upsertClerkUser(ctx, q, cu)
	}
	return OutcomeCreated, nil
}

// claimEmail finds the other live user holding cu.Email and resolves the
// clash (see resolveEmail).
func (s *Service) claimEmail(ctx context.Context, q Queries, cu ClerkUser) (string, error) {
	if cu.Email == "" {
		return "", nil
	}
	holder, err := q.LockLiveUserByEmailExcept(ctx, cu.Email, cu.ID)
	switch {
	case errors.Is(err, ErrNoRow):
		return cu.Email, nil
	case err != nil:
		return "", err
	}
	return s.resolveEmail(ctx, q, cu, &holder)
}

// resolveEmail returns the email cu may store given the other live user
// holding it (nil: none): the newer state keeps it. An older holder loses
// it (its own newer event will bring its current email); a newer holder
// keeps it and cu is stored without one until its own later event.
func (s *Service) resolveEmail(ctx context.Context, q Queries, cu ClerkUser, holder *User) (string, error) {
	switch {
	case cu.Email == "" || holder == nil:
		return cu.Email, nil
	case holder.ClerkUpdatedAt > cu.UpdatedAt:
		return "", nil
	}
	if err := q.ClearUserEmail(ctx, holder.ID); err != nil {
		return "", fmt.Errorf("take email from %s: %w", holder.ClerkUserID, err)
	}
	return cu.Email, nil
}

// DeleteClerkUser applies user.deleted: the user is marked deleted (a
// tombstone is made if no row exists yet, so that no late event can create
// it). Its ledger is kept. Recorded under the message id like
// ApplyClerkUser.
func (s *Service) DeleteClerkUser(ctx context.Context, messageID, eventType, clerkUserID string) (EventOutcome, error) {
	var v violations
	if messageID == "" || len(messageID) > 255 {
		v.add("svix-id", "must be 1 to 255 characters")
	}
	v.clerkUserID("data.id", clerkUserID)
	if err := v.err(); err != nil {
		return "", err
	}
	err := s.store.InTx(ctx, func(q Queries) error {
		if err := q.TombstoneUser(ctx, clerkUserID); err != nil {
			return err
		}
		fresh, err := q.RecordWebhookEvent(ctx, messageID, eventType, clerkUserID, string(OutcomeDeleted))
		if err == nil && !fresh {
			return errDuplicate
		}
		return err
	})
	if errors.Is(err, errDuplicate) {
		return OutcomeDuplicate, nil
	}
	if err != nil {
		return "", userErr(err, "delete clerk user "+clerkUserID)
	}
	return OutcomeDeleted, nil
}

// pruneBatch bounds one DELETE of old message ids.
const pruneBatch = 5000

// ForgetWebhookEvents drops the record of messages processed before a
// time, in batches, and returns how many it dropped. Svix stops retrying a
// message after about 27 hours; a message redelivered after its record is
// gone (a manual replay from Clerk's dashboard) is still harmless: its
// state is stale or its user deleted, so it changes nothing.
func (s *Service) ForgetWebhookEvents(ctx context.Context, before time.Time) (int64, error) {
	var total int64
	for {
		n, err := s.store.DeleteWebhookEventsBefore(ctx, before, pruneBatch)
		total += n
		if err != nil {
			return total, fmt.Errorf("forget webhook events: %w", err)
		}
		if n < pruneBatch {
			return total, nil
		}
	}
}
