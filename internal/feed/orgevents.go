package feed

import (
	"time"

	"github.com/google/uuid"
)

// Organization is an organization as an organization.* event carries it:
// its state after the change (organization.deleted: the id and DeletedAt
// only).
type Organization struct {
	ID         uuid.UUID
	ClerkOrgID string
	Name       string
	Slug       string
	ImageURL   string
	CreatedAt  time.Time
	UpdatedAt  time.Time
	DeletedAt  *time.Time
}

// Membership is a membership as a membership.* event carries it: its state
// after the change.
type Membership struct {
	ClerkMembershipID string
	ClerkOrgID        string
	ClerkUserID       string
	Role              string
	Permissions       []string
	CreatedAt         time.Time
	UpdatedAt         time.Time
	DeletedAt         *time.Time
}

// MemberCapChange is a member_cap.changed event: the cap set, or Period ""
// when it was removed.
type MemberCapChange struct {
	ClerkOrgID  string
	ClerkUserID string
	Period      string
	Cap         int64
	ChangedBy   string
	ChangedAt   time.Time
}
