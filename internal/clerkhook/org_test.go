package clerkhook_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/userd/userd/internal/apptest"
	"github.com/userd/userd/internal/clerkhook"
	"github.com/userd/userd/internal/config"
	"github.com/userd/userd/internal/testwait"
	"github.com/userd/userd/internal/users"
)

func newOrgDelivery(msgID, typ string, o clerkhook.SampleOrg) delivery {
	return delivery{msgID: msgID, body: clerkhook.SampleOrgEvent(typ, o), secret: apptest.WebhookSecret, sentAt: time.Now()}
}

func newMembershipDelivery(msgID, typ string, m clerkhook.SampleMembership) delivery {
	return delivery{msgID: msgID, body: clerkhook.SampleMembershipEvent(typ, m), secret: apptest.WebhookSecret, sentAt: time.Now()}
}

// expect posts d and fails unless it is answered code with status (or
// error) want.
func expect(t *testing.T, in *apptest.Instance, d delivery, code int, want string) {
	t.Helper()
	got, out := post(t, in, d)
	if got != code || (out["status"] != want && out["error"] != want) {
		t.Fatalf("%s: %d %v, want %d %s", d.msgID, got, out, code, want)
	}
}

func getOrg(t *testing.T, in *apptest.Instance, id string) users.Organization {
	t.Helper()
	o, err := in.Store.GetOrganization(context.Background(), id)
	if err != nil {
		t.Fatalf("organization %s: %v", id, err)
	}
	return o
}

func orgsOf(t *testing.T, in *apptest.Instance, userID string) []string {
	t.Helper()
	ids, err := in.Store.OrganizationsOf(context.Background(), userID)
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// accountOf reads an organization's account row.
func accountOf(t *testing.T, in *apptest.Instance, orgID string) (plan string, credits int64, closed bool) {
	t.Helper()
	plan, credits, closed, found := findAccount(t, in, orgID)
	if !found {
		t.Fatalf("organization %s has no account", orgID)
	}
	return plan, credits, closed
}

// findAccount reads an organization's account row, if it has one.
func findAccount(t *testing.T, in *apptest.Instance, orgID string) (plan string, credits int64, closed, found bool) {
	t.Helper()
	err := in.DB.QueryRow(context.Background(), `SELECT a.plan, a.credits, a.closed_at IS NOT NULL
		FROM accounts a JOIN organizations o ON o.id = a.organization_id WHERE o.clerk_org_id = $1`, orgID).
		Scan(&plan, &credits, &closed)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", 0, false, false
	}
	if err != nil {
		t.Fatalf("account of %s: %v", orgID, err)
	}
	return plan, credits, closed, true
}

// feedKinds lists the kinds of an organization's feed events, in feed
// order.
func feedKinds(t *testing.T, in *apptest.Instance, orgID string) []string {
	t.Helper()
	rows, err := in.DB.Query(context.Background(), `SELECT kind FROM feed_events
		WHERE clerk_org_id = $1 AND clerk_user_id IS NULL ORDER BY order_xid, id`, orgID)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var kinds []string
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			t.Fatal(err)
		}
		kinds = append(kinds, k)
	}
	return kinds
}

