//go:build fleettest

package fleettest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/apptest"
	"github.com/userd/userd/internal/migrate"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/testwait"
	"github.com/userd/userd/internal/userdproc"
)

const (
	token       = "userd-fleet-rollout-test-token-0123456789"
	workers     = 8
	nUsers      = 20
	initCredits = 300
)

// The phases of the rollout, in order.
const (
	phaseOld        = iota // the previous release alone
	phaseExpand            // the new binary starting: its expand migrations run while the old one serves
	phaseBoth              // both serve
	phaseStopOld           // the old one stopping (SIGTERM), the new one serving
	phaseContract          // `userd migrate up` applying the post-deploy migrations, the new one serving
	phaseContracted        // the new one alone on the contracted schema
	nPhases
)

var phaseNames = [nPhases]string{"previous release alone", "new binary migrating (expand)", "both serving", "previous release stopping", "contract (userd migrate up)", "contracted"}

func repoRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Fatalf("git rev-parse --show-toplevel: %v (the fleet test needs the git history: a full clone)", err)
	}
	return strings.TrimSpace(string(out))
}

// previousRelease is the release this one rolls out over:
// USERD_FLEET_PREVIOUS (make fleet-test sets it to PREVIOUS_RELEASE), else
// what the Makefile's PREVIOUS_RELEASE says (one definition, there).
func previousRelease(t *testing.T, root string) string {
	t.Helper()
	if c := os.Getenv("USERD_FLEET_PREVIOUS"); c != "" {
		return c
	}
	cmd := exec.Command("make", "--no-print-directory", "-s", "-C", root, "previous-release")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("make previous-release: %v: %s", err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

// binaries returns the previous release's binary and this tree's:
// USERD_PREVIOUS_BIN and USERD_BIN (make fleet-test builds both), else
// built here.
func binaries(t *testing.T) (prev, next, prevCommit string) {
	t.Helper()
	root := repoRoot(t)
	prevCommit = previousRelease(t, root)
	ctx := context.Background()
	dir := t.TempDir()
	prev = os.Getenv("USERD_PREVIOUS_BIN")
	if prev == "" {
		var err error
		if prev, err = userdproc.BuildCommit(ctx, root, prevCommit, dir); err != nil {
			t.Fatal(err)
		}
	}
	next = os.Getenv("USERD_BIN")
	if next == "" {
		var err error
		if next, err = userdproc.Build(ctx, filepath.Join(root, "cmd", "userd"), dir, "fleet-next"); err != nil {
			t.Fatal(err)
		}
	}
	return prev, next, prevCommit
}

func authed(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

// replica is one running userd.
type replica struct {
	name string
	p    *userdproc.Process
	api  userdv1.UserServiceClient
}

func startReplica(t *testing.T, name, bin, url string) *replica {
	t.Helper()
	p, err := userdproc.Launch(userdproc.Config{Bin: bin, Env: []string{
		"DATABASE_URL=" + url,
		"USERD_DATA_DIR=" + t.TempDir(),
		"USERD_SERVICE_TOKENS=fleet=" + token,
		fmt.Sprintf("USERD_INITIAL_CREDITS=%d", initCredits),
		"USERD_DB_MAX_CONNS=6",
		"USERD_LOG_FORMAT=json",
		"USERD_LOG_LEVEL=info",
		"USERD_HTTP_ADDR=off", "USERD_WEBHOOK_ADDR=off",
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = p.Stop(syscall.SIGTERM, 30*time.Second)
		if t.Failed() {
			t.Logf("%s's log:\n%s", name, p.Logs())
		}
	})
	conn, err := grpc.NewClient(p.Addrs.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &replica{name: name, p: p, api: userdv1.NewUserServiceClient(conn)}
}

func (r *replica) waitReady(t *testing.T) {
	t.Helper()
	if err := r.p.WaitReady(context.Background(), 2*time.Minute); err != nil {
		t.Fatalf("%s: %v\n%s", r.name, err, r.p.Logs())
	}
}

// fleet is the load balancer: the replicas in rotation.
type fleet struct {
	mu   sync.Mutex
	live []*replica
}

func (f *fleet) pick(n int) *replica {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.live[n%len(f.live)]
}

func (f *fleet) set(rs ...*replica) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.live = rs
}

// ack is an acknowledged credit change.
type ack struct {
	user, key string
	grant     bool
	amount    int64
	tx        *userdv1.CreditTransaction
}

// gap is a time without an OK answer from a replica, and the phase in
// which it ended.
type gap struct {
	d     time.Duration
	phase string
}

func (g gap) String() string {
	return fmt.Sprintf("%s (ended during %q)", g.d.Round(time.Millisecond), g.phase)
}

// workload deducts and grants with idempotency keys, each call retried
// with the same key on UNAVAILABLE (a replica stopping) until answered.
type workload struct {
	fleet *fleet
	users []string
	phase atomic.Int32

	mu       sync.Mutex
	acks     []ack
	rejected int                     // insufficient credits
	retried  int                     // UNAVAILABLE answers, retried
	other    []error                 // any other error: a failure
	served   [nPhases]map[string]int // OK answers per phase and replica
	lastOK   map[string]time.Time    // per replica
	gaps     map[string]gap          // longest time between OK answers of a replica
	calls    atomic.Int64
}

func (w *workload) call(worker, n int) {
	user := w.users[rand.IntN(len(w.users))]
	key := fmt.Sprintf("w%d-%d", worker, n)
	amount := int64(1 + rand.IntN(9))
	grant := rand.IntN(3) == 0
	for try := 0; ; try++ {
		r := w.fleet.pick(worker + try)
		ctx, cancel := context.WithTimeout(authed(context.Background()), 20*time.Second)
		var (
			tx  *userdv1.CreditTransaction
			err error
		)
		if grant {
			var resp *userdv1.GrantCreditsResponse
			resp, err = r.api.GrantCredits(ctx, &userdv1.GrantCreditsRequest{ClerkUserId: user, Amount: amount, IdempotencyKey: key, Reason: "fleet grant"})
			tx = resp.GetTransaction()
		} else {
			var resp *userdv1.DeductCreditsResponse
			resp, err = r.api.DeductCredits(ctx, &userdv1.DeductCreditsRequest{ClerkUserId: user, Amount: amount, IdempotencyKey: key, Reason: "fleet deduct"})
			tx = resp.GetTransaction()
		}
		cancel()
		now := time.Now()
		phase := w.phase.Load()
		w.mu.Lock()
		switch status.Code(err) {
		case codes.OK:
			w.acks = append(w.acks, ack{user: user, key: key, grant: grant, amount: amount, tx: tx})
			w.served[phase][r.name]++
			if last, ok := w.lastOK[r.name]; ok && now.Sub(last) > w.gaps[r.name].d {
				w.gaps[r.name] = gap{now.Sub(last), phaseNames[phase]}
			}
			w.lastOK[r.name] = now
		case codes.FailedPrecondition:
			w.rejected++
			w.served[phase][r.name]++
		case codes.Unavailable:
			w.retried++
			w.mu.Unlock()
			time.Sleep(20 * time.Millisecond) // back off before retrying with the same key
			continue
		default:
			w.other = append(w.other, fmt.Errorf("%s on %s (%s), key %s: %w", phaseNames[phase], r.name, user, key, err))
		}
		w.mu.Unlock()
		w.calls.Add(1)
		return
	}
}

func (w *workload) run(stop <-chan struct{}) *sync.WaitGroup {
	var wg sync.WaitGroup
	for i := range workers {
		wg.Go(func() {
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				w.call(i, n)
			}
		})
	}
	return &wg
}

// progress waits until the workload has answered n more calls.
func (w *workload) progress(t *testing.T, n int64) {
	t.Helper()
	from := w.calls.Load()
	testwait.Until(t, 2*time.Minute, fmt.Sprintf("%d calls of the load", n), func() bool { return w.calls.Load() >= from+n })
}

// consumer follows the change feed from a cursor, reopening its watch on
// the next replica in rotation every second (so that it reads through
// both binaries) and whenever the stream ends, resuming from its cursor.
type consumer struct {
	mu       sync.Mutex
	events   []*userdv1.UserEvent
	cursor   string
	reopened int
	failures []error
}

func (c *consumer) run(ctx context.Context, f *fleet) {
	for i := 0; ctx.Err() == nil; i++ {
		r := f.pick(i)
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		c.mu.Lock()
		cursor := c.cursor
		c.mu.Unlock()
		stream, err := r.api.WatchUserEvents(authed(sctx), &userdv1.WatchUserEventsRequest{Cursor: cursor})
		for err == nil {
			var resp *userdv1.WatchUserEventsResponse
			if resp, err = stream.Recv(); err != nil {
				break
			}
			c.mu.Lock()
			if ev := resp.GetEvent(); ev != nil {
				c.events = append(c.events, ev)
				c.cursor = ev.GetCursor()
			} else if hb := resp.GetHeartbeat(); hb != nil {
				c.cursor = hb.GetCursor()
			}
			c.mu.Unlock()
		}
		cancel()
		if ctx.Err() != nil {
			return
		}
		c.mu.Lock()
		c.reopened++
		// The watch's own deadline ends it (DEADLINE_EXCEEDED, or
		// CANCELLED); a stopping replica answers UNAVAILABLE. Anything
		// else — a cursor one binary wrote that the other refuses — fails.
		if code := status.Code(err); code != codes.Unavailable && code != codes.DeadlineExceeded && code != codes.Canceled {
			c.failures = append(c.failures, fmt.Errorf("watch on %s: %w", r.name, err))
		}
		c.mu.Unlock()
	}
}

func (c *consumer) seen() []*userdv1.UserEvent {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.events)
}

// firstCursor opens a watch from now and returns its first heartbeat's
// cursor.
func firstCursor(t *testing.T, r *replica) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(authed(context.Background()), 30*time.Second)
	defer cancel()
	stream, err := r.api.WatchUserEvents(ctx, &userdv1.WatchUserEventsRequest{Start: userdv1.WatchStart_WATCH_START_NOW})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil || resp.GetHeartbeat() == nil {
		t.Fatalf("first item of a watch: %v %v", resp, err)
	}
	return resp.GetHeartbeat().GetCursor()
}

// logLine finds the first JSON log line with msg and decodes it.
func logLine(logs, msg string) map[string]any {
	sc := bufio.NewScanner(strings.NewReader(logs))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) == nil && line["msg"] != nil && strings.HasPrefix(line["msg"].(string), msg) {
			return line
		}
	}
	return nil
}

