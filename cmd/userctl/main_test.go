package main

import (
	"bytes"
	"encoding/json"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/userd/userd/internal/apptest"
	"github.com/userd/userd/internal/clerkhook"
	"github.com/userd/userd/internal/clerktest"
	"github.com/userd/userd/internal/config"
)

type result struct {
	code           int
	stdout, stderr string
}

func userctl(args ...string) result {
	var out, errOut bytes.Buffer
	code := run(args, &out, &errOut)
	return result{code, out.String(), errOut.String()}
}

// TestCommands runs userctl against a real userd; the address and the
// token come from the environment, as in a script.
func TestCommands(t *testing.T) {
	fake := clerktest.New(t)
	fake.SetUser(clerkhook.SampleUser{ID: "user_enduser", Email: "end@example.com", UpdatedAt: time.Now()})
	in := apptest.Start(t, func(c *config.Serve) {
		c.JWKSURL, c.Issuer, c.AuthorizedParties = fake.JWKSURL(), fake.Issuer(), clerktest.Party
	})
	t.Setenv("USERD_ADDR", in.App.GRPCAddr().String())
	t.Setenv("USERD_TOKEN", apptest.ServiceToken)
	t.Setenv("USERD_PLAINTEXT", "true")

	expect := func(t *testing.T, r result, code int, stdout ...string) {
		t.Helper()
		if r.code != code {
			t.Errorf("exit code %d, want %d\nstdout: %s\nstderr: %s", r.code, code, r.stdout, r.stderr)
		}
		for _, s := range stdout {
			if !regexp.MustCompile(s).MatchString(r.stdout + r.stderr) {
				t.Errorf("output lacks %q:\nstdout: %s\nstderr: %s", s, r.stdout, r.stderr)
			}
		}
	}

	expect(t, userctl("ensure", "user_cli", "--email", "cli+ops@example.com", "--first-name", "Cee"), exitOK,
		`NEW +yes`, `CREDITS +10`, `EMAIL +cli\+ops@example.com`, `PLAN +FREE`)
	expect(t, userctl("ensure", "user_cli"), exitOK, `NEW +no`)
	r := userctl("get", "user_cli", "--json")
	expect(t, r, exitOK)
	var got struct {
		User struct{ ID, Credits string } `json:"user"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || got.User.Credits != "10" {
		t.Fatalf("get --json: %v %q", err, r.stdout)
	}
	expect(t, userctl("get", "--email", "CLI+OPS@example.com"), exitOK, `CLERK ID +user_cli`)
	expect(t, userctl("get", "--id", got.User.ID), exitOK, `CLERK ID +user_cli`)
	expect(t, userctl("get", "user_nobody"), exitNotFound, `not found`)

	r = userctl("deduct", "user_cli", "4", "--key", "k1", "--reason", "render")
	expect(t, r, exitOK, `-4 +6 +k1 +render`)
	if strings.Contains(r.stdout, "REPLAYED") {
		t.Errorf("a first deduction says REPLAYED: %q", r.stdout)
	}
	// The same key again: the original result, saying it is a replay.
	expect(t, userctl("deduct", "user_cli", "4", "--key", "k1", "--reason", "render"), exitOK, `-4 +6 +k1`,
		`REPLAYED: key k1 had already been applied; nothing changed`)
	expect(t, userctl("deduct", "user_cli", "5", "--key", "k1"), exitConflict, `IDEMPOTENCY_KEY_REUSED`)
	expect(t, userctl("deduct", "user_cli", "100", "--key", "k2"), exitInsufficientCredits, `100 required, 6 available`)
	for i, wantReplayed := range []bool{false, true} {
		r = userctl("--json", "grant", "user_cli", "10", "--key", "g1")
		var granted struct {
			Balance  string
			Replayed *bool
		}
		if err := json.Unmarshal([]byte(r.stdout), &granted); r.code != exitOK || err != nil || granted.Balance != "16" ||
			granted.Replayed == nil || *granted.Replayed != wantReplayed {
			t.Errorf("grant --json, call %d: %d %v %q %s; want balance 16, replayed %v", i+1, r.code, err, r.stdout, r.stderr, wantReplayed)
		}
	}
	r = userctl("set-plan", "user_cli", "pro", "--bonus", "5", "--key", "p1")
	expect(t, r, exitOK, `PLAN +PRO`, `PREVIOUS PLAN +FREE`, `CREDITS +21`)
	if strings.Contains(r.stdout, "REPLAYED") {
		t.Errorf("a first plan change says REPLAYED: %q", r.stdout)
	}
	expect(t, userctl("set-plan", "user_cli", "pro", "--bonus", "5", "--key", "p1"), exitOK,
		`PREVIOUS PLAN +FREE`, `CREDITS +21`, `REPLAYED: key p1`)

	// The ledger, two entries a page, following the printed token; the
	// command it prints names the userctl that was run, to paste as it is.
	program = "bin/userctl"
	t.Cleanup(func() { program = "userctl" })
	r = userctl("ledger", "user_cli", "--page-size", "2")
	expect(t, r, exitOK, `plan_bonus +\+5 +21`, `grant +\+10 +16`, `more: bin/userctl ledger user_cli --page-size 2 --page-token `)
	next := regexp.MustCompile(`--page-token (\S+)`).FindStringSubmatch(r.stdout)
	if next == nil {
		t.Fatalf("no next page token in %q", r.stdout)
	}
	r = userctl("ledger", "user_cli", "--page-size", "2", "--page-token", next[1])
	expect(t, r, exitOK, `deduct +-4 +6 +k1`, `initial +\+10 +10`)
	if strings.Contains(r.stdout, "more:") {
		t.Errorf("the last page offers more: %q", r.stdout)
	}

	// What scripts tell apart.
	expect(t, userctl("get"), exitUsage, `exactly one of`)
	expect(t, userctl("deduct", "user_cli", "1"), exitUsage, `--key`)
	expect(t, userctl("deduct", "user_cli", "0", "--key", "k3"), exitUsage, `amount`)
	expect(t, userctl("set-plan", "user_cli", "gold", "--key", "k4"), exitUsage)
	expect(t, userctl("--token", "wrong-token", "get", "user_cli"), exitUnauthenticated)
	expect(t, userctl("--token", fake.UserToken("user_enduser"), "grant", "me", "5", "--key", "k5"), exitPermissionDenied)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	expect(t, userctl("--addr", closed, "--timeout", "1s", "get", "user_cli"), exitUnavailable)
	// TLS (the default) to a plaintext userd: not retryable, and the
	// message says what to add.
	expect(t, userctl("--plaintext=false", "get", "user_cli"), exitUsage,
		`first record does not look like a TLS handshake`, `add --plaintext \(or set USERD_PLAINTEXT=true\)`)

	// Nothing above moved credits beyond the successful commands.
	u, err := in.Store.GetLiveUserByClerkID(t.Context(), "user_cli")
	if err != nil || u.Credits != 21 {
		t.Errorf("user_cli: %+v, %v; want 21 credits", u, err)
	}

	// Accounts: a user's personal one; an organization's by its org_ id
	// (one userd does not know is not found); --member only with one.
	expect(t, userctl("account", "user_cli"), exitOK, `OWNER +user_cli`, `PLAN +`)
	expect(t, userctl("account", "org_2unknown"), exitNotFound, `not found`)
	expect(t, userctl("deduct", "user_cli", "1", "--member", "user_other", "--key", "m1"), exitUsage, `--member needs an organization`)
	expect(t, userctl("member-cap", "org_2unknown", "user_cli"), exitUsage, `--period .* or --remove`)
	expect(t, userctl("ledger", "org_2unknown", "--member", "user_cli"), exitNotFound)
	expect(t, userctl("set-plan", "org_2unknown", "pro", "--key", "op1"), exitNotFound, `not found`)
	expect(t, userctl("usage", "org_2unknown", "--by-member"), exitNotFound, `not found`)
	expect(t, userctl("usage", "user_cli", "--by-member"), exitUsage, `--by-member needs an organization`)
}

// TestPricesAndUsageCommands: the price list, deductions by action, the
// affordability check (its exit code) and usage summaries, as a script
// would use them.
func TestPricesAndUsageCommands(t *testing.T) {
	in := apptest.Start(t, nil)
	t.Setenv("USERD_ADDR", in.App.GRPCAddr().String())
	t.Setenv("USERD_TOKEN", apptest.ServiceToken)
	t.Setenv("USERD_PLAINTEXT", "true")
	expect := func(t *testing.T, r result, code int, out ...string) {
		t.Helper()
		if r.code != code {
			t.Errorf("exit code %d, want %d\nstdout: %s\nstderr: %s", r.code, code, r.stdout, r.stderr)
		}
		for _, s := range out {
			if !regexp.MustCompile(s).MatchString(r.stdout + r.stderr) {
				t.Errorf("output lacks %q:\nstdout: %s\nstderr: %s", s, r.stdout, r.stderr)
			}
		}
	}
	expect(t, userctl("ensure", "user_priced"), exitOK)
	expect(t, userctl("prices", "set", "render", "2"), exitOK, `render +2 +\S+ +service:tests`)
	expect(t, userctl("prices", "set", "render", "2"), exitOK, `unchanged`)
	expect(t, userctl("prices", "set", "export", "7"), exitOK)
	expect(t, userctl("prices", "set", "render", "3"), exitOK)
	expect(t, userctl("prices"), exitOK, `(?s)export +7 .*render +3 `)
	expect(t, userctl("prices", "history", "render"), exitOK, `(?s)render +2 +3 +service:tests.*render +\(new\) +2 +service:tests`)
	expect(t, userctl("prices", "set", "Render", "3"), exitUsage, `action`)

	expect(t, userctl("deduct", "user_priced", "--action", "render", "--key", "r1"), exitOK, `-3 +7 +r1 +render`)
	expect(t, userctl("deduct", "user_priced", "--action", "paint", "--key", "r2"), exitUsage, `UNKNOWN_ACTION`)
	expect(t, userctl("deduct", "user_priced", "2", "--action", "render", "--key", "r3"), exitUsage, `either`)
	expect(t, userctl("deduct", "user_priced", "--key", "r3"), exitUsage, `either`)

	expect(t, userctl("can-afford", "user_priced", "--action", "render"), exitOK, `REQUIRED +3`, `AVAILABLE +7`, `ALLOWED +true`)
	expect(t, userctl("can-afford", "user_priced", "--action", "export"), exitOK, `ALLOWED +true`)
	expect(t, userctl("can-afford", "user_priced", "--amount", "8"), exitInsufficientCredits, `ALLOWED +false`)
	expect(t, userctl("can-afford", "user_priced"), exitUsage)

	today := time.Now().UTC().Format(time.DateOnly)
	expect(t, userctl("usage", "user_priced", "--since", today, "--by", "day"), exitOK,
		`BALANCE +7`, `SPENT +3`, `GRANTED +10`, `(?m)^render +3 +0 +1$`, `(?m)^\(none\) +0 +10 +1$`, today+`T00:00:00Z +3 +10 +2 +\(none\)`)
	r := userctl("--json", "usage", "user_priced", "--since", today+"T00:00:00Z", "--until", time.Now().Add(time.Hour).Format(time.RFC3339))
	var sum struct{ Spent, Balance string }
	if err := json.Unmarshal([]byte(r.stdout), &sum); r.code != exitOK || err != nil || sum.Spent != "3" || sum.Balance != "7" {
		t.Errorf("usage --json: %d %v %q %s", r.code, err, r.stdout, r.stderr)
	}
	expect(t, userctl("usage", "user_priced", "--since", "yesterday"), exitUsage, `--since`)
	// Without --since: the 30 days before now (issue 18, item 8).
	expect(t, userctl("usage", "user_priced"), exitOK, `SPENT +3`, `GRANTED +10`)
	expect(t, userctl("usage", "user_priced", "--since", today, "--by", "hour"), exitUsage)
}
