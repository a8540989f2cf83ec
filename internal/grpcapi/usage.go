package grpcapi

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/users"
)

// GetUsageSummary implements userdv1.UserServiceServer. End users may read
// their own, like their ledger, and their active organization's account's
// while live members (as ListCreditTransactions); with by_member, an
// organization's summary is also summed by member.
func (s *Server) GetUsageSummary(ctx context.Context, req *userdv1.GetUsageSummaryRequest) (*userdv1.GetUsageSummaryResponse, error) {
	org, id := req.GetClerkOrganizationId(), ""
	if org == "" {
		if req.GetByMember() {
			return nil, apperr.InvalidArgument(apperr.FieldViolation{Field: "by_member", Description: "sums an organization's account only"})
		}
		var err error
		if id, err = ownUser(ctx, req.GetClerkUserId()); err != nil {
			return nil, err
		}
	} else if err := s.authorizeOrgRead(ctx, org, req.GetClerkUserId()); err != nil {
		return nil, err
	}
	start, err := timeFromProto("start_time", req.GetStartTime())
	if err != nil {
		return nil, err
	}
	end, err := timeFromProto("end_time", req.GetEndTime())
	if err != nil {
		return nil, err
	}
	period, ok := usagePeriodFromProto[req.GetGroupBy()]
	if !ok {
		return nil, apperr.InvalidArgument(apperr.FieldViolation{Field: "group_by", Description: "is not a known period"})
	}
	sum, err := s.users.SummarizeUsage(ctx, users.UsageQuery{ClerkUserID: id, ClerkOrgID: org, Start: start, NoStart: req.GetStartTime() == nil, End: end, Period: period})
	if err != nil {
		return nil, err
	}
	out := &userdv1.GetUsageSummaryResponse{
		StartTime:  timestamppb.New(sum.Start),
		EndTime:    timestamppb.New(sum.End),
		GroupBy:    req.GetGroupBy(),
		Balance:    sum.Balance,
		Spent:      sum.Spent,
		Granted:    sum.Granted,
		EntryCount: sum.Entries,
		Reasons:    reasonsToProto(sum.Reasons),
		Periods:    make([]*userdv1.UsageInPeriod, len(sum.Periods)),
	}
	for i, p := range sum.Periods {
		out.Periods[i] = &userdv1.UsageInPeriod{
			StartTime:  timestamppb.New(p.Start),
			EndTime:    timestamppb.New(p.End),
			Spent:      p.Spent,
			Granted:    p.Granted,
			EntryCount: p.Entries,
			Reasons:    reasonsToProto(p.Reasons),
		}
	}
	if req.GetByMember() {
		// The same window; a separate read, so its sums may include
		// entries written after the summary's. A zero start means 30 days
		// to SummarizeUsageByMember: the year 1's first microsecond is the
		// whole ledger as well (no entry is older).
		start := sum.Start
		if start.IsZero() {
			start = start.Add(time.Microsecond)
		}
		ms, err := s.users.SummarizeUsageByMember(ctx, org, start, sum.End)
		if err != nil {
			return nil, err
		}
		out.ByMember = make([]*userdv1.UsageByMember, len(ms))
		for i, m := range ms {
			out.ByMember[i] = &userdv1.UsageByMember{ClerkUserId: m.ClerkUserID, Spent: m.Spent, Granted: m.Granted, EntryCount: m.Entries}
		}
	}
	return out, nil
}

// CanAfford implements userdv1.UserServiceServer. End users may ask about
// themselves, and about spending from their active organization's account
// (the database checks the membership and the spend permission as a
// deduction would).
func (s *Server) CanAfford(ctx context.Context, req *userdv1.CanAffordRequest) (*userdv1.CanAffordResponse, error) {
	q := users.AffordQuery{ClerkOrgID: req.GetClerkOrganizationId(), Cost: users.Cost{Amount: req.GetAmount(), Action: req.GetAction()}}
	if q.ClerkOrgID == "" {
		id, err := ownUser(ctx, req.GetClerkUserId())
		if err != nil {
			return nil, err
		}
		q.ClerkUserID = id
	} else {
		caller, err := s.orgAccount(ctx, q.ClerkOrgID, req.GetClerkUserId(), orgSpend)
		if err != nil {
			return nil, err
		}
		q.ClerkUserID, q.RequiredPermission = caller.member, caller.requiredPermission
	}
	a, err := s.users.CanAffordFor(ctx, q)
	if err != nil {
		return nil, err
	}
	return &userdv1.CanAffordResponse{Required: a.Required, Available: a.Available, Allowed: a.Allowed}, nil
}

var usagePeriodFromProto = map[userdv1.UsagePeriod]users.UsagePeriod{
	userdv1.UsagePeriod_USAGE_PERIOD_UNSPECIFIED: users.PeriodNone,
	userdv1.UsagePeriod_USAGE_PERIOD_DAY:         users.PeriodDay,
	userdv1.UsagePeriod_USAGE_PERIOD_WEEK:        users.PeriodWeek,
	userdv1.UsagePeriod_USAGE_PERIOD_MONTH:       users.PeriodMonth,
}

// timeFromProto maps an unset timestamp to the zero time (which the
// domain reads as "unset") and refuses one outside what protobuf allows.
func timeFromProto(field string, ts *timestamppb.Timestamp) (time.Time, error) {
	if ts == nil {
		return time.Time{}, nil
	}
	if err := ts.CheckValid(); err != nil {
		return time.Time{}, apperr.InvalidArgument(apperr.FieldViolation{
			Field: field, Description: "must be a valid time between years 1 and 9999",
		})
	}
	return ts.AsTime(), nil
}

func reasonsToProto(rs []users.ReasonUsage) []*userdv1.UsageByReason {
	out := make([]*userdv1.UsageByReason, len(rs))
	for i, r := range rs {
		out[i] = &userdv1.UsageByReason{
			Reason:     r.Reason,
			Spent:      r.Spent,
			Granted:    r.Granted,
			EntryCount: r.Entries,
			Other:      r.Other,
		}
	}
	return out
}
