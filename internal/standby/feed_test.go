package standby_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/apptest"
	"github.com/userd/userd/internal/config"
	"github.com/userd/userd/internal/consistency"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testwait"
)

// TestWatchCatchUpFromAPausedStandby runs the change feed's catch-up reads
// against a real primary and a streaming standby whose replay the test
// pauses. Whatever node serves a read, every watch delivers exactly the
// user's ledger after its cursor, in order: a standby that has not
// replayed as far as the cursor (one the primary handed out) is passed
// over for the primary instead of taking the cursor for a foreign one,
// and one that stays behind the hub's head cannot keep a watch from
// catching up. A watch with a token the standby cannot reach reads the
// primary after the bounded wait; the tokens the feed hands out make a
// read show at least the state of the event they came with.
func TestWatchCatchUpFromAPausedStandby(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a PostgreSQL primary and standby")
	}
	ctx := context.Background()
	c := newCluster(t)
	c.createDB(ctx, "userd")
	in := apptest.Start(t, func(cfg *config.Serve) {
		cfg.Database.URL = c.url(c.primaryPort, "userd")
		cfg.ReadURL = c.url(c.standbyPort, "userd")
		// However stale the paused standby gets, reads without a token
		// may use it: the feed must cope with that by itself.
		cfg.ReadMaxLag = time.Hour
		cfg.ReadTokenWait = 200 * time.Millisecond
	})
	sb := c.pool(ctx, c.standbyPort, "userd")
	primary := store.New(c.pool(ctx, c.primaryPort, "userd"), store.Options{})
	const id = "user_feed_standby"
	if _, err := in.Client.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: id}); err != nil {
		t.Fatal(err)
	}
	deduct(ctx, t, in, id, "f-0")
	waitStandbyHas(ctx, t, sb, id, 9)
	testwait.Until(t, 30*time.Second, "the standby to serve a read", func() bool {
		before := served(t, in, "standby", "ok")
		getUser(ctx, t, in, id, "")
		return served(t, in, "standby", "ok") > before
	})

	// From the oldest event, the standby in step: it serves the catch-up.
	before := served(t, in, "standby", "ok")
	all := watchUntil(ctx, t, in, &userdv1.WatchUserEventsRequest{Start: userdv1.WatchStart_WATCH_START_OLDEST}, "", 2)
	checkLedger(ctx, t, primary, id, "", all.credits())
	if served(t, in, "standby", "ok") == before {
		t.Fatal("no catch-up read of the watch was served by the standby")
	}
	c1 := all.lastCursor()

	// Replay paused: five deductions the standby does not show.
	c.pauseReplay(ctx, sb)
	var lastToken string
	for i := 1; i <= 5; i++ {
		lastToken = deduct(ctx, t, in, id, fmt.Sprintf("f-%d", i))
	}

	// From c1 without a token: the paused standby may serve the first
	// read (it has replayed up to c1), but the watch still delivers the
	// five deductions, in order, after it.
	before = served(t, in, "standby", "ok")
	fromC1 := watchUntil(ctx, t, in, &userdv1.WatchUserEventsRequest{Cursor: c1}, "", 5)
	checkLedger(ctx, t, primary, id, c1Tx(all), fromC1.credits())
	if served(t, in, "standby", "ok") == before {
		t.Fatal("the paused standby served no catch-up read (the test shows nothing)")
	}
	// Each event's token gives a read at least the state it reports: the
	// paused standby cannot, so the primary answers.
	last := fromC1.credits()[len(fromC1.credits())-1]
	if tok := last.tokenOf(t); getUser(ctx, t, in, id, tok).GetCredits() != last.tx.GetBalanceAfter() {
		t.Fatalf("a read with the last event's token does not show its balance %d", last.tx.GetBalanceAfter())
	}

	// From a cursor past everything the paused standby has replayed: the
	// standby is passed over, not taken for another database's feed.
	c2 := fromC1.lastCursor()
	deduct(ctx, t, in, id, "f-6")
	fromC2 := watchUntil(ctx, t, in, &userdv1.WatchUserEventsRequest{Cursor: c2}, "", 1)
	checkLedger(ctx, t, primary, id, c1Tx(fromC1), fromC2.credits())

	// With the token of the fifth deduction: the standby cannot reach it,
	// so after the bounded wait the primary serves the catch-up.
	waited := served(t, in, "primary", "token_wait")
	withToken := watchUntil(ctx, t, in, &userdv1.WatchUserEventsRequest{Cursor: c1}, lastToken, 6)
	checkLedger(ctx, t, primary, id, c1Tx(all), withToken.credits())
	if served(t, in, "primary", "token_wait") == waited {
		t.Fatal("a watch with a token the paused standby cannot reach was not served by the primary after the wait")
	}

	// Replay resumed: the standby serves the same history again.
	c.resumeReplay(ctx, sb)
	waitStandbyHas(ctx, t, sb, id, 3)
	before = served(t, in, "standby", "ok")
	again := watchUntil(ctx, t, in, &userdv1.WatchUserEventsRequest{Cursor: c1}, lastToken, 6)
	checkLedger(ctx, t, primary, id, c1Tx(all), again.credits())
	if served(t, in, "standby", "ok") == before {
		t.Fatal("the caught-up standby served no catch-up read")
	}
}

