package grpcapi

import (
	"context"
	"errors"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/auth"
	"github.com/userd/userd/internal/consistency"
	"github.com/userd/userd/internal/feed"
	"github.com/userd/userd/internal/users"
)

// WithWatchLimits bounds the WatchUserEvents streams open at once.
func (s *Server) WithWatchLimits(lim WatchLimits) *Server {
	s.watches = newWatchCounter(lim)
	return s
}

// WatchUserEvents implements userdv1.UserServiceServer.
func (s *Server) WatchUserEvents(req *userdv1.WatchUserEventsRequest, stream userdv1.UserService_WatchUserEventsServer) error {
	ctx := stream.Context()
	if s.feed == nil {
		return errors.New("WatchUserEvents: no change feed configured")
	}
	r, err := watchRequest(ctx, req, s.feed.Cursors())
	if err != nil {
		return err
	}
	p, _ := principal(ctx)
	if p.Kind == auth.KindUser && !p.Impersonated() {
		// An end user sees its own events and those of the
		// organizations it is a live member of, asked again as its
		// memberships change. An impersonation session sees the user's
		// own events only: organizations' accounts are refused to it.
		user := r.ClerkUserID
		r.Organizations = func(ctx context.Context) ([]string, error) { return s.users.OrganizationsOf(ctx, user) }
	}
	if s.watches != nil {
		release, err := s.watches.acquire(p)
		if err != nil {
			return err
		}
		defer release()
	}
	// An end user's stream lasts as long as the session token that opened
	// it (and the leeway): a revoked session's feed stops within Clerk's
	// token lifetime (60 s), as its calls do.
	// Only the catch-up reads may go to a standby (the organizations
	// of an end user are read on the primary: a stale list would hide
	// an organization just joined).
	tokens := false
	if min, ok := consistency.StandbyAllowed(ctx); ok {
		r.Standby, r.Token, tokens = true, min, true
	}
	watchCtx := consistency.PrimaryOnly(ctx)
	if !p.Expires.IsZero() {
		var cancel context.CancelFunc
		watchCtx, cancel = context.WithDeadline(watchCtx, p.Expires)
		defer cancel()
	}
	err = s.feed.Watch(watchCtx, r, watchSink{stream: stream, cursors: s.feed.Cursors(), tokens: tokens})
	switch {
	case ctx.Err() != nil:
		// The caller went away (or its deadline passed): say so, not
		// "internal".
		return status.FromContextError(ctx.Err()).Err()
	case watchCtx.Err() != nil:
		return apperr.Unauthenticated("session token expired: watch again with a fresh token, from the last cursor received")
	case errors.Is(err, feed.ErrClosing):
		// UNAVAILABLE, but not the database's fault: a status of its own,
		// which the error mapping does not log as a database outage.
		return status.Error(codes.Unavailable, feed.ErrClosing.Message)
	}
	return err
}

// watchRequest authorizes and translates a watch: a service may watch
// every user or one; an end user only itself.
func watchRequest(ctx context.Context, req *userdv1.WatchUserEventsRequest, cursors *feed.Cursors) (feed.Request, error) {
	var r feed.Request
	if req.GetClerkUserId() == "" {
		p, err := principal(ctx)
		if err != nil {
			return r, err
		}
		if p.Kind != auth.KindService {
			return r, apperr.PermissionDenied(`end users may watch only their own events: set clerk_user_id to "me"`)
		}
	} else {
		id, err := ownUser(ctx, req.GetClerkUserId())
		if err != nil {
			return r, err
		}
		r.ClerkUserID = id
	}
	var violations []apperr.FieldViolation
	switch {
	case req.GetCursor() != "":
		pos, err := cursors.Parse(ctx, req.GetCursor())
		switch {
		case feed.IsBadCursor(err):
			// Forged, altered, from another deployment, or garbled: one
			// answer for all, which says nothing of why.
			violations = append(violations, apperr.FieldViolation{Field: "cursor", Description: "is not a cursor returned by this API"})
		case err != nil:
			return r, err
		}
		if req.GetStart() != userdv1.WatchStart_WATCH_START_UNSPECIFIED {
			violations = append(violations, apperr.FieldViolation{Field: "start", Description: "must be unspecified with a cursor"})
		}
		r.Start, r.After = feed.StartAfter, pos
	case req.GetStart() == userdv1.WatchStart_WATCH_START_OLDEST:
		r.Start = feed.StartOldest
	case req.GetStart() == userdv1.WatchStart_WATCH_START_NOW, req.GetStart() == userdv1.WatchStart_WATCH_START_UNSPECIFIED:
		r.Start = feed.StartNow
	default:
		violations = append(violations, apperr.FieldViolation{Field: "start", Description: "unknown start"})
	}
	for _, k := range req.GetKinds() {
		kind, ok := kindFromProto[k]
		if !ok {
			violations = append(violations, apperr.FieldViolation{Field: "kinds", Description: "must be a USER_EVENT_KIND_ other than UNSPECIFIED"})
			break
		}
		r.Kinds = append(r.Kinds, kind)
	}
	if len(violations) > 0 {
		return r, apperr.InvalidArgument(violations...)
	}
	return r, nil
}

