package grpcapi

import (
	"context"
	"slices"

	"google.golang.org/protobuf/types/known/timestamppb"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/auth"
	"github.com/userd/userd/internal/users"
)

// GetAccount implements userdv1.UserServiceServer: a personal account as
// GetUser is authorized (an end user: its own), an organization's as a
// read of it (an end user: its active organization, while a live member).
func (s *Server) GetAccount(ctx context.Context, req *userdv1.GetAccountRequest) (*userdv1.GetAccountResponse, error) {
	ref, err := s.readableAccount(ctx, req.GetClerkOrganizationId(), req.GetClerkUserId())
	if err != nil {
		return nil, err
	}
	a, err := s.users.GetAccount(ctx, ref)
	if err != nil {
		return nil, err
	}
	return &userdv1.GetAccountResponse{Account: accountToProto(a)}, nil
}

// readableAccount names the account a read asks for, exactly one of org
// and user, once the caller may read it: a personal account as GetUser is
// authorized (an end user: its own), an organization's as
// authorizeOrgRead.
func (s *Server) readableAccount(ctx context.Context, org, user string) (users.AccountRef, error) {
	if (org == "") == (user == "") {
		return users.AccountRef{}, apperr.InvalidArgument(apperr.FieldViolation{
			Field: "clerk_user_id", Description: "name exactly one of clerk_user_id (a personal account) and clerk_organization_id",
		})
	}
	ref := users.AccountRef{ClerkOrgID: org}
	if org == "" {
		id, err := ownUser(ctx, user)
		if err != nil {
			return users.AccountRef{}, err
		}
		ref.ClerkUserID = id
	} else if err := s.authorizeOrgRead(ctx, org, ""); err != nil {
		return users.AccountRef{}, err
	}
	return ref, nil
}

// authorizeOrgRead authorizes reading the account of org: a service
// always; an end user as orgAccount says, and only while it is a live
// member (the membership mirror, read now: a read racing the member's
// removal is harmless, unlike a spend, which the database checks in its
// own transaction).
func (s *Server) authorizeOrgRead(ctx context.Context, org, requested string) error {
	caller, err := s.orgAccount(ctx, org, requested, orgRead)
	if err != nil {
		return err
	}
	if caller.principal.Kind == auth.KindService {
		return nil
	}
	return s.requireMember(ctx, org, caller.member)
}

// requireMember refuses a user who is not a live member of org.
func (s *Server) requireMember(ctx context.Context, org, clerkUserID string) error {
	orgs, err := s.users.OrganizationsOf(ctx, clerkUserID)
	if err != nil {
		return err
	}
	if !slices.Contains(orgs, org) {
		return apperr.NotOrganizationMember()
	}
	return nil
}

// SetMemberSpendingCap implements userdv1.UserServiceServer. Services may
// set any member's cap; an end user needs its active organization to be
// the account's, the role org:admin or the manage permission in its token,
// and the same in its live membership as mirrored from Clerk.
func (s *Server) SetMemberSpendingCap(ctx context.Context, req *userdv1.SetMemberSpendingCapRequest) (*userdv1.SetMemberSpendingCapResponse, error) {
	org := req.GetClerkOrganizationId()
	if org == "" {
		return nil, apperr.InvalidArgument(apperr.FieldViolation{Field: "clerk_organization_id", Description: "is required"})
	}
	caller, err := s.orgAccount(ctx, org, "", orgManage)
	if err != nil {
		return nil, err
	}
	changedBy := caller.principal.Name()
	if caller.principal.Kind == auth.KindUser {
		if err := s.requireManager(ctx, org, caller.member); err != nil {
			return nil, err
		}
	}
	period, ok := capPeriodFromProto[req.GetPeriod()]
	if !ok {
		return nil, apperr.InvalidArgument(apperr.FieldViolation{Field: "period", Description: "must be USAGE_PERIOD_DAY, _WEEK, _MONTH, or unspecified to remove the cap"})
	}
	member := req.GetMemberClerkUserId()
	res, err := s.users.SetMemberSpendingCap(ctx, users.SetMemberCapInput{
		ClerkOrgID: org, MemberClerkUserID: member, Period: period, Cap: req.GetCap(), ChangedBy: changedBy,
	})
	if err != nil {
		return nil, err
	}
	out := &userdv1.AccountMember{ClerkUserId: member}
	if c := res.Cap; c != nil {
		out.CapPeriod = capPeriodToProto[c.Period]
		out.Cap, out.SpentThisPeriod, out.RemainingThisPeriod = c.Cap, c.Spent, c.Remaining
	}
	// Role and permissions, from the membership mirror.
	o, err := s.users.GetOrganization(ctx, org, true)
	if err != nil {
		return nil, err
	}
	for _, m := range o.Members {
		if m.ClerkUserID == member {
			out.Role, out.Permissions = m.Role, m.Permissions
		}
	}
	return &userdv1.SetMemberSpendingCapResponse{Member: out}, nil
}

// requireManager refuses an end user whose live membership of org, as
// mirrored, has neither the role org:admin nor the manage permission: the
// token said so (orgAccount), but a token lives up to a minute after a
// demotion.
func (s *Server) requireManager(ctx context.Context, org, clerkUserID string) error {
	o, err := s.users.GetOrganization(ctx, org, false)
	if err != nil {
		return err
	}
	for _, m := range o.Members {
		if m.ClerkUserID == clerkUserID {
			if canManage(m.Role, m.Permissions, s.orgs.ManagePermission) {
				return nil
			}
			return managerRequired(s.orgs.ManagePermission)
		}
	}
	return apperr.NotOrganizationMember()
}

var (
	capPeriodFromProto = map[userdv1.UsagePeriod]users.CapPeriod{
		userdv1.UsagePeriod_USAGE_PERIOD_UNSPECIFIED: users.CapPeriodNone,
		userdv1.UsagePeriod_USAGE_PERIOD_DAY:         users.CapPeriodDay,
		userdv1.UsagePeriod_USAGE_PERIOD_WEEK:        users.CapPeriodWeek,
		userdv1.UsagePeriod_USAGE_PERIOD_MONTH:       users.CapPeriodMonth,
	}
	capPeriodToProto = func() map[users.CapPeriod]userdv1.UsagePeriod {
		m := map[users.CapPeriod]userdv1.UsagePeriod{}
		for k, v := range capPeriodFromProto {
			m[v] = k
		}
		return m
	}()
)

func accountToProto(a users.Account) *userdv1.Account {
	out := &userdv1.Account{
		Id:                  a.ID.String(),
		OwnerClerkUserId:    a.OwnerClerkUserID,
		ClerkOrganizationId: a.OwnerClerkOrgID,
		Plan:                planToProto(a.Plan),
		Credits:             a.Credits,
		CreateTime:          timestamppb.New(a.CreatedAt),
	}
	if a.ClosedAt != nil {
		out.CloseTime = timestamppb.New(*a.ClosedAt)
	}
	for _, m := range a.Members {
		am := &userdv1.AccountMember{ClerkUserId: m.ClerkUserID, Role: m.Role, Permissions: m.Permissions}
		if p := users.CapPeriod(m.CapPeriod); p != users.CapPeriodNone {
			am.CapPeriod = capPeriodToProto[p]
			am.Cap, am.SpentThisPeriod = m.Cap, m.Spent
			am.RemainingThisPeriod = max(m.Cap-m.Spent, 0)
		}
		out.Members = append(out.Members, am)
	}
	return out
}
