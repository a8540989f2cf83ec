// Package migration is `userd-bench migration` (make bench-migration): it
// measures what rolling out this release's migrations costs on a populated
// database while the previous release serves a deduct load — issue 20's
// "time and lock impact of the migration on 100,000 users with 1,000,000
// ledger rows".
//
// It creates a database, migrates it with the previous release's binary,
// fills it in SQL (users, and a ledger whose running balances end at each
// user's balance, with idempotency keys), starts the previous release and a
// deduct load against it, then starts this release's binary, which applies
// its expand migrations at start-up while the old one serves; then it stops
// the old one, moves the load to the new one and applies the post-deploy
// migrations with `userd migrate up`. It prints the migrations' durations,
// the deduct latencies (p50/p99/max) and errors before and during each, the
// longest lock wait any session had (sampled from pg_locks) with the
// statement that waited and the one it waited for, and checks that every
// balance still equals its ledger sum.
package migration

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/userdproc"
)

const serviceToken = "migrationbench-service-token-0123456789ab"

var flags = flag.NewFlagSet("userd-bench migration", flag.ExitOnError)

var (
	binPath   = flags.String("userd", "bin/userd", "userd binary of this release (applies the migrations)")
	prevPath  = flags.String("previous", "", "userd binary of the previous release (serves the load while this one migrates); required")
	serverURL = flags.String("server", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "PostgreSQL server to create the bench database on (a superuser: the fill skips triggers)")
	nUsers    = flags.Int("users", 100_000, "users")
	perUser   = flags.Int("per-user", 10, "ledger rows per user")
	deductHz  = flags.Int("rate", 200, "DeductCredits per second against the serving binary")
	writers   = flags.Int("writers", 8, "concurrent callers of the load")
	settle    = flags.Duration("settle", 10*time.Second, "load time before the migration (the baseline) and after each step")
	keep      = flags.Bool("keep", false, "keep the bench database (its name is printed)")
)

// Main runs `userd-bench migration` with its arguments.
func Main(ctx context.Context, args []string) error {
	if err := flags.Parse(args); err != nil {
		return err
	}
	if *prevPath == "" {
		return errors.New("-previous (the previous release's userd binary) is required")
	}
	return run(ctx)
}

// call is one DeductCredits of the load.
type call struct {
	start time.Time
	took  time.Duration
	code  codes.Code
	by    string
}

// lockWait is the longest wait seen of one lock request.
type lockWait struct {
	pid                  int32
	waitstart            time.Time
	longest              time.Duration
	mode, object, waiter string
	blocker              string
}