// TestRolloutUnderLoad is issue 20's fleet test: the previous release and
// this one serve the same database through the expand migrations, then
// this one alone through the contract, under a keyed deduct/grant load and
// a change-feed consumer.
func TestRolloutUnderLoad(t *testing.T) {
	started := time.Now()
	prevBin, nextBin, prevCommit := binaries(t)
	t.Logf("previous release %s; binaries ready in %s", prevCommit, time.Since(started).Round(100*time.Millisecond))

	url := testdb.EmptyURL(t)
	pool := testdb.Connect(t, url)
	ctx := context.Background()

	// The previous release on a database it migrated itself, its
	// post-deploy migrations included (`userd migrate up`, as its own
	// rollout ended): the schema a fleet runs before this release.
	old := startReplica(t, "previous", prevBin, url)
	old.waitReady(t)
	if out, err := migrateUp(prevBin, url); err != nil {
		t.Fatalf("previous release's userd migrate up: %v\n%s", err, out)
	}
	m, err := migrate.New(pool)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	prevVersion, err := m.SchemaVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// This release's migrations: its expand ones up to its first
	// post-deploy one (if it has any), which it leaves to the contract.
	var firstPostDeploy migrate.Migration
	expand := 0
	for _, mg := range m.Migrations() {
		switch {
		case mg.Version <= prevVersion:
		case mg.PostDeploy && firstPostDeploy.Version == 0:
			firstPostDeploy = mg
		case firstPostDeploy.Version == 0:
			expand++
		}
	}
	t.Logf("previous release at schema version %d; this release: %d expand migration(s), first post-deploy %q",
		prevVersion, expand, firstPostDeploy.Name)
	f := &fleet{}
	f.set(old)
	w := &workload{fleet: f, lastOK: map[string]time.Time{}, gaps: map[string]gap{}}
	for i := range w.served {
		w.served[i] = map[string]int{}
	}
	for i := range nUsers {
		id := fmt.Sprintf("user_fleet%02d", i)
		w.users = append(w.users, id)
		if _, err := old.api.EnsureUser(authed(ctx), &userdv1.EnsureUserRequest{ClerkUserId: id}); err != nil {
			t.Fatal(err)
		}
	}
	c := &consumer{cursor: firstCursor(t, old)}
	cctx, stopConsumer := context.WithCancel(ctx)
	consumerDone := make(chan struct{})
	go func() { defer close(consumerDone); c.run(cctx, f) }()
	defer func() { stopConsumer(); <-consumerDone }()
	stop := make(chan struct{})
	wg := w.run(stop)
	stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopLoad()
	w.progress(t, 200)

	// The new binary starts on the same database and applies its expand
	// migrations while the previous release serves.
	w.phase.Store(phaseExpand)
	expandStart := time.Now()
	next := startReplica(t, "new", nextBin, url)
	next.waitReady(t)
	expandTook := time.Since(expandStart)
	ready := logLine(next.p.Logs(), "database schema ready")
	pending := logLine(next.p.Logs(), "post-deploy migration pending")
	t.Logf("new binary ready in %s: %v; post-deploy pending: %v", expandTook.Round(time.Millisecond), ready, pending)
	if ready == nil || ready["applied"] != float64(expand) {
		t.Errorf("the new binary applied other than its %d expand migration(s) at start: %v", expand, ready)
	}
	// It left its first post-deploy migration (if it has one) to `userd
	// migrate up`, and said so.
	if cur, err := m.SchemaVersion(ctx); err != nil || cur < m.Required() || (firstPostDeploy.Version != 0 && cur >= firstPostDeploy.Version) {
		t.Errorf("schema version after the new binary's start: %d (%v); want at least %d and below the post-deploy %d", cur, err, m.Required(), firstPostDeploy.Version)
	}
	if firstPostDeploy.Version != 0 && (pending == nil || pending["version"] != float64(firstPostDeploy.Version)) {
		t.Errorf("the new binary did not log that %s is pending: %v", firstPostDeploy.Name, pending)
	}
	if firstPostDeploy.Version == 0 && pending != nil {
		t.Errorf("the new binary has no post-deploy migration, yet logged one pending: %v", pending)
	}
	w.phase.Store(phaseBoth)
	f.set(old, next)
	w.progress(t, 400)

	// The previous release stops: calls it cannot answer any more are
	// retried on the new one with their key.
	w.phase.Store(phaseStopOld)
	if err := old.p.Stop(syscall.SIGTERM, 30*time.Second); err != nil {
		t.Errorf("previous release did not stop cleanly: %v", err)
	}
	f.set(next)
	w.progress(t, 100)

	// The contract, with the new binary's `userd migrate up`, while the
	// new binary serves: it applies the post-deploy migrations, or, for a
	// release without any, nothing (the step is still run and checked).
	w.phase.Store(phaseContract)
	contractStart := time.Now()
	out, err := migrateUp(nextBin, url)
	contractTook := time.Since(contractStart)
	if err != nil {
		t.Fatalf("userd migrate up: %v\n%s", err, out)
	}
	t.Logf("userd migrate up in %s: %s", contractTook.Round(time.Millisecond), strings.TrimSpace(out))
	if none := strings.Contains(out, "applied 0 migration"); none != (firstPostDeploy.Version == 0) {
		t.Errorf("userd migrate up with post-deploy migration %q pending: %s", firstPostDeploy.Name, out)
	}
	w.phase.Store(phaseContracted)
	w.progress(t, 200)
	stopLoad()

	// The schema is complete; the new binary still ready on it.
	if cur, latest, err := m.Versions(ctx); err != nil || cur != latest {
		t.Errorf("schema version after the contract: %d (%v), want %d", cur, err, latest)
	}
	if !next.p.Ready() {
		t.Error("the new binary is not ready after the contract")
	}

	// Errors: none but UNAVAILABLE, retried.
	w.mu.Lock()
	for _, e := range w.other {
		t.Errorf("call failed other than UNAVAILABLE: %v", e)
	}
	// Both binaries answered while they were in rotation: the previous
	// release alone, during the new one's migrations and beside it; the
	// new one beside it, alone, and through the contract.
	for phase, names := range map[int][]string{
		phaseOld: {"previous"}, phaseExpand: {"previous"}, phaseBoth: {"previous", "new"},
		phaseStopOld: {"new"}, phaseContracted: {"new"},
	} {
		for _, name := range names {
			if w.served[phase][name] == 0 {
				t.Errorf("%s answered no call during %q: %v", name, phaseNames[phase], w.served[phase])
			}
		}
	}
	acks := slices.Clone(w.acks)
	for p := range nPhases {
		t.Logf("%-32s answered by %v", phaseNames[p], w.served[p])
	}
	t.Logf("%d acknowledged, %d insufficient credits, %d UNAVAILABLE retried with their key; longest time between acknowledgements: %v",
		len(acks), w.rejected, w.retried, w.gaps)
	w.mu.Unlock()

	// Nothing acknowledged lost, and the books balance.
	checkBooks(t, pool, w.users, acks)
	replayAcknowledged(t, next, acks)

	// The consumer saw every acknowledged change, once per event id, and
	// per user in ledger order.
	checkFeed(t, pool, c, acks)
	t.Logf("total %s (expand %s, contract %s)", time.Since(started).Round(100*time.Millisecond), expandTook.Round(time.Millisecond), contractTook.Round(time.Millisecond))
}

