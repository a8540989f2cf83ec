// Package feed is `userd-bench feed` (make bench-feed): it measures the change feed (WatchUserEvents): the
// latency from a write's commit to its event reaching consumers at a
// steady load, the feed's cost on write throughput (pgbench on the
// db/ceilings statements that write the feed's events and on the same
// statements without them, alternating in one run), and the CPU and memory of idle consumers. It
// starts the userd binary on a fresh database and writes its section of
// BENCHMARKS.md.
package feed

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/userd/userd/cmd/userd-bench/internal/crud"
	"github.com/userd/userd/db/ceilings"
	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/procstat"
	"github.com/userd/userd/internal/userdproc"
)

const serviceToken = "feedbench-service-token-0123456789abcdef"

// Markers of the section this command owns in BENCHMARKS.md.
const (
	beginMarker = "<!-- feed: written by make bench-feed -->"
	endMarker   = "<!-- /feed -->"
)

// flags are the subcommand's; Main parses them.
var flags = flag.NewFlagSet("userd-bench feed", flag.ExitOnError)

var (
	binPath     = flags.String("userd", "bin/userd", "userd binary to measure")
	serverURL   = flags.String("server", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "PostgreSQL server to create the bench database on")
	nUsers      = flags.Int("users", 200, "seeded users")
	writeRate   = flags.Int("rate", 200, "DeductCredits per second during the latency measurement")
	writers     = flags.Int("writers", 8, "concurrent writers during the latency measurement")
	consumers   = flags.Int("consumers", 10, "consumers watching every user during the latency measurement")
	latencyDur  = flags.Duration("d", 20*time.Second, "latency measurement time per poll interval")
	polls       = flags.String("polls", "100ms,20ms", "USERD_FEED_POLL_INTERVAL values to measure latency at")
	idle        = flags.Int("idle", 1000, "idle consumers for the CPU measurement")
	idleDur     = flags.Duration("idle-d", 30*time.Second, "CPU measurement time, with and without the idle consumers")
	pgOps       = flags.String("ops", "deduct,webhook_create,grant,set_plan", "db/ceilings operations (each with an <op>_nofeed.sql) to measure the feed's cost on")
	pgClients   = flags.Int("c", 8, "pgbench clients")
	pgDur       = flags.Duration("pg-d", 5*time.Second, "pgbench time per round")
	rounds      = flags.Int("rounds", 6, "pgbench rounds per variant (alternating)")
	out         = flags.String("out", "BENCHMARKS.md", "file whose feed section to write (empty: print only)")
	streamsConn = 90 // below the server's 100 concurrent streams per connection
)

// Main runs `userd-bench feed` with its arguments.
func Main(ctx context.Context, args []string) error {
	if err := flags.Parse(args); err != nil {
		return err
	}
	return run(ctx)
}

