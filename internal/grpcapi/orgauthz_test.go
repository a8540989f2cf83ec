package grpcapi

import (
	"context"
	"testing"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/auth"
)

// TestOrgAccount: the token's side of organization authorization, for
// each operation and policy (the membership's side is the database's).
func TestOrgAccount(t *testing.T) {
	t.Parallel()
	user := func(org *auth.ActiveOrganization, act *auth.Actor) context.Context {
		return auth.WithPrincipal(context.Background(), auth.Principal{Kind: auth.KindUser, ClerkUserID: "user_1", Organization: org, Actor: act})
	}
	member := &auth.ActiveOrganization{ID: "org_a", Role: "org:member"}
	spender := &auth.ActiveOrganization{ID: "org_a", Role: "org:member", Permissions: []string{"org:credits:spend"}}
	manager := &auth.ActiveOrganization{ID: "org_a", Role: "org:billing", Permissions: []string{"org:credits:manage"}}
	admin := &auth.ActiveOrganization{ID: "org_a", Role: "org:admin"}
	service := auth.WithPrincipal(context.Background(), auth.Principal{Kind: auth.KindService, Service: "billing"})
	anyMember := OrgPolicy{ManagePermission: "org:credits:manage"}
	strict := OrgPolicy{SpendPermission: "org:credits:spend", ManagePermission: "org:credits:manage"}
	adminOnly := OrgPolicy{SpendPermission: "org:credits:spend"}

	cases := []struct {
		name      string
		ctx       context.Context
		policy    OrgPolicy
		requested string
		op        orgOp
		reason    string // "" and kind 0: allowed
		kind      apperr.Kind
		member    string
		perm      string
	}{
		{"MemberSpendsAnyMember", user(member, nil), anyMember, "", orgSpend, "", 0, "user_1", ""},
		{"MemberSpendsAsMe", user(member, nil), anyMember, Me, orgSpend, "", 0, "user_1", ""},
		{"MemberReads", user(member, nil), strict, "", orgRead, "", 0, "user_1", ""},
		{"SpenderSpendsStrict", user(spender, nil), strict, "user_1", orgSpend, "", 0, "user_1", "org:credits:spend"},
		{"MemberSpendsStrict", user(member, nil), strict, "", orgSpend, apperr.ReasonMissingOrganizationPermission, apperr.KindPermissionDenied, "", ""},
		{"OtherOrganization", user(&auth.ActiveOrganization{ID: "org_b", Role: "org:admin"}, nil), anyMember, "", orgRead, apperr.ReasonOrganizationNotActive, apperr.KindPermissionDenied, "", ""},
		{"NoOrganization", user(nil, nil), anyMember, "", orgRead, apperr.ReasonOrganizationNotActive, apperr.KindPermissionDenied, "", ""},
		{"Impersonation", user(admin, &auth.Actor{Subject: "user_op"}), anyMember, "", orgRead, apperr.ReasonImpersonationNotAllowed, apperr.KindPermissionDenied, "", ""},
		{"AsAnotherUser", user(admin, nil), anyMember, "user_2", orgSpend, "", apperr.KindPermissionDenied, "", ""},
		{"EndUserGrants", user(admin, nil), anyMember, "", orgServiceOnly, "", apperr.KindPermissionDenied, "", ""},
		{"AdminManages", user(admin, nil), strict, "", orgManage, "", 0, "user_1", ""},
		{"ManagerManages", user(manager, nil), strict, "", orgManage, "", 0, "user_1", ""},
		{"ManagerWithoutManagePermissionSetting", user(manager, nil), adminOnly, "", orgManage, "", apperr.KindPermissionDenied, "", ""},
		{"MemberManages", user(spender, nil), strict, "", orgManage, apperr.ReasonMissingOrganizationPermission, apperr.KindPermissionDenied, "", ""},
		{"ServiceSpendsForMember", service, strict, "user_9", orgSpend, "", 0, "user_9", ""},
		{"ServiceGrants", service, strict, "", orgServiceOnly, "", 0, "", ""},
		{"ServiceMe", service, strict, Me, orgSpend, "", apperr.KindInvalidArgument, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := &Server{orgs: tc.policy}
			c, err := s.orgAccount(tc.ctx, "org_a", tc.requested, tc.op)
			if tc.kind == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if c.member != tc.member || c.requiredPermission != tc.perm {
					t.Errorf("member %q permission %q, want %q %q", c.member, c.requiredPermission, tc.member, tc.perm)
				}
				return
			}
			e, ok := apperr.As(err)
			if !ok || e.Kind != tc.kind || (tc.reason != "" && e.Reason != tc.reason) {
				t.Fatalf("got %v, want kind %v reason %q", err, tc.kind, tc.reason)
			}
		})
	}
}
