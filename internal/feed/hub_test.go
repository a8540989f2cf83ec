package feed_test

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/feed"
	"github.com/userd/userd/internal/users"
)

// startHub runs a hub over b until the test ends.
func startHub(t testing.TB, b bundle, opts feed.Options) *feed.Hub {
	t.Helper()
	h := feed.NewHub(b.store, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); h.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return h
}

// chanSink forwards a watch's output to channels.
type chanSink struct {
	events chan feed.Event
	beats  chan feed.Position
}

func newChanSink() *chanSink {
	return &chanSink{events: make(chan feed.Event, 1000), beats: make(chan feed.Position, 1000)}
}

func (s *chanSink) Event(ev feed.Event) error                 { s.events <- ev; return nil }
func (s *chanSink) Heartbeat(c feed.Position, _ uint64) error { s.beats <- c; return nil }

// watch runs h.Watch in the background until the test ends and returns
// its sink and a channel with its result.
func watch(t testing.TB, h *feed.Hub, req feed.Request) (*chanSink, <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := newChanSink()
	errc := make(chan error, 1)
	go func() { errc <- h.Watch(ctx, req, s) }()
	t.Cleanup(cancel)
	return s, errc
}

// joined waits for a watch's first heartbeat, which a watch from now sends
// once it has joined the live fan-out.
func joined(t testing.TB, s *chanSink) {
	t.Helper()
	select {
	case <-s.beats:
	case <-time.After(time.Minute):
		t.Fatal("the watch sent no heartbeat within a minute: it never joined")
	}
}

func next(t testing.TB, s *chanSink) feed.Event {
	t.Helper()
	select {
	case ev := <-s.events:
		return ev
	case <-time.After(time.Minute):
		t.Fatal("no event within a minute")
	}
	return feed.Event{}
}

func grant(t testing.TB, b bundle, user, key string, amount int64) {
	t.Helper()
	if _, err := b.svc.GrantCredits(context.Background(), users.CreditChange{ClerkUserID: user, Amount: amount, IdempotencyKey: key}); err != nil {
		t.Fatal(err)
	}
}

func ensure(t testing.TB, b bundle, user string) {
	t.Helper()
	if _, _, err := b.svc.EnsureUser(context.Background(), users.EnsureUserInput{ClerkUserID: user}); err != nil {
		t.Fatal(err)
	}
}

// TestWatchFiltersAndStarts: a watch from now sees only later events; one
// user's watch only that user's; a kinds filter only those kinds; and
// heartbeats carry a cursor that moves past events the watch skips.
func TestWatchFiltersAndStarts(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ensure(t, b, "user_a")
	ensure(t, b, "user_b")
	settle(t, b)
	h := startHub(t, b, feed.Options{PollInterval: 5 * time.Millisecond, Heartbeat: 50 * time.Millisecond})

	everything, _ := watch(t, h, feed.Request{Start: feed.StartNow})
	onlyB, _ := watch(t, h, feed.Request{Start: feed.StartNow, ClerkUserID: "user_b"})
	plans, _ := watch(t, h, feed.Request{Start: feed.StartNow, Kinds: []feed.Kind{feed.KindPlanChanged}})
	fromOldest, _ := watch(t, h, feed.Request{Start: feed.StartOldest, ClerkUserID: "user_a"})
	start := <-plans.beats
	for _, s := range []*chanSink{everything, onlyB, fromOldest} {
		<-s.beats
	}

	grant(t, b, "user_a", "g1", 1)
	grant(t, b, "user_b", "g2", 2)
	if _, err := b.svc.SetPlan(context.Background(), users.SetPlanInput{ClerkUserID: "user_a", Plan: users.PlanPro, IdempotencyKey: "p1"}); err != nil {
		t.Fatal(err)
	}

	if ev := next(t, everything); ev.Transaction == nil || ev.Transaction.IdempotencyKey != "g1" {
		t.Errorf("watch from now: first event %s, want the grant g1", summary(ev))
	}
	if ev := next(t, onlyB); ev.ClerkUserID != "user_b" || ev.Transaction.IdempotencyKey != "g2" {
		t.Errorf("user_b's watch: %s", summary(ev))
	}
	ev := next(t, plans)
	if ev.Kind != feed.KindPlanChanged {
		t.Errorf("plan watch: %s", summary(ev))
	}
	if !start.Less(ev.Position) {
		t.Errorf("plan event at %v, not after the start %v", ev.Position, start)
	}
	var oldest []string
	for range 4 {
		oldest = append(oldest, string(next(t, fromOldest).Kind))
	}
	if want := "[user.created credits.changed credits.changed plan.changed]"; want != fmtSlice(oldest) {
		t.Errorf("user_a from the oldest: %v, want %s", oldest, want)
	}
	select {
	case ev := <-onlyB.events:
		t.Errorf("user_b's watch got %s", summary(ev))
	case <-time.After(200 * time.Millisecond):
	}
	// The plan watch's heartbeats move past the credit events it skipped
	// and the plan event it got.
	deadline := time.After(time.Minute)
	for {
		select {
		case c := <-plans.beats:
			if ev.Position.Less(c) {
				return
			}
		case <-deadline:
			t.Fatal("heartbeats never passed the last event")
		}
	}
}