func run(ctx context.Context) error {
	dbURL, cleanup, err := benchDatabase(ctx)
	if err != nil {
		return err
	}
	defer cleanup()
	var report strings.Builder
	pgv, _ := exec.Command("pgbench", "--version").Output()
	fmt.Fprintf(&report, "## Change feed\n\nProduced by `make bench-feed` (cmd/userd-bench feed) on %s: %d cores, %s, PostgreSQL %s on the same machine, "+
		"which is shared with other work (load average %s at the start): read the ratios and orders of magnitude.\n\n",
		time.Now().UTC().Format("2006-01-02"), runtime.NumCPU(), runtime.Version(),
		strings.TrimSpace(strings.TrimPrefix(string(pgv), "pgbench (PostgreSQL)")), loadAverage())

	// Commit → consumer latency.
	fmt.Fprintf(&report, "**Commit → consumer latency** at a steady %d DeductCredits/s (gRPC, %d writers over %d users) with %d consumers watching every user over gRPC, %s per setting. "+
		"Measured from the moment the DeductCredits response arrived (the transaction had committed) to the moment each consumer received the event.\n\n",
		*writeRate, *writers, *nUsers, *consumers, *latencyDur)
	fmt.Fprintf(&report, "| USERD_FEED_POLL_INTERVAL | events × consumers | p50 ms | p90 ms | p99 ms | max ms | userd CPU s |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for i, poll := range strings.Split(*polls, ",") {
		u, err := startUserd(ctx, dbURL, "USERD_FEED_POLL_INTERVAL="+poll)
		if err != nil {
			return err
		}
		if i == 0 {
			if err := u.seed(); err != nil {
				u.stop()
				return err
			}
		}
		lat, cpu, err := u.latency()
		u.stop()
		if err != nil {
			return err
		}
		n := len(lat)
		fmt.Fprintf(&report, "| %s | %d | %.1f | %.1f | %.1f | %.1f | %.1f |\n", poll, n,
			pct(lat, .5), pct(lat, .9), pct(lat, .99), pct(lat, 1), cpu)
		log.Printf("latency at %s: p50 %.1fms p99 %.1fms over %d deliveries", poll, pct(lat, .5), pct(lat, .99), n)
	}

	// CPU and memory per idle consumer.
	u, err := startUserd(ctx, dbURL)
	if err != nil {
		return err
	}
	idleRes, err := u.idleCost()
	u.stop()
	if err != nil {
		return err
	}
	fmt.Fprintf(&report, "\n**Idle consumers** (USERD_FEED_HEARTBEAT 15s, the default; no writes): userd's CPU over %s with no watcher and with %d watchers open "+
		"(each on one user, %d streams per connection), and its RSS.\n\n", *idleDur, *idle, streamsConn)
	fmt.Fprintf(&report, "| watchers | userd CPU s | CPU per watcher | RSS MiB | RSS per watcher |\n| ---: | ---: | ---: | ---: | ---: |\n")
	fmt.Fprintf(&report, "| 0 | %.2f | | %.0f | |\n", idleRes.cpu0, idleRes.rss0)
	perMin := (idleRes.cpuN - idleRes.cpu0) / float64(*idle) / idleDur.Minutes() * 1000
	fmt.Fprintf(&report, "| %d | %.2f | %.3f ms/min | %.0f | %.1f KiB |\n", *idle, idleRes.cpuN, perMin, idleRes.rssN,
		(idleRes.rssN-idleRes.rss0)*1024/float64(*idle))
	log.Printf("idle: %.3f CPU ms/min per watcher", perMin)

	// The outbox's cost on writes.
	pg, err := outboxCost(ctx, dbURL)
	if err != nil {
		return err
	}
	fmt.Fprintf(&report, "\n**Cost of the outbox on writes**: pgbench, %d clients, %d rounds of %s per variant, on the database seeded above "+
		"(-D users=%d), running each operation's ceiling statement db/ceilings/<op>.sql, which writes the feed's event(s) in the same statement as userd's "+
		"write functions do (migration 00020), then its twin <op>_nofeed.sql, the same statement without them, round after round. "+
		"The cost is the median of the rounds' ratios (each pair of runs a few seconds apart, so they share the machine's load), with their range.\n\n",
		*pgClients, *rounds, *pgDur, *nUsers)
	fmt.Fprintf(&report, "| ceiling | events per call | tps with events (median) | tps without (median) | cost (range) |\n| --- | ---: | ---: | ---: | ---: |\n")
	for _, r := range pg {
		var ratios []float64
		for i := range r.with {
			if r.with[i] > 0 && r.without[i] > 0 { // 0: no transaction completed
				ratios = append(ratios, (r.with[i]/r.without[i]-1)*100)
			}
		}
		if len(ratios) == 0 {
			fmt.Fprintf(&report, "| %s | %d | %.0f | %.0f | |\n", r.name, r.events, median(r.with), median(r.without))
			continue
		}
		slices.Sort(ratios)
		fmt.Fprintf(&report, "| %s | %d | %.0f | %.0f | %+.0f%% (%+.0f%% … %+.0f%%) |\n", r.name, r.events, median(r.with), median(r.without),
			median(ratios), ratios[0], ratios[len(ratios)-1])
	}
	section := report.String()
	fmt.Println(section)
	if *out == "" {
		return nil
	}
	return writeSection(*out, section)
}

// userd is a running userd binary.
type userd struct {
	proc   *userdproc.Process
	conns  []*grpc.ClientConn
	client userdv1.UserServiceClient
	ctx    context.Context
}

func startUserd(ctx context.Context, dbURL string, env ...string) (*userd, error) {
	grpcAddr, err := userdproc.FreePort()
	if err != nil {
		return nil, err
	}
	opsAddr, err := userdproc.FreePort()
	if err != nil {
		return nil, err
	}
	proc, err := userdproc.Start(ctx, userdproc.Config{
		Bin:   *binPath,
		Addrs: userdproc.Addrs{GRPC: grpcAddr, HTTP: "off", Webhook: "off", Ops: opsAddr},
		Env: append([]string{
			"DATABASE_URL=" + dbURL, "USERD_DB_MAX_CONNS=16",
			"USERD_SERVICE_TOKENS=bench=" + serviceToken, "USERD_LOG_FORMAT=json", "USERD_LOG_LEVEL=warn",
		}, env...),
		Stdout: io.Discard, Stderr: os.Stderr,
	}, 60*time.Second)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", *binPath, err)
	}
	u := &userd{proc: proc, ctx: metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+serviceToken)}
	conn, err := u.dial()
	if err != nil {
		u.stop()
		return nil, err
	}
	u.client = userdv1.NewUserServiceClient(conn)
	return u, nil
}

