package clerksync_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/userd/userd/internal/clerk"
	"github.com/userd/userd/internal/clerkhook"
	"github.com/userd/userd/internal/clerksync"
	"github.com/userd/userd/internal/clerktest"
)

// orgRows reads every organization (deleted or not) with its account's
// state and its live members as "membership user role".
func (e *env) orgRows(t *testing.T) map[string]string {
	t.Helper()
	rows, err := e.pool.Query(context.Background(), `SELECT o.clerk_org_id, coalesce(o.name, ''), coalesce(o.clerk_updated_at, 0),
		o.deleted_at IS NOT NULL, a.closed_at IS NOT NULL,
		coalesce((SELECT string_agg(m.clerk_membership_id || ' ' || m.clerk_user_id || ' ' || m.role, ',' ORDER BY m.clerk_membership_id)
		          FROM organization_memberships m WHERE m.clerk_org_id = o.clerk_org_id AND m.deleted_at IS NULL), '')
		FROM organizations o LEFT JOIN accounts a ON a.organization_id = o.id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var id, name, members string
		var version int64
		var deleted bool
		var closed *bool
		if err := rows.Scan(&id, &name, &version, &deleted, &closed, &members); err != nil {
			t.Fatal(err)
		}
		out[id] = fmt.Sprintf("%s@%d deleted=%v closed=%v [%s]", name, version, deleted, closed != nil && *closed, members)
	}
	return out
}

// clerkOrgRows is what orgRows should read for the fake's live
// organizations.
func clerkOrgRows(fake *clerktest.Clerk) map[string]string {
	out := map[string]string{}
	members := map[string][]string{}
	for _, m := range fake.LiveMemberships() {
		members[m.Org.ID] = append(members[m.Org.ID], m.ID+" "+m.UserID+" "+m.Role)
	}
	for _, o := range fake.LiveOrganizations() {
		ms := members[o.ID]
		slices.Sort(ms)
		out[o.ID] = fmt.Sprintf("%s@%d deleted=false closed=false [%s]", o.Name, o.UpdatedAt.UnixMilli(), strings.Join(ms, ","))
	}
	return out
}

func (e *env) orgChecksum(t *testing.T) string {
	t.Helper()
	var sum string
	err := e.pool.QueryRow(context.Background(), `SELECT
		(SELECT coalesce(md5(string_agg(row_to_json(o)::text, ',' ORDER BY o.clerk_org_id)), '') FROM organizations o) ||
		(SELECT coalesce(md5(string_agg(row_to_json(m)::text, ',' ORDER BY m.clerk_membership_id)), '') FROM organization_memberships m) ||
		(SELECT coalesce(md5(string_agg(row_to_json(a)::text, ',' ORDER BY a.id)), '') FROM accounts a)`).Scan(&sum)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

// addOrgs makes n organizations with members each in the fake.
func addOrgs(fake *clerktest.Clerk, n, members int, start time.Time) {
	for i := range n {
		o := clerkhook.SampleOrg{ID: fmt.Sprintf("org_sync%03d", i), Name: fmt.Sprintf("Org %d", i),
			Slug: fmt.Sprintf("org-%d", i), UpdatedAt: start.Add(time.Duration(i) * time.Second)}
		fake.SetOrganization(o)
		for j := range members {
			role := "org:member"
			if j == 0 {
				role = "org:admin"
			}
			fake.SetMembership(clerkhook.SampleMembership{ID: fmt.Sprintf("orgmem_sync%03d_%d", i, j), Org: o,
				UserID: fmt.Sprintf("user_sync%d", j), Role: role, Permissions: []string{"org:credits:spend"},
				UpdatedAt: o.UpdatedAt.Add(time.Duration(j+1) * time.Millisecond)})
		}
	}
}

// TestOrganizationsBackfillAndDeleteMissing: a sync mirrors every
// organization (with its account) and membership, over several pages; a
// second changes nothing; a dry run writes nothing; --delete-missing
// deletes an organization and ends a membership Clerk no longer has, and
// refuses when too many organizations are missing.
func TestOrganizationsBackfillAndDeleteMissing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testRate)
	start := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	addOrgs(e.fake, 25, 12, start)

	sum, err := e.sync(t, clerksync.Options{Organizations: true, PageSize: 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(clerksync.SummaryLine(sum, nil))
	if sum.Orgs.Listed != 25 || sum.Orgs.Created != 25 || sum.Memberships.Listed != 300 || sum.Memberships.Created != 300 {
		t.Fatalf("first sync: %+v %+v", sum.Orgs, sum.Memberships)
	}
	if got, want := e.orgRows(t), clerkOrgRows(e.fake); !mapsEqual(got, want) {
		t.Fatalf("userd has %v\nClerk %v", got, want)
	}

	before := e.orgChecksum(t)
	sum, err = e.sync(t, clerksync.Options{Organizations: true, PageSize: 10})
	if err != nil || sum.Orgs.Unchanged != 25 || sum.Memberships.Unchanged != 300 || e.orgChecksum(t) != before {
		t.Fatalf("second sync: %v %+v %+v (changed: %v)", err, sum.Orgs, sum.Memberships, e.orgChecksum(t) != before)
	}

	// Changes in Clerk: a rename, a role change, a new member; a deleted
	// organization and a removed member.
	o := e.fake.LiveOrganizations()[3]
	o.Name, o.UpdatedAt = "Renamed", o.UpdatedAt.Add(time.Minute)
	e.fake.SetOrganization(o)
	m := e.fake.LiveMemberships()[40]
	m.Role, m.UpdatedAt = "org:admin", m.UpdatedAt.Add(time.Minute)
	e.fake.SetMembership(m)
	e.fake.SetMembership(clerkhook.SampleMembership{ID: "orgmem_new", Org: o, UserID: "user_new", Role: "org:member", UpdatedAt: o.UpdatedAt})
	e.fake.DeleteOrganization("org_sync007")
	e.fake.DeleteMembership("orgmem_sync010_5")

	var out bytes.Buffer
	before = e.orgChecksum(t)
	dry, err := e.sync(t, clerksync.Options{Organizations: true, DeleteMissing: true, MaxDeleteShare: 0.5, DryRun: true, Out: &out})
	if err != nil || e.orgChecksum(t) != before {
		t.Fatalf("dry run: %v (changed: %v)", err, e.orgChecksum(t) != before)
	}
	for _, line := range []string{"update org_sync003", "update " + m.ID, "create orgmem_new", "delete org_sync007", "delete orgmem_sync010_5"} {
		if !strings.Contains(out.String(), line+"\n") {
			t.Errorf("dry run output lacks %q:\n%s", line, out.String())
		}
	}
	t.Log(clerksync.SummaryLine(dry, nil))

	sum, err = e.sync(t, clerksync.Options{Organizations: true, DeleteMissing: true, MaxDeleteShare: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Orgs.Deleted != 1 || sum.Orgs.Updated != 1 || sum.Memberships.Deleted != 1 || sum.Memberships.Created != 1 {
		t.Fatalf("delete-missing sync: %+v %+v", sum.Orgs, sum.Memberships)
	}
	got := e.orgRows(t)
	if got["org_sync007"] != "@"+fmt.Sprint(start.Add(7*time.Second).UnixMilli())+" deleted=true closed=true []" {
		t.Errorf("org_sync007 = %q, want a tombstone with a closed account and no members", got["org_sync007"])
	}
	delete(got, "org_sync007")
	if want := clerkOrgRows(e.fake); !mapsEqual(got, want) {
		t.Fatalf("userd has %v\nClerk %v", got, want)
	}

	// A key of an instance without organizations: all look missing.
	empty := clerktest.New(t)
	emptyAPI, err := clerk.NewAPI(clerk.APIConfig{URL: empty.APIURL(), SecretKey: clerktest.SecretKey, RateLimit: testRate})
	if err != nil {
		t.Fatal(err)
	}
	before = e.orgChecksum(t)
	sum, _, err = clerksync.RunExclusive(context.Background(), e.st, 0, emptyAPI, e.svc,
		clerksync.Options{Organizations: true, DeleteMissing: true, MaxDeleteShare: 0.1, Retry: fastRetry})
	if !errors.Is(err, clerksync.ErrRefused) || !sum.Refused || sum.Orgs.Missing != 24 || sum.Orgs.Deleted != 0 {
		t.Fatalf("empty instance: err %v, summary %+v", err, sum)
	}
	if e.orgChecksum(t) != before {
		t.Fatal("the refused run wrote")
	}

	// An instance without the organizations feature: skipped, not failed.
	empty.OrganizationsDisabled.Store(true)
	sum, _, err = clerksync.RunExclusive(context.Background(), e.st, 0, emptyAPI, e.svc,
		clerksync.Options{Organizations: true, Retry: fastRetry})
	if err != nil || !sum.OrgsNotEnabled {
		t.Fatalf("organizations disabled: err %v, summary %+v", err, sum)
	}
}

// TestOrganizationListingThatIgnoresOffsetStops: a Backend API serving the
// first page again and again stops the run with an error.
func TestOrganizationListingThatIgnoresOffsetStops(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testRate)
	addOrgs(e.fake, 12, 1, time.Now().Add(-time.Hour))
	e.fake.IgnoreOffset.Store(true)
	_, err := e.sync(t, clerksync.Options{Organizations: true, PageSize: 5})
	if err == nil || !strings.Contains(err.Error(), "ignores offset") {
		t.Fatalf("err = %v, want the listing stopped", err)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
