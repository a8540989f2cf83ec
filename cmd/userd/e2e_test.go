package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
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
	"github.com/userd/userd/internal/pgembed"
	"github.com/userd/userd/internal/userdproc"
)

const e2eToken = "e2e-service-token-0123456789abcdef"

// userdBin is where buildUserd builds the binary under test, once per
// run of this package's tests (TestMain removes it).
var userdBin struct {
	dir  string
	once sync.Once
	path string
	err  error
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "userd-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	userdBin.dir = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// buildUserd returns the binary under test, with a stamped version, built
// on the first call of the run: every end-to-end test runs the same one.
// End-to-end tests are the slow tier: -short (make test-fast) skips them.
func buildUserd(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test of the userd binary: not in -short (make test-fast)")
	}
	userdBin.once.Do(func() {
		userdBin.path, userdBin.err = userdproc.Build(context.Background(), ".", userdBin.dir, "v0.0.0-e2e")
	})
	if userdBin.err != nil {
		t.Fatal(userdBin.err)
	}
	return userdBin.path
}

// userdProcess is a userd the test started; it is killed when the test
// ends if it still runs.
type userdProcess struct {
	*userdproc.Process
	ep endpoints
}

type endpoints = userdproc.Addrs

func newEndpoints(t *testing.T) endpoints {
	t.Helper()
	ep, err := userdproc.FreeAddrs()
	if err != nil {
		t.Fatal(err)
	}
	return ep
}

// startUserd runs the binary and waits until it is ready. databaseURL ""
// means the embedded PostgreSQL in dataDir. env entries (KEY=value) are
// added to the environment and override the defaults.
func startUserd(t *testing.T, bin, databaseURL, dataDir string, ep endpoints, env ...string) *userdProcess {
	t.Helper()
	p := launchUserd(t, bin, databaseURL, dataDir, ep, env...)
	p.waitReady(t)
	return p
}

// launchUserd runs the binary without waiting for it.
func launchUserd(t *testing.T, bin, databaseURL, dataDir string, ep endpoints, env ...string) *userdProcess {
	t.Helper()
	cmd := exec.Command(bin, "serve")
	cmd.Env = userdEnv(databaseURL, dataDir, ep, env...)
	return runProcess(t, cmd, ep)
}

// userdEnv is the environment of a userd serving on ep; env entries
// (KEY=value) override the defaults.
func userdEnv(databaseURL, dataDir string, ep endpoints, env ...string) []string {
	return slices.Concat(os.Environ(), ep.Env(), []string{
		"DATABASE_URL=" + databaseURL,
		"USERD_DATA_DIR=" + dataDir,
		"USERD_SERVICE_TOKENS=e2e=" + e2eToken, "CLERK_WEBHOOK_SECRET=" + e2eWebhookSecret,
		"USERD_LOG_FORMAT=json", "USERD_SHUTDOWN_GRACE=5s",
	}, env)
}

// runProcess starts cmd, a userd serving on ep, without waiting for it.
func runProcess(t *testing.T, cmd *exec.Cmd, ep endpoints) *userdProcess {
	t.Helper()
	p, err := userdproc.Run(cmd, ep)
	if err != nil {
		t.Fatal(err)
	}
	return track(t, p)
}

func track(t *testing.T, p *userdproc.Process) *userdProcess {
	t.Cleanup(func() {
		select {
		case <-p.Exited():
		default:
			p.Kill()
		}
	})
	return &userdProcess{Process: p, ep: p.Addrs}
}

// isReady reports whether /readyz answers 200.
func (p *userdProcess) isReady() bool { return p.Ready() }

// waitReady waits until /readyz answers 200.
func (p *userdProcess) waitReady(t *testing.T) {
	t.Helper()
	if err := p.WaitReady(context.Background(), 90*time.Second); err != nil {
		t.Fatalf("%v\n%s", err, p.Logs())
	}
}

// wait waits up to timeout for the process to exit and returns its exit
// status.
func (p *userdProcess) wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	err := p.Wait(timeout)
	if errors.Is(err, userdproc.ErrStillRunning) {
		t.Fatalf("%v:\n%s", err, p.Logs())
	}
	return err
}

// kill ends the process with SIGKILL, as a crash would.
func (p *userdProcess) kill(t *testing.T) {
	t.Helper()
	p.Kill()
}

