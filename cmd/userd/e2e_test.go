package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
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
)

const e2eToken = "e2e-service-token-0123456789abcdef"

// buildUserd compiles the binary under test with a stamped version.
func buildUserd(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "userd")
	out, err := exec.Command("go", "build", "-ldflags", "-X main.version=v0.0.0-e2e", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// syncBuffer collects a process's output safely.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type userdProcess struct {
	cmd  *exec.Cmd
	ep   endpoints
	logs *syncBuffer
	// exited is closed once the process has exited; err is then its
	// exit status.
	exited chan struct{}
	err    error
}

type endpoints struct{ grpc, http, webhook, ops string }

func newEndpoints(t *testing.T) endpoints {
	t.Helper()
	return endpoints{freePort(t), freePort(t), freePort(t), freePort(t)}
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

// launchUserd runs the binary without waiting for it; it is killed when
// the test ends if it still runs.
func launchUserd(t *testing.T, bin, databaseURL, dataDir string, ep endpoints, env ...string) *userdProcess {
	t.Helper()
	cmd := exec.Command(bin, "serve")
	cmd.Env = append(os.Environ(),
		"DATABASE_URL="+databaseURL,
		"USERD_DATA_DIR="+dataDir,
		"USERD_GRPC_ADDR="+ep.grpc, "USERD_HTTP_ADDR="+ep.http,
		"USERD_WEBHOOK_ADDR="+ep.webhook, "USERD_OPS_ADDR="+ep.ops,
		"USERD_SERVICE_TOKENS=e2e="+e2eToken, "CLERK_WEBHOOK_SECRET="+e2eWebhookSecret,
		"USERD_LOG_FORMAT=json", "USERD_SHUTDOWN_GRACE=5s",
	)
	cmd.Env = append(cmd.Env, env...)
	return runProcess(t, cmd, ep)
}

// runProcess starts cmd, a userd serving on ep, without waiting for it; it
// is killed when the test ends if it still runs.
func runProcess(t *testing.T, cmd *exec.Cmd, ep endpoints) *userdProcess {
	t.Helper()
	p := &userdProcess{cmd: cmd, ep: ep, logs: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

// isReady reports whether /readyz answers 200.
func (p *userdProcess) isReady() bool {
	resp, err := http.Get("http://" + p.ep.ops + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// waitReady waits until /readyz answers 200.
func (p *userdProcess) waitReady(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for !p.isReady() {
		select {
		case <-p.exited:
			t.Fatalf("userd exited before it was ready: %v\n%s", p.err, p.logs)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("userd not ready after 90s:\n%s", p.logs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// wait waits up to timeout for the process to exit and returns its exit
// status.
func (p *userdProcess) wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case <-p.exited:
		return p.err
	case <-time.After(timeout):
		t.Fatalf("userd still running after %s:\n%s", timeout, p.logs)
		return nil
	}
}

// kill ends the process with SIGKILL, as a crash would.
func (p *userdProcess) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-p.exited
}

// stop signals userd and waits for a clean exit.
func (p *userdProcess) stop(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	if err := p.wait(t, 30*time.Second); err != nil {
		t.Fatalf("userd exited with %v after %v:\n%s", err, sig, p.logs)
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
	c, ctx := client(t, ep.grpc)
	if _, err := c.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: "user_embedded", Email: "e@example.com"}); err != nil {
		t.Fatalf("EnsureUser: %v\n%s", err, first.logs)
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
		ep.grpc, ep.http, ep.webhook, ep.ops); !strings.Contains(first.logs.String(), want) {
		t.Errorf("the log lacks %s:\n%s", want, first.logs)
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
	if err := conn.QueryRow(ctx, "SELECT credits FROM users WHERE clerk_user_id = 'user_embedded'").Scan(&credits); err != nil || credits != 6 {
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
		{ep, fmt.Sprintf("is used by another userd (pid %d)", first.cmd.Process.Pid)},
		{newEndpoints(t), fmt.Sprintf("is used by another userd (pid %d)", first.cmd.Process.Pid)},
	} {
		rival := launchUserd(t, bin, "", dataDir, rivalCase.ep)
		if err := rival.wait(t, 30*time.Second); err == nil {
			t.Errorf("a second userd on the data directory in use exited 0:\n%s", rival.logs)
		}
		if !strings.Contains(rival.logs.String(), rivalCase.want) {
			t.Errorf("the second userd's output lacks %q:\n%s", rivalCase.want, rival.logs)
		}
	}
	if !first.isReady() {
		t.Errorf("the first userd is not ready after the second one's attempt:\n%s", first.logs)
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
	if strings.Contains(first.logs.String(), e2eToken) {
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
		t.Fatalf("after a crash and restart: %v\n%s", err, third.logs)
	}
	if orphaned && !strings.Contains(third.logs.String(), "adopted the embedded PostgreSQL left running") {
		t.Errorf("the restart after the crash does not say it adopted the orphaned PostgreSQL:\n%s", third.logs)
	}
	third.stop(t, syscall.SIGINT)
	if pids := postgresFor(t, dataDir); len(pids) != 0 {
		t.Errorf("postgres processes %v left after a crash, a restart and SIGINT", pids)
	}
}
