package clerkhook_test

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/userd/userd/internal/apptest"
	"github.com/userd/userd/internal/clerkhook"
)

var orgPropertySeeds = 30

// orgHistory is a random sequence of Clerk organization and membership
// events, in Clerk's order: organizations created, renamed and deleted;
// members added, their roles changed, removed and added again (a new
// membership id). Deleting an organization deletes its memberships;
// Clerk's organizationMembership.deleted for them is sometimes sent,
// sometimes not.
type orgHistory struct {
	deliveries []delivery
	orgs       []*modelOrg
	members    []*modelMember
	users      []string
}

type modelOrg struct {
	state            clerkhook.SampleOrg
	created, deleted bool
}

type modelMember struct {
	state   clerkhook.SampleMembership
	deleted bool
}

var roles = []struct {
	role  string
	perms []string
}{
	{"org:admin", []string{"org:credits:manage", "org:credits:spend"}},
	{"org:member", []string{"org:credits:spend"}},
	{"org:viewer", nil},
}

func randomOrgHistory(seed uint64, nOrgs, nUsers, nEvents int) orgHistory {
	rng := rand.New(rand.NewPCG(seed, 0x0a9))
	var h orgHistory
	for i := range nOrgs {
		h.orgs = append(h.orgs, &modelOrg{state: clerkhook.SampleOrg{ID: fmt.Sprintf("org_s%do%d", seed, i)}})
	}
	for i := range nUsers {
		h.users = append(h.users, fmt.Sprintf("user_s%du%d", seed, i))
	}
	clock := 0
	tick := func() (time.Time, string) {
		clock++
		return at(clock), fmt.Sprintf("msg_os%d_%d", seed, clock)
	}
	liveMember := func(o *modelOrg, user string) *modelMember {
		for _, m := range h.members {
			if !m.deleted && m.state.Org.ID == o.state.ID && m.state.UserID == user {
				return m
			}
		}
		return nil
	}
	for steps := 0; len(h.deliveries) < nEvents && steps < 10*nEvents; steps++ {
		o := h.orgs[rng.IntN(len(h.orgs))]
		if o.deleted {
			continue
		}
		v, msg := tick()
		switch r := rng.IntN(20); {
		case !o.created:
			o.created = true
			o.state.Name, o.state.Slug, o.state.UpdatedAt = fmt.Sprintf("N%d", rng.IntN(1000)), fmt.Sprintf("s%d", clock), v
			o.state.CreatedAt = v
			h.deliveries = append(h.deliveries, newOrgDelivery(msg, "organization.created", o.state))
		case r == 0:
			for _, m := range h.members {
				if !m.deleted && m.state.Org.ID == o.state.ID {
					m.deleted = true
					if rng.IntN(2) == 0 {
						mv, mmsg := tick()
						m.state.UpdatedAt = mv
						h.deliveries = append(h.deliveries, newMembershipDelivery(mmsg, "organizationMembership.deleted", m.state))
					}
				}
			}
			o.deleted = true
			o.state.UpdatedAt = v
			h.deliveries = append(h.deliveries, newOrgDelivery(msg, "organization.deleted", o.state))
		case r < 5:
			o.state.Name, o.state.UpdatedAt = fmt.Sprintf("N%d", rng.IntN(1000)), v
			if rng.IntN(3) == 0 {
				o.state.ImageURL = fmt.Sprintf("https://img.example.com/%d", clock)
			}
			h.deliveries = append(h.deliveries, newOrgDelivery(msg, "organization.updated", o.state))
		default:
			user := h.users[rng.IntN(len(h.users))]
			role := roles[rng.IntN(len(roles))]
			m := liveMember(o, user)
			switch {
			case m == nil:
				m = &modelMember{state: clerkhook.SampleMembership{ID: fmt.Sprintf("orgmem_s%dc%d", seed, clock),
					Org: o.state, UserID: user, Role: role.role, Permissions: role.perms, UpdatedAt: v}}
				h.members = append(h.members, m)
				h.deliveries = append(h.deliveries, newMembershipDelivery(msg, "organizationMembership.created", m.state))
			case rng.IntN(3) == 0:
				m.deleted = true
				m.state.Org, m.state.UpdatedAt = o.state, v
				h.deliveries = append(h.deliveries, newMembershipDelivery(msg, "organizationMembership.deleted", m.state))
			default:
				m.state.Org, m.state.Role, m.state.Permissions, m.state.UpdatedAt = o.state, role.role, role.perms, v
				h.deliveries = append(h.deliveries, newMembershipDelivery(msg, "organizationMembership.updated", m.state))
			}
		}
	}
	return h
}