func run(ctx context.Context) error {
	dbURL, dbName, cleanup, err := benchDatabase(ctx)
	if err != nil {
		return err
	}
	defer cleanup()
	log.Printf("database %s", dbName)

	// The previous release's schema, then the data, in SQL.
	if out, err := migrateUp(*prevPath, dbURL); err != nil {
		return fmt.Errorf("previous release's migrate up: %w\n%s", err, out)
	}
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	fillStart := time.Now()
	if err := fill(ctx, pool); err != nil {
		return fmt.Errorf("fill: %w", err)
	}
	var users, ledger, keys int64
	if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM credit_transactions), (SELECT count(*) FROM idempotency_keys)`).Scan(&users, &ledger, &keys); err != nil {
		return err
	}
	log.Printf("filled %d users, %d ledger rows, %d idempotency keys in %s", users, ledger, keys, time.Since(fillStart).Round(time.Millisecond))

	// The previous release serves; the deduct load runs against whichever
	// binary is in rotation.
	old, err := startUserd(ctx, *prevPath, dbURL)
	if err != nil {
		return err
	}
	defer old.stop()
	rec := &recorder{}
	target := &rotation{}
	target.set(old)
	loadCtx, stopLoad := context.WithCancel(ctx)
	var loadWG sync.WaitGroup
	loadWG.Add(1)
	go func() { defer loadWG.Done(); load(loadCtx, target, rec, int(users)) }()
	defer func() { stopLoad(); loadWG.Wait() }()

	sampler, err := startSampler(ctx, dbURL)
	if err != nil {
		return err
	}
	defer sampler.stop()

	time.Sleep(*settle) // the baseline: the previous release alone, under load
	t0 := time.Now()

	// This release starts and applies its expand migrations.
	expandStart := time.Now()
	next, err := startUserd(ctx, *binPath, dbURL)
	if err != nil {
		return err
	}
	defer next.stop()
	expandEnd := time.Now()
	ran := migrationsRan(next.logs())
	time.Sleep(*settle) // both serve; the load stays on the previous release
	t1 := time.Now()

	// The previous release stops; the load moves to this release; then
	// the contract runs while it serves.
	target.set(next)
	old.stop()
	time.Sleep(*settle)
	t2 := time.Now()
	contractStart := time.Now()
	out, err := migrateUp(*binPath, dbURL)
	contractEnd := time.Now()
	if err != nil {
		return fmt.Errorf("userd migrate up (the contract): %w\n%s", err, out)
	}
	time.Sleep(*settle)
	stopLoad()
	loadWG.Wait()

	// The books after both steps.
	bad, n, err := unbalanced(ctx, pool)
	if err != nil {
		return err
	}

	calls := rec.all()
	var report strings.Builder
	fmt.Fprintf(&report, "## Migration of a populated database (issue 20)\n\n")
	fmt.Fprintf(&report, "`make bench-migration` (cmd/userd-bench migration) on %s: %d cores, PostgreSQL on the same machine, shared with other work (load average %s). "+
		"%d users, %d ledger rows, %d idempotency keys; a steady %d DeductCredits/s (%d callers, keyed) against the serving binary throughout.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), runtime.NumCPU(), loadAverage(), users, ledger, keys, *deductHz, *writers)
	fmt.Fprintf(&report, "| step | took | migrations |\n| --- | ---: | --- |\n")
	fmt.Fprintf(&report, "| expand: this release's `userd serve` start (launch → ready) while the previous release serves | %s | %s |\n",
		expandEnd.Sub(expandStart).Round(time.Millisecond), ran)
	fmt.Fprintf(&report, "| contract: `userd migrate up` while this release serves | %s | %s |\n\n",
		contractEnd.Sub(contractStart).Round(time.Millisecond), strings.ReplaceAll(strings.TrimSpace(string(out)), "\n", "; "))
	windows := []struct {
		name     string
		from, to time.Time
	}{
		{"baseline (before the expand)", t0.Add(-*settle), t0},
		{"during the expand", expandStart, expandEnd},
		{"both serving (load on the previous release)", expandEnd, t1},
		{"this release alone, before the contract", t1, t2},
		{"during the contract", contractStart, contractEnd},
		{"after the contract", contractEnd, contractEnd.Add(*settle)},
	}
	fmt.Fprintf(&report, "| window | served by | deducts | p50 ms | p99 ms | max ms | errors | longest lock wait ms |\n| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |\n")
	for _, w := range windows {
		s := stats(calls, w.from, w.to)
		longest := 0.0
		if waits := sampler.between(w.from, w.to); len(waits) > 0 {
			longest = float64(waits[0].longest.Microseconds()) / 1000
		}
		fmt.Fprintf(&report, "| %s | %s | %d | %.1f | %.1f | %.1f | %s | %.0f |\n", w.name, s.by, s.n, s.p50, s.p99, s.max, s.errors, longest)
	}
	fmt.Fprintf(&report, "\nLongest lock waits during each migration step (pg_locks sampled every 10 ms; any session of the database):\n\n")
	for _, w := range windows {
		if w.name != "during the expand" && w.name != "during the contract" {
			continue
		}
		waits := sampler.between(w.from, w.to)
		if len(waits) == 0 {
			fmt.Fprintf(&report, "- %s: no lock wait seen\n", w.name)
			continue
		}
		for i, lw := range waits[:min(3, len(waits))] {
			fmt.Fprintf(&report, "- %s #%d: %s waiting for %s on %s: `%s`, blocked by `%s`\n", w.name, i+1,
				lw.longest.Round(time.Millisecond), lw.mode, lw.object, oneLine(lw.waiter, 160), oneLine(lw.blocker, 160))
		}
	}
	fmt.Fprintf(&report, "\nBooks after the contract: %d of %d balances differ from their ledger sum.\n", bad, n)
	fmt.Print(report.String())
	if bad != 0 {
		return fmt.Errorf("%d balances differ from their ledger sum", bad)
	}
	return nil
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		s = s[:n] + "…"
	}
	return s
}

// fill writes the users and their ledgers in SQL, with the feed's outbox
// triggers (and FK triggers) off for the session: the history is not the
// feed's. Each user's ledger starts with its INITIAL 100 and alternates
// deducts of 3 and grants of 2 (keyed, each key claimed in
// idempotency_keys), so that every balance_after is the running sum and
// the balance the last one.
func fill(ctx context.Context, pool *pgxpool.Pool) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	stmts := []string{
		`SET session_replication_role = replica`,
		fmt.Sprintf(`INSERT INTO users (clerk_user_id, email, plan, credits, clerk_updated_at)
			SELECT 'user_mig' || g, 'u' || g || '@example.com', 'FREE', 0, 1 FROM generate_series(1, %d) g`, *nUsers),
		fmt.Sprintf(`INSERT INTO credit_transactions (user_id, delta, balance_after, kind, reason, idempotency_key, created_at)
			SELECT u.id, d.delta, sum(d.delta) OVER (PARTITION BY u.id ORDER BY j), d.kind, d.kind, d.key,
			       now() - interval '1 day' + j * interval '1 second'
			FROM users u CROSS JOIN generate_series(1, %d) j
			CROSS JOIN LATERAL (SELECT CASE WHEN j = 1 THEN 100 WHEN j %% 2 = 0 THEN -3 ELSE 2 END AS delta,
			                           CASE WHEN j = 1 THEN 'INITIAL' WHEN j %% 2 = 0 THEN 'DEDUCT' ELSE 'GRANT' END AS kind,
			                           CASE WHEN j = 1 THEN NULL ELSE 'seed-' || j END AS key) d
			ORDER BY u.id, j`, *perUser),
		`INSERT INTO idempotency_keys (user_id, idempotency_key, operation)
			SELECT user_id, idempotency_key, kind FROM credit_transactions WHERE idempotency_key IS NOT NULL`,
		`UPDATE users u SET credits = t.balance FROM (
			SELECT DISTINCT ON (user_id) user_id, balance_after AS balance FROM credit_transactions ORDER BY user_id, id DESC) t
			WHERE t.user_id = u.id`,
		`RESET session_replication_role`,
		`VACUUM ANALYZE`,
	}
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("%s: %w", oneLine(s, 60), err)
		}
	}
	bad, _, err := unbalanced(ctx, pool)
	if err == nil && bad != 0 {
		err = fmt.Errorf("the fill left %d balances other than their ledger sum", bad)
	}
	return err
}

// unbalanced counts the balances (accounts', or users' on a schema without
// accounts) that differ from the sum of their ledger, whatever the ledger's
// owner column is called.
func unbalanced(ctx context.Context, pool *pgxpool.Pool) (bad, n int64, err error) {
	var owner, col string
	if err := pool.QueryRow(ctx, `
		SELECT CASE WHEN to_regclass('accounts') IS NULL THEN 'users' ELSE 'accounts' END,
		       (SELECT column_name FROM information_schema.columns
		        WHERE table_schema = current_schema() AND table_name = 'credit_transactions'
		          AND column_name IN ('account_id', 'user_id') ORDER BY column_name LIMIT 1)`).Scan(&owner, &col); err != nil {
		return 0, 0, err
	}
	err = pool.QueryRow(ctx, fmt.Sprintf(`
		SELECT count(*) FILTER (WHERE o.credits IS DISTINCT FROM coalesce(l.total, 0)), count(*)
		FROM %s o LEFT JOIN (SELECT %s AS owner, sum(delta) AS total FROM credit_transactions GROUP BY 1) l ON l.owner = o.id`, owner, col)).Scan(&bad, &n)
	return bad, n, err
}

func migrateUp(bin, dbURL string) ([]byte, error) {
	cmd := exec.Command(bin, "migrate", "up")
	cmd.Env = append(os.Environ(), "DATABASE_URL="+dbURL, "USERD_LOG_FORMAT=json")
	return cmd.CombinedOutput()
}

// userd is a running binary and its client.
type userd struct {
	name string
	proc *userdproc.Process
	conn *grpc.ClientConn
	api  userdv1.UserServiceClient
	once sync.Once
	out  *logBuffer
}

type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (u *userd) logs() string {
	u.out.mu.Lock()
	defer u.out.mu.Unlock()
	return u.out.b.String()
}

func startUserd(ctx context.Context, bin, dbURL string) (*userd, error) {
	out := &logBuffer{}
	proc, err := userdproc.Start(ctx, userdproc.Config{
		Bin: bin,
		Env: []string{
			"DATABASE_URL=" + dbURL, "USERD_DB_MAX_CONNS=16", "USERD_HTTP_ADDR=off", "USERD_WEBHOOK_ADDR=off",
			"USERD_SERVICE_TOKENS=bench=" + serviceToken, "USERD_LOG_FORMAT=json", "USERD_LOG_LEVEL=info",
		},
		Stdout: out, Stderr: out,
	}, 10*time.Minute)
	if err != nil {
		return nil, fmt.Errorf("%s: %w\n%s", bin, err, out.b.String())
	}
	conn, err := grpc.NewClient(proc.Addrs.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		proc.Kill()
		return nil, err
	}
	return &userd{name: bin, proc: proc, conn: conn, api: userdv1.NewUserServiceClient(conn), out: out}, nil
}

func (u *userd) stop() {
	u.once.Do(func() {
		_ = u.proc.Stop(syscall.SIGTERM, 30*time.Second)
		_ = u.conn.Close()
	})
}

// migrationsRan reads the "migration applied" lines a userd logged.
func migrationsRan(logs string) string {
	var out []string
	for _, line := range strings.Split(logs, "\n") {
		if !strings.Contains(line, `"msg":"migration applied"`) {
			continue
		}
		name := field(line, "migration")
		took := field(line, "took_ms")
		out = append(out, fmt.Sprintf("%s %s ms", name, took))
	}
	if len(out) == 0 {
		return "(none logged)"
	}
	return strings.Join(out, "; ")
}

func field(line, key string) string {
	i := strings.Index(line, `"`+key+`":`)
	if i < 0 {
		return "?"
	}
	v := line[i+len(key)+3:]
	v = strings.TrimPrefix(v, `"`)
	if j := strings.IndexAny(v, `",}`); j >= 0 {
		v = v[:j]
	}
	return v
}

