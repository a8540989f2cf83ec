package clerkhook_test

import (
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/userd/userd/internal/apptest"
	"github.com/userd/userd/internal/clerkhook"
)

var propertySeeds = flag.Int("property.seeds", 60, "random histories TestDeliveryOrderDoesNotMatter runs")

// modelUser is a user's state in Clerk's own order of events.
type modelUser struct {
	id                 string
	created, deleted   bool
	email, first, last string
	version            time.Time // Clerk's updated_at of the state
	events             int
}

func (u *modelUser) sample() clerkhook.SampleUser {
	return clerkhook.SampleUser{ID: u.id, Email: u.email, FirstName: u.first, LastName: u.last, UpdatedAt: u.version}
}

// sessionTypes are the session events that embed the session's user.
var sessionTypes = []string{"session.created", "session.pending", "session.ended", "session.removed", "session.revoked"}

// history is a random sequence of Clerk events for a few users sharing a
// small pool of emails, in Clerk's order, respecting Clerk's rule that a
// live user's email belongs to no other live user at any time. Session
// events embed the user's state as of the session (the latest one; after a
// deletion, the last one before it), and some user.created deliveries are
// lost for good (past Svix's retries): the session.created of the user's
// first sign-in then has to create it.
type history struct {
	deliveries []delivery
	users      []*modelUser
}

func randomHistory(seed uint64, nUsers, nEvents int) history {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	emails := make([]string, nUsers-2) // fewer emails than users: they move around
	for i := range emails {
		emails[i] = fmt.Sprintf("e%d.s%d@example.com", i, seed)
	}
	holder := map[string]*modelUser{}
	var h history
	for i := range nUsers {
		h.users = append(h.users, &modelUser{id: fmt.Sprintf("user_s%du%d", seed, i)})
	}
	freeEmail := func() string {
		var free []string
		for _, e := range emails {
			if holder[e] == nil {
				free = append(free, e)
			}
		}
		if len(free) == 0 || rng.IntN(5) == 0 {
			return "" // sometimes no email at all (phone sign-up)
		}
		return free[rng.IntN(len(free))]
	}
	setEmail := func(u *modelUser, e string) {
		if u.email != "" {
			delete(holder, u.email)
		}
		u.email = e
		if e != "" {
			holder[e] = u
		}
	}
	clock := 0
	for len(h.deliveries) < nEvents {
		var open []*modelUser
		for _, u := range h.users {
			if !u.deleted {
				open = append(open, u)
			}
		}
		if len(open) == 0 {
			break // every user is deleted: the history is over
		}
		u := open[rng.IntN(len(open))]
		if u.created && rng.IntN(4) == 0 {
			clock++
			h.deliveries = append(h.deliveries, newSessionDelivery(
				fmt.Sprintf("msg_s%d_%d", seed, clock), sessionTypes[rng.IntN(len(sessionTypes))], u.sample()))
			continue
		}
		var typ string
		switch {
		case !u.created:
			typ = "user.created"
			u.created = true
			setEmail(u, freeEmail())
		case rng.IntN(8) == 0:
			typ = "user.deleted"
			if rng.IntN(2) == 0 { // a sign-out racing the deletion
				clock++
				h.deliveries = append(h.deliveries, newSessionDelivery(
					fmt.Sprintf("msg_s%d_%d", seed, clock), "session.removed", u.sample()))
			}
			u.deleted = true
			setEmail(u, "") // Clerk frees a deleted user's email
		default:
			typ = "user.updated"
			if rng.IntN(2) == 0 {
				setEmail(u, freeEmail())
			}
		}
		u.first = fmt.Sprintf("F%d", rng.IntN(1000))
		u.last = fmt.Sprintf("L%d", rng.IntN(1000))
		u.events++
		clock++
		u.version = at(clock)
		msgID := fmt.Sprintf("msg_s%d_%d", seed, clock)
		if typ == "user.created" && rng.IntN(4) == 0 {
			// Lost; the user signs in later.
			h.deliveries = append(h.deliveries, newSessionDelivery(msgID, "session.created", u.sample()))
			continue
		}
		h.deliveries = append(h.deliveries, newDelivery(msgID, typ, u.sample()))
	}
	return h
}

