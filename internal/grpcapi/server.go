// Package grpcapi is the gRPC transport of userd.v1.UserService. Handlers
// only translate between protobuf and the domain (internal/users); errors
// are mapped to status codes once, in ErrorInterceptor.
package grpcapi

import (
	"context"

	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/auth"
	"github.com/userd/userd/internal/feed"
	"github.com/userd/userd/internal/users"
)

// Server implements userdv1.UserServiceServer over the domain service. It
// authorizes (see authz.go) and translates; the rules are the domain's.
type Server struct {
	// Unsafe, not Unimplemented: an RPC added to the proto without an
	// implementation here fails to compile instead of answering
	// UNIMPLEMENTED.
	userdv1.UnsafeUserServiceServer
	users    *users.Service
	profiles Profiles
	// feed serves WatchUserEvents (Options.Feed).
	feed *feed.Hub
	// watches counts open WatchUserEvents streams (see WithWatchLimits);
	// nil: unbounded.
	watches *watchCounter
	// orgs is what end users need to act on organizations' accounts.
	orgs OrgPolicy
	// billing serves the Stripe billing RPCs (Options.Billing).
	billing Billing
}

var _ userdv1.UserServiceServer = (*Server)(nil)

// NewServer returns a Server backed by svc; profiles serves end users'
// EnsureUser.
func NewServer(svc *users.Service, profiles Profiles, opts Options) *Server {
	return &Server{users: svc, profiles: profiles, feed: opts.Feed, orgs: opts.Orgs, billing: opts.Billing}
}

// Options configures a Server.
type Options struct {
	// Feed, if set, answers WatchUserEvents; without it, the method fails.
	Feed *feed.Hub
	// Orgs is what end users need to act on organizations' accounts.
	Orgs OrgPolicy
	// Billing, if set, answers the Stripe billing RPCs; without it they
	// fail FAILED_PRECONDITION.
	Billing Billing
}

// GetUser implements userdv1.UserServiceServer.
func (s *Server) GetUser(ctx context.Context, req *userdv1.GetUserRequest) (*userdv1.GetUserResponse, error) {
	l := users.Lookup{ClerkUserID: req.GetClerkUserId(), ID: req.GetId(), Email: req.GetEmail()}
	if l.ClerkUserID != "" {
		id, err := ownUser(ctx, l.ClerkUserID)
		if err != nil {
			return nil, err
		}
		l.ClerkUserID = id
	}
	u, err := s.users.GetUser(ctx, l)
	if err != nil {
		return nil, err
	}
	if err := visible(ctx, u); err != nil {
		return nil, err
	}
	return &userdv1.GetUserResponse{User: userToProto(u)}, nil
}

// EnsureUser implements userdv1.UserServiceServer. A service passes the
// profile; an end user's profile comes only from Clerk (a session token
// claim or the Backend API), never from the request.
func (s *Server) EnsureUser(ctx context.Context, req *userdv1.EnsureUserRequest) (*userdv1.EnsureUserResponse, error) {
	id, err := ownUser(ctx, req.GetClerkUserId())
	if err != nil {
		return nil, err
	}
	var (
		u       users.User
		created bool
	)
	if p, _ := principal(ctx); p.Kind == auth.KindUser {
		u, created, err = s.users.EnsureClerkUser(ctx, id, s.profiles.For(p))
	} else {
		u, created, err = s.users.EnsureUser(ctx, users.EnsureUserInput{
			ClerkUserID: id,
			Email:       req.GetEmail(),
			FirstName:   req.GetFirstName(),
			LastName:    req.GetLastName(),
			ImageURL:    req.GetImageUrl(),
		})
	}
	if err != nil {
		return nil, err
	}
	return &userdv1.EnsureUserResponse{User: userToProto(u), Created: created}, nil
}

