package users

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/userd/userd/internal/apperr"
)

// UsagePeriod is how a usage summary groups its window in time: UTC
// calendar periods.
type UsagePeriod string

// Usage periods.
const (
	// PeriodNone: the whole window, no periods.
	PeriodNone UsagePeriod = ""
	// PeriodDay: UTC days, from 00:00 UTC.
	PeriodDay UsagePeriod = "DAY"
	// PeriodWeek: ISO weeks, from Monday 00:00 UTC.
	PeriodWeek UsagePeriod = "WEEK"
	// PeriodMonth: calendar months, from the 1st at 00:00 UTC.
	PeriodMonth UsagePeriod = "MONTH"
)

// Bounds of a usage summary. Its size is at most about MaxUsagePeriods *
// (PeriodReasons + 1) + WindowReasons + 1 groups, whatever the ledger
// holds.
const (
	// MaxUsagePeriods is the most periods a window may span (a leap year
	// of days).
	MaxUsagePeriods = 366
	// PeriodReasons is how many reasons each period lists before summing
	// the rest in one other group.
	PeriodReasons = 10
	// WindowReasons is the same for the whole window.
	WindowReasons = 100
)

// UsageQuery asks for a summary of one user's ledger over [Start, End),
// or, with ClerkOrgID (and no ClerkUserID), of the organization's account.
type UsageQuery struct {
	ClerkUserID string
	ClerkOrgID  string
	// Start is the window's start, inclusive; a zero Start is the year 1,
	// unless NoStart.
	Start time.Time
	// NoStart says the caller left the start unset: the window starts
	// DefaultUsageWindow before End.
	NoStart bool
	// End is now when zero.
	End    time.Time
	Period UsagePeriod
}

// DefaultUsageWindow is the window of a usage summary whose start is
// unset: the 30 days before its end.
const DefaultUsageWindow = 30 * 24 * time.Hour

// UsageTotals sums ledger entries.
type UsageTotals struct {
	// Spent is the credits deducted, Granted the credits added (initial
	// credits, grants, plan bonuses).
	Spent   int64
	Granted int64
	Entries int64
}

func (t *UsageTotals) add(o UsageTotals) {
	t.Spent += o.Spent
	t.Granted += o.Granted
	t.Entries += o.Entries
}

// ReasonUsage sums the ledger entries of one reason, or, when Other, of
// the reasons beyond a list's limit (Reason is then "").
type ReasonUsage struct {
	Reason string
	Other  bool
	UsageTotals
}

// PeriodUsage sums the ledger entries of one period [Start, End) of the
// window: the first period starts at the window's start and the last ends
// at its end, so they may be shorter than a calendar period.
type PeriodUsage struct {
	Start time.Time
	End   time.Time
	UsageTotals
	// Reasons lists the PeriodReasons reasons that moved the most credits
	// (spent + granted, then by reason), then an Other group for the rest.
	Reasons []ReasonUsage
}

// UsageSummary is a user's ledger summed over a window.
type UsageSummary struct {
	Start  time.Time
	End    time.Time
	Period UsagePeriod
	// Balance is the user's balance now, read in the same snapshot as the
	// sums.
	Balance int64
	UsageTotals
	// Reasons over the whole window: the WindowReasons reasons that moved
	// the most credits, then an Other group for the rest.
	Reasons []ReasonUsage
	// Periods are every period of the window, oldest first, empty ones
	// included; none for PeriodNone.
	Periods []PeriodUsage
}

// UsageScan is what the store sums: the entries of the window
// [PeriodStarts[0], End), bucketed into periods starting at PeriodStarts.
type UsageScan struct {
	ClerkUserID string
	// AccountID, when set, names the account instead (an organization's).
	AccountID     uuid.UUID
	PeriodStarts  []time.Time
	End           time.Time
	PeriodReasons int32
	WindowReasons int32
}

// UsageRows is what the store summed: the user's balance and one row per
// listed reason (and per other group) of each period.
type UsageRows struct {
	Balance int64
	Rows    []UsageRow
}

// UsageRow is one group of a UsageScan. Period is 1 for the period
// starting at PeriodStarts[0], and so on; 0 for the whole window.
type UsageRow struct {
	Period int
	ReasonUsage
}

