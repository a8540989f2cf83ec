package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	userdv1 "github.com/userd/userd/gen/userd/v1"
)

// printer writes responses as tables for people or as JSON for scripts.
type printer struct {
	w    io.Writer
	json bool
}

// message prints m as JSON, or calls table.
func (p *printer) message(m proto.Message, table func()) error {
	if !p.json {
		table()
		return nil
	}
	raw, err := protojson.MarshalOptions{Multiline: true, EmitDefaultValues: true}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(p.w, "%s\n", raw)
	return err
}

type row struct{ key, value string }

func (p *printer) user(u *userdv1.User, extra ...row) {
	tw := tabwriter.NewWriter(p.w, 0, 0, 2, ' ', 0)
	rows := []row{
		{"CLERK ID", u.GetClerkUserId()},
		{"ID", u.GetId()},
		{"EMAIL", u.GetEmail()},
		{"NAME", strings.TrimSpace(u.GetFirstName() + " " + u.GetLastName())},
		{"PLAN", planName(u.GetPlan())},
		{"CREDITS", strconv.FormatInt(u.GetCredits(), 10)},
		{"CREATED", when(u.GetCreateTime())},
		{"UPDATED", when(u.GetUpdateTime())},
	}
	for _, r := range append(rows, extra...) {
		fmt.Fprintf(tw, "%s\t%s\n", r.key, r.value)
	}
	_ = tw.Flush()
}

func (p *printer) transactions(txs []*userdv1.CreditTransaction) {
	tw := tabwriter.NewWriter(p.w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTIME\tKIND\tDELTA\tBALANCE\tKEY\tREASON")
	for _, t := range txs {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%+d\t%d\t%s\t%s\n", t.GetId(), when(t.GetCreateTime()),
			strings.ToLower(strings.TrimPrefix(t.GetKind().String(), "TRANSACTION_KIND_")),
			t.GetDelta(), t.GetBalanceAfter(), t.GetIdempotencyKey(), t.GetReason())
	}
	_ = tw.Flush()
}

// replayed says, under a keyed write's table, that the write changed
// nothing: the key had already applied it, and what is shown is the
// original result (its balance is the balance then).
func (p *printer) replayed(replayed bool, key string) {
	if replayed {
		fmt.Fprintf(p.w, "\nREPLAYED: key %s had already been applied; nothing changed. This is the original result "+
			"(its balance is the balance then: %s get shows the current one).\n", key, program)
	}
}

func planName(p userdv1.Plan) string {
	return strings.TrimPrefix(p.String(), "PLAN_")
}

func when(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return ""
	}
	return ts.AsTime().UTC().Format(time.RFC3339)
}

// rows prints key-value rows.
func (p *printer) rows(rows ...row) {
	tw := tabwriter.NewWriter(p.w, 0, 0, 2, ' ', 0)
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\n", r.key, r.value)
	}
	_ = tw.Flush()
}