// creditChange authorizes and translates a deduct or grant request: of a
// user's personal account (services only, as before accounts), or, with
// org set, of the organization's account (end users may spend, as op
// allows; see orgAccount).
func (s *Server) creditChange(ctx context.Context, org, clerkUserID string, amount int64, action, key, reason string, op orgOp) (users.CreditChange, error) {
	c := users.CreditChange{Amount: amount, Action: action, Reason: reason}
	if org == "" {
		if _, err := servicesOnly(ctx); err != nil {
			return users.CreditChange{}, err
		}
		id, err := ownUser(ctx, clerkUserID)
		if err != nil {
			return users.CreditChange{}, err
		}
		c.ClerkUserID = id
	} else {
		caller, err := s.orgAccount(ctx, org, clerkUserID, op)
		if err != nil {
			return users.CreditChange{}, err
		}
		c.ClerkOrgID, c.ClerkUserID, c.RequiredPermission = org, caller.member, caller.requiredPermission
	}
	if p, _ := principal(ctx); p.Kind == auth.KindService {
		c.Service = p.Service
	}
	var err error
	if c.IdempotencyKey, err = idempotencyKey(ctx, key); err != nil {
		return users.CreditChange{}, err
	}
	return c, nil
}

// DeductCredits implements userdv1.UserServiceServer.
func (s *Server) DeductCredits(ctx context.Context, req *userdv1.DeductCreditsRequest) (*userdv1.DeductCreditsResponse, error) {
	c, err := s.creditChange(ctx, req.GetClerkOrganizationId(), req.GetClerkUserId(), req.GetAmount(), req.GetAction(), req.GetIdempotencyKey(), req.GetReason(), orgSpend)
	if err != nil {
		return nil, err
	}
	t, err := s.users.DeductCredits(ctx, c)
	if err != nil {
		return nil, err
	}
	return &userdv1.DeductCreditsResponse{Transaction: transactionToProto(t.Transaction, c.ClerkOrgID), Balance: t.BalanceAfter, Replayed: t.Replayed}, nil
}

// GrantCredits implements userdv1.UserServiceServer.
func (s *Server) GrantCredits(ctx context.Context, req *userdv1.GrantCreditsRequest) (*userdv1.GrantCreditsResponse, error) {
	c, err := s.creditChange(ctx, req.GetClerkOrganizationId(), req.GetClerkUserId(), req.GetAmount(), "", req.GetIdempotencyKey(), req.GetReason(), orgServiceOnly)
	if err != nil {
		return nil, err
	}
	if e := req.GetExpiresAt(); e != nil {
		if !e.IsValid() {
			return nil, apperr.InvalidArgument(apperr.FieldViolation{Field: "expires_at", Description: "is not a valid timestamp"})
		}
		c.ExpiresAt = e.AsTime()
	}
	c.GrantSource = req.GetGrantSource()
	t, err := s.users.GrantCredits(ctx, c)
	if err != nil {
		return nil, err
	}
	return &userdv1.GrantCreditsResponse{Transaction: transactionToProto(t.Transaction, c.ClerkOrgID), Balance: t.BalanceAfter, Replayed: t.Replayed}, nil
}

// SetPlan implements userdv1.UserServiceServer.
func (s *Server) SetPlan(ctx context.Context, req *userdv1.SetPlanRequest) (*userdv1.SetPlanResponse, error) {
	svc, err := servicesOnly(ctx)
	if err != nil {
		return nil, err
	}
	// An organization's plan: servicesOnly refused end users above, as
	// orgAccount's orgServiceOnly would; the request must name no user.
	org, id := req.GetClerkOrganizationId(), req.GetClerkUserId()
	if org == "" {
		if id, err = ownUser(ctx, id); err != nil {
			return nil, err
		}
	}
	key, err := idempotencyKey(ctx, req.GetIdempotencyKey())
	if err != nil {
		return nil, err
	}
	res, err := s.users.SetPlan(ctx, users.SetPlanInput{
		ClerkOrgID:     org,
		ClerkUserID:    id,
		Plan:           planFromProto(req.GetPlan()),
		BonusCredits:   req.GetBonusCredits(),
		IdempotencyKey: key,
		Reason:         req.GetReason(),
		Service:        svc,
	})
	if err != nil {
		return nil, err
	}
	out := &userdv1.SetPlanResponse{
		PreviousPlan: planToProto(res.Change.PreviousPlan),
		Replayed:     res.Replayed,
	}
	if org == "" {
		out.User = userToProto(res.User)
	} else {
		out.Account = accountToProto(res.Account)
	}
	if res.Bonus != nil {
		out.BonusTransaction = transactionToProto(*res.Bonus, org)
	}
	return out, nil
}