func fmtSlice(s []string) string {
	out := "["
	for i, v := range s {
		if i > 0 {
			out += " "
		}
		out += v
	}
	return out + "]"
}

// TestExpiredCursor: once retention pruned events after a cursor, resuming
// from it fails with CURSOR_EXPIRED (saying where the feed now starts); a
// cursor at or after the pruned position, and a watch from the oldest,
// still work.
func TestExpiredCursor(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ensure(t, b, "user_a")
	grant(t, b, "user_a", "g1", 1)
	evs := all(t, b)
	if len(evs) != 3 {
		t.Fatalf("%d events, want 3", len(evs))
	}
	ctx := context.Background()
	n, err := feed.Prune(ctx, b.store, time.Now().Add(time.Hour))
	if err != nil || n != 3 {
		t.Fatalf("Prune: %d, %v; want 3 pruned", n, err)
	}
	grant(t, b, "user_a", "g2", 1)
	settle(t, b)
	h := startHub(t, b, feed.Options{PollInterval: 5 * time.Millisecond})

	_, errc := watch(t, h, feed.Request{Start: feed.StartAfter, After: evs[0].Position})
	err = <-errc
	e, ok := apperr.As(err)
	oldest, ferr := h.Cursors().Format(context.Background(), evs[2].Position)
	if ferr != nil {
		t.Fatal(ferr)
	}
	if !ok || e.Kind != apperr.KindExpired || e.Reason != apperr.ReasonCursorExpired || e.Metadata["oldest_cursor"] != oldest {
		t.Fatalf("resume from a pruned cursor: %v (%+v), want expired with reason CURSOR_EXPIRED and oldest_cursor of the last pruned event", err, e)
	}
	for _, req := range []feed.Request{
		{Start: feed.StartAfter, After: evs[2].Position},
		{Start: feed.StartOldest},
	} {
		s, _ := watch(t, h, req)
		if ev := next(t, s); ev.Transaction == nil || ev.Transaction.IdempotencyKey != "g2" {
			t.Errorf("%+v: first event %s, want the grant after the pruned ones", req, summary(ev))
		}
	}
}

// TestCloseEndsWatches: closing the hub (shutdown) ends every watch with
// UNAVAILABLE, live or catching up, and refuses new ones.
func TestCloseEndsWatches(t *testing.T) {
	t.Parallel()
	b := setup(t)
	h := startHub(t, b, feed.Options{PollInterval: 5 * time.Millisecond})
	s, live := watch(t, h, feed.Request{Start: feed.StartNow})
	joined(t, s)
	h.Close()
	for _, errc := range []<-chan error{live, func() <-chan error { _, e := watch(t, h, feed.Request{}); return e }()} {
		select {
		case err := <-errc:
			if !errors.Is(err, feed.ErrClosing) || apperr.KindOf(err) != apperr.KindUnavailable {
				t.Errorf("after Close: %v, want ErrClosing (unavailable)", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a watch outlived Close")
		}
	}
}

// TestBadRequests: an invalid user or kind is refused before anything is
// read, and a cursor this feed cannot have issued at the first read.
func TestBadRequests(t *testing.T) {
	t.Parallel()
	b := setup(t)
	h := startHub(t, b, feed.Options{})
	for _, req := range []feed.Request{
		{ClerkUserID: "not-a-clerk-id"},
		{Kinds: []feed.Kind{"user.exploded"}},
		// From a database whose transaction ids ran further (another
		// environment, or this one before a restore from backup).
		{Start: feed.StartAfter, After: feed.Position{Xid: 1 << 40, ID: 7}},
	} {
		_, errc := watch(t, h, req)
		if err := <-errc; apperr.KindOf(err) != apperr.KindInvalidArgument {
			t.Errorf("%+v: %v, want invalid argument", req, err)
		}
	}
}

// blockingSink blocks on its first event until released.
type blockingSink struct {
	release chan struct{}
	once    sync.Once
	blocked chan struct{}
	// joined is closed on the first heartbeat.
	joined     chan struct{}
	joinedOnce sync.Once
	mu         sync.Mutex
	events     []feed.Event
}

func (s *blockingSink) Event(ev feed.Event) error {
	s.once.Do(func() { close(s.blocked); <-s.release })
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, ev)
	return nil
}

func (s *blockingSink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.events)
}
func (s *blockingSink) Heartbeat(feed.Position, uint64) error {
	s.joinedOnce.Do(func() { close(s.joined) })
	return nil
}

