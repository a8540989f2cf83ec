// Command userctl is the operators' command line for userd, built on the
// Go client (userdclient): look users up, ensure them, move credits,
// change plans, page through ledgers, summarize usage and manage the price
// list.
//
//	userctl get user_2abc            userctl get --email ada@example.com
//	userctl deduct user_2abc 3 --key job-42 --reason render
//	userctl deduct user_2abc --action render --key job-43
//	userctl ledger user_2abc --json
//	userctl usage user_2abc --since 2026-03-01 --by day
//	userctl prices set render 2      userctl prices history render
//	userctl watch --kind plan --cursor-file /var/lib/billing/userd.cursor
//
// Where a command names an account, an organization id (org_...) names the
// organization's account instead of a user's personal one; --member then
// names the member acting (deduct, can-afford), recorded (grant) or
// listed (ledger):
//
//	userctl account org_2xyz         userctl deduct org_2xyz 3 --member user_2abc --key job-44
//	userctl member-cap org_2xyz user_2abc --period day --cap 100
//	userctl grant user_2abc 100 --key promo-7 --expires 720h   userctl grants user_2abc
//	userctl catalog set pro 1000 --rollover-cap 200 --upgrade-bonus 50
//
// The address and token come from --addr/--token or USERD_ADDR/USERD_TOKEN.
// Exit codes (for scripts): see exitCodes.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kong"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/userdclient"
)

// Exit codes.
const (
	exitOK                  = 0
	exitError               = 1 // anything not below
	exitUsage               = 2 // bad command line, or a request userd found invalid
	exitNotFound            = 3 // no such (live) user
	exitInsufficientCredits = 4 // the deduction is larger than the balance or the member's cap (or can-afford says no); nothing changed
	exitConflict            = 5 // idempotency key reused with other parameters, or email in use
	exitUnauthenticated     = 6 // token missing or not accepted
	exitPermissionDenied    = 7 // the token may not do this
	exitUnavailable         = 8 // userd or its database unreachable, or timed out: retry (same --key)
	exitCursorExpired       = 9 // watch: the cursor is older than userd keeps events; resynchronise
)

type cli struct {
	Addr      string        `env:"USERD_ADDR" default:"localhost:9090" help:"userd's gRPC address (host:port)."`
	Token     string        `env:"USERD_TOKEN" help:"Service token (or session token) sent as Authorization: Bearer. Prefer the environment variable."`
	Plaintext bool          `env:"USERD_PLAINTEXT" help:"Connect without TLS (local development, or TLS terminated elsewhere)."`
	Timeout   time.Duration `default:"10s" help:"Deadline of each command, retries included."`
	JSON      bool          `name:"json" help:"Print the response as JSON (protojson) instead of a table."`

	Get     getCmd     `cmd:"" help:"Show a user, by Clerk user id, --id or --email."`
	Ensure  ensureCmd  `cmd:"" help:"Create a user if missing (on FREE, with the initial credits) and show it."`
	Deduct  deductCmd  `cmd:"" help:"Spend credits; fails with exit code 4 when the balance is lower."`
	Grant   grantCmd   `cmd:"" help:"Add credits."`
	SetPlan setPlanCmd `cmd:"" name:"set-plan" help:"Change a user's plan, with optional bonus credits."`
	Ledger  ledgerCmd  `cmd:"" help:"List a user's credit transactions, newest first, one page at a time."`
	Usage   usageCmd   `cmd:"" help:"Sum a user's ledger over a window: credits spent and granted, by reason and by UTC day, week or month."`
	Afford  affordCmd  `cmd:"" name:"can-afford" help:"Whether a user's balance covers an amount or an action's price; exit code 4 when it does not."`
	Prices  pricesCmd  `cmd:"" help:"The price list: what one use of each action costs."`
	Watch   watchCmd   `cmd:"" help:"Follow the change feed (user, plan and credit events) until interrupted, resuming from a saved cursor."`

	Account   accountCmd   `cmd:"" help:"Show an account: a user's personal one (user_...) or an organization's (org_...), with its members, their caps and spending."`
	MemberCap memberCapCmd `cmd:"" name:"member-cap" help:"Set or remove what one member may spend from its organization's account per UTC day, week or month."`

	Grants  grantsCmd  `cmd:"" help:"Show an account's credits by expiry: its live expiring grants, the credits that never expire, its next allowance."`
	Catalog catalogCmd `cmd:"" help:"The plan catalog: each plan's allowance per period, rollover and upgrade bonus."`
}