// SummarizeUsage sums the user's ledger entries created in [q.Start,
// q.End): in total, by reason and by period, with the current balance,
// from one snapshot of the ledger.
func (s *Service) SummarizeUsage(ctx context.Context, q UsageQuery) (UsageSummary, error) {
	if q.End.IsZero() {
		q.End = s.now()
	}
	if q.NoStart {
		q.Start = q.End.Add(-DefaultUsageWindow)
		if q.Start.Before(time.Time{}) {
			q.Start = time.Time{}
		}
	}
	// The ledger keeps microseconds: rounding both ends up keeps exactly
	// the entries at or after Start and before End.
	q.Start, q.End = ceilMicrosecond(q.Start), ceilMicrosecond(q.End)
	starts, err := q.validate()
	if err != nil {
		return UsageSummary{}, err
	}
	scan := UsageScan{
		ClerkUserID:   q.ClerkUserID,
		PeriodStarts:  starts,
		End:           q.End,
		PeriodReasons: PeriodReasons,
		WindowReasons: WindowReasons,
	}
	if q.ClerkOrgID != "" {
		id, err := s.store.OrgAccountID(ctx, q.ClerkOrgID)
		if errors.Is(err, ErrNoRow) {
			return UsageSummary{}, apperr.NotFound("organization not found")
		}
		if err != nil {
			return UsageSummary{}, userErr(err, "summarize organization usage")
		}
		scan.AccountID = id
	}
	rows, err := s.store.SummarizeUsage(ctx, scan)
	if err != nil {
		return UsageSummary{}, userErr(err, "summarize usage")
	}
	sum := UsageSummary{Start: q.Start, End: q.End, Period: q.Period, Balance: rows.Balance}
	if q.Period != PeriodNone {
		sum.Periods = make([]PeriodUsage, len(starts))
		for i, start := range starts {
			end := q.End
			if i+1 < len(starts) {
				end = starts[i+1]
			}
			sum.Periods[i] = PeriodUsage{Start: start, End: end}
		}
	}
	for _, r := range rows.Rows {
		switch {
		case r.Period == 0:
			sum.add(r.UsageTotals)
			sum.Reasons = append(sum.Reasons, r.ReasonUsage)
		case q.Period == PeriodNone:
			// The one period is the whole window, summed above.
		case r.Period > len(sum.Periods):
			return UsageSummary{}, fmt.Errorf("summarize usage: row of period %d of %d", r.Period, len(sum.Periods))
		default:
			p := &sum.Periods[r.Period-1]
			p.add(r.UsageTotals)
			p.Reasons = append(p.Reasons, r.ReasonUsage)
		}
	}
	return sum, nil
}

// validate checks the query and returns the starts of its periods: Start,
// then every period boundary after it and before End.
func (q UsageQuery) validate() ([]time.Time, error) {
	var v violations
	if q.ClerkOrgID != "" {
		v.clerkOrgID("clerk_org_id", q.ClerkOrgID)
		if q.ClerkUserID != "" {
			v.add("clerk_user_id", "must be empty with clerk_org_id")
		}
	} else {
		v.clerkUserID("clerk_user_id", q.ClerkUserID)
	}
	switch q.Period {
	case PeriodNone, PeriodDay, PeriodWeek, PeriodMonth:
	default:
		v.add("group_by", "must be a day, a week, a month or unset")
	}
	if !q.End.After(q.Start) {
		v.add("end_time", "must be after start_time")
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	starts := []time.Time{q.Start}
	if q.Period == PeriodNone {
		return starts, nil
	}
	for b := nextPeriod(q.Start, q.Period); b.Before(q.End); b = nextPeriod(b, q.Period) {
		if len(starts) == MaxUsagePeriods {
			return nil, apperr.InvalidArgument(apperr.FieldViolation{
				Field:       "start_time",
				Description: fmt.Sprintf("the window spans more than %d periods of group_by", MaxUsagePeriods),
			})
		}
		starts = append(starts, b)
	}
	return starts, nil
}

// nextPeriod returns the first UTC boundary of period p after t.
func nextPeriod(t time.Time, p UsagePeriod) time.Time {
	y, m, d := t.UTC().Date()
	switch p {
	case PeriodWeek:
		// Days to the next Monday: 7 from a Monday, 1 from a Sunday.
		days := (8 - int(t.UTC().Weekday())) % 7
		if days == 0 {
			days = 7
		}
		return time.Date(y, m, d+days, 0, 0, 0, 0, time.UTC)
	case PeriodMonth:
		return time.Date(y, m+1, 1, 0, 0, 0, 0, time.UTC)
	}
	return time.Date(y, m, d+1, 0, 0, 0, 0, time.UTC)
}

// ceilMicrosecond rounds t up to a whole microsecond, in UTC.
func ceilMicrosecond(t time.Time) time.Time {
	r := t.Truncate(time.Microsecond)
	if r.Before(t) {
		r = r.Add(time.Microsecond)
	}
	return r.UTC()
}
