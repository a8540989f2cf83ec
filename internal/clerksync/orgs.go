package clerksync

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/clerk"
	"github.com/userd/userd/internal/users"
)

// Organizations and memberships (Options.Organizations): after the users,
// a run pages through GET /v1/organizations (oldest first; the Backend API
// pages organizations by offset) and, for each organization listed, GET
// /v1/organizations/{id}/memberships, applying each page through the
// domain's versioned path as it does users. With DeleteMissing it then
// deletes the live organizations Clerk no longer has — behind the same
// safety stop (MaxDeleteShare of the live organizations, unless Force),
// each confirmed missing with GET /v1/organizations/{id} — and, for each
// organization listed, ends the live memberships its listing lacked, each
// confirmed missing by listing the organization's memberships of that
// user.

// OrgClerk is the part of the Backend API an organization sync uses
// (*clerk.API).
type OrgClerk interface {
	ListOrganizations(ctx context.Context, limit, offset int) ([]clerk.Organization, int64, error)
	GetOrganization(ctx context.Context, id string) (users.ClerkOrganization, error)
	ListOrganizationMemberships(ctx context.Context, orgID string, limit, offset int, userID string) ([]clerk.OrganizationMembership, int64, error)
}

// OrgDomain is the part of the users service an organization sync uses
// (*users.Service).
type OrgDomain interface {
	SyncClerkOrganizations(ctx context.Context, states []users.ClerkOrganization, dryRun bool) ([]users.SyncResult, error)
	SyncClerkMemberships(ctx context.Context, states []users.ClerkMembership, dryRun bool) ([]users.SyncResult, error)
	LiveClerkOrgIDs(ctx context.Context, after string, limit int) ([]string, error)
	LiveMemberships(ctx context.Context, clerkOrgID string) ([]users.Membership, error)
	DeleteMissingClerkOrganizations(ctx context.Context, clerkOrgIDs []string) ([]users.SyncResult, error)
	DeleteMissingClerkMemberships(ctx context.Context, ms []users.Membership) ([]users.SyncResult, error)
}

// orgsNotEnabled reports whether err is Clerk's answer for an instance
// without the organizations feature (403 organization_not_enabled_in_instance).
func orgsNotEnabled(err error) bool {
	var serr *clerk.StatusError
	return errors.As(err, &serr) && serr.StatusCode == http.StatusForbidden && serr.Code == "organization_not_enabled_in_instance"
}

type orgPage struct {
	orgs       []clerk.Organization
	total      int64
	notEnabled bool
}

type membershipPage struct {
	ms    []clerk.OrganizationMembership
	total int64
}

// syncOrganizations runs the organization part of a run.
func (r *run) syncOrganizations(ctx context.Context) error {
	api, okA := r.api.(OrgClerk)
	domain, okD := r.domain.(OrgDomain)
	if !okA || !okD {
		return errors.New("clerk sync: organizations: the Backend API client or the domain cannot sync organizations")
	}
	var live map[string]bool
	if r.opts.DeleteMissing {
		live = map[string]bool{}
		after := ""
		for {
			ids, err := retry(ctx, r, "list live organizations", func(ctx context.Context) ([]string, error) {
				return domain.LiveClerkOrgIDs(ctx, after, liveIDsPage)
			})
			if err != nil {
				return err
			}
			for _, id := range ids {
				live[id] = false
			}
			if len(ids) < liveIDsPage {
				break
			}
			after = ids[len(ids)-1]
		}
		r.sum.OrgsLiveBefore = int64(len(live))
	}
	offset := 0
	var total int64 = -1
	seen := map[string]bool{}
	for {
		p, err := retry(ctx, r, "list organizations in Clerk", func(ctx context.Context) (orgPage, error) {
			orgs, n, err := api.ListOrganizations(ctx, r.opts.PageSize, offset)
			if orgsNotEnabled(err) {
				return orgPage{notEnabled: true}, nil
			}
			return orgPage{orgs: orgs, total: n}, err
		})
		if p.notEnabled {
			r.opts.Log.Info("clerk sync: organizations are not enabled in this Clerk instance; skipped")
			r.sum.OrgsNotEnabled = true
			return nil
		}
		if err != nil {
			return err
		}
		if total < 0 {
			total = p.total
		}
		fresh := 0
		states := make([]users.ClerkOrganization, len(p.orgs))
		for i, o := range p.orgs {
			states[i] = o.Domain()
			if !seen[o.ID] {
				fresh++
				seen[o.ID] = true
			}
			if _, ok := live[o.ID]; ok {
				live[o.ID] = true
			}
		}
		switch {
		case len(p.orgs) == r.opts.PageSize && fresh == 0:
			return fmt.Errorf("list organizations in Clerk: the page at offset %d lists only organizations listed before: the Backend API (CLERK_API_URL) ignores offset; stopped", offset)
		case int64(len(seen)) > maxListed(total, r.opts.PageSize):
			return fmt.Errorf("list organizations in Clerk: listed %d organizations, more than the %d Clerk counted at the start allow: the Backend API (CLERK_API_URL) pages wrongly; stopped",
				len(seen), total)
		}
		results, err := retry(ctx, r, "apply organizations", func(ctx context.Context) ([]users.SyncResult, error) {
			return domain.SyncClerkOrganizations(ctx, states, r.opts.DryRun)
		})
		if err != nil {
			return err
		}
		r.sum.Orgs.Listed += int64(len(p.orgs))
		r.tallyInto(&r.sum.Orgs, results)
		for _, o := range p.orgs {
			if err := r.syncMemberships(ctx, api, domain, o.ID); err != nil {
				return err
			}
		}
		if len(p.orgs) < r.opts.PageSize {
			break
		}
		offset += len(p.orgs)
	}
	if r.opts.DeleteMissing {
		return r.deleteMissingOrgs(ctx, api, domain, live)
	}
	return nil
}

