package main

import (
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	userdv1 "github.com/userd/userd/gen/userd/v1"
)

// Grants with expiry and the plan catalog (issue 21).

type grantsCmd struct {
	ID string `arg:"" name:"clerk-id" help:"Clerk user id (user_...), or an organization id (org_...): its account."`
}

func (c *grantsCmd) Run(e *env) error {
	user, org, err := target(c.ID, "")
	if err != nil {
		return err
	}
	res, err := e.client.ListGrants(e.ctx, &userdv1.ListGrantsRequest{ClerkUserId: user, ClerkOrganizationId: org})
	if err != nil {
		return err
	}
	return e.out.message(res, func() { e.out.grants(res) })
}

type catalogCmd struct {
	List catalogListCmd `cmd:"" default:"withargs" help:"Show the plan catalog: each plan's allowance per period, rollover cap and upgrade bonus."`
	Set  catalogSetCmd  `cmd:"" help:"Set one plan's entry (recorded with this token's service name); it applies to each account from its next period."`
}

type catalogListCmd struct{}

func (c *catalogListCmd) Run(e *env) error {
	res, err := e.client.GetPlanCatalog(e.ctx, &userdv1.GetPlanCatalogRequest{})
	if err != nil {
		return err
	}
	return e.out.message(res, func() { e.out.catalog(res.GetPlans()) })
}

type catalogSetCmd struct {
	Plan         string `arg:"" enum:"free,pro,enterprise" help:"The plan: free, pro or enterprise."`
	Allowance    int64  `arg:"" help:"Credits granted at the start of each period; they expire at its end."`
	Period       string `default:"month" enum:"day,week,month" help:"The allowance's period: day, week or month (anchored at each account's creation, UTC)."`
	RolloverCap  int64  `name:"rollover-cap" help:"Unused allowance carried into the next period, at most this much (0: none)."`
	UpgradeBonus int64  `name:"upgrade-bonus" help:"Credits (never expiring) granted once per account on its first upgrade to this plan."`
}

func (c *catalogSetCmd) Run(e *env) error {
	res, err := e.client.SetPlanAllowance(e.ctx, &userdv1.SetPlanAllowanceRequest{
		Plan: userdv1.Plan(userdv1.Plan_value["PLAN_"+strings.ToUpper(c.Plan)]), Allowance: c.Allowance,
		Period: c.Period, RolloverCap: c.RolloverCap, UpgradeBonus: c.UpgradeBonus,
	})
	if err != nil {
		return err
	}
	return e.out.message(res, func() {
		e.out.catalog([]*userdv1.PlanAllowance{res.GetPlanAllowance()})
		if !res.GetChanged() {
			fmt.Fprintln(e.out.w, "\n(unchanged: the plan already had this entry)")
		}
	})
}

// expiresAt reads --expires: an RFC 3339 time or a duration from now.
func expiresAt(s string, now time.Time) (*timestamppb.Timestamp, error) {
	if s == "" {
		return nil, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		return timestamppb.New(now.Add(d)), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return nil, usageError{fmt.Sprintf("--expires %q: want an RFC 3339 time (2026-12-31T00:00:00Z) or a duration (720h)", s)}
	}
	return timestamppb.New(t), nil
}

func (p *printer) grants(g *userdv1.ListGrantsResponse) {
	next := "(none)"
	if g.GetNextRefillTime() != nil {
		next = strconv.FormatInt(g.GetNextRefillAmount(), 10) + " at " + when(g.GetNextRefillTime())
	}
	p.rows(
		row{"ACCOUNT", g.GetAccountId()},
		row{"PLAN", planName(g.GetPlan())},
		row{"BALANCE", strconv.FormatInt(g.GetBalance(), 10)},
		row{"NEVER EXPIRE", strconv.FormatInt(g.GetNonExpiringCredits(), 10)},
		row{"NEXT REFILL", next},
	)
	if len(g.GetGrants()) == 0 {
		return
	}
	fmt.Fprintln(p.w)
	tw := tabwriter.NewWriter(p.w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "GRANT\tSOURCE\tAMOUNT\tREMAINING\tEXPIRES\tLEDGER ID")
	for _, gr := range g.GetGrants() {
		fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%s\t%d\n", gr.GetId(), strings.ToLower(gr.GetSource()), gr.GetAmount(),
			gr.GetRemaining(), when(gr.GetExpireTime()), gr.GetTransactionId())
	}
	_ = tw.Flush()
}

func (p *printer) catalog(ps []*userdv1.PlanAllowance) {
	tw := tabwriter.NewWriter(p.w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PLAN\tALLOWANCE\tPERIOD\tROLLOVER CAP\tUPGRADE BONUS\tSINCE\tBY")
	for _, e := range ps {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\t%s\t%s\n", planName(e.GetPlan()), e.GetAllowance(), e.GetPeriod(),
			e.GetRolloverCap(), e.GetUpgradeBonus(), when(e.GetUpdateTime()), e.GetUpdatedBy())
	}
	if len(ps) == 0 {
		fmt.Fprintln(tw, "(empty: no allowances are granted)")
	}
	_ = tw.Flush()
}
