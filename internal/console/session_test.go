package console

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/userd/userd/internal/auth"
)

func TestRoleOf(t *testing.T) {
	t.Parallel()
	const ops = "org_operators"
	org := func(id, role string) *auth.ActiveOrganization { return &auth.ActiveOrganization{ID: id, Role: role} }
	for _, tc := range []struct {
		name   string
		claims auth.SessionClaims
		want   Role
		err    error
	}{
		{"ClaimViewer", auth.SessionClaims{OperatorRole: "viewer"}, RoleViewer, nil},
		{"ClaimSupport", auth.SessionClaims{OperatorRole: "support"}, RoleSupport, nil},
		{"ClaimUnknown", auth.SessionClaims{OperatorRole: "admin"}, "", errNotOperator},
		{"ClaimWinsOverOrg", auth.SessionClaims{OperatorRole: "viewer", Organization: org(ops, "org:admin")}, RoleViewer, nil},
		{"OrgAdmin", auth.SessionClaims{Organization: org(ops, "org:admin")}, RoleSupport, nil},
		{"OrgSupport", auth.SessionClaims{Organization: org(ops, "org:support")}, RoleSupport, nil},
		{"OrgMember", auth.SessionClaims{Organization: org(ops, "org:member")}, RoleViewer, nil},
		{"OtherOrg", auth.SessionClaims{Organization: org("org_customer", "org:admin")}, "", errNotOperator},
		{"Nothing", auth.SessionClaims{}, "", errNotOperator},
		{"Impersonation", auth.SessionClaims{OperatorRole: "support", Actor: &auth.Actor{}}, "", errImpersonation},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := roleOf(&tc.claims, ops)
			if got != tc.want || err != tc.err {
				t.Fatalf("roleOf: %q, %v; want %q, %v", got, err, tc.want, tc.err)
			}
		})
	}
	if _, err := roleOf(&auth.SessionClaims{Organization: org(ops, "org:admin")}, ""); err != errNotOperator {
		t.Fatalf("no operators' organization configured: %v", err)
	}
}

func TestSessionCookie(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_800_000_000, 0)
	ss, err := newSessions(strings.Repeat("k", 32), 30*time.Minute, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	c, err := ss.cookie("user_op", RoleSupport)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Secure || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode {
		t.Fatalf("cookie attributes: %+v", c)
	}
	read := func(value string) (session, bool) {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.AddCookie(&http.Cookie{Name: cookieName, Value: value})
		return ss.read(r)
	}
	if s, ok := read(c.Value); !ok || s.Operator != "user_op" || s.Role != RoleSupport {
		t.Fatalf("own cookie: %+v, %v", s, ok)
	}
	payload, sig, _ := strings.Cut(c.Value, ".")
	other, _ := newSessions(strings.Repeat("x", 32), 30*time.Minute, func() time.Time { return now })
	for name, v := range map[string]string{
		"Empty":        "",
		"NoSignature":  payload,
		"BadSignature": payload + ".AAAA",
		"OtherKey":     payload + "." + other.sign(payload),
		"SwappedParts": sig + "." + payload,
	} {
		if _, ok := read(v); ok {
			t.Errorf("%s: accepted", name)
		}
	}
	now = now.Add(31 * time.Minute)
	if _, ok := read(c.Value); ok {
		t.Error("expired session accepted")
	}
}