// syncMemberships lists and applies one organization's memberships and,
// with DeleteMissing, ends those live in userd that Clerk no longer has.
func (r *run) syncMemberships(ctx context.Context, api OrgClerk, domain OrgDomain, orgID string) error {
	var before []users.Membership
	if r.opts.DeleteMissing {
		var err error
		before, err = retry(ctx, r, "list live memberships", func(ctx context.Context) ([]users.Membership, error) {
			return domain.LiveMemberships(ctx, orgID)
		})
		if err != nil {
			return err
		}
	}
	listed := map[string]bool{}
	offset := 0
	var total int64 = -1
	for {
		p, err := retry(ctx, r, "list memberships in Clerk", func(ctx context.Context) (membershipPage, error) {
			ms, n, err := api.ListOrganizationMemberships(ctx, orgID, r.opts.PageSize, offset, "")
			return membershipPage{ms, n}, err
		})
		if apperr.KindOf(err) == apperr.KindNotFound {
			// Deleted since it was listed: its deletion (webhook, or the
			// next run) ends its memberships.
			return nil
		}
		if err != nil {
			return err
		}
		if total < 0 {
			total = p.total
		}
		fresh := 0
		states := make([]users.ClerkMembership, len(p.ms))
		for i, m := range p.ms {
			states[i] = m.Domain()
			if states[i].OrgID == "" {
				states[i].OrgID = orgID
			}
			if !listed[m.ID] {
				fresh++
				listed[m.ID] = true
			}
		}
		switch {
		case len(p.ms) == r.opts.PageSize && fresh == 0:
			return fmt.Errorf("list memberships of %s in Clerk: the page at offset %d lists only memberships listed before: the Backend API (CLERK_API_URL) ignores offset; stopped", orgID, offset)
		case int64(len(listed)) > maxListed(total, r.opts.PageSize):
			return fmt.Errorf("list memberships of %s in Clerk: listed %d, more than the %d Clerk counted at the start allow: the Backend API (CLERK_API_URL) pages wrongly; stopped",
				orgID, len(listed), total)
		}
		results, err := retry(ctx, r, "apply memberships", func(ctx context.Context) ([]users.SyncResult, error) {
			return domain.SyncClerkMemberships(ctx, states, r.opts.DryRun)
		})
		if err != nil {
			return err
		}
		r.sum.Memberships.Listed += int64(len(p.ms))
		r.tallyInto(&r.sum.Memberships, results)
		if len(p.ms) < r.opts.PageSize {
			break
		}
		offset += len(p.ms)
	}
	if !r.opts.DeleteMissing {
		return nil
	}
	var gone []users.Membership
	for _, m := range before {
		if listed[m.ClerkMembershipID] {
			continue
		}
		r.sum.Memberships.Missing++
		// Offset paging skips a membership when another one is deleted
		// while the listing runs: ask for this user's memberships alone.
		ms, err := retry(ctx, r, "confirm a missing membership in Clerk", func(ctx context.Context) (membershipPage, error) {
			ms, n, err := api.ListOrganizationMemberships(ctx, orgID, r.opts.PageSize, 0, m.ClerkUserID)
			return membershipPage{ms, n}, err
		})
		if apperr.KindOf(err) == apperr.KindNotFound {
			return nil
		}
		if err != nil {
			return err
		}
		if i := slices.IndexFunc(ms.ms, func(cm clerk.OrganizationMembership) bool { return cm.ID == m.ClerkMembershipID }); i >= 0 {
			results, err := retry(ctx, r, "apply memberships", func(ctx context.Context) ([]users.SyncResult, error) {
				return domain.SyncClerkMemberships(ctx, []users.ClerkMembership{ms.ms[i].Domain()}, r.opts.DryRun)
			})
			if err != nil {
				return err
			}
			r.tallyInto(&r.sum.Memberships, results)
			continue
		}
		gone = append(gone, m)
	}
	return r.deleteChunks(ctx, &r.sum.Memberships, len(gone), func(i int) string { return gone[i].ClerkMembershipID },
		func(ctx context.Context, from, to int) ([]users.SyncResult, error) {
			return domain.DeleteMissingClerkMemberships(ctx, gone[from:to])
		}, "end missing memberships")
}

