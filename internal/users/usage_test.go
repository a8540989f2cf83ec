package users_test

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/store"
	"github.com/userd/userd/internal/testdb"
	"github.com/userd/userd/internal/users"
)

var usageSeeds = flag.Int("usage.seeds", 6, "random ledgers TestUsageSummaryMatchesLedger checks")

// usageSetup is setup that keeps the pool, to move ledger entries in time.
// Its sessions commit without waiting for the disk (the database is
// thrown away), so that building long histories takes seconds.
func usageSetup(t *testing.T) (bundle, *pgxpool.Pool) {
	t.Helper()
	pool := connect(t, testdb.URL(t), map[string]string{"synchronous_commit": "off"})
	st := store.New(pool, store.Options{})
	return bundle{svc: users.NewService(st, users.Options{InitialCredits: users.DefaultInitialCredits}), store: st}, pool
}

// backdate sets the created_at of ledger entries: the API stamps entries
// with the time of their transaction, and the summary tests need histories
// that span years.
func backdate(t *testing.T, pool *pgxpool.Pool, ids []int64, times []time.Time) {
	t.Helper()
	_, err := pool.Exec(context.Background(), `
		UPDATE credit_transactions t SET created_at = v.created_at
		FROM unnest($1::bigint[], $2::timestamptz[]) AS v (id, created_at)
		WHERE t.id = v.id`, ids, times)
	if err != nil {
		t.Fatalf("backdate: %v", err)
	}
}

// wantUsage is the test's own summary of a ledger: the entries of the
// window grouped in Go, independently of the service's period arithmetic
// (calendar truncation here, "next boundary" there) and of its SQL.
func wantUsage(ledger []users.Transaction, balance int64, q users.UsageQuery) users.UsageSummary {
	want := users.UsageSummary{Start: q.Start, End: q.End, Period: q.Period, Balance: balance}
	type bucket struct {
		start   time.Time
		entries []users.Transaction
	}
	var buckets []*bucket
	if q.Period != users.PeriodNone {
		for s := truncPeriod(q.Start, q.Period); s.Before(q.End); s = addPeriod(s, q.Period) {
			buckets = append(buckets, &bucket{start: maxTime(s, q.Start)})
		}
	}
	var all []users.Transaction
	for _, tx := range ledger {
		if tx.CreatedAt.Before(q.Start) || !tx.CreatedAt.Before(q.End) {
			continue
		}
		all = append(all, tx)
		if q.Period == users.PeriodNone {
			continue
		}
		start := maxTime(truncPeriod(tx.CreatedAt, q.Period), q.Start)
		for _, b := range buckets {
			if b.start.Equal(start) {
				b.entries = append(b.entries, tx)
			}
		}
	}
	want.Reasons = byReason(all, users.WindowReasons)
	want.UsageTotals = totals(all)
	for i, b := range buckets {
		end := q.End
		if i+1 < len(buckets) {
			end = buckets[i+1].start
		}
		want.Periods = append(want.Periods, users.PeriodUsage{
			Start: b.start, End: end, UsageTotals: totals(b.entries), Reasons: byReason(b.entries, users.PeriodReasons),
		})
	}
	return want
}

func truncPeriod(t time.Time, p users.UsagePeriod) time.Time {
	t = t.UTC()
	day := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	switch p {
	case users.PeriodWeek:
		return day.AddDate(0, 0, -((int(day.Weekday()) + 6) % 7))
	case users.PeriodMonth:
		return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
	}
	return day
}

