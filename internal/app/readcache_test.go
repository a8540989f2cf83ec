package app_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/apptest"
	"github.com/userd/userd/internal/config"
	"github.com/userd/userd/internal/consistency"
	"github.com/userd/userd/internal/migrate"
	"github.com/userd/userd/internal/pgembed"
	"github.com/userd/userd/internal/store"
)

// The read cache's multi-replica proofs (internal/store/readcache.go):
// several userd instances on one database, the cache on in each, on a
// PostgreSQL server of the test's own: the feed's horizon is the server's
// oldest running transaction, in any database, so on the shared test
// server another package's long transaction (a test holding a row lock for
// seconds) would hold every hub back, and the cache would serve nothing
// (safe, but then the test proves nothing). Each
// property is checked twice: as built, where no stale read may happen, and
// with the rule it relies on broken (ReadCache.BreakForTest), where the
// same workload must see a stale read, which shows the check can fail.

// replicas starts n instances with the read cache on, on one database.
func replicas(t *testing.T, n int) []*apptest.Instance {
	return replicasWith(t, n, nil)
}

// unbatched turns group commit off: every write then runs on its own, so
// a personal write raises the write fence rather than evicting its user,
// and its token is read after it.
func unbatched(c *config.Serve) { c.Database.WriteLanes = 0 }

func replicasWith(t *testing.T, n int, tweak func(*config.Serve)) []*apptest.Instance {
	t.Helper()
	url := privateServer(t)
	out := make([]*apptest.Instance, n)
	for i := range out {
		out[i] = apptest.Start(t, func(c *config.Serve) {
			c.Database.URL = url
			c.ReadCache = true
			c.AllowanceInterval = 0 // no balance changes but the test's own
			if tweak != nil {
				tweak(c)
			}
		})
		if out[i].App.ReadCache() == nil {
			t.Fatal("read cache is off")
		}
	}
	return out
}

// privateServer starts a PostgreSQL of the test's own and returns the URL
// of its migrated database.
func privateServer(t *testing.T) string {
	t.Helper()
	base := t.TempDir()
	for _, d := range []string{filepath.Dir(base), base} {
		if err := os.Chmod(d, 0o755); err != nil { // the server may run as userd-pg
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	srv, err := pgembed.Start(ctx, pgembed.Config{DataDir: filepath.Join(base, "data")})
	if err != nil {
		t.Fatalf("start a private PostgreSQL: %v", err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	pool, err := pgxpool.New(ctx, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	m, err := migrate.New(pool)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	return srv.URL
}

func ensureUsers(t *testing.T, in *apptest.Instance, prefix string, n int) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("user_%s%02d", prefix, i)
		if _, err := in.Client.EnsureUser(context.Background(), &userdv1.EnsureUserRequest{ClerkUserId: ids[i]}); err != nil {
			t.Fatalf("ensure %s: %v", ids[i], err)
		}
	}
	return ids
}

// state is what a read must show after a write: its balance and plan.
type state struct {
	credits int64
	plan    userdv1.Plan
}

// write runs the step-th write of a user's sequence on in (deduct, grant,
// plan change in turn) and returns the state it left and its token.
func write(ctx context.Context, in *apptest.Instance, id string, step int, plan userdv1.Plan) (state, string, error) {
	var md metadata.MD
	key := fmt.Sprintf("%s-%d-%d", id, step, writeKeys.Add(1))
	switch step % 3 {
	case 0:
		r, err := in.Client.DeductCredits(ctx, &userdv1.DeductCreditsRequest{ClerkUserId: id, Amount: 1, IdempotencyKey: key, Reason: "test"}, grpc.Header(&md))
		if err != nil {
			return state{}, "", err
		}
		return state{r.GetBalance(), plan}, tokenOf(md), nil
	case 1:
		r, err := in.Client.GrantCredits(ctx, &userdv1.GrantCreditsRequest{ClerkUserId: id, Amount: 2, IdempotencyKey: key, Reason: "test"}, grpc.Header(&md))
		if err != nil {
			return state{}, "", err
		}
		return state{r.GetBalance(), plan}, tokenOf(md), nil
	}
	next := userdv1.Plan_PLAN_PRO
	if plan == userdv1.Plan_PLAN_PRO {
		next = userdv1.Plan_PLAN_FREE
	}
	r, err := in.Client.SetPlan(ctx, &userdv1.SetPlanRequest{ClerkUserId: id, Plan: next, IdempotencyKey: key, Reason: "test"}, grpc.Header(&md))
	if err != nil {
		return state{}, "", err
	}
	return state{r.GetUser().GetCredits(), r.GetUser().GetPlan()}, tokenOf(md), nil
}

// writeKeys makes every write's idempotency key new.
var writeKeys atomic.Int64

func tokenOf(md metadata.MD) string {
	if v := md.Get(consistency.Header); len(v) > 0 {
		return v[len(v)-1]
	}
	return ""
}

func read(ctx context.Context, in *apptest.Instance, id, token string) (state, error) {
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, consistency.Header, token)
	}
	u, err := in.Client.GetUser(ctx, &userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_ClerkUserId{ClerkUserId: id}})
	if err != nil {
		return state{}, err
	}
	return state{u.GetUser().GetCredits(), u.GetUser().GetPlan()}, nil
}

