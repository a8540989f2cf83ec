package auth

import (
	"errors"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/userd/userd/internal/apperr"
)

// TestOrganizationClaims: Clerk's v2 "o" claim and the v1 org_* claims
// give one ActiveOrganization (role with the "org:" prefix, permissions as
// "org:<feature>:<permission>"); the "act" claim marks an impersonation;
// malformed organization or actor claims refuse the token.
func TestOrganizationClaims(t *testing.T) {
	t.Parallel()
	v, key := newVerifier(t)
	a := NewAuthenticator(ServiceTokens{}, v, slog.New(slog.DiscardHandler))
	now := time.Now()
	token := func(extra jwt.MapClaims) string {
		c := jwt.MapClaims{
			"iss": "https://clerk.example", "sub": "user_1", "sid": "sess_1",
			"iat": now.Unix(), "nbf": now.Add(-5 * time.Second).Unix(), "exp": now.Add(time.Minute).Unix(),
		}
		for k, val := range extra {
			c[k] = val
		}
		s, err := jwt.NewWithClaims(jwt.SigningMethodRS256, c).SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	v2 := func(o map[string]any, fea any) jwt.MapClaims {
		c := jwt.MapClaims{"v": 2, "o": o}
		if fea != nil {
			c["fea"] = fea
		}
		return c
	}
	cases := []struct {
		name   string
		claims jwt.MapClaims
		org    *ActiveOrganization
		actor  *Actor
		want   error // nil: accepted
	}{
		{name: "NoOrganization", claims: nil},
		{name: "V2NoOrganization", claims: jwt.MapClaims{"v": 2, "fea": "u:beta"}},
		{
			name: "V2Admin",
			claims: v2(map[string]any{"id": "org_1", "slg": "acme", "rol": "admin", "per": "spend,manage,read", "fpm": "3,4"},
				"o:credits,o:reports"),
			org: &ActiveOrganization{ID: "org_1", Slug: "acme", Role: "org:admin",
				Permissions: []string{"org:credits:spend", "org:credits:manage", "org:reports:read"}},
		},
		{
			name:   "V2MemberWithoutPermissions",
			claims: v2(map[string]any{"id": "org_1", "rol": "member"}, nil),
			org:    &ActiveOrganization{ID: "org_1", Role: "org:member"},
		},
		{
			// A user feature ("u:") is not the organization's.
			name:   "V2UserFeatureSkipped",
			claims: v2(map[string]any{"id": "org_1", "rol": "member", "per": "spend", "fpm": "1,1"}, "u:credits,o:credits"),
			org:    &ActiveOrganization{ID: "org_1", Role: "org:member", Permissions: []string{"org:credits:spend"}},
		},
		{
			name: "V1",
			claims: jwt.MapClaims{"org_id": "org_2", "org_slug": "beta", "org_role": "org:member",
				"org_permissions": []string{"org:credits:spend"}},
			org: &ActiveOrganization{ID: "org_2", Slug: "beta", Role: "org:member", Permissions: []string{"org:credits:spend"}},
		},
		{
			name:   "V1EmptyPermissions",
			claims: jwt.MapClaims{"org_id": "org_2", "org_role": "org:admin", "org_permissions": []string{}},
			org:    &ActiveOrganization{ID: "org_2", Role: "org:admin"},
		},
		{
			name: "V1AndV2Agree",
			claims: jwt.MapClaims{"v": 2, "o": map[string]any{"id": "org_1", "rol": "admin"},
				"org_id": "org_1", "org_role": "org:admin"},
			org: &ActiveOrganization{ID: "org_1", Role: "org:admin"},
		},
		{
			name:   "Impersonation",
			claims: jwt.MapClaims{"act": map[string]any{"sub": "user_support", "sid": "sess_9", "iss": "https://dashboard.clerk.com"}},
			actor:  &Actor{Subject: "user_support", SessionID: "sess_9", Issuer: "https://dashboard.clerk.com"},
		},

		{name: "ONull", claims: jwt.MapClaims{"o": nil}, want: errOrgClaims},
		{name: "OString", claims: jwt.MapClaims{"o": "org_1"}, want: errOrgClaims},
		{name: "OArray", claims: jwt.MapClaims{"o": []string{"org_1"}}, want: errOrgClaims},
		{name: "OWithoutID", claims: v2(map[string]any{"rol": "admin"}, nil), want: errOrgClaims},
		{name: "OIDNotString", claims: v2(map[string]any{"id": 1, "rol": "admin"}, nil), want: errOrgClaims},
		{name: "OIDNotClerk", claims: v2(map[string]any{"id": "team_1", "rol": "admin"}, nil), want: errOrgClaims},
		{name: "OIDBarePrefix", claims: v2(map[string]any{"id": "org_", "rol": "admin"}, nil), want: errOrgClaims},
		{name: "ORoleMissing", claims: v2(map[string]any{"id": "org_1"}, nil), want: errOrgClaims},
		{name: "ORoleNotString", claims: v2(map[string]any{"id": "org_1", "rol": []string{"admin"}}, nil), want: errOrgClaims},
		{name: "ORoleList", claims: v2(map[string]any{"id": "org_1", "rol": "admin,member"}, nil), want: errOrgClaims},
		{name: "OSlugNotString", claims: v2(map[string]any{"id": "org_1", "rol": "admin", "slg": 5}, nil), want: errOrgClaims},
		{name: "OPerArray", claims: v2(map[string]any{"id": "org_1", "rol": "admin", "per": []string{"spend"}}, nil), want: errOrgClaims},
		{name: "OPerEmptyName", claims: v2(map[string]any{"id": "org_1", "rol": "admin", "per": "spend,,read", "fpm": "1"}, "o:credits"), want: errOrgClaims},
		{name: "OFpmNumber", claims: v2(map[string]any{"id": "org_1", "rol": "admin", "per": "spend", "fpm": 1}, "o:credits"), want: errOrgClaims},
		{name: "OFpmNotNumbers", claims: v2(map[string]any{"id": "org_1", "rol": "admin", "per": "spend", "fpm": "x"}, "o:credits"), want: errOrgClaims},
		{name: "OFpmNegative", claims: v2(map[string]any{"id": "org_1", "rol": "admin", "per": "spend", "fpm": "-1"}, "o:credits"), want: errOrgClaims},
		{name: "OFpmBeyondPer", claims: v2(map[string]any{"id": "org_1", "rol": "admin", "per": "spend", "fpm": "2"}, "o:credits"), want: errOrgClaims},
		{name: "OFpmWithoutFeatures", claims: v2(map[string]any{"id": "org_1", "rol": "admin", "per": "spend", "fpm": "1"}, nil), want: errOrgClaims},
		{name: "FeaNotString", claims: v2(map[string]any{"id": "org_1", "rol": "admin", "per": "spend", "fpm": "1"}, []string{"o:credits"}), want: errOrgClaims},
		{name: "FeaWithoutScope", claims: v2(map[string]any{"id": "org_1", "rol": "admin", "per": "spend", "fpm": "1"}, "credits"), want: errOrgClaims},
		{name: "V1IDNotString", claims: jwt.MapClaims{"org_id": 7, "org_role": "org:admin"}, want: errOrgClaims},
		{name: "V1IDNotClerk", claims: jwt.MapClaims{"org_id": "acme", "org_role": "org:admin"}, want: errOrgClaims},
		{name: "V1RoleMissing", claims: jwt.MapClaims{"org_id": "org_1"}, want: errOrgClaims},
		{name: "V1RoleWithoutID", claims: jwt.MapClaims{"org_role": "org:admin"}, want: errOrgClaims},
		{name: "V1PermissionsWithoutID", claims: jwt.MapClaims{"org_permissions": []string{"org:credits:spend"}}, want: errOrgClaims},
		{name: "V1PermissionsString", claims: jwt.MapClaims{"org_id": "org_1", "org_role": "org:admin", "org_permissions": "org:credits:spend"}, want: errOrgClaims},
		{name: "V1PermissionsNull", claims: jwt.MapClaims{"org_id": "org_1", "org_role": "org:admin", "org_permissions": nil}, want: errOrgClaims},
		{name: "V1PermissionsNotStrings", claims: jwt.MapClaims{"org_id": "org_1", "org_role": "org:admin", "org_permissions": []int{1}}, want: errOrgClaims},
		{name: "V1PermissionUnprefixed", claims: jwt.MapClaims{"org_id": "org_1", "org_role": "org:admin", "org_permissions": []string{"spend"}}, want: errOrgClaims},
		{name: "V1AndV2Disagree", claims: jwt.MapClaims{"o": map[string]any{"id": "org_1", "rol": "admin"}, "org_id": "org_2", "org_role": "org:admin"}, want: errOrgClaims},
		{name: "V1AndV2RolesDisagree", claims: jwt.MapClaims{"o": map[string]any{"id": "org_1", "rol": "member"}, "org_id": "org_1", "org_role": "org:admin"}, want: errOrgClaims},
		{name: "ActNull", claims: jwt.MapClaims{"act": nil}, want: errActorClaim},
		{name: "ActString", claims: jwt.MapClaims{"act": "user_support"}, want: errActorClaim},
		{name: "ActWithoutSubject", claims: jwt.MapClaims{"act": map[string]any{"sid": "sess_9"}}, want: errActorClaim},
		{name: "ActSubjectNotString", claims: jwt.MapClaims{"act": map[string]any{"sub": 1}}, want: errActorClaim},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tok := token(tc.claims)
			claims, err := v.Verify(tok)
			if tc.want != nil {
				if !errors.Is(err, tc.want) {
					t.Fatalf("Verify: got %v, want %v", err, tc.want)
				}
				// Over the authenticator: UNAUTHENTICATED, saying why.
				_, err := a.Authenticate("Bearer " + tok)
				e, ok := apperr.As(err)
				if !ok || e.Kind != apperr.KindUnauthenticated || !strings.Contains(e.Message, "malformed") {
					t.Fatalf("Authenticate: got %v, want UNAUTHENTICATED naming the malformed claim", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !reflect.DeepEqual(claims.Organization, tc.org) {
				t.Errorf("organization %+v, want %+v", claims.Organization, tc.org)
			}
			if !reflect.DeepEqual(claims.Actor, tc.actor) {
				t.Errorf("actor %+v, want %+v", claims.Actor, tc.actor)
			}
			p, err := a.Authenticate("Bearer " + tok)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(p.Organization, tc.org) || p.Impersonated() != (tc.actor != nil) {
				t.Errorf("principal: organization %+v impersonated %v", p.Organization, p.Impersonated())
			}
			// The cached verification gives the same answer.
			again, err := v.Verify(tok)
			if err != nil || !reflect.DeepEqual(again.Organization, tc.org) {
				t.Errorf("cached: %+v, %v", again, err)
			}
		})
	}
}

// TestHasPermission: exact keys only; nil has none.
func TestHasPermission(t *testing.T) {
	t.Parallel()
	o := &ActiveOrganization{Permissions: []string{"org:credits:spend"}}
	if !o.HasPermission("org:credits:spend") || o.HasPermission("org:credits") || o.HasPermission("") {
		t.Error("HasPermission matches other than exact keys")
	}
	var none *ActiveOrganization
	if none.HasPermission("org:credits:spend") {
		t.Error("nil organization has a permission")
	}
}
