package grpcapi

import (
	"context"

	"google.golang.org/grpc"

	userdv1 "github.com/userd/userd/gen/userd/v1"
)

type restKey struct{}

// fromREST reports whether the call came through the REST gateway.
func fromREST(ctx context.Context) bool { return ctx.Value(restKey{}) != nil }

// Chained returns srv with the interceptor chains applied to direct calls,
// for the REST gateway: its calls are authenticated, authorized, mapped,
// logged and counted exactly like gRPC calls, without a second trip
// through a gRPC transport (which cost half of a REST call: pprof, make
// bench). Streams (WatchUserEvents) go through the stream chain with the
// gateway's own grpc.ServerStream.
func Chained(srv userdv1.UserServiceServer, unary []grpc.UnaryServerInterceptor, stream []grpc.StreamServerInterceptor) userdv1.UserServiceServer {
	return chained{srv: srv, chain: chainUnary(unary), streamChain: chainStream(stream)}
}

type chained struct {
	// Unsafe, not Unimplemented: an RPC added to the proto but not
	// forwarded below fails to compile, instead of REST answering 501.
	userdv1.UnsafeUserServiceServer
	srv         userdv1.UserServiceServer
	chain       grpc.UnaryServerInterceptor
	streamChain grpc.StreamServerInterceptor
}

// call runs one method through the chain.
func call[Req, Resp any](c chained, ctx context.Context, method string, req Req, h func(context.Context, Req) (Resp, error)) (Resp, error) {
	ctx = context.WithValue(ctx, restKey{}, true)
	resp, err := c.chain(ctx, req, &grpc.UnaryServerInfo{Server: c.srv, FullMethod: method},
		func(ctx context.Context, req any) (any, error) { return h(ctx, req.(Req)) })
	out, _ := resp.(Resp)
	return out, err
}

// chainUnary composes interceptors, the first outermost, as grpc does.
func chainUnary(ics []grpc.UnaryServerInterceptor) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		h := handler
		for i := len(ics) - 1; i >= 0; i-- {
			ic, next := ics[i], h
			h = func(ctx context.Context, req any) (any, error) { return ic(ctx, req, info, next) }
		}
		return h(ctx, req)
	}
}

// chainStream composes stream interceptors, the first outermost.
func chainStream(ics []grpc.StreamServerInterceptor) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		h := handler
		for i := len(ics) - 1; i >= 0; i-- {
			ic, next := ics[i], h
			h = func(srv any, ss grpc.ServerStream) error { return ic(srv, ss, info, next) }
		}
		return h(srv, ss)
	}
}

func (c chained) WatchUserEvents(req *userdv1.WatchUserEventsRequest, stream userdv1.UserService_WatchUserEventsServer) error {
	ss := withContext(stream, context.WithValue(stream.Context(), restKey{}, true))
	info := &grpc.StreamServerInfo{FullMethod: userdv1.UserService_WatchUserEvents_FullMethodName, IsServerStream: true}
	return c.streamChain(c.srv, ss, info, func(_ any, ss grpc.ServerStream) error {
		return c.srv.WatchUserEvents(req, &grpc.GenericServerStream[userdv1.WatchUserEventsRequest, userdv1.WatchUserEventsResponse]{ServerStream: ss})
	})
}

func (c chained) GetUser(ctx context.Context, req *userdv1.GetUserRequest) (*userdv1.GetUserResponse, error) {
	return call(c, ctx, userdv1.UserService_GetUser_FullMethodName, req, c.srv.GetUser)
}

func (c chained) EnsureUser(ctx context.Context, req *userdv1.EnsureUserRequest) (*userdv1.EnsureUserResponse, error) {
	return call(c, ctx, userdv1.UserService_EnsureUser_FullMethodName, req, c.srv.EnsureUser)
}

func (c chained) DeductCredits(ctx context.Context, req *userdv1.DeductCreditsRequest) (*userdv1.DeductCreditsResponse, error) {
	return call(c, ctx, userdv1.UserService_DeductCredits_FullMethodName, req, c.srv.DeductCredits)
}

func (c chained) GrantCredits(ctx context.Context, req *userdv1.GrantCreditsRequest) (*userdv1.GrantCreditsResponse, error) {
	return call(c, ctx, userdv1.UserService_GrantCredits_FullMethodName, req, c.srv.GrantCredits)
}

