package main

import (
	"context"
	"testing"

	"github.com/userd/userd/internal/apptest"
)

// TestSendClerkEventOrganizations posts every organization and membership
// event type the command knows to a running userd, signed as Svix would,
// and reads what each one changed in the database: the organization, its
// rename, the membership and its role, then their deletion. A created
// event sent again after an update is older than the stored state and
// changes nothing.
func TestSendClerkEventOrganizations(t *testing.T) {
	in := apptest.Start(t, nil)
	ctx := context.Background()
	send := func(typ string, tweak func(*sendClerkEventCmd)) {
		t.Helper()
		c := sendClerkEventCmd{
			URL: in.WebhookURL, Secret: apptest.WebhookSecret, Type: typ,
			UserID: "user_2demoMember", OrgID: "org_2demoOrg", OrgName: "Analytical Engines", OrgSlug: "analytical-engines",
			Role: "org:member",
		}
		if tweak != nil {
			tweak(&c)
		}
		if err := c.Run(); err != nil {
			t.Fatalf("send-clerk-event --type %s: %v", typ, err)
		}
	}
	org := func() (name string, deleted bool) {
		t.Helper()
		if err := in.DB.QueryRow(ctx, `SELECT coalesce(name, ''), deleted_at IS NOT NULL FROM organizations WHERE clerk_org_id = 'org_2demoOrg'`).Scan(&name, &deleted); err != nil {
			t.Fatalf("read the organization: %v", err)
		}
		return name, deleted
	}
	member := func() (role string, deleted bool) {
		t.Helper()
		if err := in.DB.QueryRow(ctx, `SELECT role, deleted_at IS NOT NULL FROM organization_memberships
			WHERE clerk_org_id = 'org_2demoOrg' AND clerk_user_id = 'user_2demoMember'`).Scan(&role, &deleted); err != nil {
			t.Fatalf("read the membership: %v", err)
		}
		return role, deleted
	}

	send("user.created", nil)
	send("organization.created", nil)
	if name, deleted := org(); name != "Analytical Engines" || deleted {
		t.Fatalf("after organization.created: %q, deleted %v", name, deleted)
	}
	send("organization.updated", func(c *sendClerkEventCmd) { c.OrgName = "Difference Engines" })
	send("organization.created", nil) // older than the update: stale
	if name, _ := org(); name != "Difference Engines" {
		t.Fatalf("after organization.updated and a stale created: %q", name)
	}
	send("organizationMembership.created", nil)
	if role, deleted := member(); role != "org:member" || deleted {
		t.Fatalf("after organizationMembership.created: %q, deleted %v", role, deleted)
	}
	send("organizationMembership.updated", func(c *sendClerkEventCmd) { c.Role = "org:admin" })
	if role, _ := member(); role != "org:admin" {
		t.Fatalf("after organizationMembership.updated: %q", role)
	}
	send("organizationMembership.deleted", nil)
	if _, deleted := member(); !deleted {
		t.Fatal("the membership is live after organizationMembership.deleted")
	}
	send("organization.deleted", nil)
	if _, deleted := org(); !deleted {
		t.Fatal("the organization is live after organization.deleted")
	}
}
