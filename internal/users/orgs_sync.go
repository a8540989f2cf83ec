package users

import (
	"context"
	"fmt"
)

// Reconciling organizations and memberships with Clerk's Backend API
// (internal/clerksync drives it), as SyncClerkUsers does for users: listed
// states go through the function webhook events take, without a message
// id, so that whichever arrives first, an older state never overwrites a
// newer one and a deletion is final.

// syncStates compares states with the stored versions and applies those
// that are newer, as SyncClerkUsers does. ids, check and write describe the
// kind of object.
func (s *Service) syncStates(ctx context.Context, n int, id func(int) string, check func(int, *violations),
	versions func(context.Context, []string) ([]ClerkVersion, error), write func(int) ClerkEventWrite, dryRun bool,
) ([]SyncResult, error) {
	results := make([]SyncResult, n)
	ids := make([]string, 0, n)
	for i := range n {
		results[i].ClerkUserID = id(i)
		var v violations
		check(i, &v)
		if err := v.err(); err != nil {
			results[i].Outcome, results[i].Reason = OutcomeFailed, err.Error()
			continue
		}
		ids = append(ids, id(i))
	}
	stored, err := versions(ctx, ids)
	if err != nil {
		return nil, err
	}
	byID := make(map[string]ClerkVersion, len(stored))
	for _, v := range stored {
		byID[v.ClerkUserID] = v
	}
	var pending []int
	for i := range n {
		if results[i].Outcome != "" {
			continue
		}
		ev := write(i)
		v, ok := byID[id(i)]
		switch {
		case !ok && ev.Deleted:
			results[i].Outcome = OutcomeDeleted
		case !ok:
			results[i].Outcome = OutcomeCreated
		case v.Deleted:
			results[i].Outcome = OutcomeUserDeleted
			continue
		case ev.Deleted:
			results[i].Outcome = OutcomeDeleted
		case v.UpdatedAt == ev.version():
			results[i].Outcome = OutcomeUnchanged
			continue
		case v.UpdatedAt > ev.version():
			results[i].Outcome = OutcomeStale
			continue
		default:
			results[i].Outcome = OutcomeUpdated
		}
		pending = append(pending, i)
	}
	if dryRun || len(pending) == 0 {
		return results, nil
	}
	events := make([]ClerkEventWrite, len(pending))
	for j, i := range pending {
		events[j] = write(i)
	}
	outcomes, err := s.applyDirect(ctx, events)
	if err != nil {
		return nil, err
	}
	for j, i := range pending {
		results[i].Outcome, results[i].Reason = outcomes[j].Outcome, outcomes[j].ErrorCode
	}
	return results, nil
}

// version is the Clerk updated_at an event carries.
func (e ClerkEventWrite) version() int64 {
	switch {
	case e.Org != nil:
		return e.Org.UpdatedAt
	case e.Membership != nil:
		return e.Membership.UpdatedAt
	}
	return e.User.UpdatedAt
}

// SyncClerkOrganizations applies organizations as Clerk's Backend API
// lists them (see SyncClerkUsers): one result per state, in order.
func (s *Service) SyncClerkOrganizations(ctx context.Context, states []ClerkOrganization, dryRun bool) ([]SyncResult, error) {
	res, err := s.syncStates(ctx, len(states),
		func(i int) string { return states[i].ID },
		func(i int, v *violations) { states[i].check(v, "") },
		s.store.GetClerkOrgVersions,
		func(i int) ClerkEventWrite {
			o := states[i].sanitized()
			return ClerkEventWrite{Type: syncEventType, Org: &o}
		}, dryRun)
	if err != nil {
		return nil, fmt.Errorf("sync clerk organizations: %w", err)
	}
	return res, nil
}

// SyncClerkMemberships applies memberships as Clerk's Backend API lists
// them: one result per state, in order.
func (s *Service) SyncClerkMemberships(ctx context.Context, states []ClerkMembership, dryRun bool) ([]SyncResult, error) {
	res, err := s.syncStates(ctx, len(states),
		func(i int) string { return states[i].ID },
		func(i int, v *violations) { states[i].check(v, "") },
		s.store.GetClerkMembershipVersions,
		func(i int) ClerkEventWrite {
			m := states[i]
			return ClerkEventWrite{Type: syncEventType, Membership: &m}
		}, dryRun)
	if err != nil {
		return nil, fmt.Errorf("sync clerk memberships: %w", err)
	}
	return res, nil
}

