package users

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/userd/userd/internal/apperr"
)

// Clerk Organizations and their memberships, mirrored the way users are:
// webhook deliveries (organization.*, organizationMembership.*) and `userd
// sync-clerk` apply versioned states through the same group-committed
// batches as user events (see clerkBatcher and userd_apply_clerk_batch in
// db/schema.sql). An older Clerk updated_at never overwrites a newer one;
// a deletion is final (a tombstone row stays); a membership whose
// organization or user is not mirrored yet is kept (memberships are keyed
// by Clerk ids, without foreign keys). An organization's creation creates
// its account; its deletion closes the account (the ledger stays) and
// ends its memberships.

// Limits of mirrored organization fields.
const (
	MaxRole           = 256
	MaxPermission     = 256
	MaxPermissions    = 100
	clerkMembIDPrefix = "orgmem_"
)

// ClerkOrganization is the part of a Clerk organization userd mirrors, as
// of Clerk's UpdatedAt.
type ClerkOrganization struct {
	ID       string
	Name     string
	Slug     string
	ImageURL string
	// UpdatedAt is Clerk's updated_at in ms: the version of this state.
	UpdatedAt int64
}

// ClerkMembership is the part of a Clerk organization membership userd
// mirrors, as of Clerk's UpdatedAt.
type ClerkMembership struct {
	ID     string
	OrgID  string
	UserID string
	// Role is Clerk's role key, e.g. "org:admin".
	Role string
	// Permissions are the role's permission keys, e.g. "org:credits:spend".
	Permissions []string
	UpdatedAt   int64
}

// ClerkOrgEvent is one verified organization.created/updated delivery.
type ClerkOrgEvent struct {
	MessageID string
	Type      string
	Org       ClerkOrganization
}

// ClerkMembershipEvent is one verified organizationMembership.* delivery.
type ClerkMembershipEvent struct {
	MessageID string
	Type      string
	// Deleted marks organizationMembership.deleted: the membership ends,
	// for good.
	Deleted    bool
	Membership ClerkMembership
}

// Organization is a mirrored organization with its account and live
// members.
type Organization struct {
	ID         uuid.UUID
	ClerkOrgID string
	Name       string
	Slug       string
	ImageURL   string
	// ClerkUpdatedAt is Clerk's updated_at (ms) of the stored state.
	ClerkUpdatedAt int64
	CreatedAt      time.Time
	UpdatedAt      time.Time
	// DeletedAt is set once Clerk deleted the organization.
	DeletedAt *time.Time
	// AccountID is the organization's account (uuid.Nil for a tombstone
	// of an organization userd never saw live).
	AccountID uuid.UUID
	// AccountClosedAt is set once the account is closed (the organization
	// was deleted).
	AccountClosedAt *time.Time
	// Members are the live memberships, by Clerk user id.
	Members []Membership
}

// Membership is one live membership of an organization.
type Membership struct {
	ClerkMembershipID string
	ClerkOrgID        string
	ClerkUserID       string
	Role              string
	Permissions       []string
	ClerkUpdatedAt    int64
	CreatedAt         time.Time
	UpdatedAt         time.Time
}

// CheckClerkOrgID returns an invalid-argument error naming field unless id
// looks like a Clerk organization id.
func CheckClerkOrgID(field, id string) error {
	var v violations
	v.clerkOrgID(field, id)
	return v.err()
}

// check adds the violations of an organization state, fields named
// prefix + Clerk's field name.
func (o ClerkOrganization) check(v *violations, prefix string) {
	v.clerkOrgID(prefix+"id", o.ID)
	if o.UpdatedAt <= 0 {
		v.add(prefix+"updated_at", "must be a positive timestamp in milliseconds")
	}
	for _, f := range []struct{ name, value string }{
		{"name", o.Name}, {"slug", o.Slug}, {"image_url", o.ImageURL},
	} {
		if !Storable(f.value) {
			v.add(prefix+f.name, storableReason)
		}
	}
}

// sanitized cuts overlong text to what userd stores (see sanitizeClerkText).
func (o ClerkOrganization) sanitized() ClerkOrganization {
	o.Name = sanitizeClerkText(o.Name, MaxName)
	o.Slug = sanitizeClerkText(o.Slug, MaxName)
	o.ImageURL = sanitizeClerkText(o.ImageURL, MaxImageURL)
	return o
}