// TestOrganizationDeliveryOrderDoesNotMatter applies random organization
// and membership histories delivered the way Svix may deliver them —
// shuffled, with duplicates, concurrently — and checks that userd ends in
// Clerk's final state: every live organization with its last state, an
// open FREE account and exactly its live members (role and permissions);
// every deleted one a tombstone with a closed account and no members; each
// user's organizations exactly those it is a live member of.
func TestOrganizationDeliveryOrderDoesNotMatter(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	seeds := orgPropertySeeds
	if testing.Short() {
		seeds = 4
	}
	tally := map[string]int{}
	tombstones := 0
	var mu sync.Mutex
	for seed := range uint64(seeds) {
		h := randomOrgHistory(seed, 4, 5, 60)
		rng := rand.New(rand.NewPCG(seed, 0xd1ce))
		var queue []delivery
		for _, d := range h.deliveries {
			queue = append(queue, d)
			for rng.IntN(3) == 0 {
				queue = append(queue, d)
			}
		}
		rng.Shuffle(len(queue), func(i, j int) { queue[i], queue[j] = queue[j], queue[i] })

		var wg sync.WaitGroup
		work := make(chan delivery)
		for range 8 {
			wg.Go(func() {
				for d := range work {
					d.sentAt = time.Now()
					for attempt := 0; ; attempt++ {
						code, out := post(t, in, d)
						if code == http.StatusOK {
							mu.Lock()
							tally[out["status"]]++
							mu.Unlock()
							break
						}
						if code < 500 || attempt == 4 {
							t.Errorf("seed %d: %s answered %d %v", seed, d.msgID, code, out)
							break
						}
					}
				}
			})
		}
		for _, d := range queue {
			work <- d
		}
		close(work)
		wg.Wait()

		memberOf := map[string][]string{}
		for _, mo := range h.orgs {
			if !mo.created {
				continue
			}
			got := getOrg(t, in, mo.state.ID)
			plan, credits, closed, found := findAccount(t, in, mo.state.ID)
			if mo.deleted {
				// Its account is closed — or it never had one, when its
				// deletion arrived before its creation.
				if got.DeletedAt == nil || (found && !closed) || len(got.Members) != 0 || got.Name != "" {
					t.Errorf("seed %d: deleted %s = %+v (account found %v, closed %v)", seed, mo.state.ID, got, found, closed)
				}
				tombstones++
				continue
			}
			if !found || plan != "FREE" || credits != 0 {
				t.Errorf("seed %d: %s account found %v: %s %d", seed, mo.state.ID, found, plan, credits)
			}
			if got.DeletedAt != nil || closed || got.Name != mo.state.Name || got.Slug != mo.state.Slug ||
				got.ImageURL != mo.state.ImageURL || got.ClerkUpdatedAt != mo.state.UpdatedAt.UnixMilli() {
				t.Errorf("seed %d: %s = %+v (account closed %v), want %+v", seed, mo.state.ID, got, closed, mo.state)
			}
			var want []string
			for _, m := range h.members {
				if !m.deleted && m.state.Org.ID == mo.state.ID {
					want = append(want, fmt.Sprintf("%s %s %s %v", m.state.ID, m.state.UserID, m.state.Role, perms(m.state.Permissions)))
					memberOf[m.state.UserID] = append(memberOf[m.state.UserID], mo.state.ID)
				}
			}
			var have []string
			for _, m := range got.Members {
				have = append(have, fmt.Sprintf("%s %s %s %v", m.ClerkMembershipID, m.ClerkUserID, m.Role, perms(m.Permissions)))
			}
			slices.Sort(want)
			slices.Sort(have)
			if !slices.Equal(have, want) {
				t.Errorf("seed %d: %s members = %v, want %v", seed, mo.state.ID, have, want)
			}
		}
		for _, u := range h.users {
			want := memberOf[u]
			slices.Sort(want)
			if got := orgsOf(t, in, u); !slices.Equal(got, want) && (len(got) != 0 || len(want) != 0) {
				t.Errorf("seed %d: OrganizationsOf(%s) = %v, want %v", seed, u, got, want)
			}
		}
		if t.Failed() {
			t.Fatalf("seed %d failed", seed)
		}
	}
	t.Logf("%d histories, outcomes %v, %d organizations deleted", seeds, tally, tombstones)
	for _, o := range []string{"created", "updated", "stale", "deleted", "duplicate", "ignored_deleted"} {
		if tally[o] == 0 {
			t.Errorf("no delivery had outcome %q: the histories are too tame", o)
		}
	}
}

func perms(p []string) []string {
	if len(p) == 0 {
		return nil
	}
	return p
}
