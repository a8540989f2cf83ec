package clerkhook

import (
	"time"
)

// SampleOrg describes the organization in a sample event.
type SampleOrg struct {
	ID        string
	Name      string
	Slug      string // "" for none (null)
	ImageURL  string // "" for none (null)
	CreatedAt time.Time
	UpdatedAt time.Time
}

// SampleMembership describes the membership in a sample event.
type SampleMembership struct {
	ID          string
	Org         SampleOrg
	UserID      string
	Role        string
	Permissions []string
	UpdatedAt   time.Time
}

// SampleOrgEvent builds an organization.created/updated/deleted webhook
// body shaped like Clerk's: the Organization object, or for
// organization.deleted the DeletedObject {id, object, deleted}.
func SampleOrgEvent(typ string, o SampleOrg) []byte {
	var data any
	if typ == typeOrgDeleted {
		data = map[string]any{"object": "organization", "id": o.ID, "deleted": true}
	} else {
		data = sampleOrgObject(o)
	}
	return sampleEnvelope(typ, o.UpdatedAt.UnixMilli(), data)
}

// SampleMembershipEvent builds an organizationMembership.* webhook body
// shaped like Clerk's: the OrganizationMembership object, which embeds its
// organization and its user's public data (the deletion too).
func SampleMembershipEvent(typ string, m SampleMembership) []byte {
	return sampleEnvelope(typ, m.UpdatedAt.UnixMilli(), SampleMembershipObject(m))
}

// SampleOrgObject is o as Clerk's Organization object.
func SampleOrgObject(o SampleOrg) map[string]any { return sampleOrgObject(o) }

func sampleOrgObject(o SampleOrg) map[string]any {
	created := o.CreatedAt
	if created.IsZero() {
		created = o.UpdatedAt
	}
	return map[string]any{
		"object": "organization", "id": o.ID, "name": o.Name, "slug": nullIfEmpty(o.Slug),
		"image_url": nullIfEmpty(o.ImageURL), "has_image": o.ImageURL != "",
		"max_allowed_memberships": 5, "admin_delete_enabled": true,
		"public_metadata": map[string]any{}, "private_metadata": map[string]any{},
		"created_by": "user_sample_creator",
		"created_at": created.UnixMilli(), "updated_at": o.UpdatedAt.UnixMilli(),
	}
}

// SampleMembershipObject is m as Clerk's OrganizationMembership object.
func SampleMembershipObject(m SampleMembership) map[string]any {
	ms := m.UpdatedAt.UnixMilli()
	perms := []any{}
	for _, p := range m.Permissions {
		perms = append(perms, p)
	}
	org := m.Org
	if org.UpdatedAt.IsZero() {
		org.UpdatedAt = m.UpdatedAt
	}
	return map[string]any{
		"object": "organization_membership", "id": m.ID, "role": m.Role, "role_name": m.Role,
		"permissions": perms, "public_metadata": map[string]any{}, "private_metadata": map[string]any{},
		"organization": sampleOrgObject(org),
		"public_user_data": map[string]any{
			"user_id": m.UserID, "identifier": m.UserID + "@example.com", "first_name": nil, "last_name": nil,
			"image_url": "https://img.clerk.com/sample", "has_image": false,
		},
		"created_at": ms, "updated_at": ms,
	}
}
