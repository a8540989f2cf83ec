package main

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/database"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
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
)

// Each replica keeps few database connections: the suite shares one
// server (max_connections=100) among packages running in parallel.
const replicaMaxConns = "USERD_DB_MAX_CONNS=4"

// appliedAtStart reads how many migrations a userd applied at start from
// its "database schema ready" log line (-1: no such line).
func appliedAtStart(t *testing.T, logs string) int {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(logs))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var line struct {
			Msg     string `json:"msg"`
			Applied *int   `json:"applied"`
		}
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "database schema ready" && line.Applied != nil {
			return *line.Applied
		}
	}
	return -1
}

// versionRecords counts the rows of each version in goose's table, as
// goose itself reads them.
func versionRecords(t *testing.T, pool *pgxpool.Pool) map[int64]int {
	t.Helper()
	st, err := database.NewStore(database.DialectPostgres, goose.DefaultTablename)
	if err != nil {
		t.Fatal(err)
	}
	sqlDB := stdlib.OpenDBFromPool(pool)
	defer func(db *sql.DB) { _ = db.Close() }(sqlDB)
	rows, err := st.ListMigrations(context.Background(), sqlDB)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int64]int{}
	for _, r := range rows {
		seen[r.Version]++
	}
	return seen
}

// TestReplicasStartTogether starts three userd processes at once, first on
// an empty database, then on one whose migrations are all pending (the
// first replicas of a release with new migrations): every replica becomes
// ready, exactly one applies the migrations, and each is recorded once.
func TestReplicasStartTogether(t *testing.T) {
	bin := buildUserd(t)
	url := testdb.EmptyURL(t)
	pool := testdb.Connect(t, url)
	m, err := migrate.New(pool)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	// Versions need not be contiguous (numbers are assigned ahead).
	st, err := m.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	versions := []int64{0}
	for _, s := range st {
		versions = append(versions, s.Version)
	}
	latest := len(st)

	startTogether := func(what string) {
		t.Helper()
		procs := make([]*userdProcess, 3)
		for i := range procs {
			procs[i] = launchUserd(t, bin, url, t.TempDir(), newEndpoints(t), replicaMaxConns)
		}
		var appliers []int
		for i, p := range procs {
			p.waitReady(t)
			n := appliedAtStart(t, p.Logs())
			switch {
			case n < 0:
				t.Errorf("%s: replica %d logged no \"database schema ready\":\n%s", what, i, p.Logs())
			case n > 0:
				appliers = append(appliers, n)
			}
			c, ctx := client(t, p.ep.GRPC)
			if _, err := c.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: fmt.Sprintf("user_together%d", i)}); err != nil {
				t.Errorf("%s: replica %d: EnsureUser: %v", what, i, err)
			}
		}
		if len(appliers) != 1 || appliers[0] != latest {
			t.Errorf("%s: migrations applied by the replicas: %v; want all %d by exactly one", what, appliers, latest)
		}
		seen := versionRecords(t, pool)
		for _, v := range versions {
			if seen[v] != 1 {
				t.Errorf("%s: version %d recorded %d times, want once (%v)", what, v, seen[v], seen)
			}
		}
		for _, p := range procs {
			p.stop(t, syscall.SIGTERM)
		}
		t.Logf("%s: 3 replicas ready; migrations applied by one: %v", what, appliers)
	}

	startTogether("empty database")
	if err := m.DownTo(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	startTogether("migrations pending")
}

// fleetClient spreads calls over the replicas round-robin and retries a
// call that meets an unavailable replica on the next one, with the same
// request (so the same idempotency key), as a client behind a load
// balancer would.
type fleetClient struct {
	clients []userdv1.UserServiceClient
	next    atomic.Uint64
	// attempts counts every attempt's code; served counts OK answers
	// per replica.
	attempts sync.Map // codes.Code -> *atomic.Int64
	served   []atomic.Int64
	retries  atomic.Int64
}

func newFleetClient(t *testing.T, addrs []string) *fleetClient {
	t.Helper()
	f := &fleetClient{served: make([]atomic.Int64, len(addrs))}
	for _, addr := range addrs {
		conn, err := grpc.NewClient(addr,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			// Reconnect to a restarted replica within a fraction of a second.
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 300 * time.Millisecond},
				MinConnectTimeout: 2 * time.Second,
			}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		f.clients = append(f.clients, userdv1.NewUserServiceClient(conn))
	}
	return f
}

// call runs do against one replica after another until one answers
// something other than UNAVAILABLE or DEADLINE_EXCEEDED (both leave the
// outcome unknown, so the retry carries the same key), for at most 40
// attempts.
func (f *fleetClient) call(do func(context.Context, userdv1.UserServiceClient) error) error {
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+e2eToken)
	first := f.next.Add(1)
	var err error
	for attempt := range uint64(40) {
		if attempt > 0 {
			f.retries.Add(1)
		}
		replica := int((first + attempt) % uint64(len(f.clients)))
		callCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err = do(callCtx, f.clients[replica])
		cancel()
		code := status.Code(err)
		n, _ := f.attempts.LoadOrStore(code, new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
		if code == codes.OK {
			f.served[replica].Add(1)
		}
		if code != codes.Unavailable && code != codes.DeadlineExceeded {
			return err
		}
		if attempt%uint64(len(f.clients)) == uint64(len(f.clients))-1 {
			// Every replica refused: back off before the next round, as a
			// client would (a retry policy under test, not a wait for a
			// condition).
			time.Sleep(50 * time.Millisecond)
		}
	}
	return err
}

