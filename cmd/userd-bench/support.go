package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/userd/userd/internal/pgembed"
)

// benchDatabase creates a fresh database on -server, or on an embedded
// PostgreSQL when no server answers there, and returns its URL.
func benchDatabase(ctx context.Context) (string, func(), error) {
	server := *serverURL
	stopEmbedded := func() {}
	conn, err := pgx.Connect(ctx, server)
	if err != nil {
		dir, derr := os.MkdirTemp("", "userd-bench-pg")
		if derr != nil {
			return "", nil, derr
		}
		_ = os.Chmod(dir, 0o755)
		log.Printf("no PostgreSQL at %s (%v): using an embedded one", server, err)
		srv, serr := pgembed.Start(ctx, pgembed.Config{DataDir: dir})
		if serr != nil {
			return "", nil, serr
		}
		stopEmbedded = func() { _ = srv.Stop(); _ = os.RemoveAll(dir) }
		server = srv.URL
		if conn, err = pgx.Connect(ctx, server); err != nil {
			stopEmbedded()
			return "", nil, err
		}
	}
	name := fmt.Sprintf("userd_bench_%d", os.Getpid())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		stopEmbedded()
		return "", nil, fmt.Errorf("create bench database: %w", err)
	}
	u, _ := url.Parse(server)
	u.Path = "/" + name
	cleanup := func() {
		_, _ = conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
		_ = conn.Close(context.Background())
		stopEmbedded()
	}
	return u.String(), cleanup, nil
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func waitReady(u string) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(u); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("userd not ready at %s", u)
}

// writePgbenchScripts writes the statements userd runs for each operation,
// as pgbench scripts (see db/queries and internal/users).
func writePgbenchScripts(users int) (map[string]string, error) {
	dir, err := os.MkdirTemp("", "userd-pgbench")
	if err != nil {
		return nil, err
	}
	n := fmt.Sprintf("\\set n random(0, %d)\n", users-1)
	scripts := map[string]string{
		// GetUser / EnsureUser of an existing user: one SELECT by Clerk id.
		"get_user": n + "SELECT * FROM users WHERE clerk_user_id = 'user_bench' || :n AND deleted_at IS NULL;\n",
		// DeductCredits: lock the user and look the key up, then set the
		// balance and insert the entry (db/queries, LockLiveUserWithKeyedTransaction
		// and ApplyCreditTransaction).
		"deduct": n + "\\set k random(1, 1000000000000)\n" +
			"BEGIN;\n" +
			"SELECT users.id AS uid, users.credits AS cr, t.id AS tid FROM users LEFT JOIN credit_transactions t ON t.user_id = users.id AND t.idempotency_key = 'pgb' || :k || '-' || :client_id " +
			"WHERE users.clerk_user_id = 'user_bench' || :n AND users.deleted_at IS NULL FOR UPDATE OF users \\gset\n" +
			"WITH balance AS (UPDATE users SET credits = :cr - 1, updated_at = now() WHERE users.id = :uid RETURNING id AS balance_user_id) " +
			"INSERT INTO credit_transactions (user_id, delta, balance_after, kind, reason, idempotency_key) " +
			"SELECT balance.balance_user_id, -1, :cr - 1, 'DEDUCT', '', 'pgb' || :k || '-' || :client_id FROM balance RETURNING *;\n" +
			"COMMIT;\n",
		// ApplyClerkUser for a new user: lock the user and any email holder,
		// insert the user with its initial ledger entry, record the message.
		"webhook_create": "\\set k random(1, 1000000000000)\n" +
			"BEGIN;\n" +
			"SELECT * FROM users WHERE clerk_user_id = 'user_pgb' || :k || '_' || :client_id " +
			"OR (lower(email) = lower('pgb' || :k || '_' || :client_id || '@bench.example') AND deleted_at IS NULL) FOR UPDATE;\n" +
			"WITH new_user AS (INSERT INTO users (clerk_user_id, email, plan, credits, clerk_updated_at) " +
			"VALUES ('user_pgb' || :k || '_' || :client_id, 'pgb' || :k || '_' || :client_id || '@bench.example', 'FREE', 10, 1) " +
			"ON CONFLICT (clerk_user_id) DO NOTHING RETURNING *), initial AS (INSERT INTO credit_transactions (user_id, delta, balance_after, kind) " +
			"SELECT new_user.id, new_user.credits, new_user.credits, 'INITIAL' FROM new_user) SELECT * FROM new_user;\n" +
			"INSERT INTO webhook_events (svix_id, event_type, object_id, outcome) VALUES ('pgbmsg' || :k || '-' || :client_id, 'user.created', " +
			"'user_pgb' || :k || '_' || :client_id, 'created') ON CONFLICT (svix_id) DO NOTHING RETURNING svix_id;\n" +
			"COMMIT;\n",
	}
	paths := map[string]string{}
	for name, body := range scripts {
		p := filepath.Join(dir, name+".sql")
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			return nil, err
		}
		paths[name] = p
	}
	return paths, nil
}

var tpsRe = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)