// target reads the account a command names: a Clerk user id (the user's
// personal account) or a Clerk organization id (the organization's, with
// member the member acting, or "").
func target(id, member string) (clerkUserID, clerkOrgID string, err error) {
	if strings.HasPrefix(id, "org_") {
		return member, id, nil
	}
	if member != "" {
		return "", "", usageError{"--member needs an organization's account (an org_... id)"}
	}
	return id, "", nil
}

// env is what every command gets.
type env struct {
	ctx context.Context
	// root is not bounded by --timeout (for watch); it ends on SIGINT or
	// SIGTERM.
	root   context.Context
	client *userdclient.Client
	out    *printer
}

// program is how this userctl was invoked (os.Args[0], e.g. bin/userctl),
// for the commands it prints, so that they can be pasted as they are.
var program = "userctl"

func main() {
	if len(os.Args) > 0 && os.Args[0] != "" {
		program = os.Args[0]
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

type exit int

// run executes one command line and returns the exit code.
func run(args []string, stdout, stderr io.Writer) (code int) {
	var c cli
	parser, err := kong.New(&c,
		kong.Name("userctl"),
		kong.Description("Operate userd: users, credits, plans. Exit codes: 0 ok, 1 error, 2 usage or invalid request, "+
			"3 not found, 4 insufficient credits (or can-afford says no), 5 conflict (key reused, email in use), 6 unauthenticated, "+
			"7 permission denied, 8 unavailable or timed out (retry with the same --key), 9 watch cursor expired (resynchronise)."),
		kong.Writers(stdout, stderr),
		kong.Exit(func(code int) { panic(exit(code)) }),
	)
	if err != nil {
		fmt.Fprintln(stderr, "userctl:", err)
		return exitError
	}
	defer func() {
		if p := recover(); p != nil {
			e, ok := p.(exit)
			if !ok {
				panic(p)
			}
			code = int(e)
		}
	}()
	kctx, err := parser.Parse(args)
	if err != nil {
		fmt.Fprintln(stderr, "userctl:", err)
		return exitUsage
	}
	if c.Timeout <= 0 {
		fmt.Fprintln(stderr, "userctl: --timeout must be positive")
		return exitUsage
	}
	opts := []userdclient.Option{userdclient.WithTimeout(c.Timeout)}
	if c.Token != "" {
		opts = append(opts, userdclient.WithToken(c.Token))
	}
	if c.Plaintext {
		opts = append(opts, userdclient.WithInsecure())
	}
	client, err := userdclient.New(c.Addr, opts...)
	if err != nil {
		fmt.Fprintln(stderr, "userctl:", err)
		return exitUsage
	}
	defer client.Close()
	root, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(root, c.Timeout)
	defer cancel()
	e := &env{ctx: ctx, root: root, client: client, out: &printer{w: stdout, json: c.JSON}}
	if err := kctx.Run(e); err != nil {
		return report(stderr, err)
	}
	return exitOK
}

// report prints err for a human and returns its exit code.
func report(w io.Writer, err error) int {
	if errors.As(err, new(cannotAfford)) {
		return exitInsufficientCredits
	}
	var usage usageError
	if errors.As(err, &usage) {
		fmt.Fprintln(w, "userctl:", err)
		return exitUsage
	}
	var grpcErr interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &grpcErr) {
		fmt.Fprintln(w, "userctl:", err)
		return exitError
	}
	st := grpcErr.GRPCStatus()
	fmt.Fprintf(w, "userctl: %s: %s\n", strings.ToLower(strings.ReplaceAll(codeName(st.Code()), "_", " ")), st.Message())
	if st.Code() == codes.Unavailable && strings.Contains(st.Message(), tlsToPlaintext) {
		// Retrying cannot help: the command line asks for TLS and the
		// server speaks plaintext (make run's userd does).
		fmt.Fprintln(w, "  userd answered in plaintext, not TLS: add --plaintext (or set USERD_PLAINTEXT=true) for a userd without TLS, such as make run's")
		return exitUsage
	}
	for _, v := range userdclient.FieldViolations(err) {
		fmt.Fprintf(w, "  %s: %s\n", v.Field, v.Description)
	}
	if r := userdclient.Reason(err); r != "" {
		fmt.Fprintf(w, "  reason: %s\n", r)
	}
	switch {
	case userdclient.IsCursorExpired(err):
		fmt.Fprintf(w, "  the feed now starts at cursor %s: resynchronise (get, ledger), then watch from now\n", userdclient.OldestCursor(err))
		return exitCursorExpired
	case st.Code() == codes.InvalidArgument:
		return exitUsage
	case userdclient.IsNotFound(err):
		return exitNotFound
	case st.Code() == codes.FailedPrecondition:
		if _, _, ok := userdclient.IsInsufficientCredits(err); ok {
			return exitInsufficientCredits
		}
		if c, ok := userdclient.IsMemberCapReached(err); ok {
			fmt.Fprintf(w, "  the member's %s cap is %d: %d spent, %d remaining, %d required\n", c.Period, c.Cap, c.Spent, c.Remaining, c.Required)
			return exitInsufficientCredits
		}
	case st.Code() == codes.AlreadyExists:
		return exitConflict
	case userdclient.IsUnauthenticated(err):
		return exitUnauthenticated
	case userdclient.IsPermissionDenied(err):
		return exitPermissionDenied
	case st.Code() == codes.Unavailable, st.Code() == codes.DeadlineExceeded:
		return exitUnavailable
	}
	return exitError
}

// tlsToPlaintext is what crypto/tls reports when a TLS client's first read
// gets something other than a TLS record, such as an HTTP/2 frame of a
// plaintext gRPC server.
const tlsToPlaintext = "first record does not look like a TLS handshake"

// codeName is the code's canonical name, as the proto and docs/api.md spell
// it (FAILED_PRECONDITION; codes.Code.String says FailedPrecondition).
func codeName(c codes.Code) string {
	if n, ok := code.Code_name[int32(c)]; ok {
		return n
	}
	return c.String()
}

// usageError is a command line that cannot be sent.
type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

type getCmd struct {
	ClerkUserID string `arg:"" optional:"" name:"clerk-user-id" help:"Clerk user id (user_...)."`
	ID          string `name:"id" help:"userd id (UUID) instead."`
	Email       string `help:"Primary email instead (case-insensitive)."`
}

func (g *getCmd) Run(e *env) error {
	var (
		u   *userdv1.User
		err error
	)
	switch n := count(g.ClerkUserID, g.ID, g.Email); {
	case n != 1:
		return usageError{"name the user by exactly one of: a Clerk user id, --id, --email"}
	case g.ID != "":
		u, err = e.client.GetUserByID(e.ctx, g.ID)
	case g.Email != "":
		u, err = e.client.GetUserByEmail(e.ctx, g.Email)
	default:
		u, err = e.client.GetUserByClerkID(e.ctx, g.ClerkUserID)
	}
	if err != nil {
		return err
	}
	return e.out.message(&userdv1.GetUserResponse{User: u}, func() { e.out.user(u) })
}

func count(s ...string) int {
	n := 0
	for _, v := range s {
		if v != "" {
			n++
		}
	}
	return n
}

type ensureCmd struct {
	ClerkUserID string `arg:"" name:"clerk-user-id" help:"Clerk user id (user_...)."`
	Email       string `help:"Primary email."`
	FirstName   string `name:"first-name" help:"Given name."`
	LastName    string `name:"last-name" help:"Family name."`
	ImageURL    string `name:"image-url" help:"Profile image URL."`
}

func (c *ensureCmd) Run(e *env) error {
	res, err := e.client.EnsureUser(e.ctx, &userdv1.EnsureUserRequest{
		ClerkUserId: c.ClerkUserID, Email: c.Email, FirstName: c.FirstName, LastName: c.LastName, ImageUrl: c.ImageURL,
	})
	if err != nil {
		return err
	}
	return e.out.message(res, func() {
		created := "no (it existed)"
		if res.GetCreated() {
			created = "yes"
		}
		e.out.user(res.GetUser(), row{"NEW", created})
	})
}

// change is what deduct and grant share.
type change struct {
	ClerkUserID string `arg:"" name:"clerk-user-id" help:"Clerk user id (user_...), or an organization id (org_...)."`
	Amount      int64  `arg:"" help:"Credits, 1 to 1000000000000."`
	Key         string `required:"" help:"Idempotency key: repeating the command with the same key changes nothing (1-255 printable ASCII)."`
	Reason      string `help:"Reason stored in the ledger."`
}

type deductCmd struct {
	ClerkUserID string `arg:"" name:"clerk-user-id" help:"Clerk user id (user_...), or an organization id (org_...) with --member."`
	Member      string `help:"With an organization id: the member spending (required for a service)."`
	Amount      int64  `arg:"" optional:"" help:"Credits, 1 to 1000000000000; or --action instead."`
	Action      string `help:"Charge one use of this action at its current price instead of an amount (the action becomes the reason)."`
	Key         string `required:"" help:"Idempotency key: repeating the command with the same key changes nothing (1-255 printable ASCII)."`
	Reason      string `help:"Reason stored in the ledger (not with --action)."`
}

func (c *deductCmd) Run(e *env) error {
	if (c.Amount == 0) == (c.Action == "") {
		return usageError{"give either an amount or --action"}
	}
	user, org, err := target(c.ClerkUserID, c.Member)
	if err != nil {
		return err
	}
	res, err := e.client.DeductCredits(e.ctx, &userdv1.DeductCreditsRequest{
		ClerkUserId: user, ClerkOrganizationId: org, Amount: c.Amount, Action: c.Action, IdempotencyKey: c.Key, Reason: c.Reason,
	})
	if err != nil {
		return err
	}
	return e.out.message(res, func() {
		e.out.transactions([]*userdv1.CreditTransaction{res.GetTransaction()})
		e.out.replayed(res.GetReplayed(), c.Key)
	})
}

type grantCmd struct {
	change
	Member  string `help:"With an organization id: the member the grant is recorded for (optional)."`
	Expires string `help:"When the granted credits expire: an RFC 3339 time or a duration from now (720h); never when omitted."`
	Source  string `enum:",grant,purchase,refund,support,bonus" default:"" help:"What the grant came from (recorded on an expiring grant): grant, purchase, refund, support or bonus."`
}

func (c *grantCmd) Run(e *env) error {
	user, org, err := target(c.ClerkUserID, c.Member)
	if err != nil {
		return err
	}
	expires, err := expiresAt(c.Expires, time.Now())
	if err != nil {
		return err
	}
	res, err := e.client.GrantCredits(e.ctx, &userdv1.GrantCreditsRequest{
		ClerkUserId: user, ClerkOrganizationId: org, Amount: c.Amount, IdempotencyKey: c.Key, Reason: c.Reason,
		ExpiresAt: expires, GrantSource: strings.ToUpper(c.Source),
	})
	if err != nil {
		return err
	}
	return e.out.message(res, func() {
		e.out.transactions([]*userdv1.CreditTransaction{res.GetTransaction()})
		e.out.replayed(res.GetReplayed(), c.Key)
	})
}

type setPlanCmd struct {
	ClerkUserID string `arg:"" name:"clerk-user-id" help:"Clerk user id (user_...), or an organization id (org_...): its account's plan (services only)."`
	Plan        string `arg:"" enum:"free,pro,enterprise" help:"The new plan: free, pro or enterprise."`
	Bonus       int64  `help:"Credits granted with the change."`
	Key         string `required:"" help:"Idempotency key: repeating the command with the same key changes nothing."`
	Reason      string `help:"Reason stored with the change."`
}

func (c *setPlanCmd) Run(e *env) error {
	plan := userdv1.Plan(userdv1.Plan_value["PLAN_"+strings.ToUpper(c.Plan)])
	user, org, err := target(c.ClerkUserID, "")
	if err != nil {
		return err
	}
	res, err := e.client.SetPlan(e.ctx, &userdv1.SetPlanRequest{
		ClerkUserId: user, ClerkOrganizationId: org, Plan: plan, BonusCredits: c.Bonus, IdempotencyKey: c.Key, Reason: c.Reason,
	})
	if err != nil {
		return err
	}
	return e.out.message(res, func() {
		previous := row{"PREVIOUS PLAN", planName(res.GetPreviousPlan())}
		if org != "" {
			e.out.account(res.GetAccount(), previous)
		} else {
			e.out.user(res.GetUser(), previous)
		}
		e.out.replayed(res.GetReplayed(), c.Key)
	})
}

type ledgerCmd struct {
	ClerkUserID string `arg:"" name:"clerk-user-id" help:"Clerk user id (user_...), or an organization id (org_...)."`
	Member      string `help:"With an organization id: only this member's entries."`
	PageSize    int32  `name:"page-size" default:"20" help:"Entries per page (1-500)."`
	PageToken   string `name:"page-token" help:"Token of the page to show, printed under the previous one."`
}

func (c *ledgerCmd) Run(e *env) error {
	user, org, err := target(c.ClerkUserID, "")
	if err != nil {
		return err
	}
	if c.Member != "" && org == "" {
		return usageError{"--member needs an organization's account (an org_... id)"}
	}
	res, err := e.client.ListCreditTransactions(e.ctx, &userdv1.ListCreditTransactionsRequest{
		ClerkUserId: user, ClerkOrganizationId: org, MemberClerkUserId: c.Member, PageSize: c.PageSize, PageToken: c.PageToken,
	})
	if err != nil {
		return err
	}
	return e.out.message(res, func() {
		e.out.transactions(res.GetTransactions())
		if next := res.GetNextPageToken(); next != "" {
			member := ""
			if c.Member != "" {
				member = " --member " + c.Member
			}
			fmt.Fprintf(e.out.w, "\nmore: %s ledger %s%s --page-size %d --page-token %s\n", program, c.ClerkUserID, member, c.PageSize, next)
		}
	})
}

type usageCmd struct {
	ClerkUserID string `arg:"" name:"clerk-user-id" help:"Clerk user id (user_...), or an organization id (org_...)."`
	ByMember    bool   `name:"by-member" help:"With an organization id: also sum the window by member."`
	Since       string `help:"Start of the window, inclusive: RFC 3339 (2026-03-01T00:00:00Z) or a UTC date (2026-03-01) (default: 30 days before --until)."`
	Until       string `help:"End of the window, exclusive, as --since (default: now)."`
	By          string `enum:"none,day,week,month" default:"none" help:"Periods: day, week (ISO, from Monday) or month, in UTC; or none."`
}

func (c *usageCmd) Run(e *env) error {
	user, org, err := target(c.ClerkUserID, "")
	if err != nil {
		return err
	}
	if c.ByMember && org == "" {
		return usageError{"--by-member needs an organization's account (an org_... id)"}
	}
	req := &userdv1.GetUsageSummaryRequest{
		ClerkUserId: user, ClerkOrganizationId: org, ByMember: c.ByMember,
		GroupBy: userdv1.UsagePeriod(userdv1.UsagePeriod_value["USAGE_PERIOD_"+strings.ToUpper(c.By)]),
	}
	if c.Since != "" {
		since, err := parseTime("--since", c.Since)
		if err != nil {
			return err
		}
		req.StartTime = timestamppb.New(since)
	}
	if c.Until != "" {
		until, err := parseTime("--until", c.Until)
		if err != nil {
			return err
		}
		req.EndTime = timestamppb.New(until)
	}
	res, err := e.client.GetUsageSummary(e.ctx, req)
	if err != nil {
		return err
	}
	return e.out.message(res, func() { e.out.usage(res) })
}

// parseTime reads an RFC 3339 time or a date, taken as 00:00 UTC.
func parseTime(flag, s string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339Nano, time.DateOnly} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, usageError{flag + " must be an RFC 3339 time (2026-03-01T00:00:00Z) or a date (2026-03-01)"}
}

