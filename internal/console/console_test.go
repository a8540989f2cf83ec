package console_test

import (
	"context"
	"encoding/csv"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/apptest"
	"github.com/userd/userd/internal/clerktest"
	"github.com/userd/userd/internal/config"
)

// bundle is a running userd with its console on, a fake Clerk whose keys
// sign operators' session tokens, and a seeded customer.
type bundle struct {
	in    *apptest.Instance
	clerk *clerktest.Clerk
	base  string
	// customer is a personal account whose profile carries markup (as
	// Clerk or a service could supply it), to prove it is escaped.
	customer       string
	customerID     uuid.UUID
	customerEmail  string
	customerTokens int64
}

const (
	hostileName   = `<script>alert("name")</script>`
	hostileReason = `<img src=x onerror=alert("reason")>`
)

func setup(t testing.TB) *bundle {
	t.Helper()
	fake := clerktest.New(t)
	in := apptest.Start(t, func(c *config.Serve) {
		c.JWKSURL = fake.JWKSURL()
		c.Issuer = fake.Issuer()
		c.ConsoleAddr = "127.0.0.1:0"
	})
	b := &bundle{in: in, clerk: fake, base: "http://" + in.App.ConsoleAddr().String()}
	ctx := context.Background()
	b.customer, b.customerEmail = "user_customer1", "ada.customer@example.com"
	u, err := in.Client.EnsureUser(ctx, &userdv1.EnsureUserRequest{
		ClerkUserId: b.customer, Email: b.customerEmail, FirstName: hostileName, LastName: "Lovelace",
	})
	if err != nil {
		t.Fatalf("EnsureUser: %v", err)
	}
	b.customerID = uuid.MustParse(u.GetUser().GetId())
	if _, err := in.Client.GrantCredits(ctx, &userdv1.GrantCreditsRequest{
		ClerkUserId: b.customer, Amount: 100, IdempotencyKey: "seed-grant", Reason: hostileReason,
	}); err != nil {
		t.Fatalf("GrantCredits: %v", err)
	}
	b.customerTokens = 110
	return b
}

// token is a session token of sub with the extra claims.
func (b *bundle) token(sub string, extra jwt.MapClaims) string {
	c := b.clerk.Claims(sub)
	for k, v := range extra {
		c[k] = v
	}
	return b.clerk.Token(c, "kid-1")
}

func (b *bundle) viewerToken() string {
	return b.token("user_viewer1", jwt.MapClaims{"userd_role": "viewer"})
}

func (b *bundle) supportToken() string {
	return b.token("user_support1", jwt.MapClaims{"userd_role": "support"})
}

// client is an HTTP client with a cookie jar that does not follow
// redirects (the tests look at them).
func client(t testing.TB) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar, Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
}

// signIn exchanges tok for a console session on c; it returns the status.
func (b *bundle) signIn(t testing.TB, c *http.Client, tok string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, b.base+"/signin", strings.NewReader(url.Values{"token": {tok}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	// The cookie is Secure: the jar keeps it for https only, so hand it
	// over for the plain-HTTP test listener.
	u, _ := url.Parse(b.base)
	for _, ck := range resp.Cookies() {
		ck.Secure = false
		c.Jar.SetCookies(u, []*http.Cookie{ck})
	}
	return resp.StatusCode
}

func get(t testing.TB, c *http.Client, u string) (int, string, http.Header) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), resp.Header
}