// LiveClerkOrgIDs returns up to limit Clerk ids of live organizations, in
// id order, after the id after ("" for the first page).
func (s *Service) LiveClerkOrgIDs(ctx context.Context, after string, limit int) ([]string, error) {
	ids, err := s.store.ListLiveClerkOrgIDs(ctx, after, int32(min(max(limit, 1), 10_000)))
	if err != nil {
		return nil, fmt.Errorf("list live clerk organization ids: %w", err)
	}
	return ids, nil
}

// LiveMemberships returns the live membership rows of an organization, by
// membership id.
func (s *Service) LiveMemberships(ctx context.Context, clerkOrgID string) ([]Membership, error) {
	var v violations
	if v.clerkOrgID("clerk_org_id", clerkOrgID); v.err() != nil {
		return nil, v.err()
	}
	ms, err := s.store.ListLiveMemberships(ctx, clerkOrgID)
	if err != nil {
		return nil, fmt.Errorf("list live memberships: %w", err)
	}
	return ms, nil
}

// DeleteMissingClerkOrganizations marks deleted organizations that Clerk
// no longer has, through the path of organization.deleted (without a
// message id): their accounts close, their memberships end. The caller
// has made sure that Clerk does not have them: a deletion is final.
func (s *Service) DeleteMissingClerkOrganizations(ctx context.Context, clerkOrgIDs []string) ([]SyncResult, error) {
	res, err := s.deleteMissing(ctx, len(clerkOrgIDs), func(i int) string { return clerkOrgIDs[i] },
		func(i int, v *violations) { v.clerkOrgID("id", clerkOrgIDs[i]) },
		func(i int) ClerkEventWrite {
			return ClerkEventWrite{Type: syncEventType, Deleted: true, Org: &ClerkOrganization{ID: clerkOrgIDs[i]}}
		})
	if err != nil {
		return nil, fmt.Errorf("delete missing clerk organizations: %w", err)
	}
	return res, nil
}

// DeleteMissingClerkMemberships ends memberships that Clerk no longer has,
// through the path of organizationMembership.deleted (without a message
// id). The caller has made sure that Clerk does not have them.
func (s *Service) DeleteMissingClerkMemberships(ctx context.Context, ms []Membership) ([]SyncResult, error) {
	res, err := s.deleteMissing(ctx, len(ms), func(i int) string { return ms[i].ClerkMembershipID },
		func(i int, v *violations) { ms[i].state().check(v, "") },
		func(i int) ClerkEventWrite {
			st := ms[i].state()
			return ClerkEventWrite{Type: syncEventType, Deleted: true, Membership: &st}
		})
	if err != nil {
		return nil, fmt.Errorf("delete missing clerk memberships: %w", err)
	}
	return res, nil
}

// state is the membership as a Clerk state.
func (m Membership) state() ClerkMembership {
	return ClerkMembership{ID: m.ClerkMembershipID, OrgID: m.ClerkOrgID, UserID: m.ClerkUserID, Role: m.Role,
		Permissions: m.Permissions, UpdatedAt: max(m.ClerkUpdatedAt, 1)}
}

func (s *Service) deleteMissing(ctx context.Context, n int, id func(int) string, check func(int, *violations),
	write func(int) ClerkEventWrite,
) ([]SyncResult, error) {
	results := make([]SyncResult, n)
	var events []ClerkEventWrite
	var pending []int
	for i := range n {
		results[i].ClerkUserID = id(i)
		var v violations
		if check(i, &v); v.err() != nil {
			results[i].Outcome, results[i].Reason = OutcomeFailed, v.err().Error()
			continue
		}
		events = append(events, write(i))
		pending = append(pending, i)
	}
	outcomes, err := s.applyDirect(ctx, events)
	if err != nil {
		return nil, err
	}
	for j, i := range pending {
		results[i].Outcome, results[i].Reason = outcomes[j].Outcome, outcomes[j].ErrorCode
	}
	return results, nil
}