type affordCmd struct {
	ClerkUserID string `arg:"" name:"clerk-user-id" help:"Clerk user id (user_...), or an organization id (org_...) with --member."`
	Member      string `help:"With an organization id: the member who would spend (its cap counts too)."`
	Amount      int64  `help:"Credits to compare with the balance."`
	Action      string `help:"An action of the price list: its current price."`
}

func (c *affordCmd) Run(e *env) error {
	if (c.Amount == 0) == (c.Action == "") {
		return usageError{"give either --amount or --action"}
	}
	user, org, err := target(c.ClerkUserID, c.Member)
	if err != nil {
		return err
	}
	res, err := e.client.CanAfford(e.ctx, &userdv1.CanAffordRequest{ClerkUserId: user, ClerkOrganizationId: org, Amount: c.Amount, Action: c.Action})
	if err != nil {
		return err
	}
	if err := e.out.message(res, func() {
		e.out.rows(row{"REQUIRED", strconv.FormatInt(res.GetRequired(), 10)},
			row{"AVAILABLE", strconv.FormatInt(res.GetAvailable(), 10)},
			row{"ALLOWED", strconv.FormatBool(res.GetAllowed())})
	}); err != nil {
		return err
	}
	if !res.GetAllowed() {
		return cannotAfford{}
	}
	return nil
}