func post(t *testing.T, c *http.Client, u string, form url.Values, hdr map[string]string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, u, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func (b *bundle) balance(t *testing.T) int64 {
	t.Helper()
	var n int64
	if err := b.in.DB.QueryRow(context.Background(), "SELECT credits FROM accounts WHERE id = $1", b.customerID).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func (b *bundle) auditRows(t *testing.T) int {
	t.Helper()
	var n int
	if err := b.in.DB.QueryRow(context.Background(), "SELECT count(*) FROM operator_audit").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestAttacks is the console's attack table: each row is a request an
// attacker (or a confused operator) can make; it must be refused, show no
// customer data, and change nothing.
func TestAttacks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	account := b.base + "/accounts/" + b.customerID.String()
	grant := account + "/grant"
	form := url.Values{"amount": {"5"}, "reason": {"attack"}, "idempotency_key": {"attack-key-1"}}

	viewer, support := client(t), client(t)
	if st := b.signIn(t, viewer, b.viewerToken()); st != http.StatusSeeOther {
		t.Fatalf("viewer sign-in: %d", st)
	}
	if st := b.signIn(t, support, b.supportToken()); st != http.StatusSeeOther {
		t.Fatalf("support sign-in: %d", st)
	}
	forged := client(t)
	u, _ := url.Parse(b.base)
	forged.Jar.SetCookies(u, []*http.Cookie{{Name: "userd_console", Value: "eyJzdWIiOiJ1c2VyX3giLCJyb2xlIjoic3VwcG9ydCIsImV4cCI6OTk5OTk5OTk5OX0.AAAA"}})

	signins := []struct {
		name  string
		token string
		want  int
	}{
		{"Garbage", "not-a-jwt", http.StatusUnauthorized},
		{"WrongKey", clerktest.Sign(t, b.clerk.Claims("user_x"), "kid-1", clerktest.NewKey(t)), http.StatusUnauthorized},
		{"Expired", b.token("user_x", jwt.MapClaims{"userd_role": "support", "exp": time.Now().Add(-time.Hour).Unix(), "iat": time.Now().Add(-2 * time.Hour).Unix(), "nbf": time.Now().Add(-2 * time.Hour).Unix()}), http.StatusUnauthorized},
		{"NoRole", b.token("user_x", nil), http.StatusForbidden},
		{"UnknownRole", b.token("user_x", jwt.MapClaims{"userd_role": "admin"}), http.StatusForbidden},
		{"Impersonation", b.token("user_x", jwt.MapClaims{"userd_role": "support", "act": map[string]any{"sub": "user_admin", "iss": "https://dashboard.clerk.com"}}), http.StatusForbidden},
		{"OtherOrganization", b.token("user_x", jwt.MapClaims{"o": map[string]any{"id": "org_other", "rol": "admin", "slg": "other"}, "v": 2}), http.StatusForbidden},
	}
	for _, s := range signins {
		t.Run("SignIn"+s.name, func(t *testing.T) {
			c := client(t)
			if st := b.signIn(t, c, s.token); st != s.want {
				t.Fatalf("sign-in status %d, want %d", st, s.want)
			}
			if st, body, _ := get(t, c, account); st != http.StatusSeeOther || strings.Contains(body, b.customer) {
				t.Fatalf("account page after a refused sign-in: %d %q", st, body)
			}
		})
	}

	writes := []struct {
		name string
		c    *http.Client
		hdr  map[string]string
		want int
	}{
		{"Unauthenticated", client(t), nil, http.StatusUnauthorized},
		{"ForgedCookie", forged, nil, http.StatusUnauthorized},
		{"ViewerWrite", viewer, nil, http.StatusForbidden},
		{"CrossSiteFetchMetadata", support, map[string]string{"Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
		{"CrossSiteOrigin", support, map[string]string{"Origin": "https://evil.example"}, http.StatusForbidden},
	}
	for _, w := range writes {
		t.Run(w.name, func(t *testing.T) {
			before, audits := b.balance(t), b.auditRows(t)
			if st, body := post(t, w.c, grant, form, w.hdr); st != w.want {
				t.Fatalf("grant: status %d, want %d: %s", st, w.want, body)
			}
			if after := b.balance(t); after != before {
				t.Fatalf("balance moved from %d to %d", before, after)
			}
			if n := b.auditRows(t); n != audits {
				t.Fatalf("audit rows went from %d to %d", audits, n)
			}
		})
	}

	t.Run("UnauthenticatedSeesNothing", func(t *testing.T) {
		c := client(t)
		for _, p := range []string{"/search?q=ada", "/accounts/" + b.customerID.String(), "/accounts/" + b.customerID.String() + "/events", "/audit", "/audit.csv", "/prices", "/webhooks", "/sync"} {
			st, body, _ := get(t, c, b.base+p)
			if st != http.StatusSeeOther && st != http.StatusUnauthorized {
				t.Errorf("%s: status %d", p, st)
			}
			if strings.Contains(body, b.customer) || strings.Contains(body, "ada") {
				t.Errorf("%s: leaks customer data: %q", p, body)
			}
		}
	})

	t.Run("Clickjacking", func(t *testing.T) {
		for _, c := range []*http.Client{client(t), viewer} {
			for _, p := range []string{"/signin", "/search", "/accounts/" + b.customerID.String()} {
				_, _, h := get(t, c, b.base+p)
				if csp := h.Get("Content-Security-Policy"); !strings.Contains(csp, "frame-ancestors 'none'") || !strings.Contains(csp, "default-src 'self'") {
					t.Errorf("%s: CSP %q", p, csp)
				}
				if h.Get("X-Frame-Options") != "DENY" {
					t.Errorf("%s: X-Frame-Options %q", p, h.Get("X-Frame-Options"))
				}
			}
		}
	})

	t.Run("ScriptInjectionEscaped", func(t *testing.T) {
		st, body, _ := get(t, support, account)
		if st != http.StatusOK {
			t.Fatalf("account page: %d", st)
		}
		for _, raw := range []string{hostileName, hostileReason, "<script>alert", "<img src=x"} {
			if strings.Contains(body, raw) {
				t.Errorf("account page holds %q unescaped", raw)
			}
		}
		if !strings.Contains(body, "&lt;script&gt;alert(&#34;name&#34;)&lt;/script&gt;") {
			t.Errorf("account page does not show the escaped name")
		}
		if !strings.Contains(body, "&lt;img src=x onerror=alert(&#34;reason&#34;)&gt;") {
			t.Errorf("account page does not show the escaped reason")
		}
	})

	t.Run("ViewerSeesMaskedPersonalData", func(t *testing.T) {
		_, body, _ := get(t, viewer, account)
		if strings.Contains(body, b.customerEmail) || strings.Contains(body, "Lovelace") {
			t.Errorf("viewer sees personal data")
		}
		if !strings.Contains(body, "a•••@example.com") {
			t.Errorf("viewer does not see the masked email")
		}
		if strings.Contains(body, `action="/accounts/`+b.customerID.String()+`/grant"`) {
			t.Errorf("viewer is offered the grant form")
		}
		_, body, _ = get(t, support, account)
		if !strings.Contains(body, b.customerEmail) {
			t.Errorf("support does not see the email")
		}
	})

	t.Run("CorrectionNeedsReason", func(t *testing.T) {
		before := b.balance(t)
		st, _ := post(t, support, grant, url.Values{"amount": {"5"}, "reason": {"  "}, "idempotency_key": {"no-reason-key"}}, nil)
		if st != http.StatusBadRequest || b.balance(t) != before {
			t.Fatalf("grant without a reason: status %d, balance %d -> %d", st, before, b.balance(t))
		}
	})

	t.Run("CSVFormulaInjection", func(t *testing.T) {
		reason := `=HYPERLINK("https://evil.example","x")`
		st, body := post(t, support, grant, url.Values{"amount": {"3"}, "reason": {reason}, "idempotency_key": {"csv-key-1"}}, nil)
		if st != http.StatusSeeOther {
			t.Fatalf("grant: %d %s", st, body)
		}
		_, out, h := get(t, viewer, b.base+"/audit.csv")
		if !strings.HasPrefix(h.Get("Content-Type"), "text/csv") {
			t.Fatalf("content type %q", h.Get("Content-Type"))
		}
		recs, err := csv.NewReader(strings.NewReader(out)).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, r := range recs[1:] {
			for _, cell := range r {
				if cell != "" && strings.ContainsRune("=+-@", rune(cell[0])) {
					t.Errorf("cell %q starts a formula", cell)
				}
			}
			if r[8] == "'"+reason {
				found = true
			}
		}
		if !found {
			t.Errorf("the quoted reason is not in the export: %q", out)
		}
	})
}
