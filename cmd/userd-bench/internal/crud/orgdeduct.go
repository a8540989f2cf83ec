package crud

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/clerkhook"
)

// The organization deduction (issue 20): a backend service deducts 1
// credit from an organization's account for one of its members, so that
// the membership check, the member's spending cap (checked and counted)
// and the organization's feed stream are all in the call. The seeded
// users are paired into organizations (org_bench<i/2> has user_bench<i>
// and user_bench<i+1>), each with a large balance and a monthly cap per
// member that the bench never reaches: org_deduct.sql, the ceiling, uses
// the same layout.
const grpcOrgDeduct = "gRPC DeductCredits (organization, member cap)"

// orgsSeeded holds the targets whose organizations are seeded: once per
// target, whatever the rounds.
var orgsSeeded sync.Map

func orgID(i int) string { return "org_bench" + strconv.Itoa(i/2) }

// orgDeduct runs on the baseline too: the previous release (c0be9a3 and
// later) has organizations. A binary without them fails every call, and
// the report then says n/a (result.failed) rather than a rate of errors.
func (in *instance) orgDeduct(i int) error {
	n := i % *nUsers
	_, err := in.grpc.DeductCredits(in.ctx, &userdv1.DeductCreditsRequest{
		ClerkOrganizationId: orgID(n), ClerkUserId: UserID(n), Amount: 1, IdempotencyKey: in.key("o"),
	})
	return err
}

// prepareOrgs seeds the target's organizations before its first
// organization scenario: the organizations and memberships through signed
// webhooks, as Clerk delivers them, then each organization's balance and
// its members' caps over gRPC.
func (t *target) prepareOrgs() {
	if _, done := orgsSeeded.LoadOrStore(t, true); done {
		return
	}
	in, err := t.start(context.Background())
	if err != nil {
		log.Fatalf("%s: seed organizations: %v", t.name, err)
	}
	log.Printf("%s: seeding %d organizations", t.name, (*nUsers+1)/2)
	now := time.Now()
	// The organizations first: a member's cap needs its organization.
	err = parallel(*nUsers, func(i int) error {
		if i%2 != 0 {
			return nil
		}
		return in.seedOrg(i, now)
	})
	if err == nil {
		err = parallel(*nUsers, func(i int) error { return in.seedOrgMember(i, now) })
	}
	in.stop()
	if err != nil && t.baseline {
		// A baseline without organizations: its calls fail, and the
		// report says n/a.
		log.Printf("%s: seed organizations: %v", t.name, err)
		return
	}
	if err != nil {
		log.Fatalf("%s: seed organizations: %v", t.name, err)
	}
}

// parallel runs f(0) .. f(n-1) on 8 workers and returns the first error.
func parallel(n int, f func(i int) error) error {
	var (
		wg    sync.WaitGroup
		next  atomic.Int64
		first atomic.Value
	)
	for range 8 {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				if err := f(i); err != nil {
					first.CompareAndSwap(nil, fmt.Errorf("%d: %w", i, err))
					return
				}
			}
		})
	}
	wg.Wait()
	err, _ := first.Load().(error)
	return err
}

func sampleOrg(i int, now time.Time) clerkhook.SampleOrg {
	return clerkhook.SampleOrg{ID: orgID(i), Name: "Bench " + orgID(i), CreatedAt: now, UpdatedAt: now}
}

// seedOrg seeds orgID(i) and its balance.
func (in *instance) seedOrg(i int, now time.Time) error {
	org := sampleOrg(i, now)
	if err := in.deliver("msg_org_"+org.ID, clerkhook.SampleOrgEvent("organization.created", org)); err != nil {
		return err
	}
	_, err := in.grpc.GrantCredits(in.ctx, &userdv1.GrantCreditsRequest{
		ClerkOrganizationId: org.ID, Amount: 1_000_000_000, IdempotencyKey: "seed",
	})
	return err
}

// seedOrgMember seeds user i's membership of orgID(i) and its cap.
func (in *instance) seedOrgMember(i int, now time.Time) error {
	m := clerkhook.SampleMembership{ID: "orgmem_bench" + strconv.Itoa(i), Org: sampleOrg(i, now), UserID: UserID(i),
		Role: "org:member", UpdatedAt: now}
	if err := in.deliver("msg_mem_"+m.ID, clerkhook.SampleMembershipEvent("organizationMembership.created", m)); err != nil {
		return err
	}
	_, err := in.grpc.SetMemberSpendingCap(in.ctx, &userdv1.SetMemberSpendingCapRequest{
		ClerkOrganizationId: m.Org.ID, MemberClerkUserId: UserID(i), Period: userdv1.UsagePeriod_USAGE_PERIOD_MONTH,
		Cap: 1_000_000_000_000,
	})
	return err
}

// deliver posts one signed webhook delivery.
func (in *instance) deliver(msgID string, body []byte) error {
	h, err := clerkhook.SignHeaders(webhookSecret, msgID, time.Now(), body)
	if err != nil {
		return err
	}
	req, _ := http.NewRequest(http.MethodPost, in.hookURL, bytes.NewReader(body))
	req.Header = h
	return in.do(req)
}
