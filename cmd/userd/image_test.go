package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/migrate"
	"github.com/userd/userd/internal/testdb"
)

// TestImage builds the container image with `make image` (buildah) and runs
// it the way a container runtime would, without one (podman cannot start
// containers on this project's machines): the image's root filesystem,
// its entrypoint and command, its user and its environment, chroot'ed, on
// an empty database. userd must migrate it, report ready and answer gRPC.
//
// buildah keeps its storage (vfs: plain directories, no mounts) in the
// test's temporary directory, so the test neither sees nor touches other
// images on the machine, runs in parallel with itself, and leaves nothing
// behind.
func TestImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the container image: not in -short (make test-fast)")
	}
	requireBuildah(t)
	t.Parallel()
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	b := buildah{root: filepath.Join(work, "storage"), runroot: filepath.Join(work, "run")}
	const (
		image   = "localhost/userd-image-test"
		version = "v0.0.0-image"
	)

	start := time.Now()
	mk := exec.Command("make", "-C", repo, "--no-print-directory", "image",
		"IMAGE="+image, "VERSION="+version, "IMAGE_BUILDER=buildah", "BUILDAH="+b.command(),
		"BIN="+filepath.Join(work, "bin"), "IMAGE_CONTEXT="+filepath.Join(work, "context"))
	// Not the variables of a make that may be running this test.
	mk.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "MAKEFLAGS=") || strings.HasPrefix(kv, "MFLAGS=") || strings.HasPrefix(kv, "MAKELEVEL=")
	})
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("make image: %v\n%s", err, out)
	}
	t.Cleanup(func() { b.run(t, "rmi", "--force", image+":"+version, image+":latest") })
	t.Logf("make image: %v", time.Since(start).Round(100*time.Millisecond))

	cfg := b.config(t, image+":"+version)
	checkImageConfig(t, cfg, version)

	// The root filesystem, as a runtime would lay it out for a container.
	ctr := strings.TrimSpace(b.run(t, "from", "--pull=never", image+":"+version))
	t.Cleanup(func() { b.run(t, "rm", ctr) })
	rootfs := strings.TrimSpace(b.run(t, "mount", ctr))
	checkRootfs(t, rootfs)
	account := lookupAccount(t, rootfs, cfg.User)
	// Runtimes provide /etc/hosts; userd resolves nothing else.
	if err := os.WriteFile(filepath.Join(rootfs, "etc", "hosts"), []byte("127.0.0.1 localhost\n::1 localhost\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	inImage := func(args []string, env ...string) *exec.Cmd {
		return &exec.Cmd{
			Path: args[0],
			Args: args,
			Env:  append(slices.Concat(cfg.Env, []string{"HOME=" + account.home}), env...),
			Dir:  cmp.Or(cfg.WorkingDir, "/"),
			SysProcAttr: &syscall.SysProcAttr{
				Chroot:     rootfs,
				Credential: &syscall.Credential{Uid: account.uid, Gid: account.gid, Groups: []uint32{}},
			},
		}
	}

	if out, err := inImage([]string{cfg.Entrypoint[0], "version"}).CombinedOutput(); err != nil || string(out) != "userd "+version+"\n" {
		t.Fatalf("userd version in the image: %q, %v", out, err)
	}

	dbURL := testdb.EmptyURL(t)
	pool := testdb.Connect(t, dbURL)
	mg, err := migrate.New(pool)
	if err != nil {
		t.Fatal(err)
	}
	defer mg.Close()
	ctx := context.Background()
	if v, err := mg.SchemaVersion(ctx); !errors.Is(err, migrate.ErrNotMigrated) {
		t.Fatalf("the new database is at schema version %d (%v), want one without schema", v, err)
	}

	ep := newEndpoints(t)
	start = time.Now()
	p := runProcess(t, inImage(slices.Concat(cfg.Entrypoint, cfg.Cmd),
		"DATABASE_URL="+dbURL,
		"USERD_GRPC_ADDR="+ep.GRPC, "USERD_HTTP_ADDR="+ep.HTTP,
		"USERD_WEBHOOK_ADDR="+ep.Webhook, "USERD_OPS_ADDR="+ep.Ops,
		"USERD_SERVICE_TOKENS=e2e="+e2eToken, "CLERK_WEBHOOK_SECRET="+e2eWebhookSecret,
		"USERD_SHUTDOWN_GRACE=5s",
	), ep)
	p.waitReady(t)
	t.Logf("from start to /readyz 200, migrating an empty database: %v", time.Since(start).Round(10*time.Millisecond))
	checkProcess(t, p.Pid(), rootfs, account)

	if cur, latest, err := mg.Versions(ctx); err != nil || cur != latest || latest == 0 {
		t.Errorf("after start-up the schema is at version %d of %d (%v), want migrated", cur, latest, err)
	}
	conn, err := grpc.NewClient(ep.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	health, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "userd.v1.UserService"})
	if err != nil || health.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("gRPC health of userd.v1.UserService: %v, %v; want SERVING", health.GetStatus(), err)
	}
	c, callCtx := client(t, ep.GRPC)
	ensured, err := c.EnsureUser(callCtx, &userdv1.EnsureUserRequest{ClerkUserId: "user_image", Email: "image@example.com"})
	if err != nil || !ensured.GetCreated() {
		t.Fatalf("EnsureUser: %v, %v\n%s", ensured, err, p.Logs())
	}
	got, err := c.GetUser(callCtx, &userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_Email{Email: "IMAGE@example.com"}})
	if err != nil || got.GetUser().GetClerkUserId() != "user_image" || got.GetUser().GetCredits() != 10 {
		t.Errorf("GetUser by email: %v, %v", got, err)
	}

	p.stop(t, syscall.SIGTERM)
	if strings.Contains(p.Logs(), e2eToken) {
		t.Error("the logs contain the service token")
	}
}

