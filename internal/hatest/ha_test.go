//go:build hatest

package hatest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	userdv1 "github.com/userd/userd/gen/userd/v1"
)

const (
	token       = "userd-ha-failover-test-token-0123456789"
	replicas    = 2
	workers     = 8
	nUsers      = 20
	initCredits = 1000
)

// multiHostURL names both nodes; pgx keeps the first that accepts writes.
func multiHostURL() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/%s?sslmode=disable&target_session_attrs=read-write&connect_timeout=2",
		node1Port, node2Port, dbName)
}

// userdBinary is USERD_BIN (make ha-test builds bin/userd), or one built here.
func userdBinary(t *testing.T) string {
	t.Helper()
	if b := os.Getenv("USERD_BIN"); b != "" {
		return b
	}
	out := filepath.Join(t.TempDir(), "userd")
	cmd := exec.Command("go", "build", "-o", out, "github.com/userd/userd/cmd/userd")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build userd: %v\n%s", err, b)
	}
	return out
}

type replica struct {
	cmd  *exec.Cmd
	log  string
	conn *grpc.ClientConn
	api  userdv1.UserServiceClient
}

func startReplicas(t *testing.T, bin, dir string) []*replica {
	t.Helper()
	var rs []*replica
	for i := range replicas {
		logPath := filepath.Join(dir, fmt.Sprintf("userd%d.log", i))
		log, err := os.Create(logPath)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "serve")
		cmd.Env = append(os.Environ(),
			"DATABASE_URL="+multiHostURL(),
			"USERD_GRPC_ADDR=127.0.0.1:"+strconv.Itoa(grpcPort0+i),
			"USERD_OPS_ADDR=127.0.0.1:"+strconv.Itoa(opsPort0+i),
			"USERD_HTTP_ADDR=off", "USERD_WEBHOOK_ADDR=off",
			"USERD_SERVICE_TOKENS=ha="+token,
			"USERD_INITIAL_CREDITS="+strconv.Itoa(initCredits),
			"USERD_DB_MAX_CONNS=8",
			"USERD_LOG_FORMAT=json",
		)
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		r := &replica{cmd: cmd, log: logPath}
		t.Cleanup(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { _ = cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				_ = cmd.Process.Kill()
			}
			_ = log.Close()
		})
		conn, err := grpc.NewClient("127.0.0.1:"+strconv.Itoa(grpcPort0+i), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		r.conn, r.api = conn, userdv1.NewUserServiceClient(conn)
		rs = append(rs, r)
	}
	for i := range rs {
		ready := fmt.Sprintf("http://127.0.0.1:%d/readyz", opsPort0+i)
		deadline := time.Now().Add(60 * time.Second)
		for {
			resp, err := http.Get(ready)
			if err == nil {
				_ = resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			if time.Now().After(deadline) {
				b, _ := os.ReadFile(rs[i].log)
				t.Fatalf("userd %d not ready: %v\n%s", i, err, b)
			}
			time.Sleep(100 * time.Millisecond) // polling /readyz
		}
	}
	return rs
}

