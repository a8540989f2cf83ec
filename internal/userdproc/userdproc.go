// Package userdproc builds the userd binary and runs it as a child process:
// on free loopback ports, ready once its /readyz answers 200, its output
// collected, stopped with a signal and waited for, killed when it does not
// stop in time. The end-to-end tests of cmd/userd and the benchmark
// (cmd/userd-bench) start userd through it, so that all of them start,
// probe and stop it the same way.
package userdproc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/userd/userd/internal/loopback"
)

// Build compiles the userd command in pkgDir (a directory of the module,
// e.g. "." from cmd/userd, or "./cmd/userd" from the module root) into dir
// with main.version stamped to version, and returns the binary's path.
func Build(ctx context.Context, pkgDir, dir, version string) (string, error) {
	bin := filepath.Join(dir, "userd")
	cmd := exec.CommandContext(ctx, "go", "build", "-ldflags", "-X main.version="+version, "-o", bin, pkgDir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkgDir, err, out)
	}
	return bin, nil
}

// BuildCommit compiles the userd command of another commit of the
// repository in repoDir (e.g. the previous release, for a rollout test)
// into dir, from a copy of that commit's tree (git archive), with
// main.version stamped to the commit, and returns the binary's path.
func BuildCommit(ctx context.Context, repoDir, commit, dir string) (string, error) {
	src, err := os.MkdirTemp("", "userd-src-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(src)
	archive := exec.CommandContext(ctx, "git", "-C", repoDir, "archive", "--format=tar", commit)
	untar := exec.CommandContext(ctx, "tar", "-x", "-C", src)
	var errOut bytes.Buffer
	archive.Stderr, untar.Stderr = &errOut, &errOut
	if untar.Stdin, err = archive.StdoutPipe(); err != nil {
		return "", err
	}
	if err := untar.Start(); err != nil {
		return "", fmt.Errorf("tar: %w", err)
	}
	if err := archive.Run(); err != nil {
		_ = untar.Wait()
		return "", fmt.Errorf("git archive %s: %w\n%s", commit, err, errOut.String())
	}
	if err := untar.Wait(); err != nil {
		return "", fmt.Errorf("extract %s: %w\n%s", commit, err, errOut.String())
	}
	bin := filepath.Join(dir, "userd-"+commit)
	// -trimpath: the build cache serves the packages unchanged since,
	// whatever the temporary directory.
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-X main.version="+commit, "-o", bin, "./cmd/userd")
	cmd.Dir = src
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", commit, err, out)
	}
	return bin, nil
}

// Addrs are the four listeners of userd serve; "off" turns one off.
type Addrs struct{ GRPC, HTTP, Webhook, Ops string }

// Env is the listeners' settings, as environment entries (KEY=value).
func (a Addrs) Env() []string {
	return []string{"USERD_GRPC_ADDR=" + a.GRPC, "USERD_HTTP_ADDR=" + a.HTTP, "USERD_WEBHOOK_ADDR=" + a.Webhook, "USERD_OPS_ADDR=" + a.Ops}
}

// FreeAddrs returns four distinct loopback addresses whose ports were free
// just now.
func FreeAddrs() (Addrs, error) {
	var a Addrs
	var held []net.Listener
	defer func() {
		for _, ln := range held {
			ln.Close()
		}
	}()
	for _, p := range []*string{&a.GRPC, &a.HTTP, &a.Webhook, &a.Ops} {
		ln, err := listenFree()
		if err != nil {
			return Addrs{}, err
		}
		held = append(held, ln) // held until all four are chosen: distinct
		*p = ln.Addr().String()
	}
	return a, nil
}