// rotation is the binary the load calls.
type rotation struct {
	mu sync.Mutex
	u  *userd
}

func (r *rotation) set(u *userd) { r.mu.Lock(); r.u = u; r.mu.Unlock() }
func (r *rotation) get() *userd  { r.mu.Lock(); defer r.mu.Unlock(); return r.u }

type recorder struct {
	mu    sync.Mutex
	calls []call
}

func (r *recorder) add(c call) { r.mu.Lock(); r.calls = append(r.calls, c); r.mu.Unlock() }
func (r *recorder) all() []call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

// load calls DeductCredits at a steady rate over random users, each call
// keyed, until ctx ends. A call that meets UNAVAILABLE (a stopping
// binary) is retried with its key on the binary then in rotation; the
// recorded outcome is its first attempt's.
func load(ctx context.Context, r *rotation, rec *recorder, users int) {
	lim := rate.NewLimiter(rate.Limit(*deductHz), 1)
	auth := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+serviceToken)
	sem := make(chan struct{}, *writers)
	var wg sync.WaitGroup
	defer wg.Wait()
	for n := 0; ; n++ {
		if err := lim.Wait(ctx); err != nil {
			return
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			req := &userdv1.DeductCreditsRequest{ClerkUserId: fmt.Sprintf("user_mig%d", 1+(n*7919)%users), Amount: 1, IdempotencyKey: fmt.Sprintf("bench-%d", n), Reason: "bench"}
			for try := 0; try < 50; try++ {
				u := r.get()
				cctx, cancel := context.WithTimeout(context.WithoutCancel(auth), 30*time.Second)
				start := time.Now()
				_, err := u.api.DeductCredits(cctx, req)
				cancel()
				c := call{start: start, took: time.Since(start), code: status.Code(err), by: u.name}
				if try == 0 || c.code != codes.Unavailable {
					rec.add(c)
				}
				if c.code != codes.Unavailable {
					return
				}
				time.Sleep(20 * time.Millisecond) // back off before retrying with the same key
			}
		}()
	}
}