func authed(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

// ack is an acknowledged credit change.
type ack struct {
	user, key string
	delta     int64
	txID      int64
}

// attempt is one failed try of a call.
type attempt struct {
	at   time.Time
	code codes.Code
}

// workload is the bank: workers deducting and granting with idempotency
// keys, each call retried with the same key until it gets an answer.
type workload struct {
	rs    []*replica
	users []string

	mu          sync.Mutex
	acks        []ack
	rejected    map[string]bool // keys answered "insufficient credits"
	unavailable []attempt
	lastAck     time.Time
	acksAt      []time.Time
	other       []error
}

func (w *workload) call(ctx context.Context, worker, n int) {
	user := w.users[rand.IntN(len(w.users))]
	key := fmt.Sprintf("w%d-%d", worker, n)
	amount := int64(1 + rand.IntN(5))
	grant := rand.IntN(2) == 0
	for try := 0; ; try++ {
		r := w.rs[(worker+try)%len(w.rs)]
		cctx, cancel := context.WithTimeout(authed(ctx), 15*time.Second)
		var (
			tx  *userdv1.CreditTransaction
			err error
		)
		if grant {
			var resp *userdv1.GrantCreditsResponse
			resp, err = r.api.GrantCredits(cctx, &userdv1.GrantCreditsRequest{ClerkUserId: user, Amount: amount, IdempotencyKey: key, Reason: "ha grant"})
			tx = resp.GetTransaction()
		} else {
			var resp *userdv1.DeductCreditsResponse
			resp, err = r.api.DeductCredits(cctx, &userdv1.DeductCreditsRequest{ClerkUserId: user, Amount: amount, IdempotencyKey: key, Reason: "ha deduct"})
			tx = resp.GetTransaction()
		}
		cancel()
		now := time.Now()
		switch code := status.Code(err); code {
		case codes.OK:
			w.mu.Lock()
			w.acks = append(w.acks, ack{user: user, key: key, delta: tx.GetDelta(), txID: tx.GetId()})
			w.acksAt = append(w.acksAt, now)
			w.lastAck = now
			w.mu.Unlock()
			return
		case codes.FailedPrecondition:
			w.mu.Lock()
			w.rejected[key] = true
			w.mu.Unlock()
			return
		case codes.Unavailable, codes.DeadlineExceeded:
			w.mu.Lock()
			w.unavailable = append(w.unavailable, attempt{at: now, code: code})
			w.mu.Unlock()
			if ctx.Err() != nil && try > 200 {
				return
			}
			time.Sleep(50 * time.Millisecond) // back off before retrying with the same key
		default:
			w.mu.Lock()
			w.other = append(w.other, fmt.Errorf("%s %s: %w", user, key, err))
			w.mu.Unlock()
			return
		}
	}
}

// run drives the workers until stop is closed; every call in flight then
// still gets its answer (retried as long as it takes).
func (w *workload) run(stop <-chan struct{}) *sync.WaitGroup {
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				w.call(context.Background(), i, n)
			}
		}()
	}
	return &wg
}

func (w *workload) snapshot() (acks int, unavailable int, last time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acks), len(w.unavailable), w.lastAck
}

// consumer watches every event from a cursor, reconnecting (to the other
// replica) with its last cursor whenever the stream ends.
type consumer struct {
	mu         sync.Mutex
	ids        []int64
	reconnects int
	failures   []error
	cursor     string
}

func (c *consumer) run(ctx context.Context, rs []*replica, cursor string) {
	c.cursor = cursor
	for i := 0; ctx.Err() == nil; i++ {
		stream, err := rs[i%len(rs)].api.WatchUserEvents(authed(ctx), &userdv1.WatchUserEventsRequest{Cursor: c.cursor})
		for err == nil {
			var resp *userdv1.WatchUserEventsResponse
			if resp, err = stream.Recv(); err != nil {
				break
			}
			c.mu.Lock()
			if ev := resp.GetEvent(); ev != nil {
				c.ids = append(c.ids, ev.GetId())
				c.cursor = ev.GetCursor()
			} else if hb := resp.GetHeartbeat(); hb != nil {
				c.cursor = hb.GetCursor()
			}
			c.mu.Unlock()
		}
		if ctx.Err() != nil {
			return
		}
		c.mu.Lock()
		c.reconnects++
		if code := status.Code(err); code != codes.Unavailable && code != codes.DeadlineExceeded {
			// A cursor the feed no longer accepts (expired, ahead of it)
			// is exactly what must not happen across a failover.
			c.failures = append(c.failures, err)
		}
		c.mu.Unlock()
		time.Sleep(100 * time.Millisecond) // reconnect pause
	}
}

func (c *consumer) seen() []int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]int64(nil), c.ids...)
}