func addPeriod(t time.Time, p users.UsagePeriod) time.Time {
	switch p {
	case users.PeriodWeek:
		return t.AddDate(0, 0, 7)
	case users.PeriodMonth:
		return t.AddDate(0, 1, 0)
	}
	return t.AddDate(0, 0, 1)
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func totals(ts []users.Transaction) users.UsageTotals {
	var u users.UsageTotals
	for _, tx := range ts {
		u.Entries++
		if tx.Delta < 0 {
			u.Spent -= tx.Delta
		} else {
			u.Granted += tx.Delta
		}
	}
	return u
}

// byReason groups entries by reason, the most credits moved first (then by
// reason), keeps limit groups and sums the rest in an other group.
func byReason(ts []users.Transaction, limit int) []users.ReasonUsage {
	groups := map[string]*users.ReasonUsage{}
	for _, tx := range ts {
		g := groups[tx.Reason]
		if g == nil {
			g = &users.ReasonUsage{Reason: tx.Reason}
			groups[tx.Reason] = g
		}
		one := totals([]users.Transaction{tx})
		g.Spent, g.Granted, g.Entries = g.Spent+one.Spent, g.Granted+one.Granted, g.Entries+one.Entries
	}
	var out []users.ReasonUsage
	for _, g := range groups {
		out = append(out, *g)
	}
	slices.SortFunc(out, func(a, b users.ReasonUsage) int {
		if d := (b.Spent + b.Granted) - (a.Spent + a.Granted); d != 0 {
			return int(d / max(1, abs(d)))
		}
		return strings.Compare(a.Reason, b.Reason)
	})
	if len(out) <= limit {
		return out
	}
	other := users.ReasonUsage{Other: true}
	for _, g := range out[limit:] {
		other.Spent += g.Spent
		other.Granted += g.Granted
		other.Entries += g.Entries
	}
	return append(out[:limit:limit], other)
}

func abs(d int64) int64 {
	if d < 0 {
		return -d
	}
	return d
}

// TestUsageSummaryMatchesLedger builds random ledgers (deductions by
// amount and by action, grants, plan bonuses; a few reasons that recur and
// many that do not, a quarter of them on one busy day, so that the limits
// on reasons are reached) spread over three years, and checks summaries of
// random windows, grouped every way, against the test's own sums over the
// ledger rows. -args -usage.seeds=N checks more ledgers.
func TestUsageSummaryMatchesLedger(t *testing.T) {
	t.Parallel()
	b, pool := usageSetup(t)
	ctx := context.Background()
	if _, err := b.svc.SetPrice(ctx, users.SetPriceInput{Action: "render", Credits: 3, ChangedBy: "service:test"}); err != nil {
		t.Fatal(err)
	}
	epoch := time.Date(2024, 11, 20, 0, 0, 0, 0, time.UTC)
	span := 3 * 365 * 24 * time.Hour
	var checked, windowsFolded, periodsFolded int
	for seed := range *usageSeeds {
		rng := rand.New(rand.NewPCG(uint64(seed), 15))
		clerkID := fmt.Sprintf("user_usage%d", seed)
		ensure(t, b, clerkID)
		if _, err := b.svc.GrantCredits(ctx, users.CreditChange{ClerkUserID: clerkID, Amount: 1_000_000, IdempotencyKey: "fund", Reason: "purchase"}); err != nil {
			t.Fatal(err)
		}
		n := 150 + rng.IntN(250)
		for i := range n {
			key := fmt.Sprintf("k%d", i)
			reason := fmt.Sprintf("job-%d", rng.IntN(8))
			if rng.IntN(5) < 2 {
				reason = fmt.Sprintf("one-off-%d", i) // mostly beyond the limits
			}
			var err error
			switch rng.IntN(10) {
			case 0:
				_, err = b.svc.GrantCredits(ctx, users.CreditChange{ClerkUserID: clerkID, Amount: 1 + rng.Int64N(50), IdempotencyKey: key, Reason: reason})
			case 1:
				_, err = b.svc.SetPlan(ctx, users.SetPlanInput{ClerkUserID: clerkID, Plan: users.PlanPro, BonusCredits: rng.Int64N(20), IdempotencyKey: key, Reason: "upgrade"})
			case 2, 3:
				_, err = b.svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: clerkID, Action: "render", IdempotencyKey: key})
			default:
				_, err = b.svc.DeductCredits(ctx, users.CreditChange{ClerkUserID: clerkID, Amount: 1 + rng.Int64N(100), IdempotencyKey: key, Reason: reason})
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		entries := checkInvariants(t, b, clerkID)
		ids := make([]int64, len(entries))
		times := make([]time.Time, len(entries))
		busyDay := epoch.Add(time.Duration(rng.Int64N(int64(span)))).Truncate(24 * time.Hour)
		for i, tx := range entries {
			ids[i] = tx.ID
			// Microseconds, as the ledger keeps them; some entries exactly
			// on a day boundary.
			switch rng.IntN(8) {
			case 0:
				times[i] = epoch.Add(time.Duration(rng.Int64N(int64(span)))).Truncate(24 * time.Hour)
			case 1, 2:
				times[i] = busyDay.Add(time.Duration(rng.Int64N(int64(24 * time.Hour)))).Truncate(time.Microsecond)
			default:
				times[i] = epoch.Add(time.Duration(rng.Int64N(int64(span)))).Truncate(time.Microsecond)
			}
		}
		backdate(t, pool, ids, times)
		entries = checkInvariants(t, b, clerkID)
		u := mustUser(t, b, clerkID)

		for w := range 12 {
			// Windows anywhere from an hour to the whole history; some
			// start or end exactly at an entry.
			start := epoch.Add(time.Duration(rng.Int64N(int64(span)))).Truncate(time.Microsecond)
			length := (time.Duration(rng.Int64N(int64(span))) + time.Hour).Truncate(time.Microsecond)
			if w%4 == 0 {
				start = entries[rng.IntN(len(entries))].CreatedAt
			}
			end := start.Add(length)
			if w%4 == 1 {
				end = entries[rng.IntN(len(entries))].CreatedAt.Add(time.Duration(rng.IntN(2)) * time.Microsecond)
				if !end.After(start) {
					start, end = end.Add(-length), start.Add(time.Microsecond)
				}
			}
			for _, p := range []users.UsagePeriod{users.PeriodNone, users.PeriodDay, users.PeriodWeek, users.PeriodMonth} {
				q := users.UsageQuery{ClerkUserID: clerkID, Start: start.UTC(), End: end.UTC(), Period: p}
				got, err := b.svc.SummarizeUsage(ctx, q)
				want := wantUsage(entries, u.Credits, q)
				if len(want.Periods) > users.MaxUsagePeriods {
					if apperr.KindOf(err) != apperr.KindInvalidArgument {
						t.Fatalf("seed %d: %d periods: %v, want invalid argument", seed, len(want.Periods), err)
					}
					continue
				}
				if err != nil {
					t.Fatalf("seed %d window %d %q: %v", seed, w, p, err)
				}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Fatalf("seed %d window %d [%s, %s) by %q (-want +got):\n%s", seed, w, start, end, p, diff)
				}
				checked++
				if n := len(got.Reasons); n > 0 && got.Reasons[n-1].Other {
					windowsFolded++
				}
				for _, period := range got.Periods {
					if n := len(period.Reasons); n > 0 && period.Reasons[n-1].Other {
						periodsFolded++
					}
				}
			}
		}
		// The whole ledger sums to the balance.
		all, err := b.svc.SummarizeUsage(ctx, users.UsageQuery{ClerkUserID: clerkID, Start: epoch.AddDate(-1, 0, 0), End: epoch.AddDate(4, 0, 0)})
		if err != nil {
			t.Fatal(err)
		}
		if all.Granted-all.Spent != all.Balance || all.Entries != int64(len(entries)) {
			t.Errorf("seed %d: all time: granted %d - spent %d != balance %d, or %d entries != %d",
				seed, all.Granted, all.Spent, all.Balance, all.Entries, len(entries))
		}
	}
	// The limits on reasons were reached, so the other groups were checked.
	if windowsFolded == 0 || periodsFolded == 0 {
		t.Errorf("of %d summaries, %d windows and %d periods had an other group; want some of each", checked, windowsFolded, periodsFolded)
	}
	t.Logf("%d summaries checked; %d windows and %d periods had an other group", checked, windowsFolded, periodsFolded)
}

