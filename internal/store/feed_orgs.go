package store

import (
	"encoding/json"
	"time"

	"github.com/google/uuid"

	"github.com/userd/userd/internal/feed"
)

// The payloads of an organization's own events, as the triggers of
// db/migrations/00011_organizations.sql and 00012_organization_spending.sql
// write them.
type (
	organizationPayload struct {
		ID        uuid.UUID  `json:"id"`
		Name      *string    `json:"name"`
		Slug      *string    `json:"slug"`
		ImageURL  *string    `json:"image_url"`
		CreatedAt time.Time  `json:"created_at"`
		UpdatedAt time.Time  `json:"updated_at"`
		DeletedAt *time.Time `json:"deleted_at"`
	}
	membershipPayload struct {
		ClerkMembershipID string     `json:"clerk_membership_id"`
		ClerkUserID       string     `json:"clerk_user_id"`
		Role              string     `json:"role"`
		Permissions       []string   `json:"permissions"`
		CreatedAt         time.Time  `json:"created_at"`
		UpdatedAt         time.Time  `json:"updated_at"`
		DeletedAt         *time.Time `json:"deleted_at"`
	}
	memberCapPayload struct {
		ClerkUserID string    `json:"clerk_user_id"`
		Period      *string   `json:"period"`
		Cap         *int64    `json:"cap"`
		ChangedBy   string    `json:"changed_by"`
		ChangedAt   time.Time `json:"changed_at"`
	}
)

// orgEventFrom decodes the payload of an organization's, a membership's or
// a member cap's event into ev; false for any other kind.
func orgEventFrom(ev *feed.Event, payload []byte) (bool, error) {
	switch ev.Kind {
	case feed.KindOrganizationCreated, feed.KindOrganizationUpdated, feed.KindOrganizationDeleted:
		var p organizationPayload
		if err := json.Unmarshal(payload, &p); err != nil {
			return true, err
		}
		ev.Organization = &feed.Organization{
			ID: p.ID, ClerkOrgID: ev.ClerkOrgID, Name: deref(p.Name), Slug: deref(p.Slug), ImageURL: deref(p.ImageURL),
			CreatedAt: p.CreatedAt, UpdatedAt: p.UpdatedAt, DeletedAt: p.DeletedAt,
		}
	case feed.KindMembershipCreated, feed.KindMembershipUpdated, feed.KindMembershipDeleted:
		var p membershipPayload
		if err := json.Unmarshal(payload, &p); err != nil {
			return true, err
		}
		ev.MemberClerkUserID = p.ClerkUserID
		ev.Membership = &feed.Membership{
			ClerkMembershipID: p.ClerkMembershipID, ClerkOrgID: ev.ClerkOrgID, ClerkUserID: p.ClerkUserID,
			Role: p.Role, Permissions: p.Permissions, CreatedAt: p.CreatedAt, UpdatedAt: p.UpdatedAt, DeletedAt: p.DeletedAt,
		}
	case feed.KindMemberCapChanged:
		var p memberCapPayload
		if err := json.Unmarshal(payload, &p); err != nil {
			return true, err
		}
		ev.MemberClerkUserID = p.ClerkUserID
		ev.MemberCap = &feed.MemberCapChange{
			ClerkOrgID: ev.ClerkOrgID, ClerkUserID: p.ClerkUserID, Period: deref(p.Period), Cap: deref(p.Cap),
			ChangedBy: p.ChangedBy, ChangedAt: p.ChangedAt,
		}
	default:
		return false, nil
	}
	return true, nil
}