type windowStats struct {
	n             int
	p50, p99, max float64
	errors, by    string
}

func stats(calls []call, from, to time.Time) windowStats {
	var lat []float64
	errs := map[codes.Code]int{}
	by := map[string]bool{}
	for _, c := range calls {
		if c.start.Before(from) || !c.start.Before(to) {
			continue
		}
		lat = append(lat, float64(c.took.Microseconds())/1000)
		if c.code != codes.OK {
			errs[c.code]++
		}
		by[shortName(c.by)] = true
	}
	slices.Sort(lat)
	s := windowStats{n: len(lat), p50: pct(lat, .5), p99: pct(lat, .99), max: pct(lat, 1)}
	var e []string
	for code, n := range errs {
		e = append(e, fmt.Sprintf("%d %s", n, code))
	}
	slices.Sort(e)
	s.errors = strings.Join(e, ", ")
	if s.errors == "" {
		s.errors = "none"
	}
	var b []string
	for name := range by {
		b = append(b, name)
	}
	slices.Sort(b)
	s.by = strings.Join(b, ", ")
	return s
}

func shortName(bin string) string {
	if bin == *prevPath {
		return "previous"
	}
	return "this release"
}

func pct(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	return xs[int(q*float64(len(xs)-1))]
}

// sampler polls pg_locks for lock requests not granted, and keeps the
// longest wait of each (pid, waitstart) with the waiting and the blocking
// statements.
type sampler struct {
	mu     sync.Mutex
	waits  map[[2]int64]*lockWait
	cancel context.CancelFunc
	done   chan struct{}
}