func (p *printer) usage(s *userdv1.GetUsageSummaryResponse) {
	p.rows(
		row{"WINDOW", when(s.GetStartTime()) + " .. " + when(s.GetEndTime())},
		row{"BALANCE", strconv.FormatInt(s.GetBalance(), 10)},
		row{"SPENT", strconv.FormatInt(s.GetSpent(), 10)},
		row{"GRANTED", strconv.FormatInt(s.GetGranted(), 10)},
		row{"ENTRIES", strconv.FormatInt(s.GetEntryCount(), 10)},
	)
	if len(s.GetReasons()) > 0 {
		fmt.Fprintln(p.w)
		tw := tabwriter.NewWriter(p.w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "REASON\tSPENT\tGRANTED\tENTRIES")
		for _, r := range s.GetReasons() {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\n", reasonName(r), r.GetSpent(), r.GetGranted(), r.GetEntryCount())
		}
		_ = tw.Flush()
	}
	if len(s.GetPeriods()) > 0 {
		fmt.Fprintln(p.w)
		tw := tabwriter.NewWriter(p.w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "FROM\tSPENT\tGRANTED\tENTRIES\tTOP REASON")
		for _, period := range s.GetPeriods() {
			top := ""
			if rs := period.GetReasons(); len(rs) > 0 {
				top = reasonName(rs[0])
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\n", when(period.GetStartTime()), period.GetSpent(), period.GetGranted(), period.GetEntryCount(), top)
		}
		_ = tw.Flush()
	}
	if len(s.GetByMember()) > 0 {
		fmt.Fprintln(p.w)
		tw := tabwriter.NewWriter(p.w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "MEMBER\tSPENT\tGRANTED\tENTRIES")
		for _, m := range s.GetByMember() {
			who := m.GetClerkUserId()
			if who == "" {
				who = "(services)"
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\n", who, m.GetSpent(), m.GetGranted(), m.GetEntryCount())
		}
		_ = tw.Flush()
	}
}

func reasonName(r *userdv1.UsageByReason) string {
	switch {
	case r.GetOther():
		return "(other reasons)"
	case r.GetReason() == "":
		return "(none)"
	}
	return r.GetReason()
}

func (p *printer) prices(ps []*userdv1.Price) {
	tw := tabwriter.NewWriter(p.w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ACTION\tCREDITS\tSINCE\tBY")
	for _, pr := range ps {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", pr.GetAction(), pr.GetCredits(), when(pr.GetUpdateTime()), pr.GetUpdatedBy())
	}
	_ = tw.Flush()
}

func (p *printer) priceChanges(cs []*userdv1.PriceChange) {
	tw := tabwriter.NewWriter(p.w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tACTION\tFROM\tTO\tBY")
	for _, c := range cs {
		from := strconv.FormatInt(c.GetPreviousCredits(), 10)
		if c.GetPreviousCredits() == 0 {
			from = "(new)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", when(c.GetChangeTime()), c.GetAction(), from, c.GetCredits(), c.GetChangedBy())
	}
	_ = tw.Flush()
}

// event prints one change feed event: a line for people, or one JSON
// object per line (newline-delimited JSON) for scripts.
func (p *printer) event(ev *userdv1.UserEvent) error {
	if p.json {
		raw, err := protojson.MarshalOptions{EmitDefaultValues: true}.Marshal(ev)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(p.w, "%s\n", raw)
		return err
	}
	kind := strings.ToLower(strings.TrimPrefix(ev.GetKind().String(), "USER_EVENT_KIND_"))
	detail := ""
	switch c := ev.GetChange().(type) {
	case *userdv1.UserEvent_User:
		u := c.User
		detail = fmt.Sprintf("email=%s name=%q plan=%s credits=%d", u.GetEmail(),
			strings.TrimSpace(u.GetFirstName()+" "+u.GetLastName()), planName(u.GetPlan()), u.GetCredits())
	case *userdv1.UserEvent_PlanChange:
		pc := c.PlanChange
		detail = fmt.Sprintf("%s -> %s bonus=%d key=%s", planName(pc.GetPreviousPlan()), planName(pc.GetPlan()),
			pc.GetBonusCredits(), pc.GetIdempotencyKey())
	case *userdv1.UserEvent_CreditTransaction:
		t := c.CreditTransaction
		detail = fmt.Sprintf("%s %+d balance=%d key=%s reason=%q",
			strings.ToLower(strings.TrimPrefix(t.GetKind().String(), "TRANSACTION_KIND_")),
			t.GetDelta(), t.GetBalanceAfter(), t.GetIdempotencyKey(), t.GetReason())
	}
	_, err := fmt.Fprintf(p.w, "%s  %-15s %-20s %s  (event %d)\n", when(ev.GetCreateTime()), kind, ev.GetClerkUserId(), detail, ev.GetId())
	return err
}

// account prints an account, and its members for an organization's.
func (p *printer) account(a *userdv1.Account, extra ...row) {
	owner := a.GetOwnerClerkUserId()
	if owner == "" {
		owner = a.GetClerkOrganizationId()
	}
	rows := []row{
		{"ACCOUNT", a.GetId()},
		{"OWNER", owner},
		{"PLAN", planName(a.GetPlan())},
		{"CREDITS", strconv.FormatInt(a.GetCredits(), 10)},
		{"CREATED", when(a.GetCreateTime())},
	}
	if a.GetCloseTime() != nil {
		rows = append(rows, row{"CLOSED", when(a.GetCloseTime())})
	}
	p.rows(append(rows, extra...)...)
	if len(a.GetMembers()) > 0 {
		fmt.Fprintln(p.w)
		p.members(a.GetMembers())
	}
}

// members prints an organization's members with their caps.
func (p *printer) members(ms []*userdv1.AccountMember) {
	tw := tabwriter.NewWriter(p.w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tROLE\tCAP\tSPENT\tREMAINING")
	for _, m := range ms {
		capText, spent, remaining := "none", "", ""
		if m.GetCapPeriod() != userdv1.UsagePeriod_USAGE_PERIOD_UNSPECIFIED {
			capText = fmt.Sprintf("%d/%s", m.GetCap(), strings.ToLower(strings.TrimPrefix(m.GetCapPeriod().String(), "USAGE_PERIOD_")))
			spent, remaining = strconv.FormatInt(m.GetSpentThisPeriod(), 10), strconv.FormatInt(m.GetRemainingThisPeriod(), 10)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", m.GetClerkUserId(), m.GetRole(), capText, spent, remaining)
	}
	_ = tw.Flush()
}