// requireBuildah lets TestImage run only where it can: as root with
// buildah installed. Under CI=true (where .ci/run installs buildah) it
// fails instead of skipping.
func requireBuildah(t *testing.T) {
	t.Helper()
	var missing string
	if _, err := exec.LookPath("buildah"); err != nil {
		missing = "buildah is not installed (apt-get install buildah)"
	} else if os.Geteuid() != 0 {
		missing = "it must run as root (chroot, and buildah's storage as root)"
	}
	if missing == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("the image test cannot run under CI=true: %s", missing)
	}
	t.Skipf("image test not run: %s; .ci/run installs buildah and runs it", missing)
}

// buildah runs buildah on storage of its own.
type buildah struct{ root, runroot string }

func (b buildah) command() string {
	return "buildah --root " + b.root + " --runroot " + b.runroot + " --storage-driver vfs"
}

func (b buildah) run(t *testing.T, args ...string) string {
	t.Helper()
	argv := strings.Fields(b.command())
	var stderr bytes.Buffer
	cmd := exec.Command(argv[0], append(argv[1:], args...)...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("buildah %s: %v\n%s", strings.Join(args, " "), err, stderr.Bytes())
	}
	return string(out)
}

// imageConfig is the part of an OCI image configuration a runtime uses.
type imageConfig struct {
	User         string
	Env          []string
	Entrypoint   []string
	Cmd          []string
	WorkingDir   string
	ExposedPorts map[string]struct{}
	Labels       map[string]string
}

func (b buildah) config(t *testing.T, image string) imageConfig {
	t.Helper()
	var inspected struct {
		OCIv1 struct {
			Config imageConfig `json:"config"`
		}
	}
	if err := json.Unmarshal([]byte(b.run(t, "inspect", "--type", "image", image)), &inspected); err != nil {
		t.Fatalf("buildah inspect %s: %v", image, err)
	}
	return inspected.OCIv1.Config
}

func checkImageConfig(t *testing.T, cfg imageConfig, version string) {
	t.Helper()
	if got, want := slices.Concat(cfg.Entrypoint, cfg.Cmd), []string{"/usr/local/bin/userd", "serve"}; !slices.Equal(got, want) {
		t.Fatalf("entrypoint and command %q, want %q", got, want)
	}
	ports := make([]string, 0, len(cfg.ExposedPorts))
	for p := range cfg.ExposedPorts {
		ports = append(ports, p)
	}
	slices.Sort(ports)
	if want := []string{"8080/tcp", "8081/tcp", "9090/tcp", "9091/tcp"}; !slices.Equal(ports, want) {
		t.Errorf("exposed ports %q, want %q", ports, want)
	}
	if !regexp.MustCompile(`^[1-9][0-9]*:[1-9][0-9]*$`).MatchString(cfg.User) {
		t.Errorf("user %q, want a numeric non-root uid:gid (Kubernetes' runAsNonRoot checks it)", cfg.User)
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		t.Fatal("no build information")
	}
	for label, want := range map[string]string{
		"org.opencontainers.image.title":   "userd",
		"org.opencontainers.image.version": version,
		"org.opencontainers.image.source":  "https://" + bi.Main.Path,
	} {
		if got := cfg.Labels[label]; got != want {
			t.Errorf("label %s = %q, want %q", label, got, want)
		}
	}
	if rev := cfg.Labels["org.opencontainers.image.revision"]; !regexp.MustCompile(`^[0-9a-f]{40}$`).MatchString(rev) {
		t.Errorf("label org.opencontainers.image.revision = %q, want a commit", rev)
	}
}