// watchSink sends a watch's output on the stream; with tokens, each
// event and heartbeat carries a consistency token.
type watchSink struct {
	stream  userdv1.UserService_WatchUserEventsServer
	cursors *feed.Cursors
	tokens  bool
}

// token is the consistency token of a position, "" if unknown or off.
func (s watchSink) token(lsn uint64) string {
	if !s.tokens || lsn == 0 {
		return ""
	}
	return consistency.Token{LSN: lsn}.String()
}

func (s watchSink) Event(ev feed.Event) error {
	cursor, err := s.cursors.Format(s.stream.Context(), ev.Position)
	if err != nil {
		return err
	}
	out := eventToProto(ev, cursor)
	out.ConsistencyToken = s.token(ev.LSN)
	return s.stream.Send(&userdv1.WatchUserEventsResponse{
		Item: &userdv1.WatchUserEventsResponse_Event{Event: out},
	})
}

func (s watchSink) Heartbeat(pos feed.Position, lsn uint64) error {
	cursor, err := s.cursors.Format(s.stream.Context(), pos)
	if err != nil {
		return err
	}
	return s.stream.Send(&userdv1.WatchUserEventsResponse{
		Item: &userdv1.WatchUserEventsResponse_Heartbeat{Heartbeat: &userdv1.WatchHeartbeat{
			Cursor: cursor, Time: timestamppb.Now(), ConsistencyToken: s.token(lsn),
		}},
	})
}

var (
	kindToProto = map[feed.Kind]userdv1.UserEventKind{
		feed.KindUserCreated:    userdv1.UserEventKind_USER_EVENT_KIND_USER_CREATED,
		feed.KindUserUpdated:    userdv1.UserEventKind_USER_EVENT_KIND_USER_UPDATED,
		feed.KindUserDeleted:    userdv1.UserEventKind_USER_EVENT_KIND_USER_DELETED,
		feed.KindPlanChanged:    userdv1.UserEventKind_USER_EVENT_KIND_PLAN_CHANGED,
		feed.KindCreditsChanged: userdv1.UserEventKind_USER_EVENT_KIND_CREDITS_CHANGED,

		feed.KindOrganizationCreated: userdv1.UserEventKind_USER_EVENT_KIND_ORGANIZATION_CREATED,
		feed.KindOrganizationUpdated: userdv1.UserEventKind_USER_EVENT_KIND_ORGANIZATION_UPDATED,
		feed.KindOrganizationDeleted: userdv1.UserEventKind_USER_EVENT_KIND_ORGANIZATION_DELETED,
		feed.KindMembershipCreated:   userdv1.UserEventKind_USER_EVENT_KIND_MEMBERSHIP_CREATED,
		feed.KindMembershipUpdated:   userdv1.UserEventKind_USER_EVENT_KIND_MEMBERSHIP_UPDATED,
		feed.KindMembershipDeleted:   userdv1.UserEventKind_USER_EVENT_KIND_MEMBERSHIP_DELETED,
		feed.KindMemberCapChanged:    userdv1.UserEventKind_USER_EVENT_KIND_MEMBER_CAP_CHANGED,
	}
	kindFromProto = func() map[userdv1.UserEventKind]feed.Kind {
		m := map[userdv1.UserEventKind]feed.Kind{}
		for k, v := range kindToProto {
			m[v] = k
		}
		return m
	}()
)