func deduct(ctx context.Context, t *testing.T, in *apptest.Instance, id, key string) string {
	t.Helper()
	var h metadata.MD
	if _, err := in.Client.DeductCredits(ctx, &userdv1.DeductCreditsRequest{
		ClerkUserId: id, Amount: 1, IdempotencyKey: key,
	}, grpc.Header(&h)); err != nil {
		t.Fatal(err)
	}
	return tokenOf(t, h)
}

// watched is what one watch delivered.
type watched struct {
	events  []*userdv1.UserEvent
	beat    *userdv1.WatchHeartbeat // the last heartbeat
	credits func() []credit
}

type credit struct {
	tx    *userdv1.CreditTransaction
	ev    *userdv1.UserEvent
	token string
}

func (c credit) tokenOf(t *testing.T) string {
	t.Helper()
	if _, err := consistency.ParseToken(c.token); err != nil {
		t.Fatalf("event %d's consistency token %q: %v", c.ev.GetId(), c.token, err)
	}
	return c.token
}

// lastCursor is the cursor after the last event delivered.
func (w watched) lastCursor() string { return w.events[len(w.events)-1].GetCursor() }

// c1Tx is the id of the last ledger entry w delivered: the entries after
// it are what a watch from w's last cursor must deliver.
func c1Tx(w watched) string {
	cs := w.credits()
	return fmt.Sprint(cs[len(cs)-1].tx.GetId())
}

// watchUntil watches (with the consistency token, if any) until n credit
// events arrived, then until a heartbeat says the watch is past them, and
// returns what it delivered.
func watchUntil(ctx context.Context, t *testing.T, in *apptest.Instance, req *userdv1.WatchUserEventsRequest, token string, n int) watched {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, consistency.Header, token)
	}
	req.ClerkUserId = "user_feed_standby"
	stream, err := in.Client.WatchUserEvents(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	var w watched
	var cs []credit
	w.credits = func() []credit { return cs }
	for len(cs) < n {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("watch from %q after %d of %d credit events: %v", req.GetCursor(), len(cs), n, err)
		}
		if hb := resp.GetHeartbeat(); hb != nil {
			w.beat = hb
			if hb.GetConsistencyToken() == "" {
				t.Fatal("a heartbeat without a consistency token while standbys serve reads")
			}
			continue
		}
		ev := resp.GetEvent()
		w.events = append(w.events, ev)
		if tx := ev.GetCreditTransaction(); tx != nil {
			cs = append(cs, credit{tx: tx, ev: ev, token: ev.GetConsistencyToken()})
		}
	}
	return w
}

// checkLedger asserts that got is exactly the user's ledger after the
// entry with id after ("" for all), oldest first: none skipped, none out
// of order, none twice.
func checkLedger(ctx context.Context, t *testing.T, primary *store.Store, id, after string, got []credit) {
	t.Helper()
	// The primary's ledger (the API would read the paused standby's).
	u, err := primary.GetLiveUserByClerkID(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	txs, err := primary.ListCreditTransactions(ctx, u.ID, 0, 100) // newest first
	if err != nil {
		t.Fatal(err)
	}
	var want []int64
	for i := len(txs) - 1; i >= 0; i-- {
		if fmt.Sprint(txs[i].ID) == after {
			want = want[:0]
			continue
		}
		want = append(want, txs[i].ID)
	}
	if after != "" && len(want) == len(txs) {
		t.Fatalf("entry %s is not in the ledger", after)
	}
	ids := make([]int64, len(got))
	for i, c := range got {
		ids[i] = c.tx.GetId()
		if c.token == "" {
			t.Fatalf("event %d has no consistency token while standbys serve reads", c.ev.GetId())
		}
	}
	if fmt.Sprint(ids) != fmt.Sprint(want) {
		t.Fatalf("the watch delivered ledger entries %v, the ledger after %q is %v", ids, after, want)
	}
}