// cannotAfford is can-afford's "no": exit code 4, like a refused
// deduction, and nothing more to print.
type cannotAfford struct{}

func (cannotAfford) Error() string { return "" }

type pricesCmd struct {
	List    pricesListCmd    `cmd:"" default:"withargs" help:"List the price list by action."`
	Set     pricesSetCmd     `cmd:"" help:"Set what one use of an action costs (recorded with this token's service name)."`
	History pricesHistoryCmd `cmd:"" help:"The price list's changes, newest first: who, when, from what."`
}

type pricesListCmd struct{}

func (c *pricesListCmd) Run(e *env) error {
	res := &userdv1.ListPricesResponse{}
	for p, err := range e.client.Prices(e.ctx, 0) {
		if err != nil {
			return err
		}
		res.Prices = append(res.Prices, p)
	}
	return e.out.message(res, func() { e.out.prices(res.GetPrices()) })
}

type pricesSetCmd struct {
	Action  string `arg:"" help:"The action: a lowercase letter, then lowercase letters, digits, _ . or - (at most 64)."`
	Credits int64  `arg:"" help:"Credits one use costs, 1 to 1000000000000."`
}

func (c *pricesSetCmd) Run(e *env) error {
	res, err := e.client.SetPrice(e.ctx, &userdv1.SetPriceRequest{Action: c.Action, Credits: c.Credits})
	if err != nil {
		return err
	}
	return e.out.message(res, func() {
		e.out.prices([]*userdv1.Price{res.GetPrice()})
		if res.GetChange() == nil {
			fmt.Fprintln(e.out.w, "\n(unchanged: it already had this price)")
		}
	})
}