// FreePort returns a loopback address with a port that was free just now,
// below 32768: the kernel hands out higher ones to outgoing connections
// (a load test makes many), which could take it before userd binds it.
func FreePort() (string, error) {
	ln, err := listenFree()
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func listenFree() (net.Listener, error) { return loopback.Listen() }

// Config is one userd process to run.
type Config struct {
	// Bin is the userd binary.
	Bin string
	// Args default to "serve".
	Args []string
	// Addrs are the listeners (USERD_*_ADDR); the zero value picks free
	// ports.
	Addrs Addrs
	// Env entries (KEY=value) are added to this process's environment and
	// the listener addresses, and override both.
	Env []string
	// Stdout and Stderr receive the process's output; nil collects it in
	// Logs. A load test's access log would fill memory there: it passes
	// io.Discard.
	Stdout, Stderr io.Writer
}

// Process is a running (or exited) userd.
type Process struct {
	Cmd   *exec.Cmd
	Addrs Addrs

	logs   syncBuffer
	exited chan struct{}
	err    error // the exit status, once exited is closed
}

// Launch starts userd without waiting for it to be ready.
func Launch(cfg Config) (*Process, error) {
	if cfg.Addrs == (Addrs{}) {
		var err error
		if cfg.Addrs, err = FreeAddrs(); err != nil {
			return nil, err
		}
	}
	args := cfg.Args
	if len(args) == 0 {
		args = []string{"serve"}
	}
	cmd := exec.Command(cfg.Bin, args...)
	cmd.Env = slices.Concat(os.Environ(), cfg.Addrs.Env(), cfg.Env)
	cmd.Stdout, cmd.Stderr = cfg.Stdout, cfg.Stderr
	return Run(cmd, cfg.Addrs)
}

// Run starts cmd, a userd serve prepared by the caller (e.g. in a chroot),
// listening on addrs, without waiting for it to be ready. Its stdout and
// stderr, where cmd leaves them nil, are collected in Logs.
func Run(cmd *exec.Cmd, addrs Addrs) (*Process, error) {
	p := &Process{Cmd: cmd, Addrs: addrs, exited: make(chan struct{})}
	if cmd.Stdout == nil {
		cmd.Stdout = &p.logs
	}
	if cmd.Stderr == nil {
		cmd.Stderr = &p.logs
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// ErrExited says that userd exited before it was ready (a port it was
// given may have been taken meanwhile: starting it again on others may
// work).
var ErrExited = errors.New("userd exited before it was ready")

// Start launches userd and waits until it is ready; a process that is not
// ready in time is killed.
func Start(ctx context.Context, cfg Config, timeout time.Duration) (*Process, error) {
	p, err := Launch(cfg)
	if err != nil {
		return nil, err
	}
	if err := p.WaitReady(ctx, timeout); err != nil {
		p.Kill()
		return nil, err
	}
	return p, nil
}

// Pid is the process id.
func (p *Process) Pid() int { return p.Cmd.Process.Pid }

// Logs is what the process has written so far.
func (p *Process) Logs() string { return p.logs.String() }

// Exited is closed once the process has exited.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// Err is the exit status once Exited is closed.
func (p *Process) Err() error {
	<-p.exited
	return p.err
}

// Ready reports whether /readyz answers 200.
func (p *Process) Ready() bool {
	resp, err := http.Get("http://" + p.Addrs.Ops + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// WaitReady waits until /readyz answers 200. It fails at once with
// ErrExited if the process exits.
func (p *Process) WaitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !p.Ready() {
		select {
		case <-p.exited:
			return fmt.Errorf("%w: %v", ErrExited, p.err)
		case <-ctx.Done():
			return fmt.Errorf("userd not ready at http://%s/readyz after %s: %w", p.Addrs.Ops, timeout, ctx.Err())
		case <-tick.C:
		}
	}
	return nil
}

// Wait waits up to timeout for the process to exit and returns its exit
// status, or ErrStillRunning (wrapped) if it has not exited by then.
func (p *Process) Wait(timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.exited:
		return p.err
	case <-t.C:
		return fmt.Errorf("userd (pid %d) %w after %s", p.Pid(), ErrStillRunning, timeout)
	}
}

// ErrStillRunning says that the process did not exit in time.
var ErrStillRunning = errors.New("still running")

// Stop sends sig and waits up to timeout for the process to exit, then
// kills it. It returns the exit status, or ErrStillRunning (wrapped) if it
// had to be killed.
func (p *Process) Stop(sig syscall.Signal, timeout time.Duration) error {
	if err := p.Cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	err := p.Wait(timeout)
	if errors.Is(err, ErrStillRunning) {
		p.Kill()
	}
	return err
}

// Kill ends the process with SIGKILL, as a crash would, and waits for it.
func (p *Process) Kill() {
	_ = p.Cmd.Process.Kill()
	<-p.exited
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
