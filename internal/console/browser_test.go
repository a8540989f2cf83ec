package console_test

import (
	"context"
	_ "embed"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	userdv1 "github.com/userd/userd/gen/userd/v1"
)

// axeJS is axe-core 4.14.1 (npm axe-core, dist axe.min.js, MPL-2.0,
// sha256 29348999450cdf2849a8e70b7912fc2da85a849da39c0d0d5394f51d4a9ed95c),
// injected into the pages by this test only: the console never serves it.
//
//go:embed testdata/axe.min.js
var axeJS string

var updateScreenshots = flag.Bool("update-screenshots", false, "write the console screenshots into docs/console (the README shows them)")

// chromium finds Debian's Chromium: chromium-headless-shell, else
// chromium. Under CI=true (.ci/run installs it) a missing browser fails
// the test; elsewhere it skips it.
func chromium(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("drives a real Chromium: not in -short (make test-fast)")
	}
	for _, name := range []string{"chromium-headless-shell", "chromium", "/usr/lib/chromium/chromium-headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := "no chromium-headless-shell or chromium on PATH (apt-get install chromium-headless-shell)"
	if os.Getenv("CI") == "true" {
		t.Fatalf("the console browser test cannot run under CI=true: %s", msg)
	}
	t.Skipf("console browser test not run: %s; .ci/run installs it", msg)
	return ""
}

// browser starts a headless Chromium for the test; each returned context
// is a fresh incognito-like tab of its own (separate cookies).
func browser(t *testing.T) func() context.Context {
	t.Helper()
	path := chromium(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.WindowSize(1100, 900), chromedp.UserDataDir(t.TempDir()))
	alloc, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	root, cancelRoot := chromedp.NewContext(alloc)
	t.Cleanup(cancelRoot)
	if err := chromedp.Do(root); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return func() context.Context {
		ctx, cancel := chromedp.NewContext(root, chromedp.WithNewBrowserContext())
		t.Cleanup(cancel)
		ctx, cancelT := context.WithTimeout(ctx, 60*time.Second)
		t.Cleanup(cancelT)
		return ctx
	}
}

func do(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		t.Fatalf("text of %s: %v", sel, err)
	}
	return s
}

// signInBrowser signs in through the sign-in form.
func (b *bundle) signInBrowser(t *testing.T, ctx context.Context, tok string) {
	t.Helper()
	do(t, ctx, "sign in",
		chromedp.Navigate(b.base+"/signin"),
		chromedp.SetValue(chromedp.ID("token"), tok),
		chromedp.Click(chromedp.ID("signin")),
		chromedp.WaitVisible(chromedp.ID("q")))
}