// stop signals userd and waits for a clean exit.
func (p *userdProcess) stop(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.Stop(sig, 30*time.Second); err != nil {
		t.Fatalf("userd exited with %v after %v:\n%s", err, sig, p.Logs())
	}
}

// postgresFor lists the pids of processes whose command line names dir.
func postgresFor(t *testing.T, dir string) []int {
	t.Helper()
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if c := string(cmdline); strings.Contains(c, "postgres") && strings.Contains(c, dir) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func client(t *testing.T, addr string) (userdv1.UserServiceClient, context.Context) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+e2eToken)
	return userdv1.NewUserServiceClient(conn), ctx
}

// TestEmbeddedDatabaseEndToEnd runs the real binary with no DATABASE_URL:
// fresh data directory → serve → write → restart → the data is there →
// SIGTERM → no postgres left; a second userd on the data directory in use
// refuses to start and leaves the first one serving; then a crash (SIGKILL)
// followed by a new start adopts the orphaned server, saying so, and SIGINT
// leaves nothing behind either. As root (as on this project's machines) it
// also proves the server runs as the dedicated account.
func TestEmbeddedDatabaseEndToEnd(t *testing.T) {
	bin := buildUserd(t)
	out, err := exec.Command(bin, "version").Output()
	if err != nil || strings.TrimSpace(string(out)) != "userd v0.0.0-e2e" {
		t.Errorf("userd version = %q, %v", out, err)
	}

	base := t.TempDir()
	// The server's account must reach the data directory when we are root.
	if err := os.Chmod(filepath.Dir(base), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(base, "data")
	ep := newEndpoints(t)
	t.Cleanup(func() {
		for _, pid := range postgresFor(t, dataDir) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})

	first := startUserd(t, bin, "", dataDir, ep)
	c, ctx := client(t, ep.GRPC)
	if _, err := c.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: "user_embedded", Email: "e@example.com"}); err != nil {
		t.Fatalf("EnsureUser: %v\n%s", err, first.Logs())
	}
	if _, err := c.DeductCredits(ctx, &userdv1.DeductCreditsRequest{ClerkUserId: "user_embedded", Amount: 4, IdempotencyKey: "k"}); err != nil {
		t.Fatal(err)
	}
	pgPIDs := postgresFor(t, dataDir)
	if len(pgPIDs) == 0 {
		t.Fatal("no postgres process for the data directory while userd runs")
	} else if os.Geteuid() == 0 {
		acct, err := user.Lookup(pgembed.AccountName)
		if err != nil {
			t.Fatalf("no %s account: %v", pgembed.AccountName, err)
		}
		st, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pgPIDs[0])))
		if err != nil || strconv.Itoa(int(st.Sys().(*syscall.Stat_t).Uid)) != acct.Uid {
			t.Errorf("the embedded postgres does not run as %s (%v)", pgembed.AccountName, err)
		}
	}

	// One line says when userd serves, and where.
	if want := fmt.Sprintf(`"msg":"userd ready","grpc":"%s","rest":"%s","webhook":"%s","ops":"%s"`,
		ep.GRPC, ep.HTTP, ep.Webhook, ep.Ops); !strings.Contains(first.Logs(), want) {
		t.Errorf("the log lacks %s:\n%s", want, first.Logs())
	}

	// Commands run beside it (sync-clerk, erase-user, migrate) use its
	// database, found through the data directory; db-url prints it.
	side := []string{"DATABASE_URL=", "USERD_DATA_DIR=" + dataDir}
	if _, err := c.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: "user_erased", Email: "x@example.com"}); err != nil {
		t.Fatal(err)
	}
	if r := runUserd(t, bin, side, "erase-user", "--clerk-user-id", "user_erased", "--force"); r.code != 0 ||
		!strings.Contains(r.stdout, "erased user_erased") || !strings.Contains(r.stderr, "using its embedded PostgreSQL") {
		t.Errorf("erase-user beside the running userd: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	if _, err := c.GetUser(ctx, &userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_ClerkUserId{ClerkUserId: "user_erased"}}); status.Code(err) != codes.NotFound {
		t.Errorf("the user erased beside the running userd: %v, want NOT_FOUND", err)
	}
	if r := runUserd(t, bin, side, "migrate", "status"); r.code != 0 || !strings.Contains(r.stdout, "schema version") {
		t.Errorf("migrate status beside the running userd: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	r := runUserd(t, bin, side, "db-url")
	if r.code != 0 {
		t.Fatalf("db-url: exit %d: %s", r.code, r.stderr)
	}
	conn, err := pgx.Connect(ctx, strings.TrimSpace(r.stdout))
	if err != nil {
		t.Fatalf("connect to what db-url printed: %v", err)
	}
	var credits int64
	if err := conn.QueryRow(ctx, "SELECT a.credits FROM users u JOIN accounts a ON a.id = u.id WHERE u.clerk_user_id = 'user_embedded'").Scan(&credits); err != nil || credits != 6 {
		t.Errorf("user_embedded through db-url: %d credits, %v; want 6", credits, err)
	}
	_ = conn.Close(ctx)

	// A second userd on the same data directory (a second `make run`)
	// refuses to start, saying why, and leaves the first one and its
	// PostgreSQL alone: it finds the data directory in use before it binds
	// a port, so on the same addresses as on others it says so.
	for _, rivalCase := range []struct {
		ep   endpoints
		want string
	}{
		{ep, fmt.Sprintf("is used by another userd (pid %d)", first.Pid())},
		{newEndpoints(t), fmt.Sprintf("is used by another userd (pid %d)", first.Pid())},
	} {
		rival := launchUserd(t, bin, "", dataDir, rivalCase.ep)
		if err := rival.wait(t, 30*time.Second); err == nil {
			t.Errorf("a second userd on the data directory in use exited 0:\n%s", rival.Logs())
		}
		if !strings.Contains(rival.Logs(), rivalCase.want) {
			t.Errorf("the second userd's output lacks %q:\n%s", rivalCase.want, rival.Logs())
		}
	}
	if !first.isReady() {
		t.Errorf("the first userd is not ready after the second one's attempt:\n%s", first.Logs())
	}
	if _, err := c.GetUser(ctx, &userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_ClerkUserId{ClerkUserId: "user_embedded"}}); err != nil {
		t.Errorf("the first userd does not serve after the second one's attempt: %v", err)
	}
	if now := postgresFor(t, dataDir); fmt.Sprint(now) != fmt.Sprint(pgPIDs) {
		t.Errorf("postgres processes %v became %v after the second userd's attempt", pgPIDs, now)
	}
	first.stop(t, syscall.SIGTERM)
	if pids := postgresFor(t, dataDir); len(pids) != 0 {
		t.Errorf("postgres processes %v left after SIGTERM", pids)
	}
	if strings.Contains(first.Logs(), e2eToken) {
		t.Error("the logs contain the service token")
	}
	if r := runUserd(t, bin, side, "db-url"); r.code != 1 || !strings.Contains(r.stderr, "no userd runs on the data directory") {
		t.Errorf("db-url without a userd: exit %d, %s", r.code, r.stderr)
	}

	second := startUserd(t, bin, "", dataDir, ep)
	got, err := c.GetUser(ctx, &userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_ClerkUserId{ClerkUserId: "user_embedded"}})
	if err != nil || got.GetUser().GetCredits() != 6 || got.GetUser().GetEmail() != "e@example.com" {
		t.Fatalf("after a restart: %v, %v", got, err)
	}
	// A crash: userd dies without stopping its database.
	second.kill(t)
	orphaned := len(postgresFor(t, dataDir)) > 0
	if !orphaned {
		t.Log("postgres went down with userd")
	}

	third := startUserd(t, bin, "", dataDir, ep)
	if _, err := c.GetUser(ctx, &userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_ClerkUserId{ClerkUserId: "user_embedded"}}); err != nil {
		t.Fatalf("after a crash and restart: %v\n%s", err, third.Logs())
	}
	if orphaned && !strings.Contains(third.Logs(), "adopted the embedded PostgreSQL left running") {
		t.Errorf("the restart after the crash does not say it adopted the orphaned PostgreSQL:\n%s", third.Logs())
	}
	third.stop(t, syscall.SIGINT)
	if pids := postgresFor(t, dataDir); len(pids) != 0 {
		t.Errorf("postgres processes %v left after a crash, a restart and SIGINT", pids)
	}
}