func eventToProto(ev feed.Event, cursor string) *userdv1.UserEvent {
	out := &userdv1.UserEvent{
		Id:                  ev.ID,
		Cursor:              cursor,
		Kind:                kindToProto[ev.Kind],
		ClerkUserId:         ev.ClerkUserID,
		CreateTime:          timestamppb.New(ev.Time),
		ClerkOrganizationId: ev.ClerkOrgID,
		ActorClerkUserId:    ev.ActorClerkUserID,
	}
	if ev.AccountID != uuid.Nil {
		out.AccountId = ev.AccountID.String()
	}
	if ev.UserID != uuid.Nil {
		out.UserId = ev.UserID.String()
	}
	if ev.MemberClerkUserID != "" {
		out.ClerkUserId = ev.MemberClerkUserID
	}
	switch {
	case ev.User != nil:
		out.Change = &userdv1.UserEvent_User{User: userToProto(*ev.User)}
	case ev.PlanChange != nil:
		out.Change = &userdv1.UserEvent_PlanChange{PlanChange: planChangeToProto(*ev.PlanChange)}
	case ev.Transaction != nil:
		out.Change = &userdv1.UserEvent_CreditTransaction{CreditTransaction: transactionToProto(*ev.Transaction, ev.ClerkOrgID)}
	case ev.Organization != nil:
		o := ev.Organization
		po := &userdv1.Organization{
			Id: o.ID.String(), ClerkOrganizationId: o.ClerkOrgID, Name: o.Name, Slug: o.Slug, ImageUrl: o.ImageURL,
			CreateTime: optionalTime(o.CreatedAt), UpdateTime: optionalTime(o.UpdatedAt),
		}
		if o.DeletedAt != nil {
			po.DeleteTime = timestamppb.New(*o.DeletedAt)
		}
		out.Change = &userdv1.UserEvent_Organization{Organization: po}
	case ev.Membership != nil:
		m := ev.Membership
		pm := &userdv1.OrganizationMembership{
			ClerkMembershipId: m.ClerkMembershipID, ClerkOrganizationId: m.ClerkOrgID, ClerkUserId: m.ClerkUserID,
			Role: m.Role, Permissions: m.Permissions, CreateTime: optionalTime(m.CreatedAt), UpdateTime: optionalTime(m.UpdatedAt),
		}
		if m.DeletedAt != nil {
			pm.DeleteTime = timestamppb.New(*m.DeletedAt)
		}
		out.Change = &userdv1.UserEvent_Membership{Membership: pm}
	case ev.MemberCap != nil:
		c := ev.MemberCap
		out.Change = &userdv1.UserEvent_MemberCapChange{MemberCapChange: &userdv1.MemberSpendingCapChange{
			ClerkOrganizationId: c.ClerkOrgID, MemberClerkUserId: c.ClerkUserID,
			Period: capPeriodToProto[users.CapPeriod(c.Period)], Cap: c.Cap,
			ChangedBy: c.ChangedBy, ChangeTime: optionalTime(c.ChangedAt),
		}}
	}
	return out
}

// optionalTime is t as a timestamp, unset for the zero time.
func optionalTime(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func planChangeToProto(c users.PlanChange) *userdv1.PlanChange {
	return &userdv1.PlanChange{
		Id:                 c.ID,
		PreviousPlan:       planToProto(c.PreviousPlan),
		Plan:               planToProto(c.Plan),
		BonusCredits:       c.BonusCredits,
		BonusTransactionId: c.TransactionID,
		Reason:             c.Reason,
		IdempotencyKey:     c.IdempotencyKey,
		CreateTime:         timestamppb.New(c.CreatedAt),
	}
}
