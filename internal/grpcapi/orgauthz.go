package grpcapi

import (
	"context"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/auth"
)

// OrgPolicy is what the operator requires of end users acting on an
// organization's account (USERD_ORG_SPEND_PERMISSION,
// USERD_ORG_MANAGE_PERMISSION).
type OrgPolicy struct {
	// SpendPermission, when set, is the Clerk organization permission an
	// end user needs to spend (in its token, and in its mirrored
	// membership, checked by the database in the spend's transaction);
	// empty: any live member may spend.
	SpendPermission string
	// ManagePermission lets an end user set members' caps besides the
	// role org:admin; empty: org:admin only.
	ManagePermission string
}

// AdminRole is Clerk's organization admin role.
const AdminRole = "org:admin"

// orgOp is what a caller does with an organization's account.
type orgOp int

const (
	// orgRead: read the account, its ledger, its usage, can-afford.
	orgRead orgOp = iota
	// orgSpend: deduct from it.
	orgSpend
	// orgManage: set members' spending caps.
	orgManage
	// orgServiceOnly: grant credits, change the plan.
	orgServiceOnly
)

// orgCaller is an authorized caller of an organization's account.
type orgCaller struct {
	principal auth.Principal
	// member is the Clerk user acting: an end user itself; for a
	// service, the clerk_user_id the request names ("" when none).
	member string
	// requiredPermission is what the database must find in the member's
	// mirrored permissions for a spend ("" for none); services spend
	// without it (they still name a live member).
	requiredPermission string
}

// orgAccount authorizes a call on the account of organization org, with
// requested the clerk_user_id the request names. A service may do
// anything, naming any member. An end user may act only on its session's
// active organization, never with an impersonation token, only as itself
// (requested "", "me" or its own id), and never grant or change the plan;
// spending needs the configured spend permission in the token, managing
// caps the role org:admin or the manage permission. Live membership is
// the database's to check, in the transaction of the operation itself
// (spends, reads) or by the caller (manage: see (*Server).checkManager).
func (s *Server) orgAccount(ctx context.Context, org, requested string, op orgOp) (orgCaller, error) {
	p, err := principal(ctx)
	if err != nil {
		return orgCaller{}, err
	}
	switch p.Kind {
	case auth.KindService:
		if requested == Me {
			return orgCaller{}, apperr.InvalidArgument(apperr.FieldViolation{
				Field: "clerk_user_id", Description: `"me" needs an end user's session token`,
			})
		}
		return orgCaller{principal: p, member: requested}, nil
	case auth.KindUser:
	default:
		return orgCaller{}, apperr.Unauthenticated("no credentials")
	}
	if op == orgServiceOnly {
		return orgCaller{}, apperr.PermissionDenied("only backend services may grant credits to or change the plan of an organization's account")
	}
	if p.Impersonated() {
		return orgCaller{}, apperr.ImpersonationNotAllowed()
	}
	if p.Organization == nil || p.Organization.ID != org {
		return orgCaller{}, apperr.OrganizationNotActive()
	}
	if requested != "" && requested != Me && requested != p.ClerkUserID {
		return orgCaller{}, apperr.PermissionDenied("end users act on an organization's account only as themselves: leave clerk_user_id empty or \"me\"")
	}
	c := orgCaller{principal: p, member: p.ClerkUserID}
	switch op {
	case orgSpend:
		if perm := s.orgs.SpendPermission; perm != "" {
			if !p.Organization.HasPermission(perm) {
				return orgCaller{}, apperr.MissingOrganizationPermission(perm)
			}
			c.requiredPermission = perm
		}
	case orgManage:
		if !canManage(p.Organization.Role, p.Organization.Permissions, s.orgs.ManagePermission) {
			return orgCaller{}, managerRequired(s.orgs.ManagePermission)
		}
	}
	return c, nil
}

// canManage reports whether a role and permissions may set members' caps.
func canManage(role string, permissions []string, managePermission string) bool {
	if role == AdminRole {
		return true
	}
	if managePermission == "" {
		return false
	}
	for _, p := range permissions {
		if p == managePermission {
			return true
		}
	}
	return false
}

func managerRequired(managePermission string) error {
	if managePermission == "" {
		return apperr.PermissionDenied("setting members' spending caps needs the role " + AdminRole)
	}
	return apperr.MissingOrganizationPermission(managePermission)
}