type pricesHistoryCmd struct {
	Action string `arg:"" optional:"" help:"Only this action's changes."`
}

func (c *pricesHistoryCmd) Run(e *env) error {
	res := &userdv1.ListPriceChangesResponse{}
	for ch, err := range e.client.PriceChanges(e.ctx, c.Action, 0) {
		if err != nil {
			return err
		}
		res.Changes = append(res.Changes, ch)
	}
	return e.out.message(res, func() { e.out.priceChanges(res.GetChanges()) })
}

type watchCmd struct {
	ClerkUserID string   `arg:"" optional:"" name:"clerk-user-id" help:"Only this user's events; every user's when omitted."`
	Kinds       []string `name:"kind" help:"Only these kinds: created, updated, deleted, plan, credits (repeat the flag or separate with commas)."`
	Cursor      string   `help:"Resume after this cursor (printed with every event and heartbeat by --json)."`
	CursorFile  string   `name:"cursor-file" type:"path" help:"Resume from the cursor saved in this file, if it exists, and save the cursor there after every event and heartbeat."`
	FromOldest  bool     `name:"from-oldest" help:"Without a cursor, start at the oldest event userd keeps instead of now."`
	Count       int      `help:"Stop after this many events (0: until interrupted)."`
}

var watchKinds = map[string]userdv1.UserEventKind{
	"created": userdv1.UserEventKind_USER_EVENT_KIND_USER_CREATED,
	"updated": userdv1.UserEventKind_USER_EVENT_KIND_USER_UPDATED,
	"deleted": userdv1.UserEventKind_USER_EVENT_KIND_USER_DELETED,
	"plan":    userdv1.UserEventKind_USER_EVENT_KIND_PLAN_CHANGED,
	"credits": userdv1.UserEventKind_USER_EVENT_KIND_CREDITS_CHANGED,
}