func (c chained) SetPlan(ctx context.Context, req *userdv1.SetPlanRequest) (*userdv1.SetPlanResponse, error) {
	return call(c, ctx, userdv1.UserService_SetPlan_FullMethodName, req, c.srv.SetPlan)
}

func (c chained) ListCreditTransactions(ctx context.Context, req *userdv1.ListCreditTransactionsRequest) (*userdv1.ListCreditTransactionsResponse, error) {
	return call(c, ctx, userdv1.UserService_ListCreditTransactions_FullMethodName, req, c.srv.ListCreditTransactions)
}

func (c chained) GetUsageSummary(ctx context.Context, req *userdv1.GetUsageSummaryRequest) (*userdv1.GetUsageSummaryResponse, error) {
	return call(c, ctx, userdv1.UserService_GetUsageSummary_FullMethodName, req, c.srv.GetUsageSummary)
}

func (c chained) CanAfford(ctx context.Context, req *userdv1.CanAffordRequest) (*userdv1.CanAffordResponse, error) {
	return call(c, ctx, userdv1.UserService_CanAfford_FullMethodName, req, c.srv.CanAfford)
}

func (c chained) SetPrice(ctx context.Context, req *userdv1.SetPriceRequest) (*userdv1.SetPriceResponse, error) {
	return call(c, ctx, userdv1.UserService_SetPrice_FullMethodName, req, c.srv.SetPrice)
}

func (c chained) ListPrices(ctx context.Context, req *userdv1.ListPricesRequest) (*userdv1.ListPricesResponse, error) {
	return call(c, ctx, userdv1.UserService_ListPrices_FullMethodName, req, c.srv.ListPrices)
}

func (c chained) ListPriceChanges(ctx context.Context, req *userdv1.ListPriceChangesRequest) (*userdv1.ListPriceChangesResponse, error) {
	return call(c, ctx, userdv1.UserService_ListPriceChanges_FullMethodName, req, c.srv.ListPriceChanges)
}

func (c chained) GetAccount(ctx context.Context, req *userdv1.GetAccountRequest) (*userdv1.GetAccountResponse, error) {
	return call(c, ctx, userdv1.UserService_GetAccount_FullMethodName, req, c.srv.GetAccount)
}

func (c chained) SetMemberSpendingCap(ctx context.Context, req *userdv1.SetMemberSpendingCapRequest) (*userdv1.SetMemberSpendingCapResponse, error) {
	return call(c, ctx, userdv1.UserService_SetMemberSpendingCap_FullMethodName, req, c.srv.SetMemberSpendingCap)
}

func (c chained) ListGrants(ctx context.Context, req *userdv1.ListGrantsRequest) (*userdv1.ListGrantsResponse, error) {
	return call(c, ctx, userdv1.UserService_ListGrants_FullMethodName, req, c.srv.ListGrants)
}

func (c chained) GetPlanCatalog(ctx context.Context, req *userdv1.GetPlanCatalogRequest) (*userdv1.GetPlanCatalogResponse, error) {
	return call(c, ctx, userdv1.UserService_GetPlanCatalog_FullMethodName, req, c.srv.GetPlanCatalog)
}

func (c chained) SetPlanAllowance(ctx context.Context, req *userdv1.SetPlanAllowanceRequest) (*userdv1.SetPlanAllowanceResponse, error) {
	return call(c, ctx, userdv1.UserService_SetPlanAllowance_FullMethodName, req, c.srv.SetPlanAllowance)
}

func (c chained) EnsureBillingCustomer(ctx context.Context, req *userdv1.EnsureBillingCustomerRequest) (*userdv1.EnsureBillingCustomerResponse, error) {
	return call(c, ctx, userdv1.UserService_EnsureBillingCustomer_FullMethodName, req, c.srv.EnsureBillingCustomer)
}

func (c chained) SetStripePrice(ctx context.Context, req *userdv1.SetStripePriceRequest) (*userdv1.SetStripePriceResponse, error) {
	return call(c, ctx, userdv1.UserService_SetStripePrice_FullMethodName, req, c.srv.SetStripePrice)
}

func (c chained) ListStripePrices(ctx context.Context, req *userdv1.ListStripePricesRequest) (*userdv1.ListStripePricesResponse, error) {
	return call(c, ctx, userdv1.UserService_ListStripePrices_FullMethodName, req, c.srv.ListStripePrices)
}