func TestOrganizationLifecycle(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	const orgID, userA, userB = "org_2hZkLife", "user_2hZkA", "user_2hZkB"
	org := clerkhook.SampleOrg{ID: orgID, Name: "Acme", Slug: "acme", ImageURL: "https://img.clerk.com/acme", UpdatedAt: at(1)}

	// A membership delivered before its organization is kept.
	memA := clerkhook.SampleMembership{ID: "orgmem_A1", Org: org, UserID: userA, Role: "org:admin",
		Permissions: []string{"org:credits:spend", "org:credits:manage"}, UpdatedAt: at(2)}
	expect(t, in, newMembershipDelivery("msg_m1", "organizationMembership.created", memA), http.StatusOK, "created")
	if got := orgsOf(t, in, userA); len(got) != 0 {
		t.Fatalf("a membership of an organization not mirrored yet counts: %v", got)
	}
	expect(t, in, newOrgDelivery("msg_o1", "organization.created", org), http.StatusOK, "created")
	expect(t, in, newOrgDelivery("msg_o1", "organization.created", org), http.StatusOK, "duplicate")
	if plan, credits, closed := accountOf(t, in, orgID); plan != "FREE" || credits != 0 || closed {
		t.Fatalf("account = %s %d closed=%v, want FREE 0 open", plan, credits, closed)
	}
	got := getOrg(t, in, orgID)
	if got.Name != "Acme" || got.Slug != "acme" || got.ImageURL != org.ImageURL || len(got.Members) != 1 ||
		got.Members[0].ClerkUserID != userA || got.Members[0].Role != "org:admin" ||
		!slices.Equal(got.Members[0].Permissions, memA.Permissions) {
		t.Fatalf("organization = %+v", got)
	}
	if ids := orgsOf(t, in, userA); !slices.Equal(ids, []string{orgID}) {
		t.Fatalf("OrganizationsOf(%s) = %v", userA, ids)
	}

	// Newer states win; an older one changes nothing.
	org.Name, org.UpdatedAt = "Acme Inc", at(5)
	expect(t, in, newOrgDelivery("msg_o2", "organization.updated", org), http.StatusOK, "updated")
	old := org
	old.Name, old.UpdatedAt = "Acme (old)", at(3)
	expect(t, in, newOrgDelivery("msg_o3", "organization.updated", old), http.StatusOK, "stale")
	memB := clerkhook.SampleMembership{ID: "orgmem_B1", Org: org, UserID: userB, Role: "org:member", UpdatedAt: at(6)}
	expect(t, in, newMembershipDelivery("msg_m2", "organizationMembership.created", memB), http.StatusOK, "created")
	memB.Role, memB.Permissions, memB.UpdatedAt = "org:admin", []string{"org:credits:spend"}, at(8)
	expect(t, in, newMembershipDelivery("msg_m3", "organizationMembership.updated", memB), http.StatusOK, "updated")
	staleB := memB
	staleB.Role, staleB.UpdatedAt = "org:member", at(7)
	expect(t, in, newMembershipDelivery("msg_m4", "organizationMembership.updated", staleB), http.StatusOK, "stale")
	got = getOrg(t, in, orgID)
	if got.Name != "Acme Inc" || len(got.Members) != 2 || got.Members[1].Role != "org:admin" {
		t.Fatalf("organization = %+v", got)
	}

	// A removal is final, even for an older state delivered after it.
	expect(t, in, newMembershipDelivery("msg_m5", "organizationMembership.deleted", memB), http.StatusOK, "deleted")
	expect(t, in, newMembershipDelivery("msg_m6", "organizationMembership.updated", staleB), http.StatusOK, "ignored_deleted")
	if ids := orgsOf(t, in, userB); len(ids) != 0 {
		t.Fatalf("a removed member still belongs: %v", ids)
	}

	// The organization's deletion closes its account, ends its
	// memberships and erases its name; nothing later revives it.
	expect(t, in, newOrgDelivery("msg_o4", "organization.deleted", org), http.StatusOK, "deleted")
	org.Name, org.UpdatedAt = "Zombie", at(20)
	expect(t, in, newOrgDelivery("msg_o5", "organization.updated", org), http.StatusOK, "ignored_deleted")
	memC := clerkhook.SampleMembership{ID: "orgmem_C1", Org: org, UserID: userB, Role: "org:member", UpdatedAt: at(21)}
	expect(t, in, newMembershipDelivery("msg_m7", "organizationMembership.created", memC), http.StatusOK, "ignored_deleted")
	if _, _, closed := accountOf(t, in, orgID); !closed {
		t.Fatal("the deleted organization's account is open")
	}
	got = getOrg(t, in, orgID)
	if got.DeletedAt == nil || got.Name != "" || got.Slug != "" || got.ImageURL != "" || len(got.Members) != 0 {
		t.Fatalf("deleted organization = %+v", got)
	}
	if ids := orgsOf(t, in, userA); len(ids) != 0 {
		t.Fatalf("a member of a deleted organization still belongs: %v", ids)
	}
	want := []string{"membership.created", "organization.created", "organization.updated", "membership.created",
		"membership.updated", "membership.deleted", "organization.deleted", "membership.deleted"}
	if kinds := feedKinds(t, in, orgID); !slices.Equal(kinds, want) {
		t.Errorf("feed = %v, want %v", kinds, want)
	}

	// A member whose user is deleted in userd no longer counts.
	org2 := clerkhook.SampleOrg{ID: "org_2hZkTwo", Name: "Two", UpdatedAt: at(30)}
	expect(t, in, newOrgDelivery("msg_o8", "organization.created", org2), http.StatusOK, "created")
	const userC = "user_2hZkC"
	expect(t, in, newMembershipDelivery("msg_m8", "organizationMembership.created",
		clerkhook.SampleMembership{ID: "orgmem_C2", Org: org2, UserID: userC, Role: "org:member", UpdatedAt: at(31)}), http.StatusOK, "created")
	expect(t, in, newDelivery("msg_u1", "user.created", clerkhook.SampleUser{ID: userC, UpdatedAt: at(32)}), http.StatusOK, "created")
	if ids := orgsOf(t, in, userC); !slices.Equal(ids, []string{org2.ID}) {
		t.Fatalf("OrganizationsOf(%s) = %v", userC, ids)
	}
	expect(t, in, newDelivery("msg_u2", "user.deleted", clerkhook.SampleUser{ID: userC, UpdatedAt: at(33)}), http.StatusOK, "deleted")
	if ids, members := orgsOf(t, in, userC), getOrg(t, in, org2.ID).Members; len(ids) != 0 || len(members) != 0 {
		t.Fatalf("a deleted user still belongs: %v, members %+v", ids, members)
	}

	// A deletion of an organization never seen leaves a tombstone.
	expect(t, in, newOrgDelivery("msg_o6", "organization.deleted", clerkhook.SampleOrg{ID: "org_never", UpdatedAt: at(1)}),
		http.StatusOK, "deleted")
	expect(t, in, newOrgDelivery("msg_o7", "organization.created", clerkhook.SampleOrg{ID: "org_never", Name: "Late", UpdatedAt: at(2)}),
		http.StatusOK, "ignored_deleted")
}

