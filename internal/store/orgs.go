package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/userd/userd/gen/sqlcdb"
	"github.com/userd/userd/internal/users"
)

// clerkBatchEvent is one element of userd_apply_clerk_batch's p_events.
type clerkBatchEvent struct {
	SvixID      string   `json:"svix_id"`
	Type        string   `json:"type"`
	Kind        string   `json:"kind"`
	Deleted     bool     `json:"deleted"`
	ID          string   `json:"id"`
	UpdatedAt   int64    `json:"updated_at"`
	Email       string   `json:"email,omitempty"`
	FirstName   string   `json:"first_name,omitempty"`
	LastName    string   `json:"last_name,omitempty"`
	ImageURL    string   `json:"image_url,omitempty"`
	Name        string   `json:"name,omitempty"`
	Slug        string   `json:"slug,omitempty"`
	OrgID       string   `json:"org_id,omitempty"`
	UserID      string   `json:"user_id,omitempty"`
	Role        string   `json:"role,omitempty"`
	Permissions []string `json:"permissions,omitempty"`
}

func batchEvent(ev users.ClerkEventWrite) clerkBatchEvent {
	out := clerkBatchEvent{SvixID: ev.MessageID, Type: ev.Type, Deleted: ev.Deleted}
	switch {
	case ev.Org != nil:
		o := ev.Org
		out.Kind, out.ID, out.UpdatedAt = "organization", o.ID, o.UpdatedAt
		out.Name, out.Slug, out.ImageURL = o.Name, o.Slug, o.ImageURL
	case ev.Membership != nil:
		m := ev.Membership
		out.Kind, out.ID, out.UpdatedAt = "membership", m.ID, m.UpdatedAt
		out.OrgID, out.UserID, out.Role, out.Permissions = m.OrgID, m.UserID, m.Role, m.Permissions
	default:
		u := ev.User
		out.Kind, out.ID, out.UpdatedAt = "user", u.ID, u.UpdatedAt
		out.Email, out.FirstName, out.LastName, out.ImageURL = u.Email, u.FirstName, u.LastName, u.ImageURL
	}
	return out
}

// ApplyClerkEvents implements users.Store: one call of
// userd_apply_clerk_batch for users, organizations and memberships alike.
func (s *Store) ApplyClerkEvents(ctx context.Context, events []users.ClerkEventWrite, opts users.ClerkApplyOptions) ([]users.ClerkEventResult, error) {
	batch := make([]clerkBatchEvent, len(events))
	for i, ev := range events {
		batch[i] = batchEvent(ev)
	}
	raw, err := json.Marshal(batch)
	if err != nil {
		return nil, fmt.Errorf("apply clerk events: %w", err)
	}
	rows, err := s.q.ApplyClerkBatch(ctx, s.db, sqlcdb.ApplyClerkBatchParams{
		Events:            raw,
		InitialCredits:    opts.InitialCredits,
		OrgInitialCredits: opts.OrgInitialCredits,
		EraseDeleted:      opts.EraseDeleted,
	})
	if err != nil {
		return nil, translate(fmt.Errorf("apply clerk events: %w", err))
	}
	out := make([]users.ClerkEventResult, len(rows))
	for i, r := range rows {
		out[i] = users.ClerkEventResult{Outcome: users.EventOutcome(r.Outcome), ErrorCode: r.ErrorCode}
	}
	return out, nil
}

// OrganizationsOf implements users.Store.
func (s *Store) OrganizationsOf(ctx context.Context, clerkUserID string) ([]string, error) {
	ids, err := s.q.OrganizationsOf(ctx, s.db, clerkUserID)
	if err != nil {
		return nil, translate(fmt.Errorf("organizations of: %w", err))
	}
	return ids, nil
}

// memberPayload is one element of GetOrganization's members.
type memberPayload struct {
	ClerkMembershipID string    `json:"clerk_membership_id"`
	ClerkUserID       string    `json:"clerk_user_id"`
	Role              string    `json:"role"`
	Permissions       []string  `json:"permissions"`
	ClerkUpdatedAt    int64     `json:"clerk_updated_at"`
	CreatedAt         time.Time `json:"created_at"`
	UpdatedAt         time.Time `json:"updated_at"`
}