// check adds the violations of a membership state. Role and permissions
// are what spending is authorized by: they are refused, never cut, when
// they do not fit.
func (m ClerkMembership) check(v *violations, prefix string) {
	v.clerkID(prefix+"id", m.ID, clerkMembIDPrefix, `must be a Clerk organization membership id ("orgmem_...")`)
	v.clerkOrgID(prefix+"organization.id", m.OrgID)
	v.clerkUserID(prefix+"public_user_data.user_id", m.UserID)
	if m.UpdatedAt <= 0 {
		v.add(prefix+"updated_at", "must be a positive timestamp in milliseconds")
	}
	switch {
	case len(m.Role) > MaxRole:
		v.add(prefix+"role", fmt.Sprintf("must be at most %d bytes", MaxRole))
	case !Storable(m.Role):
		v.add(prefix+"role", storableReason)
	}
	if len(m.Permissions) > MaxPermissions {
		v.add(prefix+"permissions", fmt.Sprintf("must be at most %d permissions", MaxPermissions))
		return
	}
	for _, p := range m.Permissions {
		if p == "" || len(p) > MaxPermission || !Storable(p) {
			v.add(prefix+"permissions", fmt.Sprintf("each must be 1 to %d bytes of valid UTF-8 without NUL bytes", MaxPermission))
			return
		}
	}
}

// ApplyClerkOrganization applies organization.created or
// organization.updated: it creates the organization and its account (plan
// FREE, the configured initial credits as a ledger entry) if missing, or
// stores the carried state if it is newer than the stored one. A deleted
// organization stays deleted. Recorded under the message id and batched
// like ApplyClerkUser.
func (s *Service) ApplyClerkOrganization(ctx context.Context, ev ClerkOrgEvent) (EventOutcome, error) {
	var v violations
	v.delivery(ev.MessageID, ev.Type)
	ev.Org.check(&v, "data.")
	if err := v.err(); err != nil {
		return "", err
	}
	org := ev.Org.sanitized()
	outcome, err := s.clerk.apply(ctx, ClerkEventWrite{MessageID: ev.MessageID, Type: ev.Type, Org: &org})
	if err != nil {
		return "", fmt.Errorf("apply clerk organization %s: %w", ev.Org.ID, err)
	}
	return outcome, nil
}

// DeleteClerkOrganization applies organization.deleted: the organization
// is marked deleted (a tombstone is made if no row exists yet, so that no
// late event can create it), its name, slug and image are erased unless
// KeepDeletedUserData, its account is closed (its ledger stays) and its
// live memberships end.
func (s *Service) DeleteClerkOrganization(ctx context.Context, messageID, eventType, clerkOrgID string) (EventOutcome, error) {
	var v violations
	v.delivery(messageID, eventType)
	v.clerkOrgID("data.id", clerkOrgID)
	if err := v.err(); err != nil {
		return "", err
	}
	outcome, err := s.clerk.apply(ctx, ClerkEventWrite{
		MessageID: messageID, Type: eventType, Deleted: true, Org: &ClerkOrganization{ID: clerkOrgID},
	})
	if err != nil {
		return "", fmt.Errorf("delete clerk organization %s: %w", clerkOrgID, err)
	}
	return outcome, nil
}

// ApplyClerkMembership applies organizationMembership.created, .updated
// or .deleted (Deleted). The organization's account row is locked first,
// so that a spend from the account (which locks it, then checks the
// membership) and this change are serialized. A membership whose
// organization or user is not mirrored yet is stored all the same; one of
// a deleted organization is ignored (ignored_deleted).
func (s *Service) ApplyClerkMembership(ctx context.Context, ev ClerkMembershipEvent) (EventOutcome, error) {
	var v violations
	v.delivery(ev.MessageID, ev.Type)
	ev.Membership.check(&v, "data.")
	if err := v.err(); err != nil {
		return "", err
	}
	m := ev.Membership
	outcome, err := s.clerk.apply(ctx, ClerkEventWrite{MessageID: ev.MessageID, Type: ev.Type, Deleted: ev.Deleted, Membership: &m})
	if err != nil {
		return "", fmt.Errorf("apply clerk membership %s: %w", ev.Membership.ID, err)
	}
	return outcome, nil
}

// OrganizationsOf returns the Clerk ids of the live organizations where
// the user has a live membership, in id order.
func (s *Service) OrganizationsOf(ctx context.Context, clerkUserID string) ([]string, error) {
	var v violations
	if v.clerkUserID("clerk_user_id", clerkUserID); v.err() != nil {
		return nil, v.err()
	}
	ids, err := s.store.OrganizationsOf(ctx, clerkUserID)
	if err != nil {
		return nil, fmt.Errorf("organizations of %s: %w", clerkUserID, err)
	}
	return ids, nil
}

// GetOrganization returns the organization with its account and live
// members; a deleted one is NotFound unless includeDeleted (then without
// members).
func (s *Service) GetOrganization(ctx context.Context, clerkOrgID string, includeDeleted bool) (Organization, error) {
	var v violations
	if v.clerkOrgID("clerk_org_id", clerkOrgID); v.err() != nil {
		return Organization{}, v.err()
	}
	o, err := s.store.GetOrganization(ctx, clerkOrgID)
	if err == nil && o.DeletedAt != nil && !includeDeleted {
		err = ErrNoRow
	}
	if err != nil {
		return Organization{}, orgErr(err, "get organization")
	}
	return o, nil
}

func orgErr(err error, op string) error {
	if errors.Is(err, ErrNoRow) {
		return apperr.NotFound("organization not found")
	}
	return fmt.Errorf("%s: %w", op, err)
}