type countingObserver struct {
	fellBehind atomic.Int64
}

func (o *countingObserver) FeedPolled(int)         {}
func (o *countingObserver) FeedWatchers(int)       {}
func (o *countingObserver) FeedWatcherFellBehind() { o.fellBehind.Add(1) }

// TestSlowWatcherKeepsMemoryBounded: while one watcher is stuck sending,
// tens of megabytes of events go through the hub: the other watchers get
// them all, the stuck one is dropped from the fan-out instead of piling
// them up (the heap stays about where it was), and once unstuck it reads
// them from the database, in order, each once. Not parallel: it measures
// the heap.
func TestSlowWatcherKeepsMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("pushes tens of megabytes through the hub: not in -short (make test-fast)")
	}
	b := setup(t)
	ensure(t, b, "user_a")
	settle(t, b)
	obs := &countingObserver{}
	h := startHub(t, b, feed.Options{PollInterval: 5 * time.Millisecond, PollLimit: 50, QueueLength: 4, Observer: obs})

	slow := &blockingSink{release: make(chan struct{}), blocked: make(chan struct{}), joined: make(chan struct{})}
	slowDone := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { slowDone <- h.Watch(ctx, feed.Request{Start: feed.StartNow}, slow) }()
	fast := newChanSink()
	fast.events = make(chan feed.Event, 100)
	go func() { _ = h.Watch(ctx, feed.Request{Start: feed.StartNow}, fast) }()
	// Both joined at the head.
	joined(t, fast)
	select {
	case <-slow.joined:
	case <-time.After(time.Minute):
		t.Fatal("the slow watch sent no heartbeat within a minute: it never joined")
	}

	const statements, perStatement, reasonBytes = 5, 1000, 4000
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	var peak atomic.Uint64
	sampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-sampling:
				return
			case <-time.After(20 * time.Millisecond):
			}
			runtime.GC()
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			if m.HeapAlloc > peak.Load() {
				peak.Store(m.HeapAlloc)
			}
		}
	}()
	writeDone := make(chan error, 1)
	go func() {
		for i := range statements {
			_, err := b.pool.Exec(ctx, `SELECT count(*) FROM generate_series(1, $1::int) g,
				LATERAL userd_change_credits('user_a', 'GRANT', 1, repeat('r', $2::int), $3 || g) c`,
				perStatement, reasonBytes, "s"+string(rune('a'+i))+"-")
			if err != nil {
				writeDone <- err
				return
			}
		}
		writeDone <- nil
	}()
	<-slow.blocked
	received := 0
	for received < statements*perStatement {
		select {
		case <-fast.events:
			received++
		case err := <-writeDone:
			if err != nil {
				t.Fatal(err)
			}
			writeDone = nil
		case <-time.After(2 * time.Minute):
			t.Fatalf("the fast watcher got %d of %d events", received, statements*perStatement)
		}
	}
	close(sampling)
	<-sampled
	grew := int64(peak.Load()) - int64(before.HeapAlloc)
	const written = statements * perStatement * reasonBytes
	t.Logf("%d MB of reasons went through; the heap grew by at most %.1f MB; the slow watcher fell behind %d times",
		written>>20, float64(grew)/(1<<20), obs.fellBehind.Load())
	if grew > written/4 {
		t.Errorf("the heap grew by %d bytes while %d bytes of events went to a stuck watcher: it is buffering them", grew, written)
	}
	if obs.fellBehind.Load() == 0 {
		t.Error("the stuck watcher was never dropped from the fan-out")
	}

	// Unstuck, it catches up from the database, in order.
	close(slow.release)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if slow.count() >= statements*perStatement {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the slow watcher got %d of %d events", slow.count(), statements*perStatement)
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	<-slowDone
	evs := slow.events
	if len(evs) != statements*perStatement {
		t.Errorf("the slow watcher got %d events, want %d", len(evs), statements*perStatement)
	}
	for i := 1; i < len(evs); i++ {
		if !evs[i-1].Position.Less(evs[i].Position) {
			t.Fatalf("event %d at %v after %v", evs[i].ID, evs[i].Position, evs[i-1].Position)
		}
	}
}