// TestUsageWindowEdges pins the window's ends and the period boundaries to
// the microsecond: the start is inclusive, the end exclusive, an entry at
// 00:00 UTC belongs to the day it starts, and times given in another zone
// or with nanoseconds mean the same instants.
func TestUsageWindowEdges(t *testing.T) {
	t.Parallel()
	b, pool := usageSetup(t)
	ctx := context.Background()
	const clerkID = "user_edges"
	ensure(t, b, clerkID)
	midnight := time.Date(2026, 3, 8, 0, 0, 0, 0, time.UTC) // a Sunday; DST starts in New York that day
	µs := time.Microsecond
	at := map[string]time.Time{
		"before-start": midnight.Add(-µs),
		"start":        midnight,
		"after-start":  midnight.Add(µs),
		"last-of-day":  midnight.Add(24*time.Hour - µs),
		"next-day":     midnight.Add(24 * time.Hour),
		"before-end":   midnight.Add(48*time.Hour - µs),
		"end":          midnight.Add(48 * time.Hour),
	}
	var (
		ids   []int64
		times []time.Time
	)
	for reason, when := range at {
		tx, err := b.svc.GrantCredits(ctx, users.CreditChange{ClerkUserID: clerkID, Amount: 1, IdempotencyKey: reason, Reason: reason})
		if err != nil {
			t.Fatal(err)
		}
		ids, times = append(ids, tx.ID), append(times, when)
	}
	// The initial credits lie far outside every window.
	entries := checkInvariants(t, b, clerkID)
	ids, times = append(ids, entries[0].ID), append(times, midnight.AddDate(-1, 0, 0))
	backdate(t, pool, ids, times)

	reasons := func(s users.UsageSummary) []string {
		var out []string
		for _, r := range s.Reasons {
			out = append(out, r.Reason)
		}
		slices.Sort(out)
		return out
	}
	newYork, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name       string
		start, end time.Time
		want       []string
	}{
		{"exact", midnight, midnight.Add(48 * time.Hour),
			[]string{"after-start", "before-end", "last-of-day", "next-day", "start"}},
		{"nanosecond after start rounds up past the entry at start", midnight.Add(time.Nanosecond), midnight.Add(48 * time.Hour),
			[]string{"after-start", "before-end", "last-of-day", "next-day"}},
		{"nanosecond after the last entry's microsecond includes it", midnight, midnight.Add(48*time.Hour - µs + time.Nanosecond),
			[]string{"after-start", "before-end", "last-of-day", "next-day", "start"}},
		{"other zone, same instants", midnight.In(newYork), midnight.Add(48 * time.Hour).In(time.FixedZone("+14", 14*3600)),
			[]string{"after-start", "before-end", "last-of-day", "next-day", "start"}},
		{"one microsecond", midnight, midnight.Add(µs), []string{"start"}},
	}
	for _, c := range cases {
		s, err := b.svc.SummarizeUsage(ctx, users.UsageQuery{ClerkUserID: clerkID, Start: c.start, End: c.end})
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if diff := cmp.Diff(c.want, reasons(s)); diff != "" {
			t.Errorf("%s: reasons (-want +got):\n%s", c.name, diff)
		}
		if s.Start.Location() != time.UTC || s.End.Location() != time.UTC {
			t.Errorf("%s: window [%v, %v) not in UTC", c.name, s.Start, s.End)
		}
	}

	// Days are UTC days, 24 hours each, whatever the zone of the request
	// (New York's clocks jump that Sunday).
	s, err := b.svc.SummarizeUsage(ctx, users.UsageQuery{ClerkUserID: clerkID, Start: midnight.In(newYork), End: midnight.Add(48 * time.Hour).In(newYork), Period: users.PeriodDay})
	if err != nil {
		t.Fatal(err)
	}
	want := []users.PeriodUsage{
		{Start: midnight, End: midnight.Add(24 * time.Hour), UsageTotals: users.UsageTotals{Granted: 3, Entries: 3}, Reasons: []users.ReasonUsage{
			{Reason: "after-start", UsageTotals: users.UsageTotals{Granted: 1, Entries: 1}},
			{Reason: "last-of-day", UsageTotals: users.UsageTotals{Granted: 1, Entries: 1}},
			{Reason: "start", UsageTotals: users.UsageTotals{Granted: 1, Entries: 1}},
		}},
		{Start: midnight.Add(24 * time.Hour), End: midnight.Add(48 * time.Hour), UsageTotals: users.UsageTotals{Granted: 2, Entries: 2}, Reasons: []users.ReasonUsage{
			{Reason: "before-end", UsageTotals: users.UsageTotals{Granted: 1, Entries: 1}},
			{Reason: "next-day", UsageTotals: users.UsageTotals{Granted: 1, Entries: 1}},
		}},
	}
	if diff := cmp.Diff(want, s.Periods); diff != "" {
		t.Errorf("days (-want +got):\n%s", diff)
	}

	// A window that starts mid-week and mid-month: the first period starts
	// with the window, the next ones on Monday / the 1st, 00:00 UTC.
	start := time.Date(2026, 1, 28, 15, 0, 0, 0, time.UTC) // a Wednesday
	for p, wantStarts := range map[users.UsagePeriod][]time.Time{
		users.PeriodWeek:  {start, time.Date(2026, 2, 2, 0, 0, 0, 0, time.UTC), time.Date(2026, 2, 9, 0, 0, 0, 0, time.UTC)},
		users.PeriodMonth: {start, time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)},
	} {
		end := wantStarts[2].Add(time.Hour)
		s, err := b.svc.SummarizeUsage(ctx, users.UsageQuery{ClerkUserID: clerkID, Start: start, End: end, Period: p})
		if err != nil {
			t.Fatal(err)
		}
		var gotStarts []time.Time
		for i, period := range s.Periods {
			gotStarts = append(gotStarts, period.Start)
			if i+1 < len(s.Periods) && !period.End.Equal(s.Periods[i+1].Start) || i+1 == len(s.Periods) && !period.End.Equal(end) {
				t.Errorf("%s: period %d ends at %v", p, i, period.End)
			}
		}
		if diff := cmp.Diff(wantStarts, gotStarts); diff != "" {
			t.Errorf("%s: period starts (-want +got):\n%s", p, diff)
		}
	}
}