// GetOrganization implements users.Store.
func (s *Store) GetOrganization(ctx context.Context, clerkOrgID string) (users.Organization, error) {
	r, err := s.q.GetOrganization(ctx, s.db, clerkOrgID)
	if errors.Is(err, pgx.ErrNoRows) {
		return users.Organization{}, users.ErrNoRow
	}
	if err != nil {
		return users.Organization{}, translate(fmt.Errorf("get organization: %w", err))
	}
	o := users.Organization{
		ID:              r.ID,
		ClerkOrgID:      r.ClerkOrgID,
		Name:            deref(r.Name),
		Slug:            deref(r.Slug),
		ImageURL:        deref(r.ImageURL),
		ClerkUpdatedAt:  deref(r.ClerkUpdatedAt),
		CreatedAt:       r.CreatedAt,
		UpdatedAt:       r.UpdatedAt,
		DeletedAt:       r.DeletedAt,
		AccountID:       deref(r.AccountID),
		AccountClosedAt: r.AccountClosedAt,
	}
	var members []memberPayload
	if err := json.Unmarshal(r.Members, &members); err != nil {
		return users.Organization{}, fmt.Errorf("get organization: members: %w", err)
	}
	o.Members = make([]users.Membership, len(members))
	for i, m := range members {
		o.Members[i] = users.Membership{
			ClerkMembershipID: m.ClerkMembershipID, ClerkOrgID: r.ClerkOrgID, ClerkUserID: m.ClerkUserID,
			Role: m.Role, Permissions: m.Permissions, ClerkUpdatedAt: m.ClerkUpdatedAt,
			CreatedAt: m.CreatedAt, UpdatedAt: m.UpdatedAt,
		}
		if o.Members[i].Permissions == nil {
			o.Members[i].Permissions = []string{}
		}
	}
	return o, nil
}

// GetClerkOrgVersions implements users.Store.
func (s *Store) GetClerkOrgVersions(ctx context.Context, clerkOrgIDs []string) ([]users.ClerkVersion, error) {
	rows, err := s.q.GetClerkOrgVersions(ctx, s.db, clerkOrgIDs)
	if err != nil {
		return nil, translate(fmt.Errorf("get clerk organization versions: %w", err))
	}
	out := make([]users.ClerkVersion, len(rows))
	for i, r := range rows {
		out[i] = users.ClerkVersion{ClerkUserID: r.ClerkOrgID, UpdatedAt: r.ClerkUpdatedAt, Deleted: r.Deleted}
	}
	return out, nil
}

// ListLiveClerkOrgIDs implements users.Store.
func (s *Store) ListLiveClerkOrgIDs(ctx context.Context, after string, limit int32) ([]string, error) {
	ids, err := s.q.ListLiveClerkOrgIDs(ctx, s.db, sqlcdb.ListLiveClerkOrgIDsParams{After: after, RowLimit: limit})
	if err != nil {
		return nil, translate(fmt.Errorf("list live clerk organization ids: %w", err))
	}
	return ids, nil
}

// GetClerkMembershipVersions implements users.Store.
func (s *Store) GetClerkMembershipVersions(ctx context.Context, ids []string) ([]users.ClerkVersion, error) {
	rows, err := s.q.GetClerkMembershipVersions(ctx, s.db, ids)
	if err != nil {
		return nil, translate(fmt.Errorf("get clerk membership versions: %w", err))
	}
	out := make([]users.ClerkVersion, len(rows))
	for i, r := range rows {
		out[i] = users.ClerkVersion{ClerkUserID: r.ClerkMembershipID, UpdatedAt: r.ClerkUpdatedAt, Deleted: r.Deleted}
	}
	return out, nil
}

// ListLiveMemberships implements users.Store.
func (s *Store) ListLiveMemberships(ctx context.Context, clerkOrgID string) ([]users.Membership, error) {
	rows, err := s.q.ListLiveMemberships(ctx, s.db, clerkOrgID)
	if err != nil {
		return nil, translate(fmt.Errorf("list live memberships: %w", err))
	}
	out := make([]users.Membership, len(rows))
	for i, r := range rows {
		out[i] = users.Membership{
			ClerkMembershipID: r.ClerkMembershipID, ClerkOrgID: r.ClerkOrgID, ClerkUserID: r.ClerkUserID,
			Role: r.Role, Permissions: r.Permissions, ClerkUpdatedAt: r.ClerkUpdatedAt,
			CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt,
		}
	}
	return out, nil
}