// firstCursor opens a watch from now and returns its first heartbeat's cursor.
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

// outcome is what one fault cost.
type outcome struct {
	name           string
	fault, settled time.Time     // settled: a primary and a standby again, and writes flowing
	lastUnav       time.Duration // after the fault
	back           time.Duration // the first acknowledgement after the last UNAVAILABLE, after the fault
	longestGap     time.Duration // the longest time without any acknowledgement
	unavailable    int
	newPrimary     string
}

// TestFailoverLosesNothingAcknowledged is issue 25's acceptance test: under
// the bank workload, (a) kill -9 of the primary's postmaster and (b) a
// planned switchover each lose no acknowledged call, keep the books
// balanced and the consumer's history equal to the committed history, and
// answer UNAVAILABLE only while the formation switches.
func TestFailoverLosesNothingAcknowledged(t *testing.T) {
	started := time.Now()
	f := newFormation(t)
	f.up()
	t.Logf("formation up in %s; monitor settings: %s", time.Since(started).Round(time.Second), f.settings(context.Background()))
	bin := userdBinary(t)
	rs := startReplicas(t, bin, f.dir)

	w := &workload{rs: rs, rejected: map[string]bool{}}
	for i := range nUsers {
		id := fmt.Sprintf("user_ha_%02d", i)
		if _, err := rs[0].api.EnsureUser(authed(context.Background()), &userdv1.EnsureUserRequest{ClerkUserId: id}); err != nil {
			t.Fatal(err)
		}
		w.users = append(w.users, id)
	}
	cursor := firstCursor(t, rs[1])
	cctx, stopConsumer := context.WithCancel(context.Background())
	c := &consumer{}
	consumerDone := make(chan struct{})
	go func() { defer close(consumerDone); c.run(cctx, rs, cursor) }()
	defer func() { stopConsumer(); <-consumerDone }()

	stop := make(chan struct{})
	wg := w.run(stop)
	stopped := false
	defer func() {
		if !stopped {
			close(stop)
			wg.Wait()
		}
	}()
	waitAcks := func(n int, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			if a, _, _ := w.snapshot(); a >= n {
				return
			}
			if time.Now().After(deadline) {
				f.dumpLogs()
				t.Fatalf("the workload did not reach %d acknowledged calls within %s", n, within)
			}
			time.Sleep(50 * time.Millisecond) // polling the workload's progress
		}
	}
	waitAcks(300, 60*time.Second)
	if _, u, _ := w.snapshot(); u != 0 {
		t.Fatalf("%d calls were UNAVAILABLE before any fault", u)
	}

	// measure waits until writes flow again after a fault and the
	// formation is back to a primary and a synchronous standby.
	measure := func(name, oldPrimary string, fault time.Time, ackedBefore int) outcome {
		t.Helper()
		st := f.waitFor(name+": the other node primary, with a synchronous standby", 3*time.Minute, func(st []nodeState) bool {
			p, ok := primaryOf(st)
			return ok && p.Name != oldPrimary && healthy(st)
		}, nil)
		p, _ := primaryOf(st)
		a, _, _ := w.snapshot()
		waitAcks(a+100, 60*time.Second)
		o := outcome{name: name, fault: fault, settled: time.Now(), newPrimary: p.Name}
		w.mu.Lock()
		defer w.mu.Unlock()
		for _, u := range w.unavailable {
			if u.at.After(fault) && u.at.Before(o.settled) {
				o.unavailable++
				o.lastUnav = max(o.lastUnav, u.at.Sub(fault))
			}
		}
		prev := fault
		for _, at := range w.acksAt[ackedBefore:] {
			if at.Before(fault) {
				continue
			}
			o.longestGap = max(o.longestGap, at.Sub(prev))
			prev = at
			if o.back == 0 && at.Sub(fault) > o.lastUnav {
				o.back = at.Sub(fault)
			}
		}
		return o
	}
	var outcomes []outcome
	// xid reads the primary's next transaction id and timeline: the new
	// primary must continue the old one's sequence (the standby replayed
	// it), or cursors would point past ids it gives out again.
	xid := func() (next int64, timeline int32) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, multiHostURL())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		if err := c.QueryRow(ctx, "SELECT pg_current_xact_id()::text::bigint, (SELECT timeline_id FROM pg_control_checkpoint())").Scan(&next, &timeline); err != nil {
			t.Fatal(err)
		}
		return next, timeline
	}
	checkXids := func(name string, before int64, tlBefore int32) {
		t.Helper()
		after, tl := xid()
		if after <= before {
			t.Errorf("%s: the new primary's transaction ids restart at %d, at or below the old primary's %d", name, after, before)
		}
		t.Logf("%s: transaction id %d before, %d after; checkpoint timeline %d before, %d after", name, before, after, tlBefore, tl)
	}

	// (a) kill -9 of the primary's postmaster.
	st, err := f.states(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	old, _ := primaryOf(st)
	pid, err := f.postmasterPID(old.Name)
	if err != nil {
		t.Fatal(err)
	}
	xidBefore, tlBefore := xid()
	before, _, _ := w.snapshot()
	fault := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	o := measure("kill -9 of the primary's postmaster ("+old.Name+")", old.Name, fault, before)
	outcomes = append(outcomes, o)
	checkXids("kill -9", xidBefore, tlBefore)

	// (b) a planned switchover.
	st, _ = f.states(context.Background())
	old, _ = primaryOf(st)
	xidBefore, tlBefore = xid()
	before, _, _ = w.snapshot()
	fault = time.Now()
	if out, err := f.run("perform", "switchover", "--pgdata", f.pgdata("monitor"), "--formation", "default"); err != nil {
		f.dumpLogs()
		t.Fatalf("pg_autoctl perform switchover: %v\n%s", err, out)
	}
	o = measure("planned switchover (pg_autoctl perform switchover, from "+old.Name+")", old.Name, fault, before)
	outcomes = append(outcomes, o)
	checkXids("switchover", xidBefore, tlBefore)

	close(stop)
	wg.Wait()
	stopped = true

	// The committed history, read from the primary through the same
	// multi-host URL userd uses.
	ctx := context.Background()
	db, err := pgx.Connect(ctx, multiHostURL())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)

	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.other) > 0 {
		t.Errorf("%d calls failed with neither success, insufficient credits nor UNAVAILABLE; first: %v", len(w.other), w.other[0])
	}

	// 0 acknowledged calls lost; every acknowledged key present exactly once.
	type row struct {
		user  string
		delta int64
		id    int64
	}
	ledger := map[string][]row{}
	rows, err := db.Query(ctx, `SELECT u.clerk_user_id, t.idempotency_key, t.delta, t.id
		FROM credit_transactions t JOIN users u ON u.id = t.user_id WHERE t.idempotency_key IS NOT NULL`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var r row
		var key string
		if err := rows.Scan(&r.user, &key, &r.delta, &r.id); err != nil {
			t.Fatal(err)
		}
		ledger[r.user+"/"+key] = append(ledger[r.user+"/"+key], r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	lost := 0
	acked := map[string]bool{}
	for _, a := range w.acks {
		acked[a.user+"/"+a.key] = true
		got := ledger[a.user+"/"+a.key]
		if len(got) != 1 || got[0].delta != a.delta || got[0].id != a.txID {
			lost++
			if lost <= 5 {
				t.Errorf("acknowledged %s/%s (delta %d, entry %d): ledger has %+v", a.user, a.key, a.delta, a.txID, got)
			}
		}
	}
	for k := range ledger {
		if !acked[k] {
			t.Errorf("ledger entry %s was never acknowledged (every call was retried until answered)", k)
		}
	}
	// The books: balance == sum(ledger) for every account.
	var unbalanced int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM accounts a
		WHERE a.credits <> (SELECT coalesce(sum(t.delta), 0) FROM credit_transactions t WHERE t.user_id = a.id)`).Scan(&unbalanced); err != nil {
		t.Fatal(err)
	}
	if unbalanced != 0 {
		t.Errorf("%d users' balance differs from the sum of their ledger", unbalanced)
	}

	// The consumer's history equals the committed history: every event
	// after its first cursor once, in feed order (duplicates only as
	// at-least-once redelivery after a reconnect).
	var committed []int64
	rows, err = db.Query(ctx, `SELECT id FROM feed_events ORDER BY order_xid, id`)
	if err != nil {
		t.Fatal(err)
	}
	all, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	w.mu.Unlock()
	firstSeen := map[int64]bool{}
	deadline := time.Now().Add(60 * time.Second)
	var seen []int64
	for {
		seen = c.seen()
		for _, id := range seen {
			firstSeen[id] = true
		}
		if len(seen) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the consumer saw no event")
		}
		time.Sleep(100 * time.Millisecond) // waiting for the consumer
	}
	// Committed history from the consumer's first event on (events before
	// its first cursor — the users' creation — are not its to see).
	start := len(all)
	for i, id := range all {
		if id == seen[0] {
			start = i
			break
		}
	}
	committed = all[start:]
	for {
		seen = c.seen()
		set := map[int64]bool{}
		for _, id := range seen {
			set[id] = true
		}
		missing := 0
		for _, id := range committed {
			if !set[id] {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("the consumer is missing %d of %d committed events", missing, len(committed))
			break
		}
		time.Sleep(100 * time.Millisecond) // waiting for the consumer to catch up
	}
	w.mu.Lock()
	var deduped []int64
	dup := 0
	once := map[int64]bool{}
	for _, id := range seen {
		if once[id] {
			dup++
			continue
		}
		once[id] = true
		deduped = append(deduped, id)
	}
	if len(deduped) != len(committed) {
		t.Errorf("the consumer has %d distinct events, the database %d committed ones after its cursor", len(deduped), len(committed))
	}
	for i := range min(len(deduped), len(committed)) {
		if deduped[i] != committed[i] {
			t.Errorf("consumer history differs from the committed history at %d: event %d, committed %d", i, deduped[i], committed[i])
			break
		}
	}
	c.mu.Lock()
	if len(c.failures) > 0 {
		t.Errorf("the consumer's watch failed other than UNAVAILABLE: %v", c.failures)
	}
	reconnects := c.reconnects
	c.mu.Unlock()

	// UNAVAILABLE only during a switch: each UNAVAILABLE falls between a
	// fault and the moment the formation had a primary and a synchronous
	// standby again with writes flowing — none before the first fault,
	// between the two, or after the second settled.
	for _, u := range w.unavailable {
		in := false
		for _, o := range outcomes {
			if !u.at.Before(o.fault) && !u.at.After(o.settled) {
				in = true
			}
		}
		if !in {
			t.Errorf("UNAVAILABLE at %s outside any switch", u.at.Format(time.RFC3339Nano))
		}
	}

	t.Logf("workload: %d acknowledged calls (%d lost), %d insufficient-credits answers, %d UNAVAILABLE answers retried with their key; consumer: %d events, %d redelivered, %d reconnects",
		len(w.acks), lost, len(w.rejected), len(w.unavailable), len(deduped), dup, reconnects)
	for _, o := range outcomes {
		t.Logf("%s -> new primary %s: %d UNAVAILABLE answers, the last %.2fs after the fault; every call served again %.2fs after it; longest time without any acknowledged write %.2fs",
			o.name, o.newPrimary, o.unavailable, o.lastUnav.Seconds(), o.back.Seconds(), o.longestGap.Seconds())
	}
	t.Logf("total %s", time.Since(started).Round(time.Second))
}
