package users

import (
	"context"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
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
	// OutcomeRetry: applying the event failed and changed nothing; it may
	// be applied again (the store's word, never a final outcome).
	OutcomeRetry EventOutcome = "retry"
)

func (e ClerkEvent) validate() error {
	var v violations
	v.delivery(e.MessageID, e.Type)
	v.clerkUserID("data.id", e.User.ID)
	if e.User.UpdatedAt <= 0 {
		v.add("data.updated_at", "must be a positive timestamp in milliseconds")
	}
	if len(e.User.Email) > MaxEmail {
		v.add("data.email_addresses", "primary email must be at most 320 bytes")
	}
	e.User.checkText(&v, "data.")
	return v.err()
}

// delivery checks the svix-id and type of a webhook delivery: both are
// stored (webhook_events), so they must be storable text — a NUL byte or
// invalid UTF-8 would make PostgreSQL refuse the statement of the whole
// batch the delivery is applied in, not only this delivery.
func (v *violations) delivery(messageID, eventType string) {
	switch {
	case messageID == "" || len(messageID) > 255:
		v.add("svix-id", "must be 1 to 255 characters")
	case !Storable(messageID):
		v.add("svix-id", storableReason)
	}
	switch {
	case eventType == "" || len(eventType) > 255:
		v.add("type", "must be 1 to 255 characters")
	case !Storable(eventType):
		v.add("type", storableReason)
	}
}

// storableReason describes text that is not Storable.
const storableReason = "must be valid UTF-8 without NUL bytes"

// Storable reports whether s can be a PostgreSQL text value: valid UTF-8
// without NUL bytes. Anything else makes PostgreSQL refuse the statement —
// and with it every write batched into that statement — so text from
// outside (webhooks, the Backend API, callers) is checked before it
// reaches a batch.
func Storable(s string) bool {
	return utf8.ValidString(s) && strings.IndexByte(s, 0) < 0
}

// checkText adds a violation for every text field of cu that is not
// Storable, named prefix + the Clerk field (the id is checked as an id).
func (cu ClerkUser) checkText(v *violations, prefix string) {
	for _, f := range []struct{ name, value string }{
		{"email_addresses", cu.Email}, {"first_name", cu.FirstName},
		{"last_name", cu.LastName}, {"image_url", cu.ImageURL},
	} {
		if !Storable(f.value) {
			v.add(prefix+f.name, storableReason)
		}
	}
}

// sanitized returns cu with every text field storable.
func (cu ClerkUser) sanitized() ClerkUser {
	cu.Email = sanitizeClerkText(cu.Email, MaxEmail)
	cu.FirstName = sanitizeClerkText(cu.FirstName, MaxName)
	cu.LastName = sanitizeClerkText(cu.LastName, MaxName)
	cu.ImageURL = sanitizeClerkText(cu.ImageURL, MaxImageURL)
	return cu
}

// sanitizeClerkText cuts overlong text from Clerk to what userd stores:
// Clerk's limits are its own, and a signed event must not be refused
// forever for a long name. Text that is not Storable (NUL bytes, invalid
// UTF-8) is refused before this (checkText); the replacements here are only
// a second line of defence.
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
// answered with OutcomeDuplicate and changes nothing. Concurrent events are
// committed together (see clerkBatcher); the call returns once its event's
// batch committed.
func (s *Service) ApplyClerkUser(ctx context.Context, ev ClerkEvent) (EventOutcome, error) {
	if err := ev.validate(); err != nil {
		return "", err
	}
	outcome, err := s.clerk.apply(ctx, ClerkEventWrite{MessageID: ev.MessageID, Type: ev.Type, User: ev.User.sanitized()})
	if err != nil {
		return "", fmt.Errorf("apply clerk user %s: %w", ev.User.ID, err)
	}
	if outcome == OutcomeCreated {
		s.userCreated(SourceWebhook)
	}
	return outcome, nil
}

// DeleteClerkUser applies user.deleted: the user is marked deleted (a
// tombstone is made if no row exists yet, so that no late event can create
// it). Its ledger is kept. Recorded under the message id and batched like
// ApplyClerkUser.
func (s *Service) DeleteClerkUser(ctx context.Context, messageID, eventType, clerkUserID string) (EventOutcome, error) {
	var v violations
	v.delivery(messageID, eventType)
	v.clerkUserID("data.id", clerkUserID)
	if err := v.err(); err != nil {
		return "", err
	}
	outcome, err := s.clerk.apply(ctx, ClerkEventWrite{
		MessageID: messageID, Type: eventType, Deleted: true, User: ClerkUser{ID: clerkUserID},
	})
	if err != nil {
		return "", fmt.Errorf("delete clerk user %s: %w", clerkUserID, err)
	}
	return outcome, nil
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