// deleteMissingOrgs deletes the organizations live at the start that Clerk
// did not list and, asked one by one, does not know.
func (r *run) deleteMissingOrgs(ctx context.Context, api OrgClerk, domain OrgDomain, live map[string]bool) error {
	var missing []string
	for id, listed := range live {
		if !listed {
			missing = append(missing, id)
		}
	}
	slices.Sort(missing)
	r.sum.Orgs.Missing = int64(len(missing))
	if len(missing) == 0 {
		return nil
	}
	if float64(len(missing)) > r.opts.MaxDeleteShare*float64(len(live)) && !r.opts.Force {
		r.sum.Refused = true
		return fmt.Errorf("%w: %d of the %d live organizations (%.1f%%) are missing from Clerk, more than the allowed share of %.1f%%. "+
			"A CLERK_SECRET_KEY of another (or an empty) instance looks exactly like this: check the key, "+
			"then rerun with --force (or a larger --max-delete-share) if these organizations really are gone",
			ErrRefused, len(missing), len(live), 100*float64(len(missing))/float64(len(live)), 100*r.opts.MaxDeleteShare)
	}
	var gone []string
	for _, id := range missing {
		o, err := retry(ctx, r, "confirm a missing organization in Clerk", func(ctx context.Context) (users.ClerkOrganization, error) {
			return api.GetOrganization(ctx, id)
		})
		switch {
		case apperr.KindOf(err) == apperr.KindNotFound:
			gone = append(gone, id)
		case err != nil:
			return err
		default:
			r.opts.Log.Warn("clerk sync: an organization missing from the listing exists in Clerk; applied it", "clerk_org_id", id)
			results, err := retry(ctx, r, "apply organizations", func(ctx context.Context) ([]users.SyncResult, error) {
				return domain.SyncClerkOrganizations(ctx, []users.ClerkOrganization{o}, r.opts.DryRun)
			})
			if err != nil {
				return err
			}
			r.tallyInto(&r.sum.Orgs, results)
			if err := r.syncMemberships(ctx, api, domain, id); err != nil {
				return err
			}
		}
	}
	return r.deleteChunks(ctx, &r.sum.Orgs, len(gone), func(i int) string { return gone[i] },
		func(ctx context.Context, from, to int) ([]users.SyncResult, error) {
			return domain.DeleteMissingClerkOrganizations(ctx, gone[from:to])
		}, "delete missing organizations")
}

// deleteChunks deletes n confirmed-missing objects in chunks (in a dry
// run, only counts them).
func (r *run) deleteChunks(ctx context.Context, c *Counts, n int, id func(int) string,
	del func(ctx context.Context, from, to int) ([]users.SyncResult, error), op string,
) error {
	for from := 0; from < n; from += deleteBatch {
		to := min(from+deleteBatch, n)
		if r.opts.DryRun {
			results := make([]users.SyncResult, 0, to-from)
			for i := from; i < to; i++ {
				results = append(results, users.SyncResult{ClerkUserID: id(i), Outcome: users.OutcomeDeleted})
			}
			r.tallyInto(c, results)
			continue
		}
		results, err := retry(ctx, r, op, func(ctx context.Context) ([]users.SyncResult, error) {
			return del(ctx, from, to)
		})
		if err != nil {
			return err
		}
		r.tallyInto(c, results)
	}
	return nil
}