func (u *userd) dial() (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient(u.proc.Addrs.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err == nil {
		u.conns = append(u.conns, conn)
	}
	return conn, err
}

func (u *userd) stop() {
	for _, c := range u.conns {
		_ = c.Close()
	}
	_ = u.proc.Stop(syscall.SIGINT, 30*time.Second)
}

func (u *userd) seed() error {
	log.Printf("seeding %d users", *nUsers)
	for i := range *nUsers {
		if err := crud.SeedUser(u.ctx, u.client, i); err != nil {
			return err
		}
	}
	return nil
}

var keySeq atomic.Int64

// latency runs the steady load and returns every consumer's delivery
// latency in ms, and userd's CPU seconds meanwhile.
func (u *userd) latency() ([]float64, float64, error) {
	var committed sync.Map // ledger entry id -> time the response arrived
	ctx, cancel := context.WithCancel(u.ctx)
	defer cancel()
	var (
		mu       sync.Mutex
		lat      []float64
		watchers sync.WaitGroup
		ready    sync.WaitGroup
	)
	for range *consumers {
		stream, err := u.client.WatchUserEvents(ctx, &userdv1.WatchUserEventsRequest{
			Kinds: []userdv1.UserEventKind{userdv1.UserEventKind_USER_EVENT_KIND_CREDITS_CHANGED},
		})
		if err != nil {
			return nil, 0, err
		}
		ready.Add(1)
		watchers.Go(func() {
			first := true
			received := map[int64]time.Time{}
			for {
				item, err := stream.Recv()
				if err != nil {
					break
				}
				now := time.Now()
				if first {
					first = false
					ready.Done()
				}
				if ev := item.GetEvent(); ev != nil {
					received[ev.GetCreditTransaction().GetId()] = now
				}
			}
			var mine []float64
			for id, at := range received {
				if c, ok := committed.Load(id); ok {
					mine = append(mine, float64(at.Sub(c.(time.Time)).Microseconds())/1000)
				}
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	ready.Wait()
	cpu0 := procstat.CPUSeconds(u.proc.Pid())
	limiter := rate.NewLimiter(rate.Limit(*writeRate), 1)
	deadline := time.Now().Add(*latencyDur)
	var writes sync.WaitGroup
	var failed atomic.Int64
	for w := range *writers {
		writes.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for time.Now().Before(deadline) {
				if err := limiter.Wait(ctx); err != nil {
					return
				}
				res, err := u.client.DeductCredits(u.ctx, &userdv1.DeductCreditsRequest{
					ClerkUserId: crud.UserID(rng.IntN(*nUsers)), Amount: 1, IdempotencyKey: fmt.Sprint("lat-", keySeq.Add(1)),
				})
				if err != nil {
					failed.Add(1)
					continue
				}
				committed.Store(res.GetTransaction().GetId(), time.Now())
			}
		})
	}
	writes.Wait()
	time.Sleep(3 * time.Second) // the last events reach the consumers
	cpu := procstat.CPUSeconds(u.proc.Pid()) - cpu0
	cancel()
	watchers.Wait()
	if failed.Load() > 0 {
		log.Printf("%d writes failed", failed.Load())
	}
	slices.Sort(lat)
	return lat, cpu, nil
}

type idleResult struct{ cpu0, cpuN, rss0, rssN float64 }

// idleCost measures userd's CPU and RSS with no watcher and with *idle
// watchers that get no events.
func (u *userd) idleCost() (idleResult, error) {
	var r idleResult
	pid := u.proc.Pid()
	time.Sleep(2 * time.Second)
	c0 := procstat.CPUSeconds(pid)
	time.Sleep(*idleDur)
	r.cpu0 = procstat.CPUSeconds(pid) - c0
	r.rss0 = procstat.RSSMiB(pid)
	ctx, cancel := context.WithCancel(u.ctx)
	defer cancel()
	var client userdv1.UserServiceClient
	var open sync.WaitGroup
	for i := range *idle {
		if i%streamsConn == 0 {
			conn, err := u.dial()
			if err != nil {
				return r, err
			}
			client = userdv1.NewUserServiceClient(conn)
		}
		stream, err := client.WatchUserEvents(ctx, &userdv1.WatchUserEventsRequest{ClerkUserId: crud.UserID(i % *nUsers)})
		if err != nil {
			return r, err
		}
		open.Add(1)
		go func() {
			first := true
			for {
				if _, err := stream.Recv(); err != nil {
					if first {
						open.Done()
					}
					return
				}
				if first {
					first = false
					open.Done()
				}
			}
		}()
	}
	open.Wait()
	time.Sleep(5 * time.Second)
	c1 := procstat.CPUSeconds(pid)
	time.Sleep(*idleDur)
	r.cpuN = procstat.CPUSeconds(pid) - c1
	r.rssN = procstat.RSSMiB(pid)
	return r, nil
}

type pgResult struct {
	name          string
	events        int
	with, without []float64
}

// outboxCost runs pgbench on each operation's ceiling that writes the
// feed's events (db/ceilings/<op>.sql) and on its twin without them
// (<op>_nofeed.sql), alternating round after round, on the database seed
// filled with the users the ceilings draw.
func outboxCost(ctx context.Context, dbURL string) ([]pgResult, error) {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	all, err := ceilings.All()
	if err != nil {
		return nil, err
	}
	byName := map[string]ceilings.Script{}
	for _, s := range all {
		byName[s.Name] = s
	}
	dir, err := os.MkdirTemp("", "userd-feedbench")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	var results []pgResult
	for _, op := range strings.Split(*pgOps, ",") {
		with, ok := byName[op]
		without, ok2 := byName[crud.NoFeed(op)]
		if !ok || !ok2 {
			return nil, fmt.Errorf("-ops: no db/ceilings/%s.sql and %s.sql pair", op, crud.NoFeed(op))
		}
		paths := map[bool]string{}
		for feed, s := range map[bool]ceilings.Script{true: with, false: without} {
			if paths[feed], err = crud.WriteScript(dir, s); err != nil {
				return nil, err
			}
		}
		events, err := eventsPerCall(ctx, conn, with)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", op, err)
		}
		res := pgResult{name: op, events: events}
		for r := range *rounds {
			for _, feed := range []bool{true, false} {
				tps, err := crud.Pgbench(dbURL, paths[feed], *pgClients, *pgDur, *nUsers)
				if err != nil {
					return nil, fmt.Errorf("pgbench %s: %w", op, err)
				}
				if feed {
					res.with = append(res.with, tps)
				} else {
					res.without = append(res.without, tps)
				}
				log.Printf("pgbench %s round %d feed=%v: %.0f tps", op, r+1, feed, tps)
			}
		}
		results = append(results, res)
	}
	return results, nil
}

// eventsPerCall runs the ceiling once (for seeded user 0) and returns the
// feed events it wrote.
func eventsPerCall(ctx context.Context, conn *pgx.Conn, s ceilings.Script) (int, error) {
	vars := map[string]string{"users": strconv.Itoa(*nUsers), "n": "0", "k": strconv.FormatInt(rand.Int64N(1e12)+1, 10), "client_id": "0"}
	var before, after int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM feed_events").Scan(&before); err != nil {
		return 0, err
	}
	for _, cmd := range s.SQL() {
		q, err := ceilings.Substitute(cmd, vars)
		if err != nil {
			return 0, err
		}
		if _, err := conn.Exec(ctx, q); err != nil {
			return 0, err
		}
	}
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM feed_events").Scan(&after); err != nil {
		return 0, err
	}
	return after - before, nil
}

