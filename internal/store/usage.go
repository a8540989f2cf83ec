package store

import (
	"context"
	"fmt"

	"github.com/google/uuid"

	"github.com/userd/userd/gen/sqlcdb"
	"github.com/userd/userd/internal/users"
)

func (s *Store) SummarizeUsage(ctx context.Context, scan users.UsageScan) (users.UsageRows, error) {
	var rows []sqlcdb.SummarizeUsageRow
	var err error
	if scan.AccountID != uuid.Nil {
		var ars []sqlcdb.SummarizeAccountUsageRow
		ars, err = s.q.SummarizeAccountUsage(ctx, s.read, sqlcdb.SummarizeAccountUsageParams{
			AccountID:     scan.AccountID,
			PeriodStarts:  scan.PeriodStarts,
			EndTime:       scan.End,
			WindowReasons: scan.WindowReasons,
			PeriodReasons: scan.PeriodReasons,
		})
		rows = make([]sqlcdb.SummarizeUsageRow, len(ars))
		for i, r := range ars {
			rows[i] = sqlcdb.SummarizeUsageRow(r)
		}
	} else {
		rows, err = s.q.SummarizeUsage(ctx, s.read, sqlcdb.SummarizeUsageParams{
			ClerkUserID:   scan.ClerkUserID,
			PeriodStarts:  scan.PeriodStarts,
			EndTime:       scan.End,
			WindowReasons: scan.WindowReasons,
			PeriodReasons: scan.PeriodReasons,
		})
	}
	if err != nil {
		return users.UsageRows{}, translate(fmt.Errorf("summarize usage: %w", err))
	}
	if len(rows) == 0 {
		return users.UsageRows{}, users.ErrNoRow
	}
	out := users.UsageRows{Balance: rows[0].Balance}
	for _, r := range rows {
		if r.Period == nil {
			// The one row of a user without entries in the window.
			continue
		}
		out.Rows = append(out.Rows, users.UsageRow{
			Period: int(*r.Period),
			ReasonUsage: users.ReasonUsage{
				Reason: deref(r.Reason),
				Other:  deref(r.Other),
				UsageTotals: users.UsageTotals{
					Spent:   deref(r.Spent),
					Granted: deref(r.Granted),
					Entries: deref(r.Entries),
				},
			},
		})
	}
	return out, nil
}
