package grpcapi

import (
	"context"

	"google.golang.org/protobuf/types/known/timestamppb"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/users"
)

// SetPrice implements userdv1.UserServiceServer. The audit history names
// the calling service.
func (s *Server) SetPrice(ctx context.Context, req *userdv1.SetPriceRequest) (*userdv1.SetPriceResponse, error) {
	p, err := service(ctx, "manage prices")
	if err != nil {
		return nil, err
	}
	res, err := s.users.SetPrice(ctx, users.SetPriceInput{Action: req.GetAction(), Credits: req.GetCredits(), ChangedBy: p.Name()})
	if err != nil {
		return nil, err
	}
	out := &userdv1.SetPriceResponse{Price: priceToProto(res.Price)}
	if res.Change != nil {
		out.Change = priceChangeToProto(*res.Change)
	}
	return out, nil
}

// ListPrices implements userdv1.UserServiceServer.
func (s *Server) ListPrices(ctx context.Context, req *userdv1.ListPricesRequest) (*userdv1.ListPricesResponse, error) {
	if _, err := service(ctx, "manage prices"); err != nil {
		return nil, err
	}
	page, err := s.users.ListPrices(ctx, req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	out := &userdv1.ListPricesResponse{Prices: make([]*userdv1.Price, len(page.Prices)), NextPageToken: page.NextPageToken}
	for i, p := range page.Prices {
		out.Prices[i] = priceToProto(p)
	}
	return out, nil
}

// ListPriceChanges implements userdv1.UserServiceServer.
func (s *Server) ListPriceChanges(ctx context.Context, req *userdv1.ListPriceChangesRequest) (*userdv1.ListPriceChangesResponse, error) {
	if _, err := service(ctx, "manage prices"); err != nil {
		return nil, err
	}
	page, err := s.users.ListPriceChanges(ctx, req.GetAction(), req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	out := &userdv1.ListPriceChangesResponse{Changes: make([]*userdv1.PriceChange, len(page.Changes)), NextPageToken: page.NextPageToken}
	for i, c := range page.Changes {
		out.Changes[i] = priceChangeToProto(c)
	}
	return out, nil
}

func priceToProto(p users.Price) *userdv1.Price {
	return &userdv1.Price{
		Action:     p.Action,
		Credits:    p.Credits,
		CreateTime: timestamppb.New(p.CreatedAt),
		UpdateTime: timestamppb.New(p.UpdatedAt),
		UpdatedBy:  p.UpdatedBy,
	}
}

func priceChangeToProto(c users.PriceChange) *userdv1.PriceChange {
	return &userdv1.PriceChange{
		Id:              c.ID,
		Action:          c.Action,
		PreviousCredits: c.PreviousCredits,
		Credits:         c.Credits,
		ChangedBy:       c.ChangedBy,
		ChangeTime:      timestamppb.New(c.ChangedAt),
	}
}