func benchDatabase(ctx context.Context) (string, func(), error) {
	conn, err := pgx.Connect(ctx, *serverURL)
	if err != nil {
		return "", nil, fmt.Errorf("connect to -server: %w", err)
	}
	name := fmt.Sprintf("userd_feedbench_%d", os.Getpid())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", nil, fmt.Errorf("create bench database: %w", err)
	}
	u, _ := url.Parse(*serverURL)
	u.Path = "/" + name
	return u.String(), func() {
		_, _ = conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
		_ = conn.Close(context.Background())
	}, nil
}

// pct is the q-quantile of sorted xs.
func pct(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	i := int(q * float64(len(xs)-1))
	return xs[i]
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
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

// writeSection replaces the feed section of the file (between its markers)
// or appends it.
func writeSection(path, section string) error {
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	doc := string(b)
	block := beginMarker + "\n" + section + endMarker + "\n"
	if i := strings.Index(doc, beginMarker); i >= 0 {
		if j := strings.Index(doc[i:], endMarker); j >= 0 {
			doc = doc[:i] + block + doc[i+j+len(endMarker)+1:]
			return os.WriteFile(path, []byte(doc), 0o644)
		}
	}
	if doc != "" && !strings.HasSuffix(doc, "\n\n") {
		doc += "\n"
	}
	return os.WriteFile(path, []byte(doc+block), 0o644)
}