func tally(m *sync.Map) map[string]int64 {
	out := map[string]int64{}
	m.Range(func(k, v any) bool { out[k.(codes.Code).String()] = v.(*atomic.Int64).Load(); return true })
	return out
}

// fleetOp is one keyed call of the workload.
type fleetOp struct {
	clerkID, key string
	kind         string // "deduct", "grant" or "plan"
	amount       int64  // credits, or the plan's bonus
	plan         userdv1.Plan
}

// fleetResult is what userd answered to a fleetOp.
type fleetResult struct {
	tx   *userdv1.CreditTransaction // nil for a plan change without bonus
	prev userdv1.Plan               // plan changes: the plan before
}

func (op fleetOp) do(ctx context.Context, c userdv1.UserServiceClient) (fleetResult, error) {
	switch op.kind {
	case "plan":
		r, err := c.SetPlan(ctx, &userdv1.SetPlanRequest{ClerkUserId: op.clerkID, Plan: op.plan, BonusCredits: op.amount, IdempotencyKey: op.key})
		return fleetResult{tx: r.GetBonusTransaction(), prev: r.GetPreviousPlan()}, err
	case "grant":
		r, err := c.GrantCredits(ctx, &userdv1.GrantCreditsRequest{ClerkUserId: op.clerkID, Amount: op.amount, IdempotencyKey: op.key})
		return fleetResult{tx: r.GetTransaction()}, err
	default:
		r, err := c.DeductCredits(ctx, &userdv1.DeductCreditsRequest{ClerkUserId: op.clerkID, Amount: op.amount, IdempotencyKey: op.key})
		return fleetResult{tx: r.GetTransaction()}, err
	}
}

// fleetAck is a call userd acknowledged.
type fleetAck struct {
	op  fleetOp
	res fleetResult
}

// TestFleetRollingRestart runs three replicas on one database, spreads the
// bank workload (deductions, grants and plan changes with idempotency keys
// that repeat, some with other parameters) over them, and meanwhile stops
// each replica in turn with SIGTERM and starts it again. Afterwards every
// balance equals its ledger sum, nothing went negative, no key was applied
// twice, every acknowledged ledger entry is in the database as reported,
// every acknowledged call replays with its original result (and changes
// nothing), and no call ever answered INTERNAL.
func TestFleetRollingRestart(t *testing.T) {
	bin := buildUserd(t)
	url := testdb.URL(t)
	replicas := make([]*userdProcess, 3)
	eps := make([]endpoints, 3)
	addrs := make([]string, 3)
	for i := range replicas {
		eps[i] = newEndpoints(t)
		addrs[i] = eps[i].GRPC
		replicas[i] = launchUserd(t, bin, url, t.TempDir(), eps[i], replicaMaxConns)
	}
	for _, p := range replicas {
		p.waitReady(t)
	}
	fleet := newFleetClient(t, addrs)
	clerkIDs := []string{"user_fleet0", "user_fleet1", "user_fleet2", "user_fleet3", "user_fleet4"}
	for _, id := range clerkIDs {
		if err := fleet.call(func(ctx context.Context, c userdv1.UserServiceClient) error {
			_, err := c.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: id})
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}

	const workers = 12
	var (
		stop     atomic.Bool
		mu       sync.Mutex
		acks     []fleetAck
		calls    atomic.Int64
		outcomes sync.Map // final code of each call
		wg       sync.WaitGroup
	)
	plans := []userdv1.Plan{userdv1.Plan_PLAN_PRO, userdv1.Plan_PLAN_ENTERPRISE, userdv1.Plan_PLAN_FREE}
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for !stop.Load() {
				id := clerkIDs[rng.IntN(len(clerkIDs))]
				k := rng.IntN(400) // keys repeat across workers: retries race
				key := fmt.Sprintf("fleet-%d", k)
				op := fleetOp{clerkID: id, key: key, amount: int64(k%7 + 1)}
				switch {
				case k%6 == 0:
					op.kind, op.plan, op.amount = "plan", plans[(k/6)%3], int64((k/6)%4)
				case k%6 <= 2:
					op.kind = "grant"
				default:
					op.kind = "deduct"
				}
				if rng.IntN(10) == 0 {
					op.amount += 2 // same key, other parameters: refused
				}
				var res fleetResult
				err := fleet.call(func(ctx context.Context, c userdv1.UserServiceClient) (err error) {
					res, err = op.do(ctx, c)
					return err
				})
				calls.Add(1)
				code := status.Code(err)
				n, _ := outcomes.LoadOrStore(code, new(atomic.Int64))
				n.(*atomic.Int64).Add(1)
				switch code {
				case codes.OK:
					mu.Lock()
					acks = append(acks, fleetAck{op, res})
					mu.Unlock()
				case codes.FailedPrecondition, codes.AlreadyExists:
				default:
					t.Errorf("call answered %v", err)
				}
			}
		})
	}

	// Each replica in turn: SIGTERM mid-load, a clean exit, a new process
	// on the same addresses, ready again.
	// A failed wait or stop ends the test: the load stops before the
	// replicas do.
	t.Cleanup(func() { stop.Store(true); wg.Wait() })

	// Between restarts the load makes progress on the whole fleet: a count
	// of calls, not a fixed time, which a loaded machine may fill with
	// none.
	const callsBetween = 150
	loadProgresses := func() {
		t.Helper()
		from := calls.Load()
		testwait.Until(t, 2*time.Minute, fmt.Sprintf("%d calls of the load", callsBetween), func() bool { return calls.Load() >= from+callsBetween })
	}
	restartStart := time.Now()
	for i := range replicas {
		loadProgresses()
		replicas[i].stop(t, syscall.SIGTERM)
		if logs := replicas[i].Logs(); strings.Contains(logs, "grace period over") || strings.Contains(logs, "panic") {
			t.Errorf("replica %d did not stop cleanly:\n%s", i, logs)
		}
		replicas[i] = launchUserd(t, bin, url, t.TempDir(), eps[i], replicaMaxConns)
		replicas[i].waitReady(t)
	}
	loadProgresses()
	stop.Store(true)
	wg.Wait()
	took := time.Since(restartStart)

	final, attempts := tally(&outcomes), tally(&fleet.attempts)
	served := make([]int64, len(replicas))
	for i := range served {
		served[i] = fleet.served[i].Load()
		if served[i] == 0 {
			t.Errorf("replica %d served no call", i)
		}
	}
	pool := testdb.Connect(t, url)
	entries := checkFleetBooks(t, pool, clerkIDs, acks)
	replays := replayAcknowledged(t, fleet, acks)
	if after := checkFleetBooks(t, pool, clerkIDs, nil); after != entries {
		t.Errorf("replaying the acknowledged calls changed the ledger: %d entries, then %d", entries, after)
	}
	t.Logf("%d calls over %s with 3 restarts: %d acknowledged; final codes %v; attempt codes %v (%d retries on another replica); OK per replica %v; %d ledger entries; %d distinct acknowledged calls replayed with their original results",
		calls.Load(), took.Round(100*time.Millisecond), len(acks), final, attempts, fleet.retries.Load(), served, entries, replays)
	if attempts["Internal"] > 0 || attempts["Unknown"] > 0 {
		t.Errorf("clients saw INTERNAL/UNKNOWN: %v", attempts)
	}
	if final["FailedPrecondition"] == 0 || final["AlreadyExists"] == 0 {
		t.Errorf("the run never hit insufficient credits or a reused key: %v", final)
	}
}

