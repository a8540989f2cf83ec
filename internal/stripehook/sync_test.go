package stripehook_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/userd/userd/internal/billing"
	"github.com/userd/userd/internal/stripetest"
	"github.com/userd/userd/internal/users"
)

// TestSync: sync-stripe's domain converges accounts whose events were
// missed — a linked customer, and a customer whose metadata names an
// account but was never linked — counts a foreign customer as unlinked,
// changes nothing in a dry run, and nothing on a rerun.
func TestSync(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	linked := e.account("user_sync_linked")
	if _, _, err := e.users.EnsureUser(ctx, users.EnsureUserInput{ClerkUserID: "user_sync_meta"}); err != nil {
		t.Fatal(err)
	}
	e.fake.PutCustomer(stripetest.Customer{ID: "cus_syncmeta", Metadata: map[string]string{billing.MetaClerkUserID: "user_sync_meta"}})
	e.fake.PutCustomer(stripetest.Customer{ID: "cus_syncforeign", Metadata: map[string]string{}})
	end := time.Now().AddDate(0, 1, 0)
	e.fake.PutSub(stripetest.Sub{ID: "sub_sync_1", Customer: linked, Status: "active", Items: []stripetest.Item{{PriceID: priceEnt, Quantity: 1, PeriodEnd: end}}})
	e.fake.PutSub(stripetest.Sub{ID: "sub_sync_0", Customer: linked, Status: "canceled", Items: []stripetest.Item{{PriceID: pricePro, Quantity: 1, PeriodEnd: end}}})
	e.fake.PutSub(stripetest.Sub{ID: "sub_sync_2", Customer: "cus_syncmeta", Status: "past_due", Items: []stripetest.Item{{PriceID: pricePro, Quantity: 1, PeriodEnd: end}}})

	var out bytes.Buffer
	sum, err := e.billing.Sync(ctx, e.api, billing.SyncOptions{DryRun: true, Out: &out})
	if err != nil {
		t.Fatal(err)
	}
	if e.accountOf("user_sync_linked").Plan != users.PlanFree || e.accountOf("user_sync_meta").Plan != users.PlanFree {
		t.Fatal("a dry run changed a plan")
	}
	if !strings.Contains(out.String(), "plan "+linked) || !strings.Contains(out.String(), "link cus_syncmeta") {
		t.Errorf("dry run output:\n%s", out.String())
	}
	sum, err = e.billing.Sync(ctx, e.api, billing.SyncOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Listed != 3 || sum.Changed != 2 || sum.Unlinked != 1 || sum.Failed != 0 {
		t.Errorf("summary %+v, want 3 listed, 2 changed, 1 unlinked", sum)
	}
	if p := e.accountOf("user_sync_linked").Plan; p != users.PlanEnterprise {
		t.Errorf("linked account %s, want ENTERPRISE", p)
	}
	if p := e.accountOf("user_sync_meta").Plan; p != users.PlanPro {
		t.Errorf("account named in metadata %s, want PRO (past_due keeps the plan)", p)
	}
	if sum, err = e.billing.Sync(ctx, e.api, billing.SyncOptions{}); err != nil || sum.Changed != 0 || sum.Unchanged != 2 {
		t.Errorf("rerun %+v, %v; want nothing changed", sum, err)
	}
}