// migrateUp runs bin's `userd migrate up` on the database url.
func migrateUp(bin, url string) (string, error) {
	mig := exec.Command(bin, "migrate", "up")
	mig.Env = append(os.Environ(), "DATABASE_URL="+url, "USERD_LOG_FORMAT=json")
	out, err := mig.CombinedOutput()
	return string(out), err
}

// checkBooks asserts every user's balance equals its ledger sum with each
// acknowledged entry in it as reported (through this tree's store), and
// every account's balance its ledger sum in SQL.
func checkBooks(t *testing.T, pool *pgxpool.Pool, users []string, acks []ack) {
	t.Helper()
	byID := apptest.Books(t, store.New(pool, store.Options{}), users)
	lost := 0
	for _, a := range acks {
		got, ok := byID[a.tx.GetId()]
		if !ok || got.Delta != a.tx.GetDelta() || got.BalanceAfter != a.tx.GetBalanceAfter() || got.IdempotencyKey != a.key {
			lost++
			if lost <= 5 {
				t.Errorf("%s: acknowledged %v, ledger has %+v (found %v)", a.user, a.tx, got, ok)
			}
		}
	}
	if lost > 0 {
		t.Errorf("%d of %d acknowledged calls not in the ledger as acknowledged", lost, len(acks))
	}
	t.Logf("books: %d ledger entries of %d users balance; %d acknowledged calls all recorded", len(byID), len(users), len(acks)-lost)
	sqlBalances(t, pool)
}