// TestUsageSummaryIgnoresSessionTimeZone runs the same summaries over a
// pool whose sessions use zones far from UTC (one with a DST change inside
// the window): the periods and sums must not move.
func TestUsageSummaryIgnoresSessionTimeZone(t *testing.T) {
	t.Parallel()
	url := testdb.URL(t)
	pool := testdb.Connect(t, url)
	b := bundle{svc: users.NewService(store.New(pool, store.Options{}), users.Options{InitialCredits: users.DefaultInitialCredits}), store: store.New(pool, store.Options{})}
	ctx := context.Background()
	const clerkID = "user_zones"
	ensure(t, b, clerkID)
	var (
		ids   []int64
		times []time.Time
	)
	base := time.Date(2026, 3, 7, 0, 0, 0, 0, time.UTC)
	for i := range 96 {
		tx, err := b.svc.GrantCredits(ctx, users.CreditChange{ClerkUserID: clerkID, Amount: int64(i + 1), IdempotencyKey: fmt.Sprint(i), Reason: fmt.Sprint("r", i%3)})
		if err != nil {
			t.Fatal(err)
		}
		ids, times = append(ids, tx.ID), append(times, base.Add(time.Duration(i)*time.Hour))
	}
	backdate(t, pool, ids, times)
	q := users.UsageQuery{ClerkUserID: clerkID, Start: base.Add(-time.Hour), End: base.Add(97 * time.Hour)}
	for _, zone := range []string{"America/New_York", "Pacific/Chatham", "Asia/Kathmandu"} {
		svc := users.NewService(store.New(connect(t, url, map[string]string{"timezone": zone}), store.Options{}), users.Options{InitialCredits: users.DefaultInitialCredits})
		for _, p := range []users.UsagePeriod{users.PeriodNone, users.PeriodDay, users.PeriodWeek, users.PeriodMonth} {
			q.Period = p
			want, err := b.svc.SummarizeUsage(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			got, err := svc.SummarizeUsage(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("session zone %s, by %q (-UTC +zoned):\n%s", zone, p, diff)
			}
			if p == users.PeriodDay && len(got.Periods) != 6 {
				t.Errorf("session zone %s: %d days, want 6", zone, len(got.Periods))
			}
		}
	}
}

func TestUsageSummaryEmptyWindowAndMissingUser(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	ensure(t, b, "user_quiet")
	start := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	got, err := b.svc.SummarizeUsage(ctx, users.UsageQuery{ClerkUserID: "user_quiet", Start: start, End: start.AddDate(0, 0, 3), Period: users.PeriodDay})
	if err != nil {
		t.Fatal(err)
	}
	want := users.UsageSummary{Start: start, End: start.AddDate(0, 0, 3), Period: users.PeriodDay, Balance: 10, Periods: []users.PeriodUsage{
		{Start: start, End: start.AddDate(0, 0, 1)},
		{Start: start.AddDate(0, 0, 1), End: start.AddDate(0, 0, 2)},
		{Start: start.AddDate(0, 0, 2), End: start.AddDate(0, 0, 3)},
	}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("empty window (-want +got):\n%s", diff)
	}
	// Without an end, the window ends now and holds the initial credits.
	now, err := b.svc.SummarizeUsage(ctx, users.UsageQuery{ClerkUserID: "user_quiet", Start: start})
	if err != nil {
		t.Fatal(err)
	}
	if now.Granted != 10 || now.Entries != 1 || time.Since(now.End) > time.Minute {
		t.Errorf("window up to now = %+v, want the initial 10 credits", now)
	}
	_, err = b.svc.SummarizeUsage(ctx, users.UsageQuery{ClerkUserID: "user_nobody", Start: start})
	wantKind(t, err, apperr.KindNotFound)
}

func TestUsageSummaryBadInput(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	ensure(t, b, "user_bounds")
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		name  string
		q     users.UsageQuery
		field string
	}{
		{"no user", users.UsageQuery{Start: start}, "clerk_user_id"},
		{"bad user", users.UsageQuery{ClerkUserID: "bob", Start: start}, "clerk_user_id"},
		{"year 1 by day", users.UsageQuery{ClerkUserID: "user_bounds", End: start, Period: users.PeriodDay}, "start_time"},
		{"end before start", users.UsageQuery{ClerkUserID: "user_bounds", Start: start, End: start.Add(-time.Hour)}, "end_time"},
		{"empty window", users.UsageQuery{ClerkUserID: "user_bounds", Start: start, End: start}, "end_time"},
		{"empty after rounding", users.UsageQuery{ClerkUserID: "user_bounds", Start: start.Add(time.Nanosecond), End: start.Add(2 * time.Nanosecond)}, "end_time"},
		{"bad period", users.UsageQuery{ClerkUserID: "user_bounds", Start: start, Period: "HOUR"}, "group_by"},
		{"367 days", users.UsageQuery{ClerkUserID: "user_bounds", Start: start, End: start.AddDate(0, 0, 366).Add(time.Microsecond), Period: users.PeriodDay}, "start_time"},
		{"367 weeks", users.UsageQuery{ClerkUserID: "user_bounds", Start: start, End: start.AddDate(0, 0, 7*367), Period: users.PeriodWeek}, "start_time"},
		{"367 months", users.UsageQuery{ClerkUserID: "user_bounds", Start: start, End: start.AddDate(0, 367, 0), Period: users.PeriodMonth}, "start_time"},
	}
	for _, c := range cases {
		_, err := b.svc.SummarizeUsage(ctx, c.q)
		e := wantKind(t, err, apperr.KindInvalidArgument)
		if len(e.Violations) == 0 || e.Violations[0].Field != c.field {
			t.Errorf("%s: violations = %+v, want field %q", c.name, e.Violations, c.field)
		}
	}
	// The bounds themselves are allowed: 366 days, and any length without
	// periods.
	for _, q := range []users.UsageQuery{
		{ClerkUserID: "user_bounds", Start: start, End: start.AddDate(0, 0, 366), Period: users.PeriodDay},
		{ClerkUserID: "user_bounds", Start: time.Date(1, 1, 2, 0, 0, 0, 0, time.UTC), End: time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)},
	} {
		if s, err := b.svc.SummarizeUsage(ctx, q); err != nil || s.Granted != 10 && q.Period == users.PeriodNone {
			t.Errorf("%+v: %+v, %v", q, s, err)
		}
	}
}