func startSampler(ctx context.Context, dbURL string) (*sampler, error) {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	s := &sampler{waits: map[[2]int64]*lockWait{}, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer conn.Close(context.Background())
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			s.sample(ctx, conn)
		}
	}()
	return s, nil
}

func (s *sampler) sample(ctx context.Context, conn *pgx.Conn) {
	rows, err := conn.Query(ctx, `
		SELECT l.pid, l.waitstart, clock_timestamp() - l.waitstart, l.mode,
		       coalesce(l.relation::regclass::text, l.locktype), coalesce(a.query, ''),
		       coalesce((SELECT string_agg(b.query, ' | ') FROM pg_stat_activity b WHERE b.pid = ANY (pg_blocking_pids(l.pid))), '')
		FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE NOT l.granted AND l.waitstart IS NOT NULL AND a.datname = current_database()`)
	if err != nil {
		return
	}
	defer rows.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	for rows.Next() {
		var lw lockWait
		if err := rows.Scan(&lw.pid, &lw.waitstart, &lw.longest, &lw.mode, &lw.object, &lw.waiter, &lw.blocker); err != nil {
			return
		}
		k := [2]int64{int64(lw.pid), lw.waitstart.UnixNano()}
		if prev, ok := s.waits[k]; !ok || lw.longest > prev.longest {
			s.waits[k] = &lw
		}
	}
}

// between returns the waits that began in [from, to), longest first.
func (s *sampler) between(from, to time.Time) []lockWait {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []lockWait
	for _, w := range s.waits {
		if !w.waitstart.Before(from) && w.waitstart.Before(to) {
			out = append(out, *w)
		}
	}
	slices.SortFunc(out, func(a, b lockWait) int { return int(b.longest - a.longest) })
	return out
}

func (s *sampler) stop() { s.cancel(); <-s.done }

func benchDatabase(ctx context.Context) (string, string, func(), error) {
	conn, err := pgx.Connect(ctx, *serverURL)
	if err != nil {
		return "", "", nil, fmt.Errorf("connect to -server: %w", err)
	}
	name := fmt.Sprintf("userd_migrationbench_%d", os.Getpid())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", "", nil, fmt.Errorf("create bench database: %w", err)
	}
	u, _ := url.Parse(*serverURL)
	u.Path = "/" + name
	return u.String(), name, func() {
		if !*keep {
			_, _ = conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
		}
		_ = conn.Close(context.Background())
	}, nil
}

func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