// readYourWrites runs, for each of users goroutines, rounds of: a read on
// reader (filling its cache), a write on writer, and at once a read on
// reader (with the write's token if withToken) that must show the write.
// It returns how many reads did not.
func readYourWrites(t *testing.T, writer, reader *apptest.Instance, ids []string, rounds int, withToken bool) int64 {
	t.Helper()
	ctx := context.Background()
	var stale, tokens atomic.Int64
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Go(func() {
			plan := userdv1.Plan_PLAN_FREE
			for step := range rounds {
				if _, err := read(ctx, reader, id, ""); err != nil {
					t.Errorf("read %s: %v", id, err)
					return
				}
				want, token, err := write(ctx, writer, id, step, plan)
				if err != nil {
					t.Errorf("write %s: %v", id, err)
					return
				}
				plan = want.plan
				if token != "" {
					tokens.Add(1)
				}
				if !withToken {
					token = ""
				}
				got, err := read(ctx, reader, id, token)
				if err != nil {
					t.Errorf("read %s: %v", id, err)
					return
				}
				if got != want {
					stale.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if tokens.Load() != int64(len(ids)*rounds) {
		t.Errorf("%d of %d writes answered a consistency token", tokens.Load(), len(ids)*rounds)
	}
	return stale.Load()
}

func TestReadCacheTokenAcrossReplicas(t *testing.T) {
	t.Run("Batched", func(t *testing.T) { tokenAcrossReplicas(t, nil) })
	t.Run("Unbatched", func(t *testing.T) { tokenAcrossReplicas(t, unbatched) })
}

func tokenAcrossReplicas(t *testing.T, tweak func(*config.Serve)) {
	rs := replicasWith(t, 2, tweak)
	ids := ensureUsers(t, rs[0], "tok", 8)
	waitServing(t, rs[1])
	if n := readYourWrites(t, rs[0], rs[1], ids, 30, true); n != 0 {
		t.Errorf("%d reads on another replica with the write's token did not see the write", n)
	}
	if s := rs[1].App.ReadCache().Stats(); s.Hits == 0 {
		t.Errorf("the reader's cache never answered (%+v): the test proves nothing", s)
	}
	t.Run("Control", func(t *testing.T) {
		rs[1].App.ReadCache().BreakForTest(store.BreakTokens, 0)
		defer rs[1].App.ReadCache().BreakForTest(0, 0)
		if !failsOnce(func() int64 { return readYourWrites(t, rs[0], rs[1], ids, 30, true) }) {
			t.Error("with tokens ignored, no read was stale: the test cannot fail")
		}
	})
}

// TestReadCacheOwnWritesSameReplica: batched, a personal write evicts its
// user; unbatched, it raises the write fence.
func TestReadCacheOwnWritesSameReplica(t *testing.T) {
	t.Run("Batched", func(t *testing.T) { ownWritesSameReplica(t, nil) })
	t.Run("Unbatched", func(t *testing.T) { ownWritesSameReplica(t, unbatched) })
}

func ownWritesSameReplica(t *testing.T, tweak func(*config.Serve)) {
	rs := replicasWith(t, 2, tweak)
	ids := ensureUsers(t, rs[0], "own", 8)
	waitServing(t, rs[1])
	if n := readYourWrites(t, rs[1], rs[1], ids, 30, false); n != 0 {
		t.Errorf("%d tokenless reads on the writing replica did not see the write", n)
	}
	// Batched, the writes evict their users and the cache keeps serving
	// between them, so it must have answered some reads. Unbatched, every
	// write raises the fence, and on a busy shared server the read right
	// after it may always miss: there the control below is what shows the
	// test can see a stale read.
	if s := rs[1].App.ReadCache().Stats(); s.Evictions == 0 || (tweak == nil && s.Hits == 0) {
		t.Errorf("the cache never answered or never evicted (%+v): the test proves nothing", s)
	}
	t.Run("Control", func(t *testing.T) {
		rs[1].App.ReadCache().BreakForTest(store.BreakLocalWrites, 0)
		defer rs[1].App.ReadCache().BreakForTest(0, 0)
		if !failsOnce(func() int64 { return readYourWrites(t, rs[1], rs[1], ids, 30, false) }) {
			t.Error("without local eviction, no read was stale: the test cannot fail")
		}
	})
}

// fillsRaceEvictions races fills with evictions on purpose, for each
// user in parallel: on a replica (racer, whose fills wait fillDelay
// between their read and their insertion) a read of the user starts and
// misses; while its fill waits, writer writes the user, and the racer's
// hub evicts it. Meanwhile readers hammer the same users on every
// replica. Once the writes are done and the hubs have caught up, every
// replica must read what the last write left. It returns how many reads
// did not.
func fillsRaceEvictions(t *testing.T, rs []*apptest.Instance, writer, racer *apptest.Instance, ids []string) int64 {
	t.Helper()
	ctx := context.Background()
	stop := make(chan struct{})
	var readers sync.WaitGroup
	for _, in := range rs {
		for _, id := range ids {
			readers.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					if _, err := read(ctx, in, id, ""); err != nil {
						t.Errorf("read: %v", err)
						return
					}
				}
			})
		}
	}
	var writers sync.WaitGroup
	final := make([]state, len(ids))
	for i, id := range ids {
		writers.Go(func() {
			plan := userdv1.Plan_PLAN_FREE
			for step := range 6 {
				// The racer's read: it misses (the previous write evicted
				// the user), reads the database now, and inserts once
				// its fill delay is over, after the write below and its
				// eviction.
				filled := make(chan error, 1)
				go func() {
					_, err := read(ctx, racer, id, "")
					filled <- err
				}()
				time.Sleep(10 * time.Millisecond)
				s, _, err := write(ctx, writer, id, step, plan)
				if err != nil {
					t.Errorf("write: %v", err)
					return
				}
				plan, final[i] = s.plan, s
				if err := <-filled; err != nil {
					t.Errorf("read: %v", err)
					return
				}
			}
		})
	}
	writers.Wait()
	close(stop)
	readers.Wait()
	// Every hub polls every 20 ms (apptest.Config): a quarter second is
	// far past the catching up, and within the 1 s tokenless bound.
	time.Sleep(250 * time.Millisecond)
	var stale int64
	for _, in := range rs {
		waitServing(t, in)
		for i, id := range ids {
			got, err := read(ctx, in, id, "")
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			if got != final[i] {
				stale++
			}
		}
	}
	return stale
}

// waitServing waits until in's cache serves tokenless reads: the hub's
// head is held back while any transaction of the PostgreSQL server runs
// (other tests' too), and meanwhile every read goes to the database,
// which would prove nothing.
func waitServing(t *testing.T, in *apptest.Instance) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !in.App.ReadCache().Serving() {
		if time.Now().After(deadline) {
			t.Fatal("the read cache did not serve within 30s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// failsOnce runs a control up to three times (the PostgreSQL server is
// shared: another test's long transaction holds the hubs back, and
// then every read goes to the database) and reports whether one run saw
// a stale read.
func failsOnce(run func() int64) bool {
	for range 3 {
		if run() > 0 {
			return true
		}
	}
	return false
}

func TestReadCacheFillsRaceEvictions(t *testing.T) {
	rs := replicas(t, 2)
	ids := ensureUsers(t, rs[0], "race", 12)
	rs[1].App.ReadCache().BreakForTest(0, 60*time.Millisecond)
	waitServing(t, rs[1])
	if n := fillsRaceEvictions(t, rs, rs[0], rs[1], ids); n != 0 {
		t.Errorf("%d reads disagree with the last write after the hubs caught up", n)
	}
	if s := rs[1].App.ReadCache().Stats(); s.Refused == 0 || s.Hits == 0 {
		t.Errorf("no fill was refused, or no read hit (%+v): the test proves nothing", s)
	}
	t.Run("Control", func(t *testing.T) {
		rs[1].App.ReadCache().BreakForTest(store.BreakGenerations, 60*time.Millisecond)
		defer rs[1].App.ReadCache().BreakForTest(0, 0)
		if !failsOnce(func() int64 { return fillsRaceEvictions(t, rs, rs[0], rs[1], ids) }) {
			t.Error("with generations ignored, every read agreed: the test cannot fail")
		}
	})
}

// TestReadCacheForgedToken: a well-formed version-2 token no write
// returned, naming a transaction far in the future (a client's forgery or
// a token from another deployment), is no error and no wait: the replica's
// hub is not past it, so the read goes to the database and shows the
// committed state; the cache answers nothing for it.
func TestReadCacheForgedToken(t *testing.T) {
	rs := replicas(t, 2)
	ids := ensureUsers(t, rs[0], "forged", 1)
	ctx := context.Background()
	waitServing(t, rs[1])
	if _, err := read(ctx, rs[1], ids[0], ""); err != nil { // fills B's cache
		t.Fatal(err)
	}
	want, _, err := write(ctx, rs[0], ids[0], 0, userdv1.Plan_PLAN_FREE)
	if err != nil {
		t.Fatal(err)
	}
	forged := consistency.Token{Xid: 1 << 62}.String()
	before := rs[1].App.ReadCache().Stats()
	start := time.Now()
	got, err := read(ctx, rs[1], ids[0], forged)
	if err != nil {
		t.Fatalf("read with a forged token: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("read with a forged token took %s: it must not wait for the token", took)
	}
	if got != want {
		t.Errorf("read with a forged token = %+v, want the committed %+v", got, want)
	}
	if after := rs[1].App.ReadCache().Stats(); after.Hits != before.Hits {
		t.Errorf("the cache answered a read whose token its hub has not reached (%+v -> %+v)", before, after)
	}
}