// checkRootfs: the image holds what userd needs, all of it root's and
// read-only to the service's account.
func checkRootfs(t *testing.T, rootfs string) {
	t.Helper()
	pem, err := os.ReadFile(filepath.Join(rootfs, "etc/ssl/certs/ca-certificates.crt"))
	if err != nil || !x509.NewCertPool().AppendCertsFromPEM(pem) {
		t.Errorf("the image has no usable CA certificates at /etc/ssl/certs/ca-certificates.crt (%v)", err)
	}
	if st, err := os.Stat(filepath.Join(rootfs, "tmp")); err != nil || st.Mode()&(fs.ModeSticky|fs.ModePerm) != fs.ModeSticky|0o777 {
		t.Errorf("/tmp in the image: %v, %v; want mode 1777", st, err)
	}
	err = filepath.WalkDir(rootfs, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(rootfs, path)
		if st := info.Sys().(*syscall.Stat_t); st.Uid != 0 || st.Gid != 0 {
			t.Errorf("/%s belongs to %d:%d, want root", rel, st.Uid, st.Gid)
		}
		if info.Mode().Perm()&0o022 != 0 && rel != "tmp" {
			t.Errorf("/%s is writable by others than root (%v)", rel, info.Mode())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

type account struct {
	uid, gid uint32
	home     string
}

// lookupAccount resolves the image's "uid:gid" user in its /etc/passwd and
// /etc/group, which must name it.
func lookupAccount(t *testing.T, rootfs, user string) account {
	t.Helper()
	uid, gid, _ := strings.Cut(user, ":")
	var a account
	passwd := readEntries(t, filepath.Join(rootfs, "etc/passwd"))
	for _, e := range passwd {
		if len(e) == 7 && e[2] == uid && e[3] == gid {
			u, _ := strconv.ParseUint(uid, 10, 32)
			g, _ := strconv.ParseUint(gid, 10, 32)
			a = account{uid: uint32(u), gid: uint32(g), home: e[5]}
		}
	}
	if a.uid == 0 {
		t.Fatalf("user %q is not a non-root account of the image's /etc/passwd: %q", user, passwd)
	}
	if !slices.ContainsFunc(readEntries(t, filepath.Join(rootfs, "etc/group")), func(e []string) bool { return len(e) == 4 && e[2] == gid }) {
		t.Errorf("group %s is not in the image's /etc/group", gid)
	}
	return a
}

func readEntries(t *testing.T, path string) [][]string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var entries [][]string
	for line := range strings.Lines(string(data)) {
		entries = append(entries, strings.Split(strings.TrimSuffix(line, "\n"), ":"))
	}
	return entries
}

// checkProcess: userd runs inside the root filesystem as the image's
// account, with no supplementary groups.
func checkProcess(t *testing.T, pid int, rootfs string, a account) {
	t.Helper()
	proc := filepath.Join("/proc", strconv.Itoa(pid))
	want, err := filepath.EvalSymlinks(rootfs)
	if err != nil {
		t.Fatal(err)
	}
	if root, err := os.Readlink(filepath.Join(proc, "root")); err != nil || root != want {
		t.Errorf("userd's root is %q (%v), want %s", root, err, want)
	}
	status, err := os.ReadFile(filepath.Join(proc, "status"))
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{
		"Uid":    strings.Repeat(fmt.Sprint(a.uid)+"\t", 3) + fmt.Sprint(a.uid),
		"Gid":    strings.Repeat(fmt.Sprint(a.gid)+"\t", 3) + fmt.Sprint(a.gid),
		"Groups": "",
	}
	for line := range strings.Lines(string(status)) {
		k, v, _ := strings.Cut(strings.TrimSuffix(line, "\n"), ":")
		if w, ok := ids[k]; ok && strings.TrimSpace(v) != w {
			t.Errorf("userd's %s: %q, want %q", k, strings.TrimSpace(v), w)
		}
	}
}