// pgbench runs one script at -c clients for -d and returns its rate.
func pgbench(dbURL, script string) (float64, error) {
	cmd := exec.Command("pgbench", "-n", "-M", "prepared", "-c", strconv.Itoa(*concurrency), "-j", strconv.Itoa(runtime.NumCPU()),
		"-T", strconv.Itoa(int(duration.Seconds())), "-f", script, dbURL)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("pgbench %s: %v\n%s", filepath.Base(script), err, out)
	}
	m := tpsRe.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("pgbench %s: no tps in\n%s", filepath.Base(script), out)
	}
	return strconv.ParseFloat(string(m[1]), 64)
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func rates(rs []result) []float64 {
	out := make([]float64, len(rs))
	for i, r := range rs {
		out[i] = r.rps
	}
	return out
}

func field(rs []result, f func(result) float64) float64 {
	xs := make([]float64, len(rs))
	for i, r := range rs {
		xs[i] = f(r)
	}
	return median(xs)
}

// render writes the report: one row per operation (medians of the rounds)
// and the targets.
func render(scenarios []scenario, all map[string][]result, ceilings map[string][]float64) string {
	var b strings.Builder
	cpuModel := "unknown CPU"
	if info, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		if m := regexp.MustCompile(`model name\s*:\s*(.+)`).FindSubmatch(info); m != nil {
			cpuModel = string(m[1])
		}
	}
	pgv, _ := exec.Command("pgbench", "--version").Output()
	fmt.Fprintf(&b, "# userd benchmarks\n\n")
	fmt.Fprintf(&b, "Produced by `make bench` (cmd/userd-bench) on %s: %d cores (%s), %s, %s, PostgreSQL %s on the same machine. "+
		"Every figure is the median of %d rounds of %s at %d concurrent clients (after %s of warm-up); the load generator, userd and PostgreSQL share the cores, "+
		"as pgbench and PostgreSQL do for the ceilings. The machine is shared and noisy: read the ratios, not the absolute rates.\n\n",
		time.Now().UTC().Format("2006-01-02"), runtime.NumCPU(), cpuModel, runtime.Version(), runtime.GOOS+"/"+runtime.GOARCH,
		strings.TrimSpace(strings.TrimPrefix(string(pgv), "pgbench (PostgreSQL)")), *rounds, *duration, *concurrency, *warmup)
	fmt.Fprintf(&b, "| operation | rate /s | p50 ms | p99 ms | errors | userd CPU s | peak RSS MiB | pgbench ceiling tps (same SQL) | ratio |\n")
	fmt.Fprintf(&b, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	names := []string{}
	for _, s := range scenarios {
		names = append(names, s.name)
	}
	names = append(names, "gRPC GetUser at half peak")
	ceilingOf := map[string]string{"gRPC GetUser at half peak": ""}
	for _, s := range scenarios {
		ceilingOf[s.name] = s.ceiling
	}
	maxRSS := 0.0
	for _, name := range names {
		rs := all[name]
		rps := field(rs, func(r result) float64 { return r.rps })
		rss := field(rs, func(r result) float64 { return r.rssMiB })
		maxRSS = max(maxRSS, rss)
		var errs int64
		for _, r := range rs {
			errs += r.errs
		}
		ceil, ratio := "", ""
		if c := ceilingOf[name]; c != "" {
			tps := median(ceilings[c])
			ceil = fmt.Sprintf("%.0f (%s)", tps, c)
			ratio = fmt.Sprintf("%.2f", rps/tps)
		}
		fmt.Fprintf(&b, "| %s | %.0f | %.2f | %.2f | %d | %.1f | %.0f | %s | %s |\n", name, rps,
			field(rs, func(r result) float64 { return r.p50 }), field(rs, func(r result) float64 { return r.p99 }),
			errs, field(rs, func(r result) float64 { return r.cpu }), rss, ceil, ratio)
	}
	get := median(rates(all["gRPC GetUser"]))
	rest := median(rates(all["REST GetUser (session JWT)"]))
	deduct := median(rates(all["gRPC DeductCredits"]))
	hook := median(rates(all["webhook user.created (signed, unique)"]))
	halfP99 := field(all["gRPC GetUser at half peak"], func(r result) float64 { return r.p99 })
	check := func(ok bool) string {
		if ok {
			return "met"
		}
		return "**not met**"
	}
	fmt.Fprintf(&b, "\n| target | measured | |\n| --- | --- | --- |\n")
	fmt.Fprintf(&b, "| gRPC GetUser ≥ 50%% of pgbench's rate for the same SELECT | %.2f | %s |\n", get/median(ceilings["get_user"]), check(get/median(ceilings["get_user"]) >= .5))
	fmt.Fprintf(&b, "| DeductCredits ≥ 75%% of pgbench's rate for the same statements | %.2f | %s |\n", deduct/median(ceilings["deduct"]), check(deduct/median(ceilings["deduct"]) >= .75))
	fmt.Fprintf(&b, "| REST GetUser ≥ 60%% of gRPC GetUser | %.2f | %s |\n", rest/get, check(rest/get >= .6))
	fmt.Fprintf(&b, "| webhook ingestion ≥ 5,000 signed events/s | %.0f/s | %s |\n", hook, check(hook >= 5000))
	fmt.Fprintf(&b, "| p99 < 10 ms at half the peak rate (gRPC GetUser) | %.2f ms | %s |\n", halfP99, check(halfP99 < 10))
	fmt.Fprintf(&b, "| userd RSS < 100 MiB | %.0f MiB peak | %s |\n", maxRSS, check(maxRSS < 100))
	return b.String()
}
