// Package typescript_test runs the TypeScript client's own tests (npm test:
// generate the types from the OpenAPI document, type-check, node --test)
// against a real userd started here, with a Clerk session token signed by
// a key userd trusts as CLERK_JWT_KEY (PEM). The client talks to userd
// through a proxy that checks every response against the OpenAPI document.
package typescript_test

import (
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/userd/userd/internal/apptest"
	"github.com/userd/userd/internal/clerktest"
	"github.com/userd/userd/internal/config"
)

func TestTypeScriptClient(t *testing.T) {
	if testing.Short() {
		t.Skip("npm ci and the TypeScript compiler take tens of seconds: not in -short (make test-fast)")
	}
	t.Parallel()
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Fatal("npm not found: the TypeScript client's tests need Node.js 20 or later with npm")
	}
	fake := clerktest.New(t)
	in := apptest.Start(t, func(c *config.Serve) {
		c.JWKSURL = ""
		c.JWTKey = fake.PublicKeyPEM("kid-1")
		c.Issuer = fake.Issuer()
		c.AuthorizedParties = clerktest.Party
		// Clerk's tokens live 60s; this one must outlive the compiler
		// on a busy machine.
		c.JWTMaxLifetime = 15 * time.Minute
	})

	target, err := url.Parse(in.HTTPURL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httptest.NewServer(&httputil.ReverseProxy{
		Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(target) },
		Transport: in.HTTPClient(t).Transport,
	})
	t.Cleanup(proxy.Close)

	if stale(t) {
		runNPM(t, npm, nil, "ci", "--ignore-scripts", "--no-audit", "--no-fund")
	}
	claims := fake.Claims("user_typescript")
	claims["exp"] = time.Now().Add(10 * time.Minute).Unix()
	session := fake.Token(claims, "kid-1")
	runNPM(t, npm, []string{
		"USERD_URL=" + proxy.URL,
		"USERD_SESSION_TOKEN=" + session,
		"USERD_SERVICE_TOKEN=" + apptest.ServiceToken,
		"USERD_CLERK_USER_ID=user_typescript",
	}, "test")
}

// stale reports whether node_modules is missing or older than the lock
// file.
func stale(t *testing.T) bool {
	t.Helper()
	installed, err := os.Stat(filepath.Join("node_modules", ".package-lock.json"))
	if err != nil {
		return true
	}
	lock, err := os.Stat("package-lock.json")
	if err != nil {
		t.Fatal(err)
	}
	return lock.ModTime().After(installed.ModTime())
}

func runNPM(t *testing.T, npm string, env []string, args ...string) {
	t.Helper()
	cmd := exec.Command(npm, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("npm %v: %v\n%s", args, err, out)
	}
	t.Logf("npm %v:\n%s", args, out)
}
