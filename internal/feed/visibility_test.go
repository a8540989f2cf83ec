package feed_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/userd/userd/internal/feed"
)

// memStore is a feed.Store over events appended by the test: the hub's
// visibility rules, without the database writing the events (which the
// feed's other tests cover).
type memStore struct {
	mu     sync.Mutex
	events []feed.Event
	next   int64
}

func (m *memStore) add(ev feed.Event) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.next++
	ev.ID = m.next
	ev.Position = feed.Position{Xid: m.next, ID: m.next}
	ev.Time = time.Now()
	m.events = append(m.events, ev)
}

func (m *memStore) ReadUserEvents(_ context.Context, after feed.Position, clerkUserID string, limit int32) (feed.Page, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	page := feed.Page{Horizon: m.next + 1}
	for _, ev := range m.events {
		if after.Less(ev.Position) && (clerkUserID == "" || ev.ClerkUserID == clerkUserID) {
			page.Events = append(page.Events, ev)
			if len(page.Events) == int(limit) {
				break
			}
		}
	}
	return page, nil
}

func (m *memStore) PruneUserEvents(context.Context, time.Time, int32) (int64, error) { return 0, nil }

// memberships is the live membership mirror the watches ask.
type memberships struct {
	mu   sync.Mutex
	orgs map[string][]string
}

func (ms *memberships) of(user string) func(context.Context) ([]string, error) {
	return func(context.Context) ([]string, error) {
		ms.mu.Lock()
		defer ms.mu.Unlock()
		return slices.Clone(ms.orgs[user]), nil
	}
}

func (ms *memberships) set(user string, orgs ...string) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	ms.orgs[user] = orgs
}

// TestEndUserWatchSeesItsOrganizationsOnly: an end user's watch sees its
// own events and those of the organizations it is a live member of —
// none of an organization it is not a member of, live or read back from
// the database — and follows its memberships during the stream: joined,
// it sees the organization's next events; removed, no more of them.
func TestEndUserWatchSeesItsOrganizationsOnly(t *testing.T) {
	t.Parallel()
	st := &memStore{}
	ms := &memberships{orgs: map[string][]string{"user_ann": {"org_a"}}}
	st.add(feed.Event{Kind: feed.KindCreditsChanged, ClerkOrgID: "org_a"}) // before every watch
	h := feed.NewHub(st, feed.Options{PollInterval: 2 * time.Millisecond, Heartbeat: time.Hour, PageLimit: 2})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); h.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	endUser := func(user string, start feed.Start, kinds ...feed.Kind) *chanSink {
		s, _ := watch(t, h, feed.Request{Start: start, ClerkUserID: user, Kinds: kinds, Organizations: ms.of(user)})
		joined(t, s)
		return s
	}
	ann := endUser("user_ann", feed.StartNow)
	bob := endUser("user_bob", feed.StartNow)
	bobCredits := endUser("user_bob", feed.StartNow, feed.KindCreditsChanged)
	service, _ := watch(t, h, feed.Request{Start: feed.StartNow})
	joined(t, service)

	type ev = feed.Event
	steps := []struct {
		before func()
		ev     ev
		// who sees it
		ann, bob, bobCredits bool
	}{
		{ev: ev{Kind: feed.KindCreditsChanged, ClerkOrgID: "org_a"}, ann: true},
		{ev: ev{Kind: feed.KindCreditsChanged, ClerkOrgID: "org_b"}},
		{ev: ev{Kind: feed.KindOrganizationUpdated, ClerkOrgID: "org_a"}, ann: true},
		{ev: ev{Kind: feed.KindUserUpdated, ClerkUserID: "user_bob"}, bob: true},
		{ev: ev{Kind: feed.KindCreditsChanged, ClerkUserID: "user_ann"}, ann: true},
		// Another member's membership of org_a: for org_a's members.
		{ev: ev{Kind: feed.KindMembershipCreated, ClerkOrgID: "org_a", MemberClerkUserID: "user_cy"}, ann: true},
		// Bob joins org_a: he sees his membership and org_a from then on.
		{before: func() { ms.set("user_bob", "org_a") },
			ev: ev{Kind: feed.KindMembershipCreated, ClerkOrgID: "org_a", MemberClerkUserID: "user_bob"}, ann: true, bob: true},
		{ev: ev{Kind: feed.KindCreditsChanged, ClerkOrgID: "org_a"}, ann: true, bob: true, bobCredits: true},
		// Ann is removed: her removal reaches her, org_a's events no more.
		{before: func() { ms.set("user_ann") },
			ev: ev{Kind: feed.KindMembershipDeleted, ClerkOrgID: "org_a", MemberClerkUserID: "user_ann"}, ann: true, bob: true},
		{ev: ev{Kind: feed.KindCreditsChanged, ClerkOrgID: "org_a"}, bob: true, bobCredits: true},
		{ev: ev{Kind: feed.KindMemberCapChanged, ClerkOrgID: "org_a", MemberClerkUserID: "user_ann"}, bob: true},
		{ev: ev{Kind: feed.KindCreditsChanged, ClerkOrgID: "org_b"}},
		// A last event of each so that every watch has something to end on.
		{ev: ev{Kind: feed.KindUserUpdated, ClerkUserID: "user_ann"}, ann: true},
		{ev: ev{Kind: feed.KindUserUpdated, ClerkUserID: "user_bob"}, bob: true},
		{ev: ev{Kind: feed.KindCreditsChanged, ClerkUserID: "user_bob"}, bob: true, bobCredits: true},
	}
	want := map[*chanSink][]int64{}
	for i, step := range steps {
		if step.before != nil {
			step.before()
		}
		st.add(step.ev)
		id := int64(i + 2) // event 1 came before the watches
		for s, sees := range map[*chanSink]bool{ann: step.ann, bob: step.bob, bobCredits: step.bobCredits, service: true} {
			if sees {
				want[s] = append(want[s], id)
			}
		}
	}
	check := func(name string, s *chanSink, ids []int64) {
		t.Helper()
		var got []int64
		for range ids {
			got = append(got, next(t, s).ID)
		}
		if !slices.Equal(got, ids) {
			t.Errorf("%s saw events %v, want %v", name, got, ids)
		}
		select {
		case ev := <-s.events:
			t.Errorf("%s saw event %d (%s %s%s) too", name, ev.ID, ev.Kind, ev.ClerkOrgID, ev.ClerkUserID)
		case <-time.After(50 * time.Millisecond):
		}
	}
	check("service", service, want[service])
	check("ann", ann, want[ann])
	check("bob", bob, want[bob])
	check("bob (credits only)", bobCredits, want[bobCredits])

	// Read back from the database (a watch from the oldest event), with
	// the memberships as they are now: Bob in org_a, Ann in none.
	annOld := endUser("user_ann", feed.StartOldest)
	bobOld := endUser("user_bob", feed.StartOldest)
	var annOwn, bobAll []int64
	all, _ := st.ReadUserEvents(ctx, feed.Position{}, "", 1000)
	for _, e := range all.Events {
		if e.ClerkUserID == "user_ann" || e.MemberClerkUserID == "user_ann" && e.Kind != feed.KindMemberCapChanged {
			annOwn = append(annOwn, e.ID)
		}
		if e.ClerkUserID == "user_bob" || e.ClerkOrgID == "org_a" {
			bobAll = append(bobAll, e.ID)
		}
	}
	check("ann from the oldest", annOld, annOwn)
	check("bob from the oldest", bobOld, bobAll)
}