// errEnough ends a watch that printed --count events.
var errEnough = errors.New("enough events")

func (c *watchCmd) Run(e *env) error {
	req := &userdv1.WatchUserEventsRequest{ClerkUserId: c.ClerkUserID, Cursor: c.Cursor}
	for _, k := range c.Kinds {
		for _, name := range strings.Split(k, ",") {
			kind, ok := watchKinds[strings.TrimSpace(strings.ToLower(name))]
			if !ok {
				return usageError{fmt.Sprintf("unknown --kind %q: use created, updated, deleted, plan or credits", name)}
			}
			req.Kinds = append(req.Kinds, kind)
		}
	}
	if c.CursorFile != "" && req.Cursor == "" {
		saved, err := os.ReadFile(c.CursorFile)
		switch {
		case err == nil:
			req.Cursor = strings.TrimSpace(string(saved))
		case !errors.Is(err, os.ErrNotExist):
			return err
		}
	}
	if req.Cursor == "" && c.FromOldest {
		req.Start = userdv1.WatchStart_WATCH_START_OLDEST
	}
	printed := 0
	err := e.client.Watch(e.root, req, userdclient.WatchHandler{
		Event: func(_ context.Context, ev *userdv1.UserEvent) error {
			if err := e.out.event(ev); err != nil {
				return err
			}
			if printed++; c.Count > 0 && printed >= c.Count {
				// Save this event's cursor before stopping.
				if err := c.save(ev.GetCursor()); err != nil {
					return err
				}
				return errEnough
			}
			return nil
		},
		Cursor: c.save,
	})
	switch {
	case errors.Is(err, errEnough):
		return nil
	case errors.Is(err, context.Canceled) && e.root.Err() != nil:
		return nil // interrupted: the cursor is saved
	}
	return err
}

