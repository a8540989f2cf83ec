package clerk

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/users"
)

// Organization is the part of Clerk's Organization object userd reads
// (webhooks organization.created/updated and GET /v1/organizations).
// Unknown fields are ignored.
type Organization struct {
	Object    string  `json:"object"`
	ID        string  `json:"id"`
	Name      string  `json:"name"`
	Slug      *string `json:"slug"`
	ImageURL  *string `json:"image_url"`
	CreatedAt int64   `json:"created_at"`
	UpdatedAt int64   `json:"updated_at"`
}

// Domain returns the state the domain mirrors, versioned by UpdatedAt.
func (o Organization) Domain() users.ClerkOrganization {
	return users.ClerkOrganization{
		ID:        o.ID,
		Name:      o.Name,
		Slug:      orEmpty(o.Slug),
		ImageURL:  orEmpty(o.ImageURL),
		UpdatedAt: o.UpdatedAt,
	}
}

// OrganizationMembership is the part of Clerk's OrganizationMembership
// object userd reads (webhooks organizationMembership.* and GET
// /v1/organizations/{id}/memberships): the membership, its organization
// (embedded) and its user (public_user_data.user_id).
type OrganizationMembership struct {
	Object         string        `json:"object"`
	ID             string        `json:"id"`
	Role           string        `json:"role"`
	Permissions    []string      `json:"permissions"`
	Organization   *Organization `json:"organization"`
	PublicUserData *struct {
		UserID string `json:"user_id"`
	} `json:"public_user_data"`
	CreatedAt int64 `json:"created_at"`
	UpdatedAt int64 `json:"updated_at"`
}

// Domain returns the state the domain mirrors, versioned by UpdatedAt.
// The organization and user ids are "" when the object lacks them (the
// domain refuses such a membership).
func (m OrganizationMembership) Domain() users.ClerkMembership {
	cm := users.ClerkMembership{
		ID:          m.ID,
		Role:        m.Role,
		Permissions: m.Permissions,
		UpdatedAt:   m.UpdatedAt,
	}
	if m.Organization != nil {
		cm.OrgID = m.Organization.ID
	}
	if m.PublicUserData != nil {
		cm.UserID = m.PublicUserData.UserID
	}
	if cm.Permissions == nil {
		cm.Permissions = []string{}
	}
	return cm
}

// list is the Backend API's paginated answer: {data, total_count}.
type list[T any] struct {
	Data       []T   `json:"data"`
	TotalCount int64 `json:"total_count"`
}

// ListOrganizations fetches one page of organizations (GET
// /v1/organizations) oldest first, skipping offset: the Backend API pages
// organizations by offset only. It returns the page and Clerk's total
// count. A page shorter than limit is the last one.
func (a *API) ListOrganizations(ctx context.Context, limit, offset int) ([]Organization, int64, error) {
	if limit < 1 || limit > MaxPageSize || offset < 0 {
		return nil, 0, fmt.Errorf("clerk list organizations: limit %d is not between 1 and %d, or offset %d is negative", limit, MaxPageSize, offset)
	}
	endpoint := a.base.JoinPath("v1", "organizations")
	q := url.Values{}
	q.Set("limit", strconv.Itoa(limit))
	q.Set("offset", strconv.Itoa(offset))
	// Oldest first: organizations created while the listing runs come
	// last and are listed too.
	q.Set("order_by", "+created_at")
	endpoint.RawQuery = q.Encode()
	var page list[Organization]
	if err := a.get(ctx, "list organizations", endpoint, 64<<20, &page); err != nil {
		return nil, 0, err
	}
	return page.Data, page.TotalCount, nil
}

// GetOrganization fetches one organization (GET /v1/organizations/{id}).
// An organization Clerk does not know is apperr NotFound.
func (a *API) GetOrganization(ctx context.Context, id string) (users.ClerkOrganization, error) {
	var o Organization
	if err := a.get(ctx, "get organization", a.base.JoinPath("v1", "organizations", id), 1<<20, &o); err != nil {
		return users.ClerkOrganization{}, err
	}
	if o.ID != id {
		return users.ClerkOrganization{}, apperr.Unavailable(errors.New("clerk get organization: the answer is for organization " + strconv.Quote(o.ID)))
	}
	return o.Domain(), nil
}

// ListOrganizationMemberships fetches one page of an organization's
// memberships (GET /v1/organizations/{id}/memberships), oldest first,
// skipping offset; userID, when set, keeps only that user's. It returns the
// page and Clerk's total count. An organization Clerk does not know is
// apperr NotFound.
func (a *API) ListOrganizationMemberships(ctx context.Context, orgID string, limit, offset int, userID string) ([]OrganizationMembership, int64, error) {
	if limit < 1 || limit > MaxPageSize || offset < 0 {
		return nil, 0, fmt.Errorf("clerk list organization memberships: limit %d is not between 1 and %d, or offset %d is negative", limit, MaxPageSize, offset)
	}
	endpoint := a.base.JoinPath("v1", "organizations", orgID, "memberships")
	q := url.Values{}
	q.Set("limit", strconv.Itoa(limit))
	q.Set("offset", strconv.Itoa(offset))
	q.Set("order_by", "+created_at")
	if userID != "" {
		q.Set("user_id", userID)
	}
	endpoint.RawQuery = q.Encode()
	var page list[OrganizationMembership]
	if err := a.get(ctx, "list organization memberships", endpoint, 64<<20, &page); err != nil {
		return nil, 0, err
	}
	return page.Data, page.TotalCount, nil
}