// axe runs axe-core in the page and fails on serious or critical
// violations.
func axe(t *testing.T, ctx context.Context, page string) {
	t.Helper()
	res, err := chromedp.Run(ctx, chromedp.Evaluate[string](axeJS+`
;axe.run(document).then(r => JSON.stringify({passes: r.passes.length, violations: r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length}))}))`,
		chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("axe on %s: %v", page, err)
	}
	var out struct {
		Passes     int
		Violations []struct {
			ID, Impact, Help string
			Nodes            int
		}
	}
	if err := json.Unmarshal([]byte(res), &out); err != nil {
		t.Fatalf("axe result on %s: %v", page, err)
	}
	if out.Passes == 0 {
		t.Fatalf("axe on %s checked nothing: %s", page, res)
	}
	t.Logf("axe on %s: %d rules passed, %d violated", page, out.Passes, len(out.Violations))
	for _, v := range out.Violations {
		if v.Impact == "serious" || v.Impact == "critical" {
			t.Errorf("axe on %s: %s violation %s (%s) on %d nodes", page, v.Impact, v.ID, v.Help, v.Nodes)
		} else {
			t.Logf("axe on %s: %s %s (%s)", page, v.Impact, v.ID, v.Help)
		}
	}
}

// screenshot keeps the viewport as a test artefact, and in docs/console
// with -update-screenshots.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	if len(png) > 200<<10 {
		t.Errorf("screenshot %s is %d bytes; keep it under 200 KB", name, len(png))
	}
	if err := os.WriteFile(filepath.Join(t.ArtifactDir(), name+".png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
	if *updateScreenshots {
		if err := os.WriteFile(filepath.Join("..", "..", "docs", "console", name+".png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestBrowser drives the console in Chromium as operators do.
func TestBrowser(t *testing.T) {
	t.Parallel()
	tab := browser(t)
	b := setup(t)
	account := b.base + "/accounts/" + b.customerID.String()

	t.Run("Support", func(t *testing.T) {
		ctx := tab()
		do(t, ctx, "viewport", chromedp.EmulateViewport(1100, 900))
		do(t, ctx, "sign-in page", chromedp.Navigate(b.base+"/signin"), chromedp.WaitVisible(chromedp.ID("token")))
		axe(t, ctx, "sign-in")
		screenshot(t, ctx, "signin")
		b.signInBrowser(t, ctx, b.supportToken())

		// Search by email prefix, open the account.
		do(t, ctx, "search",
			chromedp.SetValue(chromedp.ID("q"), "ada.cust"),
			chromedp.Submit(chromedp.ID("q")),
			chromedp.WaitVisible(chromedp.ID("results")))
		if got := text(t, ctx, "#results"); !strings.Contains(got, b.customer) || !strings.Contains(got, b.customerEmail) {
			t.Fatalf("search results: %q", got)
		}
		axe(t, ctx, "search")
		screenshot(t, ctx, "search")
		do(t, ctx, "open account", chromedp.Click(chromedp.CSS(`#results a[href^="/accounts/"]`)), chromedp.WaitVisible(chromedp.ID("balance")))
		if got := text(t, ctx, "#balance"); got != fmt.Sprint(b.customerTokens) {
			t.Fatalf("balance shown %q, want %d", got, b.customerTokens)
		}
		if got := text(t, ctx, "#name"); !strings.Contains(got, hostileName) {
			t.Fatalf("name shown %q: want the markup as text", got)
		}

		// Grant with a double click on submit: applied once, one audit row.
		grantReason := "refund for outage " + hostileReason
		key, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector('#grant-form input[name=idempotency_key]').value`))
		if err != nil {
			t.Fatal(err)
		}
		do(t, ctx, "grant",
			chromedp.SetValue(chromedp.ID("grant-amount"), "25"),
			chromedp.SetValue(chromedp.ID("grant-reason"), grantReason),
			chromedp.DoubleClick(chromedp.ID("grant-submit")),
			chromedp.WaitVisible(chromedp.ID("done")))
		// And a retry of the same form (as a browser re-posting it would).
		status, err := chromedp.Run(ctx, chromedp.Evaluate[int](fmt.Sprintf(`(async () => {
			const f = new URLSearchParams({amount: "25", reason: %q, idempotency_key: %q});
			const r = await fetch(%q, {method: "POST", body: f, redirect: "manual"});
			return r.type === "opaqueredirect" ? 303 : r.status; })()`, grantReason, key, account+"/grant"), chromedp.EvalAwaitPromise))
		if err != nil || status != http.StatusSeeOther {
			t.Fatalf("re-post of the grant form: %d, %v", status, err)
		}
		var ledgerRows, audits int
		var details string
		if err := b.in.DB.QueryRow(context.Background(), "SELECT count(*) FROM credit_transactions WHERE idempotency_key = $1", key).Scan(&ledgerRows); err != nil {
			t.Fatal(err)
		}
		if err := b.in.DB.QueryRow(context.Background(),
			"SELECT count(*), max(details::text) FROM operator_audit WHERE idempotency_key = $1 AND operator = 'user_support1' AND action = 'grant' AND (before->>'balance')::bigint = $2 AND (after->>'balance')::bigint = $3",
			key, b.customerTokens, b.customerTokens+25).Scan(&audits, &details); err != nil {
			t.Fatal(err)
		}
		if ledgerRows != 1 || audits != 1 || b.balance(t) != b.customerTokens+25 {
			t.Fatalf("double submit: %d ledger rows, %d audit rows (details %s), balance %d; want 1, 1, %d", ledgerRows, audits, details, b.balance(t), b.customerTokens+25)
		}
		do(t, ctx, "reload", chromedp.Navigate(account), chromedp.WaitVisible(chromedp.ID("balance")))
		if got := text(t, ctx, "#balance"); got != fmt.Sprint(b.customerTokens+25) {
			t.Fatalf("balance after grant %q", got)
		}

		// The live event list follows a deduction made elsewhere (gRPC).
		if _, err := b.in.Client.DeductCredits(context.Background(), &userdv1.DeductCreditsRequest{
			ClerkUserId: b.customer, Amount: 7, IdempotencyKey: "live-deduct-1", Reason: "api-call",
		}); err != nil {
			t.Fatal(err)
		}
		do(t, ctx, "usage chart", chromedp.WaitVisible(chromedp.CSS("#usage svg rect")))
		do(t, ctx, "live event", chromedp.Poll[chromedp.Void](`document.getElementById("events").textContent.includes("delta=-7")`, chromedp.WithPollingTimeout(20*time.Second)))
		axe(t, ctx, "account")
		screenshot(t, ctx, "account")

		do(t, ctx, "audit log", chromedp.Navigate(b.base+"/audit"), chromedp.WaitVisible(chromedp.ID("audit-table")))
		if got := text(t, ctx, "#audit-table"); !strings.Contains(got, "user_support1") || !strings.Contains(got, hostileReason) {
			t.Fatalf("audit log: %q", got)
		}
		axe(t, ctx, "audit")
		screenshot(t, ctx, "audit")
		for _, p := range []string{"/prices", "/webhooks", "/sync"} {
			do(t, ctx, p, chromedp.Navigate(b.base+p), chromedp.WaitVisible(chromedp.ID("main")))
			axe(t, ctx, p)
		}

		// A phone-sized viewport still shows the account.
		do(t, ctx, "phone", chromedp.EmulateViewport(390, 844), chromedp.Navigate(account), chromedp.WaitVisible(chromedp.ID("balance")))
		axe(t, ctx, "account (phone)")
	})

	t.Run("ViewerRefused", func(t *testing.T) {
		ctx := tab()
		b.signInBrowser(t, ctx, b.viewerToken())
		do(t, ctx, "open account", chromedp.Navigate(account), chromedp.WaitVisible(chromedp.ID("balance")))
		forms, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("form[action$='/grant']").length`))
		if err != nil || forms != 0 {
			t.Fatalf("viewer sees %d grant forms (%v)", forms, err)
		}
		before := b.balance(t)
		status, err := chromedp.Run(ctx, chromedp.Evaluate[int](fmt.Sprintf(`(async () => {
			const f = new URLSearchParams({amount: "1000", reason: "viewer tries", idempotency_key: "viewer-key-1"});
			return (await fetch(%q, {method: "POST", body: f, redirect: "manual"})).status; })()`, account+"/grant"), chromedp.EvalAwaitPromise))
		if err != nil || status != http.StatusForbidden {
			t.Fatalf("viewer's grant: status %d (%v), want 403", status, err)
		}
		if b.balance(t) != before {
			t.Fatalf("viewer's grant moved the balance")
		}
	})

	t.Run("CrossSiteFormRefused", func(t *testing.T) {
		ctx := tab()
		b.signInBrowser(t, ctx, b.supportToken())
		// An attacker's page on another site (localhost is another site
		// than 127.0.0.1) posts the grant form to the console.
		evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			fmt.Fprintf(w, `<!doctype html><title>win a prize</title><form id="f" method="post" action="%s/grant">
<input name="amount" value="1000"><input name="reason" value="csrf"><input name="idempotency_key" value="csrf-key-1">
<button id="go" type="submit">Claim</button></form>`, account)
		}))
		t.Cleanup(evil.Close)
		before := b.balance(t)
		do(t, ctx, "attacker page",
			chromedp.Navigate(strings.Replace(evil.URL, "127.0.0.1", "localhost", 1)),
			chromedp.Click(chromedp.ID("go")),
			chromedp.WaitVisible(chromedp.CSS("h1")))
		if got := text(t, ctx, "body"); !strings.Contains(got, "Cross-site request refused") && !strings.Contains(got, "Sign in") {
			t.Fatalf("cross-site post answered: %q", got)
		}
		if b.balance(t) != before {
			t.Fatalf("cross-site post moved the balance")
		}
		var n int
		if err := b.in.DB.QueryRow(context.Background(), "SELECT count(*) FROM credit_transactions WHERE idempotency_key = 'csrf-key-1'").Scan(&n); err != nil || n != 0 {
			t.Fatalf("cross-site post wrote %d ledger rows (%v)", n, err)
		}
	})
}