// TestDeliveryOrderDoesNotMatter applies random histories delivered the way
// Svix may deliver them — shuffled, with duplicates, concurrently — and
// checks that the result is what applying each history once, in order,
// gives: every live user with its last state, 10 credits and one ledger
// row; every deleted user gone.
func TestDeliveryOrderDoesNotMatter(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	start := time.Now()
	var (
		retried5xx atomic.Int64
		outcomes   sync.Map // outcome -> *atomic.Int64
	)
	total := 0
	seeds := *propertySeeds
	if testing.Short() {
		seeds = min(seeds, 6) // the same properties, on fewer histories
	}
	for seed := range uint64(seeds) {
		h := randomHistory(seed, 8, 40)
		rng := rand.New(rand.NewPCG(seed, 0xd1ce))
		var queue []delivery
		for _, d := range h.deliveries {
			queue = append(queue, d)
			for rng.IntN(3) == 0 { // at-least-once: some messages twice or more
				queue = append(queue, d)
			}
		}
		rng.Shuffle(len(queue), func(i, j int) { queue[i], queue[j] = queue[j], queue[i] })
		total += len(queue)

		var wg sync.WaitGroup
		work := make(chan delivery)
		for range 8 {
			wg.Go(func() {
				for d := range work {
					d.sentAt = time.Now()
					// Svix retries a 5xx; a 4xx here is a bug.
					for attempt := 0; ; attempt++ {
						code, out := post(t, in, d)
						if code == http.StatusOK {
							n, _ := outcomes.LoadOrStore(out["status"], new(atomic.Int64))
							n.(*atomic.Int64).Add(1)
							if d.session && out["status"] == "created" {
								n, _ := outcomes.LoadOrStore("session.created created", new(atomic.Int64))
								n.(*atomic.Int64).Add(1)
							}
							break
						}
						if code < 500 || attempt == 4 {
							t.Errorf("seed %d: %s answered %d %v", seed, d.msgID, code, out)
							break
						}
						retried5xx.Add(1)
					}
				}
			})
		}
		for _, d := range queue {
			work <- d
		}
		close(work)
		wg.Wait()

		for _, mu := range h.users {
			if !mu.created {
				continue
			}
			got, err := getUser(t, in, mu.id)
			if mu.deleted {
				if status.Code(err) != codes.NotFound {
					t.Errorf("seed %d: deleted %s is visible: %v %v", seed, mu.id, got, err)
				}
				continue
			}
			if err != nil {
				t.Errorf("seed %d: %s: %v", seed, mu.id, err)
				continue
			}
			if got.GetEmail() != mu.email || got.GetFirstName() != mu.first || got.GetLastName() != mu.last || got.GetCredits() != 10 {
				t.Errorf("seed %d: %s = {%q %q %q %d}, want {%q %q %q 10} after %d events",
					seed, mu.id, got.GetEmail(), got.GetFirstName(), got.GetLastName(), got.GetCredits(),
					mu.email, mu.first, mu.last, mu.events)
			}
			if ts := ledgerOf(t, in, mu.id); len(ts) != 1 || ts[0].Delta != 10 {
				t.Errorf("seed %d: %s ledger = %+v, want one initial entry", seed, mu.id, ts)
			}
		}
		if t.Failed() {
			t.Fatalf("seed %d failed; rerun with -run TestDeliveryOrderDoesNotMatter", seed)
		}
	}
	tally := map[string]int64{}
	outcomes.Range(func(k, v any) bool { tally[k.(string)] = v.(*atomic.Int64).Load(); return true })
	t.Logf("%d histories, %d deliveries (with duplicates), outcomes %v, %d transient 5xx retried, in %s",
		*propertySeeds, total, tally, retried5xx.Load(), time.Since(start).Round(time.Millisecond))
	for _, o := range []string{"created", "updated", "stale", "deleted", "duplicate", "ignored_deleted", "session.created created"} {
		if tally[o] == 0 {
			t.Errorf("no delivery had outcome %q: the histories are too tame", o)
		}
	}
	// The concurrent deliveries went through the group-commit batcher
	// together, not one transaction each.
	batches, events := batchStats(t, in)
	t.Logf("group commit: %d events in %d batches (%.2f per batch)", events, batches, float64(events)/float64(batches))
	if batches == 0 || events <= batches {
		t.Errorf("%d events in %d batches: no batch carried more than one event", events, batches)
	}
}

// batchStats reads the batch-size histogram from the ops listener: how many
// batches committed and how many events they carried.
func batchStats(t *testing.T, in *apptest.Instance) (batches, events int64) {
	t.Helper()
	resp, err := http.Get(in.OpsURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(raw), "\n") {
		name, value, _ := strings.Cut(line, " ")
		n, _ := strconv.ParseFloat(value, 64)
		switch name {
		case "userd_clerk_batch_events_count":
			batches = int64(n)
		case "userd_clerk_batch_events_sum":
			events = int64(n)
		}
	}
	return batches, events
}