// checkFleetBooks asserts, per user, that the balance equals the ledger
// sum, that every entry's balance_after is the running sum and never
// negative, that no key is in the ledger twice, and that every
// acknowledged ledger entry is recorded as reported. It returns the number
// of ledger entries.
func checkFleetBooks(t *testing.T, pool *pgxpool.Pool, clerkIDs []string, acks []fleetAck) int {
	t.Helper()
	byID := apptest.Books(t, store.New(pool, store.Options{}), clerkIDs)
	for _, a := range acks {
		if tx := a.res.tx; tx != nil {
			got, ok := byID[tx.GetId()]
			if !ok || got.Delta != tx.GetDelta() || got.BalanceAfter != tx.GetBalanceAfter() || got.IdempotencyKey != tx.GetIdempotencyKey() {
				t.Errorf("%s: acknowledged %v, ledger has %+v (found %v)", a.op.clerkID, tx, got, ok)
			}
		}
	}
	return len(byID)
}

// replayAcknowledged sends every acknowledged call again, as a client that
// never saw the answer would: each must answer OK with its original result
// (the same ledger entry, the same previous plan) — so each was recorded,
// plan changes without a ledger entry included. It returns how many
// distinct calls it replayed.
func replayAcknowledged(t *testing.T, fleet *fleetClient, acks []fleetAck) int {
	t.Helper()
	first := map[[2]string]fleetAck{}
	for _, a := range acks {
		k := [2]string{a.op.clerkID, a.op.key}
		if prev, ok := first[k]; ok {
			if prev.op != a.op || prev.res.tx.GetId() != a.res.tx.GetId() || prev.res.prev != a.res.prev {
				t.Errorf("key %v acknowledged twice with different results: %+v %v, %+v %v", k, prev.op, prev.res, a.op, a.res)
			}
			continue
		}
		first[k] = a
	}
	for k, a := range first {
		var res fleetResult
		err := fleet.call(func(ctx context.Context, c userdv1.UserServiceClient) (err error) {
			res, err = a.op.do(ctx, c)
			return err
		})
		if err != nil || res.tx.GetId() != a.res.tx.GetId() || res.prev != a.res.prev {
			t.Errorf("replay of the acknowledged %s %v: %v %v, want the original %v", a.op.kind, k, res, err, a.res)
		}
	}
	return len(first)
}
