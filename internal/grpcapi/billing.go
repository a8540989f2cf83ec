package grpcapi

import (
	"context"

	"google.golang.org/protobuf/types/known/timestamppb"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/billing"
	"github.com/userd/userd/internal/users"
)

// Billing is what the Stripe billing RPCs need (internal/billing).
type Billing interface {
	EnsureCustomer(ctx context.Context, in billing.EnsureCustomerInput) (string, bool, error)
	SetPrice(ctx context.Context, p billing.Price, changedBy string) (bool, error)
	ListPrices(ctx context.Context) ([]billing.Price, error)
}

var errNoBilling = &apperr.Error{Kind: apperr.KindFailedPrecondition, Message: "Stripe billing is not set up on this server"}

// EnsureBillingCustomer implements userdv1.UserServiceServer.
func (s *Server) EnsureBillingCustomer(ctx context.Context, req *userdv1.EnsureBillingCustomerRequest) (*userdv1.EnsureBillingCustomerResponse, error) {
	if _, err := service(ctx, "manage billing customers"); err != nil {
		return nil, err
	}
	if s.billing == nil {
		return nil, errNoBilling
	}
	if (req.GetClerkUserId() == "") == (req.GetClerkOrganizationId() == "") {
		return nil, apperr.InvalidArgument(apperr.FieldViolation{Field: "clerk_user_id", Description: "exactly one of clerk_user_id and clerk_organization_id is required"})
	}
	id, created, err := s.billing.EnsureCustomer(ctx, billing.EnsureCustomerInput{
		Ref:             users.AccountRef{ClerkUserID: req.GetClerkUserId(), ClerkOrgID: req.GetClerkOrganizationId()},
		AdoptCustomerID: req.GetAdoptCustomerId(), Email: req.GetEmail(),
	})
	if err != nil {
		return nil, err
	}
	return &userdv1.EnsureBillingCustomerResponse{CustomerId: id, Created: created}, nil
}

var stripeKindToProto = map[string]userdv1.StripePriceKind{
	billing.KindPlan: userdv1.StripePriceKind_STRIPE_PRICE_KIND_PLAN,
	billing.KindPack: userdv1.StripePriceKind_STRIPE_PRICE_KIND_PACK,
}

// SetStripePrice implements userdv1.UserServiceServer.
func (s *Server) SetStripePrice(ctx context.Context, req *userdv1.SetStripePriceRequest) (*userdv1.SetStripePriceResponse, error) {
	p, err := service(ctx, "manage prices")
	if err != nil {
		return nil, err
	}
	if s.billing == nil {
		return nil, errNoBilling
	}
	kind := ""
	for k, pk := range stripeKindToProto {
		if pk == req.GetKind() {
			kind = k
		}
	}
	price := billing.Price{PriceID: req.GetPriceId(), Kind: kind, Credits: req.GetCredits()}
	if req.GetPlan() != userdv1.Plan_PLAN_UNSPECIFIED {
		if price.Plan = planFromProto(req.GetPlan()); price.Plan == "" {
			return nil, apperr.InvalidArgument(apperr.FieldViolation{Field: "plan", Description: "is not a known plan"})
		}
	}
	changed, err := s.billing.SetPrice(ctx, price, p.Name())
	if err != nil {
		return nil, err
	}
	return &userdv1.SetStripePriceResponse{Changed: changed}, nil
}

// ListStripePrices implements userdv1.UserServiceServer.
func (s *Server) ListStripePrices(ctx context.Context, _ *userdv1.ListStripePricesRequest) (*userdv1.ListStripePricesResponse, error) {
	if _, err := service(ctx, "manage prices"); err != nil {
		return nil, err
	}
	if s.billing == nil {
		return nil, errNoBilling
	}
	ps, err := s.billing.ListPrices(ctx)
	if err != nil {
		return nil, err
	}
	out := &userdv1.ListStripePricesResponse{Prices: make([]*userdv1.StripePrice, len(ps))}
	for i, p := range ps {
		out.Prices[i] = &userdv1.StripePrice{
			PriceId: p.PriceID, Kind: stripeKindToProto[p.Kind], Credits: p.Credits,
			UpdateTime: timestamppb.New(p.UpdatedAt), UpdatedBy: p.UpdatedBy,
		}
		if p.Plan != "" {
			out.Prices[i].Plan = planToProto(p.Plan)
		}
	}
	return out, nil
}