// sqlBalances checks balance == sum(ledger) for every account (or, on a
// schema without accounts, every user) straight in SQL, whatever the
// ledger's owner column is called.
func sqlBalances(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	var owner, col string
	if err := pool.QueryRow(ctx, `
		SELECT CASE WHEN to_regclass('accounts') IS NULL THEN 'users' ELSE 'accounts' END,
		       (SELECT column_name FROM information_schema.columns
		        WHERE table_schema = current_schema() AND table_name = 'credit_transactions'
		          AND column_name IN ('account_id', 'user_id') ORDER BY column_name LIMIT 1)`).Scan(&owner, &col); err != nil {
		t.Fatal(err)
	}
	var n, bad int
	q := fmt.Sprintf(`SELECT count(*), count(*) FILTER (WHERE o.credits <> (SELECT coalesce(sum(t.delta), 0) FROM credit_transactions t WHERE t.%s = o.id)) FROM %s o`, col, owner)
	if err := pool.QueryRow(ctx, q).Scan(&n, &bad); err != nil {
		t.Fatal(err)
	}
	if bad != 0 || n == 0 {
		t.Errorf("%d of %d %s have a balance other than their ledger sum (credit_transactions.%s)", bad, n, owner, col)
	}
}

// replayAcknowledged sends every acknowledged call again to the new
// binary on the contracted schema, as a client that never saw the answer
// would: each answers its original ledger entry, whichever binary applied
// it, and changes nothing.
func replayAcknowledged(t *testing.T, r *replica, acks []ack) {
	t.Helper()
	ctx := authed(context.Background())
	var (
		mu   sync.Mutex
		bad  int
		next atomic.Int64
		wg   sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(len(acks)); i = next.Add(1) - 1 {
				a := acks[i]
				var (
					tx  *userdv1.CreditTransaction
					err error
				)
				if a.grant {
					var resp *userdv1.GrantCreditsResponse
					resp, err = r.api.GrantCredits(ctx, &userdv1.GrantCreditsRequest{ClerkUserId: a.user, Amount: a.amount, IdempotencyKey: a.key, Reason: "fleet grant"})
					tx = resp.GetTransaction()
				} else {
					var resp *userdv1.DeductCreditsResponse
					resp, err = r.api.DeductCredits(ctx, &userdv1.DeductCreditsRequest{ClerkUserId: a.user, Amount: a.amount, IdempotencyKey: a.key, Reason: "fleet deduct"})
					tx = resp.GetTransaction()
				}
				if err != nil || tx.GetId() != a.tx.GetId() || tx.GetBalanceAfter() != a.tx.GetBalanceAfter() {
					mu.Lock()
					if bad++; bad <= 5 {
						t.Errorf("replay of %s %s: %v %v, want the original %v", a.user, a.key, tx, err, a.tx)
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if bad > 0 {
		t.Errorf("%d of %d acknowledged calls did not replay as acknowledged", bad, len(acks))
	}
}

// checkFeed waits until the consumer has seen a credits.changed event for
// every acknowledged ledger entry, then checks that it saw each event id
// once (redelivery after a reconnect aside) and, per user, the ledger
// entries in order: each balance the previous plus the delta.
func checkFeed(t *testing.T, pool *pgxpool.Pool, c *consumer, acks []ack) {
	t.Helper()
	want := map[int64]bool{}
	for _, a := range acks {
		want[a.tx.GetId()] = true
	}
	var seen []*userdv1.UserEvent
	missing := len(want)
	complete := testwait.For(2*time.Minute, func() bool {
		seen = c.seen()
		got := map[int64]bool{}
		for _, ev := range seen {
			if tx := ev.GetCreditTransaction(); tx != nil {
				got[tx.GetId()] = true
			}
		}
		missing = 0
		for id := range want {
			if !got[id] {
				missing++
			}
		}
		return missing == 0
	})
	if !complete {
		t.Errorf("the consumer never saw %d of %d acknowledged ledger entries%s", missing, len(want), oldestTransaction(t, pool))
	}
	once := map[int64]bool{}
	last := map[string]*userdv1.CreditTransaction{}
	redelivered, unordered, credits := 0, 0, 0
	for _, ev := range seen {
		if once[ev.GetId()] {
			redelivered++
			continue
		}
		once[ev.GetId()] = true
		tx := ev.GetCreditTransaction()
		if tx == nil {
			continue
		}
		credits++
		if prev := last[ev.GetClerkUserId()]; prev != nil && (tx.GetId() <= prev.GetId() || tx.GetBalanceAfter() != prev.GetBalanceAfter()+tx.GetDelta()) {
			unordered++
			if unordered <= 5 {
				t.Errorf("%s: feed has entry %d (balance %d, delta %d) after %d (balance %d)", ev.GetClerkUserId(), tx.GetId(), tx.GetBalanceAfter(), tx.GetDelta(), prev.GetId(), prev.GetBalanceAfter())
			}
		}
		last[ev.GetClerkUserId()] = tx
	}
	c.mu.Lock()
	for _, err := range c.failures {
		t.Errorf("change feed: %v", err)
	}
	reopened := c.reopened
	c.mu.Unlock()
	t.Logf("feed: %d distinct events (%d credit changes), %d redelivered, %d watches reopened across both binaries", len(once), credits, redelivered, reopened)
}

// oldestTransaction describes the oldest open transaction on the server:
// the feed hands out an event only once every transaction older than it
// has ended (its horizon is the server's snapshot xmin), so one left open
// anywhere on a shared server — another test's — holds the feed back.
func oldestTransaction(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	var (
		db, state, query string
		age              time.Duration
	)
	err := pool.QueryRow(context.Background(), `
		SELECT coalesce(datname, ''), coalesce(state, ''), now() - xact_start, left(coalesce(query, ''), 200)
		FROM pg_stat_activity WHERE backend_xmin IS NOT NULL OR backend_xid IS NOT NULL
		ORDER BY xact_start NULLS LAST LIMIT 1`).Scan(&db, &state, &age, &query)
	if err != nil {
		return ""
	}
	return fmt.Sprintf(" (the server's oldest open transaction, which holds the feed's horizon back: %s old, database %s, %s: %s)", age.Round(time.Second), db, state, query)
}
