package grpcapi

import (
	"context"

	"google.golang.org/protobuf/types/known/timestamppb"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/users"
)

// ListGrants implements userdv1.UserServiceServer, authorized as
// GetAccount.
func (s *Server) ListGrants(ctx context.Context, req *userdv1.ListGrantsRequest) (*userdv1.ListGrantsResponse, error) {
	ref, err := s.readableAccount(ctx, req.GetClerkOrganizationId(), req.GetClerkUserId())
	if err != nil {
		return nil, err
	}
	g, err := s.users.ListGrants(ctx, ref)
	if err != nil {
		return nil, err
	}
	out := &userdv1.ListGrantsResponse{
		AccountId:          g.AccountID.String(),
		Plan:               planToProto(g.Plan),
		Balance:            g.Balance,
		NonExpiringCredits: g.NonExpiring,
		Grants:             make([]*userdv1.CreditGrant, len(g.Grants)),
		NextRefillAmount:   g.NextRefillAmount,
	}
	if !g.NextRefillAt.IsZero() {
		out.NextRefillTime = timestamppb.New(g.NextRefillAt)
	}
	for i, gr := range g.Grants {
		pg := &userdv1.CreditGrant{
			Id: gr.ID, Source: gr.Source, Amount: gr.Amount, Remaining: gr.Remaining,
			EffectiveTime: timestamppb.New(gr.EffectiveAt), ExpireTime: timestamppb.New(gr.ExpiresAt),
			TransactionId: gr.TransactionID,
		}
		if gr.PeriodStart != nil {
			pg.PeriodStartTime = timestamppb.New(*gr.PeriodStart)
		}
		out.Grants[i] = pg
	}
	return out, nil
}

// GetPlanCatalog implements userdv1.UserServiceServer: every
// authenticated caller.
func (s *Server) GetPlanCatalog(ctx context.Context, _ *userdv1.GetPlanCatalogRequest) (*userdv1.GetPlanCatalogResponse, error) {
	if _, err := principal(ctx); err != nil {
		return nil, err
	}
	c, err := s.users.GetPlanCatalog(ctx)
	if err != nil {
		return nil, err
	}
	out := &userdv1.GetPlanCatalogResponse{Plans: make([]*userdv1.PlanAllowance, len(c))}
	for i, p := range c {
		out.Plans[i] = planAllowanceToProto(p)
	}
	return out, nil
}

// SetPlanAllowance implements userdv1.UserServiceServer: services only;
// the audit history names the calling service.
func (s *Server) SetPlanAllowance(ctx context.Context, req *userdv1.SetPlanAllowanceRequest) (*userdv1.SetPlanAllowanceResponse, error) {
	p, err := service(ctx, "manage the plan catalog")
	if err != nil {
		return nil, err
	}
	e, changed, err := s.users.SetPlanAllowance(ctx, users.PlanAllowance{
		Plan: planFromProto(req.GetPlan()), Allowance: req.GetAllowance(), Period: req.GetPeriod(),
		RolloverCap: req.GetRolloverCap(), UpgradeBonus: req.GetUpgradeBonus(), UpdatedBy: p.Name(),
	})
	if err != nil {
		return nil, err
	}
	return &userdv1.SetPlanAllowanceResponse{PlanAllowance: planAllowanceToProto(e), Changed: changed}, nil
}

func planAllowanceToProto(p users.PlanAllowance) *userdv1.PlanAllowance {
	return &userdv1.PlanAllowance{
		Plan: planToProto(p.Plan), Allowance: p.Allowance, Period: p.Period, RolloverCap: p.RolloverCap,
		UpgradeBonus: p.UpgradeBonus, UpdateTime: timestamppb.New(p.UpdatedAt), UpdatedBy: p.UpdatedBy,
	}
}