// save writes the cursor to --cursor-file, atomically (a crash leaves the
// old cursor or the new one, never half of one).
func (c *watchCmd) save(cursor string) error {
	if c.CursorFile == "" {
		return nil
	}
	tmp := c.CursorFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(cursor+"\n"), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, c.CursorFile)
}

type accountCmd struct {
	ID string `arg:"" name:"id" help:"Clerk user id (user_..., or me with a session token) or organization id (org_...)."`
}

func (c *accountCmd) Run(e *env) error {
	user, org, err := target(c.ID, "")
	if err != nil {
		return err
	}
	res, err := e.client.GetAccount(e.ctx, &userdv1.GetAccountRequest{ClerkUserId: user, ClerkOrganizationId: org})
	if err != nil {
		return err
	}
	return e.out.message(res, func() { e.out.account(res.GetAccount()) })
}

type memberCapCmd struct {
	Org    string `arg:"" name:"org-id" help:"Clerk organization id (org_...)."`
	Member string `arg:"" name:"member" help:"Clerk user id of the member (user_...)."`
	Period string `enum:"day,week,month," default:"" help:"The cap's period (UTC): day, week (ISO, from Monday) or month."`
	Cap    int64  `help:"Credits the member may spend per period (0: none)."`
	Remove bool   `help:"Remove the member's cap instead."`
}

func (c *memberCapCmd) Run(e *env) error {
	if c.Remove == (c.Period != "") {
		return usageError{"give either --period (with --cap) or --remove"}
	}
	res, err := e.client.SetMemberSpendingCap(e.ctx, &userdv1.SetMemberSpendingCapRequest{
		ClerkOrganizationId: c.Org, MemberClerkUserId: c.Member, Cap: c.Cap,
		Period: userdv1.UsagePeriod(userdv1.UsagePeriod_value["USAGE_PERIOD_"+strings.ToUpper(c.Period)]),
	})
	if err != nil {
		return err
	}
	return e.out.message(res, func() { e.out.members([]*userdv1.AccountMember{res.GetMember()}) })
}