// ListCreditTransactions implements userdv1.UserServiceServer: a user's
// personal ledger (an end user: its own), or an organization account's
// (optionally one member's; an end user: its active organization's, while
// a live member).
func (s *Server) ListCreditTransactions(ctx context.Context, req *userdv1.ListCreditTransactionsRequest) (*userdv1.ListCreditTransactionsResponse, error) {
	q := users.LedgerQuery{
		ClerkOrgID: req.GetClerkOrganizationId(), MemberClerkUserID: req.GetMemberClerkUserId(),
		PageSize: req.GetPageSize(), PageToken: req.GetPageToken(),
	}
	if q.ClerkOrgID == "" {
		id, err := ownUser(ctx, req.GetClerkUserId())
		if err != nil {
			return nil, err
		}
		q.ClerkUserID = id
	} else if err := s.authorizeOrgRead(ctx, q.ClerkOrgID, req.GetClerkUserId()); err != nil {
		return nil, err
	}
	page, err := s.users.ListAccountCreditTransactions(ctx, q)
	if err != nil {
		return nil, err
	}
	out := &userdv1.ListCreditTransactionsResponse{
		Transactions:  make([]*userdv1.CreditTransaction, len(page.Transactions)),
		NextPageToken: page.NextPageToken,
	}
	for i, t := range page.Transactions {
		out.Transactions[i] = transactionToProto(t, q.ClerkOrgID)
	}
	return out, nil
}

func userToProto(u users.User) *userdv1.User {
	return &userdv1.User{
		Id:          u.ID.String(),
		ClerkUserId: u.ClerkUserID,
		Email:       u.Email,
		FirstName:   u.FirstName,
		LastName:    u.LastName,
		ImageUrl:    u.ImageURL,
		Plan:        planToProto(u.Plan),
		Credits:     u.Credits,
		CreateTime:  timestamppb.New(u.CreatedAt),
		UpdateTime:  timestamppb.New(u.UpdatedAt),
	}
}

// transactionToProto translates a ledger entry of the account of org (""
// for a personal account).
func transactionToProto(t users.Transaction, org string) *userdv1.CreditTransaction {
	out := &userdv1.CreditTransaction{
		Id:                  t.ID,
		UserId:              t.UserID.String(),
		Delta:               t.Delta,
		BalanceAfter:        t.BalanceAfter,
		Kind:                txKindToProto[t.Kind],
		Reason:              t.Reason,
		IdempotencyKey:      t.IdempotencyKey,
		CreateTime:          timestamppb.New(t.CreatedAt),
		AccountId:           t.AccountID.String(),
		ClerkOrganizationId: org,
		Service:             t.Service,
	}
	if t.AccountID == uuid.Nil {
		out.AccountId = out.UserId
	}
	if org != "" {
		// The entry is the organization's account's, not a user's.
		out.UserId = ""
	}
	if t.ActorUserID != uuid.Nil {
		out.ActorUserId = t.ActorUserID.String()
	}
	out.ActorClerkUserId = t.ActorClerkUserID
	return out
}

var (
	planToProtoMap = map[users.Plan]userdv1.Plan{
		users.PlanFree:       userdv1.Plan_PLAN_FREE,
		users.PlanPro:        userdv1.Plan_PLAN_PRO,
		users.PlanEnterprise: userdv1.Plan_PLAN_ENTERPRISE,
	}
	txKindToProto = map[users.TxKind]userdv1.TransactionKind{
		users.TxInitial:   userdv1.TransactionKind_TRANSACTION_KIND_INITIAL,
		users.TxDeduct:    userdv1.TransactionKind_TRANSACTION_KIND_DEDUCT,
		users.TxGrant:     userdv1.TransactionKind_TRANSACTION_KIND_GRANT,
		users.TxPlanBonus: userdv1.TransactionKind_TRANSACTION_KIND_PLAN_BONUS,
		users.TxAllowance: userdv1.TransactionKind_TRANSACTION_KIND_ALLOWANCE,
		users.TxExpire:    userdv1.TransactionKind_TRANSACTION_KIND_EXPIRE,
	}
)

func planToProto(p users.Plan) userdv1.Plan { return planToProtoMap[p] }

// planFromProto maps unknown and unspecified values to "", which the domain
// rejects as an invalid plan.
func planFromProto(p userdv1.Plan) users.Plan {
	for d, pp := range planToProtoMap {
		if pp == p {
			return d
		}
	}
	return ""
}