// rawEvent is a Clerk event envelope around data, as given.
func rawEvent(t *testing.T, typ string, data any) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{"type": typ, "object": "event", "timestamp": 1, "instance_id": "ins_x", "data": data})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// orgChecksum digests every row an organization or membership delivery
// may write.
func orgChecksum(t *testing.T, in *apptest.Instance) string {
	t.Helper()
	var sum string
	err := in.DB.QueryRow(context.Background(), `SELECT
		(SELECT coalesce(md5(string_agg(row_to_json(o)::text, ',' ORDER BY o.clerk_org_id)), '') FROM organizations o) ||
		(SELECT coalesce(md5(string_agg(row_to_json(m)::text, ',' ORDER BY m.clerk_membership_id)), '') FROM organization_memberships m) ||
		(SELECT coalesce(md5(string_agg(row_to_json(a)::text, ',' ORDER BY a.id)), '') FROM accounts a) ||
		(SELECT coalesce(md5(string_agg(row_to_json(w)::text, ',' ORDER BY w.svix_id)), '') FROM webhook_events w) ||
		(SELECT coalesce(md5(string_agg(row_to_json(f)::text, ',' ORDER BY f.id)), '') FROM feed_events f)`).Scan(&sum)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

// TestBadOrganizationPayloadsAreRefused: every organization or membership
// delivery that can never be applied is answered 400 with a reason, and
// writes nothing.
func TestBadOrganizationPayloadsAreRefused(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	org := clerkhook.SampleOrg{ID: "org_bad1", Name: "Acme", UpdatedAt: at(1)}
	expect(t, in, newOrgDelivery("msg_setup", "organization.created", org), http.StatusOK, "created")
	mem := clerkhook.SampleMembership{ID: "orgmem_bad1", Org: org, UserID: "user_bad1", Role: "org:member", UpdatedAt: at(2)}

	orgWith := func(k string, v any) map[string]any {
		o := clerkhook.SampleOrgObject(org)
		if v == nil {
			delete(o, k)
		} else {
			o[k] = v
		}
		return o
	}
	memWith := func(k string, v any) map[string]any {
		m := clerkhook.SampleMembershipObject(mem)
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	many := make([]string, 101)
	for i := range many {
		many[i] = fmt.Sprintf("org:f:p%d", i)
	}
	cases := []struct {
		name, typ string
		data      any
		reason    string
	}{
		{"org data not an object", "organization.created", "org_bad1", "bad_payload"},
		{"org object is a user", "organization.updated", orgWith("object", "user"), "bad_payload"},
		{"org without id", "organization.created", orgWith("id", nil), "invalid_event"},
		{"org id of a user", "organization.created", orgWith("id", "user_123"), "invalid_event"},
		{"org id with a slash", "organization.updated", orgWith("id", "org_a/b"), "invalid_event"},
		{"org without updated_at", "organization.updated", orgWith("updated_at", nil), "invalid_event"},
		{"org name with NUL", "organization.updated", orgWith("name", "a\x00b"), "invalid_event"},
		{"org slug not text", "organization.updated", orgWith("slug", 12), "bad_payload"},
		{"org deleted=false", "organization.deleted", map[string]any{"object": "organization", "id": "org_bad1", "deleted": false}, "bad_payload"},
		{"org deleted without id", "organization.deleted", map[string]any{"object": "organization", "deleted": true}, "invalid_event"},
		{"membership object is an org", "organizationMembership.created", memWith("object", "organization"), "bad_payload"},
		{"membership without organization", "organizationMembership.created", memWith("organization", nil), "invalid_event"},
		{"membership without user", "organizationMembership.created", memWith("public_user_data", nil), "invalid_event"},
		{"membership id of a user", "organizationMembership.updated", memWith("id", "user_1"), "invalid_event"},
		{"membership without updated_at", "organizationMembership.deleted", memWith("updated_at", nil), "invalid_event"},
		{"membership empty permission", "organizationMembership.updated", memWith("permissions", []string{"org:a:b", ""}), "invalid_event"},
		{"membership too many permissions", "organizationMembership.updated", memWith("permissions", many), "invalid_event"},
		{"membership role too long", "organizationMembership.updated", memWith("role", strings.Repeat("r", 257)), "invalid_event"},
		{"membership permissions not a list", "organizationMembership.updated", memWith("permissions", "org:a:b"), "bad_payload"},
	}
	before := orgChecksum(t, in)
	for i, c := range cases {
		d := delivery{msgID: fmt.Sprintf("msg_bad_%d", i), body: rawEvent(t, c.typ, c.data), secret: apptest.WebhookSecret, sentAt: time.Now()}
		code, out := post(t, in, d)
		if code != http.StatusBadRequest || out["error"] != c.reason {
			t.Errorf("%s: %d %v, want 400 %s", c.name, code, out, c.reason)
		}
	}
	if orgChecksum(t, in) != before {
		t.Fatal("a refused delivery wrote")
	}
	// The same message ids, fixed, are applied: a refusal recorded nothing.
	d := newMembershipDelivery("msg_bad_11", "organizationMembership.created", mem)
	expect(t, in, d, http.StatusOK, "created")
}

// TestMembershipChangeWaitsForTheAccountLock: a membership change locks
// the organization's account row first, so it waits for a transaction
// holding that lock (a spend from the account) and that transaction sees
// the membership as it was; the removal commits after it.
func TestMembershipChangeWaitsForTheAccountLock(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	ctx := context.Background()
	org := clerkhook.SampleOrg{ID: "org_locked", Name: "Locked", UpdatedAt: at(1)}
	mem := clerkhook.SampleMembership{ID: "orgmem_locked", Org: org, UserID: "user_locked", Role: "org:member", UpdatedAt: at(2)}
	expect(t, in, newOrgDelivery("msg_l1", "organization.created", org), http.StatusOK, "created")
	expect(t, in, newMembershipDelivery("msg_l2", "organizationMembership.created", mem), http.StatusOK, "created")

	tx, err := in.DB.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	var member bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM accounts a JOIN organizations o ON o.id = a.organization_id
		WHERE o.clerk_org_id = $1 FOR UPDATE OF a)`, org.ID).Scan(&member); err != nil || !member {
		t.Fatalf("lock the account: %v %v", member, err)
	}

	done := make(chan int, 1)
	go func() {
		code, _ := post(t, in, newMembershipDelivery("msg_l3", "organizationMembership.deleted", mem))
		done <- code
	}()
	testwait.Until(t, 10*time.Second, "the removal waits for the account lock", func() bool {
		var waiting bool
		_ = in.DB.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%userd_apply_clerk_batch%')`).Scan(&waiting)
		return waiting
	})
	// The lock holder still sees the member: a spend under it is applied
	// before the removal.
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM userd_live_membership($1, $2))`, org.ID, mem.UserID).Scan(&member); err != nil || !member {
		t.Fatalf("under the lock, the member is gone: %v %v", member, err)
	}
	select {
	case code := <-done:
		t.Fatalf("the removal committed (%d) while the account was locked", code)
	default:
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if code := <-done; code != http.StatusOK {
		t.Fatalf("removal answered %d", code)
	}
	if ids := orgsOf(t, in, mem.UserID); len(ids) != 0 {
		t.Fatalf("removed member still belongs: %v", ids)
	}
}

// TestMembershipChangeWaitsForAMembershipCheck: userd_live_membership
// locks the membership it finds (KEY SHARE), so a removal waits for the
// transaction that checked it even without the account lock.
func TestMembershipChangeWaitsForAMembershipCheck(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	ctx := context.Background()
	org := clerkhook.SampleOrg{ID: "org_checked", Name: "Checked", UpdatedAt: at(1)}
	mem := clerkhook.SampleMembership{ID: "orgmem_checked", Org: org, UserID: "user_checked", Role: "org:member", UpdatedAt: at(2)}
	expect(t, in, newOrgDelivery("msg_k1", "organization.created", org), http.StatusOK, "created")
	expect(t, in, newMembershipDelivery("msg_k2", "organizationMembership.created", mem), http.StatusOK, "created")

	tx, err := in.DB.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	var member bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM userd_live_membership($1, $2))`, org.ID, mem.UserID).Scan(&member); err != nil || !member {
		t.Fatalf("check: %v %v", member, err)
	}
	done := make(chan int, 1)
	go func() {
		code, _ := post(t, in, newMembershipDelivery("msg_k3", "organizationMembership.deleted", mem))
		done <- code
	}()
	testwait.Until(t, 10*time.Second, "the removal waits for the checking transaction", func() bool {
		var waiting bool
		_ = in.DB.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%userd_apply_clerk_batch%')`).Scan(&waiting)
		return waiting
	})
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if code := <-done; code != http.StatusOK {
		t.Fatalf("removal answered %d", code)
	}
	if err := in.DB.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM userd_live_membership($1, $2))`, org.ID, mem.UserID).Scan(&member); err != nil || member {
		t.Fatalf("after the removal: member %v %v", member, err)
	}
}

// TestOrganizationInitialCredits: with USERD_ORG_INITIAL_CREDITS, a new
// organization's account starts with them as one INITIAL ledger entry,
// and the feed carries the credits on the organization's stream.
func TestOrganizationInitialCredits(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, func(c *config.Serve) { c.OrgInitialCredits = 25 })
	org := clerkhook.SampleOrg{ID: "org_credits", Name: "Acme", UpdatedAt: at(1)}
	expect(t, in, newOrgDelivery("msg_c1", "organization.created", org), http.StatusOK, "created")
	expect(t, in, newOrgDelivery("msg_c2", "organization.updated", org), http.StatusOK, "stale")
	if plan, credits, closed := accountOf(t, in, org.ID); plan != "FREE" || credits != 25 || closed {
		t.Fatalf("account = %s %d closed=%v, want FREE 25 open", plan, credits, closed)
	}
	var n, sum int64
	if err := in.DB.QueryRow(context.Background(), `SELECT count(*), coalesce(sum(t.delta), 0) FROM credit_transactions t
		JOIN accounts a ON a.id = t.user_id JOIN organizations o ON o.id = a.organization_id
		WHERE o.clerk_org_id = $1 AND t.kind = 'INITIAL'`, org.ID).Scan(&n, &sum); err != nil || n != 1 || sum != 25 {
		t.Fatalf("ledger: %d entries of %d (%v), want one of 25", n, sum, err)
	}
	if kinds := feedKinds(t, in, org.ID); !slices.Equal(kinds, []string{"organization.created", "credits.changed"}) {
		t.Errorf("feed = %v", kinds)
	}
}
