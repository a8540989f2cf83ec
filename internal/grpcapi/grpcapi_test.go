package grpcapi_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/apptest"
	"github.com/userd/userd/internal/users"
)

func wantCode(t *testing.T, err error, want codes.Code) *status.Status {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != want {
		t.Fatalf("code = %v (%v), want %v", st.Code(), err, want)
	}
	return st
}

func errorInfo(st *status.Status) *errdetails.ErrorInfo {
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei
		}
	}
	return nil
}

func fieldViolations(st *status.Status) []string {
	var fields []string
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	return fields
}

func TestHealthAndReflection(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	ctx := context.Background()
	for _, svc := range []string{"", "userd.v1.UserService"} {
		resp, err := healthpb.NewHealthClient(in.Conn).Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health(%q) = %v, %v; want SERVING", svc, resp.GetStatus(), err)
		}
	}
	stream, err := reflectionpb.NewServerReflectionClient(in.Conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{},
	}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	for _, want := range []string{"userd.v1.UserService", "grpc.health.v1.Health"} {
		if !strings.Contains(strings.Join(names, " "), want) {
			t.Errorf("reflection lists %v, missing %s", names, want)
		}
	}
}

func TestEveryRPC(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	c := in.Client
	ctx := context.Background()

	ens, err := c.EnsureUser(ctx, &userdv1.EnsureUserRequest{
		ClerkUserId: "user_rpc", Email: "rpc@example.com", FirstName: "R", LastName: "PC",
		ImageUrl: "https://img.example.com/rpc.png",
	})
	if err != nil {
		t.Fatal(err)
	}
	if !ens.GetCreated() || ens.GetUser().GetCredits() != 10 || ens.GetUser().GetPlan() != userdv1.Plan_PLAN_FREE {
		t.Errorf("EnsureUser = %v", ens)
	}
	u := ens.GetUser()
	if u.GetCreateTime() == nil || u.GetUpdateTime() == nil || u.GetId() == "" {
		t.Errorf("user lacks id or times: %v", u)
	}

	for _, req := range []*userdv1.GetUserRequest{
		{Lookup: &userdv1.GetUserRequest_ClerkUserId{ClerkUserId: "user_rpc"}},
		{Lookup: &userdv1.GetUserRequest_Id{Id: u.GetId()}},
		{Lookup: &userdv1.GetUserRequest_Email{Email: "RPC@example.com"}},
	} {
		got, err := c.GetUser(ctx, req)
		if err != nil {
			t.Fatalf("GetUser(%v): %v", req, err)
		}
		if diff := cmp.Diff(u, got.GetUser(), protocmp.Transform()); diff != "" {
			t.Errorf("GetUser(%v) (-want +got):\n%s", req, diff)
		}
	}
	_, err = c.GetUser(ctx, &userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_ClerkUserId{ClerkUserId: "user_nobody"}})
	wantCode(t, err, codes.NotFound)

	ded, err := c.DeductCredits(ctx, &userdv1.DeductCreditsRequest{ClerkUserId: "user_rpc", Amount: 4, IdempotencyKey: "d1", Reason: "job 1"})
	if err != nil {
		t.Fatal(err)
	}
	if ded.GetBalance() != 6 || ded.GetTransaction().GetDelta() != -4 ||
		ded.GetTransaction().GetKind() != userdv1.TransactionKind_TRANSACTION_KIND_DEDUCT ||
		ded.GetTransaction().GetIdempotencyKey() != "d1" || ded.GetTransaction().GetUserId() != u.GetId() {
		t.Errorf("DeductCredits = %v", ded)
	}
	replay, err := c.DeductCredits(ctx, &userdv1.DeductCreditsRequest{ClerkUserId: "user_rpc", Amount: 4, IdempotencyKey: "d1", Reason: "job 1"})
	if err != nil || !replay.GetReplayed() || ded.GetReplayed() ||
		!proto.Equal(replay.GetTransaction(), ded.GetTransaction()) || replay.GetBalance() != ded.GetBalance() {
		t.Errorf("replay = %v, %v; want %v, replayed", replay, err, ded)
	}

	_, err = c.DeductCredits(ctx, &userdv1.DeductCreditsRequest{ClerkUserId: "user_rpc", Amount: 7, IdempotencyKey: "d2"})
	st := wantCode(t, err, codes.FailedPrecondition)
	ei := errorInfo(st)
	if ei.GetReason() != "INSUFFICIENT_CREDITS" || ei.GetDomain() != "userd" ||
		!cmp.Equal(ei.GetMetadata(), map[string]string{"required": "7", "available": "6"}) {
		t.Errorf("ErrorInfo = %v", ei)
	}

	_, err = c.DeductCredits(ctx, &userdv1.DeductCreditsRequest{ClerkUserId: "user_rpc", Amount: 5, IdempotencyKey: "d1", Reason: "job 1"})
	st = wantCode(t, err, codes.AlreadyExists)
	if errorInfo(st).GetReason() != "IDEMPOTENCY_KEY_REUSED" {
		t.Errorf("ErrorInfo = %v", errorInfo(st))
	}

	gr, err := c.GrantCredits(ctx, &userdv1.GrantCreditsRequest{ClerkUserId: "user_rpc", Amount: 20, IdempotencyKey: "g1", Reason: "purchase"})
	if err != nil || gr.GetBalance() != 26 || gr.GetTransaction().GetKind() != userdv1.TransactionKind_TRANSACTION_KIND_GRANT {
		t.Errorf("GrantCredits = %v, %v", gr, err)
	}

	sp, err := c.SetPlan(ctx, &userdv1.SetPlanRequest{ClerkUserId: "user_rpc", Plan: userdv1.Plan_PLAN_PRO, BonusCredits: 100, IdempotencyKey: "p1"})
	if err != nil {
		t.Fatal(err)
	}
	if sp.GetUser().GetPlan() != userdv1.Plan_PLAN_PRO || sp.GetUser().GetCredits() != 126 ||
		sp.GetPreviousPlan() != userdv1.Plan_PLAN_FREE || sp.GetBonusTransaction().GetDelta() != 100 {
		t.Errorf("SetPlan = %v", sp)
	}

	var kinds []userdv1.TransactionKind
	token := ""
	for {
		page, err := c.ListCreditTransactions(ctx, &userdv1.ListCreditTransactionsRequest{ClerkUserId: "user_rpc", PageSize: 2, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, tx := range page.GetTransactions() {
			kinds = append(kinds, tx.GetKind())
			// The service acted for the user on its personal account:
			// the ledger names it (the initial credits have no actor).
			if want := "user_rpc"; tx.GetKind() != userdv1.TransactionKind_TRANSACTION_KIND_INITIAL && tx.GetActorClerkUserId() != want {
				t.Errorf("ledger entry %d (%v): actor_clerk_user_id %q, want %q", tx.GetId(), tx.GetKind(), tx.GetActorClerkUserId(), want)
			}
		}
		if token = page.GetNextPageToken(); token == "" {
			break
		}
	}
	wantKinds := []userdv1.TransactionKind{
		userdv1.TransactionKind_TRANSACTION_KIND_PLAN_BONUS,
		userdv1.TransactionKind_TRANSACTION_KIND_GRANT,
		userdv1.TransactionKind_TRANSACTION_KIND_DEDUCT,
		userdv1.TransactionKind_TRANSACTION_KIND_INITIAL,
	}
	if diff := cmp.Diff(wantKinds, kinds); diff != "" {
		t.Errorf("ledger kinds, newest first (-want +got):\n%s", diff)
	}
}

// TestInvalidRequests sends a table of bad requests: each must fail with
// INVALID_ARGUMENT naming the bad field, and none may change any data.
func TestInvalidRequests(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	c := in.Client
	ctx := context.Background()
	if _, err := c.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: "user_valid", Email: "valid@example.com"}); err != nil {
		t.Fatal(err)
	}
	type state struct {
		User   users.User
		Ledger []users.Transaction
	}
	snapshot := func() state {
		u, err := in.Store.GetUserByClerkIDIncludingDeleted(ctx, "user_valid")
		if err != nil {
			t.Fatal(err)
		}
		ts, err := in.Store.ListCreditTransactions(ctx, u.ID, 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		return state{u, ts}
	}
	before := snapshot()

	const valid = "user_valid"
	long := strings.Repeat("k", users.MaxIdempotencyKey+1)
	type call func() error
	deduct := func(r *userdv1.DeductCreditsRequest) call {
		return func() error { _, err := c.DeductCredits(ctx, r); return err }
	}
	grant := func(r *userdv1.GrantCreditsRequest) call {
		return func() error { _, err := c.GrantCredits(ctx, r); return err }
	}
	setPlan := func(r *userdv1.SetPlanRequest) call {
		return func() error { _, err := c.SetPlan(ctx, r); return err }
	}
	ensure := func(r *userdv1.EnsureUserRequest) call {
		return func() error { _, err := c.EnsureUser(ctx, r); return err }
	}
	get := func(r *userdv1.GetUserRequest) call {
		return func() error { _, err := c.GetUser(ctx, r); return err }
	}
	list := func(r *userdv1.ListCreditTransactionsRequest) call {
		return func() error { _, err := c.ListCreditTransactions(ctx, r); return err }
	}
	usage := func(r *userdv1.GetUsageSummaryRequest) call {
		return func() error { _, err := c.GetUsageSummary(ctx, r); return err }
	}
	afford := func(r *userdv1.CanAffordRequest) call {
		return func() error { _, err := c.CanAfford(ctx, r); return err }
	}
	setPrice := func(r *userdv1.SetPriceRequest) call {
		return func() error { _, err := c.SetPrice(ctx, r); return err }
	}
	if _, err := c.SetPrice(ctx, &userdv1.SetPriceRequest{Action: "render", Credits: 2}); err != nil {
		t.Fatal(err)
	}
	start := timestamppb.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	cases := []struct {
		name  string
		call  call
		field string
	}{
		{"GetNoLookup", get(&userdv1.GetUserRequest{}), "lookup"},
		{"GetEmptyClerkID", get(&userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_ClerkUserId{}}), "lookup"},
		{"GetMalformedClerkID", get(&userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_ClerkUserId{ClerkUserId: "usr-1; drop"}}), "clerk_user_id"},
		{"GetMalformedID", get(&userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_Id{Id: "not-a-uuid"}}), "id"},
		{"GetMalformedEmail", get(&userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_Email{Email: "not an email"}}), "email"},
		{"EnsureEmptyClerkID", ensure(&userdv1.EnsureUserRequest{}), "clerk_user_id"},
		{"EnsureWrongPrefix", ensure(&userdv1.EnsureUserRequest{ClerkUserId: "org_123"}), "clerk_user_id"},
		{"EnsureTooLongClerkID", ensure(&userdv1.EnsureUserRequest{ClerkUserId: "user_" + strings.Repeat("a", 60)}), "clerk_user_id"},
		{"EnsureMalformedEmail", ensure(&userdv1.EnsureUserRequest{ClerkUserId: "user_new", Email: "Ada <ada@example.com>"}), "email"},
		{"EnsureNameTooLong", ensure(&userdv1.EnsureUserRequest{ClerkUserId: "user_new", FirstName: strings.Repeat("n", 257)}), "first_name"},
		{"EnsureControlChars", ensure(&userdv1.EnsureUserRequest{ClerkUserId: "user_new", LastName: "a\x00b"}), "last_name"},
		{"EnsureRelativeImage", ensure(&userdv1.EnsureUserRequest{ClerkUserId: "user_new", ImageUrl: "/img.png"}), "image_url"},
		{"DeductEmptyUser", deduct(&userdv1.DeductCreditsRequest{Amount: 1, IdempotencyKey: "k"}), "clerk_user_id"},
		{"DeductZero", deduct(&userdv1.DeductCreditsRequest{ClerkUserId: valid, IdempotencyKey: "k"}), "amount"},
		{"DeductNegative", deduct(&userdv1.DeductCreditsRequest{ClerkUserId: valid, Amount: -5, IdempotencyKey: "k"}), "amount"},
		{"DeductAbsurd", deduct(&userdv1.DeductCreditsRequest{ClerkUserId: valid, Amount: 1 << 62, IdempotencyKey: "k"}), "amount"},
		{"DeductNoKey", deduct(&userdv1.DeductCreditsRequest{ClerkUserId: valid, Amount: 1}), "idempotency_key"},
		{"DeductKeyTooLong", deduct(&userdv1.DeductCreditsRequest{ClerkUserId: valid, Amount: 1, IdempotencyKey: long}), "idempotency_key"},
		{"DeductKeyWithSpace", deduct(&userdv1.DeductCreditsRequest{ClerkUserId: valid, Amount: 1, IdempotencyKey: "a b"}), "idempotency_key"},
		{"DeductReasonTooLong", deduct(&userdv1.DeductCreditsRequest{ClerkUserId: valid, Amount: 1, IdempotencyKey: "k", Reason: strings.Repeat("r", 513)}), "reason"},
		{"GrantZero", grant(&userdv1.GrantCreditsRequest{ClerkUserId: valid, IdempotencyKey: "k"}), "amount"},
		{"GrantAbsurd", grant(&userdv1.GrantCreditsRequest{ClerkUserId: valid, Amount: users.MaxAmount + 1, IdempotencyKey: "k"}), "amount"},
		{"GrantNoKey", grant(&userdv1.GrantCreditsRequest{ClerkUserId: valid, Amount: 1}), "idempotency_key"},
		{"SetPlanUnspecified", setPlan(&userdv1.SetPlanRequest{ClerkUserId: valid, IdempotencyKey: "k"}), "plan"},
		{"SetPlanUnknown", setPlan(&userdv1.SetPlanRequest{ClerkUserId: valid, Plan: userdv1.Plan(42), IdempotencyKey: "k"}), "plan"},
		{"SetPlanNegativeBonus", setPlan(&userdv1.SetPlanRequest{ClerkUserId: valid, Plan: userdv1.Plan_PLAN_PRO, BonusCredits: -1, IdempotencyKey: "k"}), "bonus_credits"},
		{"SetPlanNoKey", setPlan(&userdv1.SetPlanRequest{ClerkUserId: valid, Plan: userdv1.Plan_PLAN_PRO}), "idempotency_key"},
		{"ListNegativePageSize", list(&userdv1.ListCreditTransactionsRequest{ClerkUserId: valid, PageSize: -1}), "page_size"},
		{"ListHugePageSize", list(&userdv1.ListCreditTransactionsRequest{ClerkUserId: valid, PageSize: 501}), "page_size"},
		{"ListGarbageToken", list(&userdv1.ListCreditTransactionsRequest{ClerkUserId: valid, PageToken: "%%%"}), "page_token"},
		{"ListForgedToken", list(&userdv1.ListCreditTransactionsRequest{ClerkUserId: valid, PageToken: "Y3QxOi01"}), "page_token"}, // "ct1:-5"
		{"ListEmptyUser", list(&userdv1.ListCreditTransactionsRequest{}), "clerk_user_id"},
		{"DeductAmountAndAction", deduct(&userdv1.DeductCreditsRequest{ClerkUserId: valid, Amount: 2, Action: "render", IdempotencyKey: "k"}), "action"},
		{"DeductActionWithReason", deduct(&userdv1.DeductCreditsRequest{ClerkUserId: valid, Action: "render", IdempotencyKey: "k", Reason: "why"}), "reason"},
		{"DeductUnknownAction", deduct(&userdv1.DeductCreditsRequest{ClerkUserId: valid, Action: "paint", IdempotencyKey: "k"}), "action"},
		{"DeductMalformedAction", deduct(&userdv1.DeductCreditsRequest{ClerkUserId: valid, Action: "Render!", IdempotencyKey: "k"}), "action"},
		{"UsageInvalidStart", usage(&userdv1.GetUsageSummaryRequest{ClerkUserId: valid, StartTime: &timestamppb.Timestamp{Seconds: 1 << 62}}), "start_time"},
		{"UsageInvalidEnd", usage(&userdv1.GetUsageSummaryRequest{ClerkUserId: valid, StartTime: start, EndTime: &timestamppb.Timestamp{Nanos: -1}}), "end_time"},
		{"UsageEndBeforeStart", usage(&userdv1.GetUsageSummaryRequest{ClerkUserId: valid, StartTime: start, EndTime: timestamppb.New(start.AsTime().Add(-time.Second))}), "end_time"},
		{"UsageTooManyDays", usage(&userdv1.GetUsageSummaryRequest{ClerkUserId: valid, StartTime: start, EndTime: timestamppb.New(start.AsTime().AddDate(2, 0, 0)), GroupBy: userdv1.UsagePeriod_USAGE_PERIOD_DAY}), "start_time"},
		{"UsageUnknownPeriod", usage(&userdv1.GetUsageSummaryRequest{ClerkUserId: valid, StartTime: start, GroupBy: userdv1.UsagePeriod(9)}), "group_by"},
		{"UsageEmptyUser", usage(&userdv1.GetUsageSummaryRequest{StartTime: start}), "clerk_user_id"},
		{"CanAffordNothing", afford(&userdv1.CanAffordRequest{ClerkUserId: valid}), "amount"},
		{"CanAffordBoth", afford(&userdv1.CanAffordRequest{ClerkUserId: valid, Amount: 1, Action: "render"}), "action"},
		{"CanAffordUnknownAction", afford(&userdv1.CanAffordRequest{ClerkUserId: valid, Action: "paint"}), "action"},
		{"SetPriceZero", setPrice(&userdv1.SetPriceRequest{Action: "render"}), "credits"},
		{"SetPriceNoAction", setPrice(&userdv1.SetPriceRequest{Credits: 3}), "action"},
		{"SetPriceBadAction", setPrice(&userdv1.SetPriceRequest{Action: "render/4k", Credits: 3}), "action"},
		{"ListPricesHugePage", func() error { _, err := c.ListPrices(ctx, &userdv1.ListPricesRequest{PageSize: 1001}); return err }, "page_size"},
		{"ListPriceChangesBadAction", func() error {
			_, err := c.ListPriceChanges(ctx, &userdv1.ListPriceChangesRequest{Action: "RENDER"})
			return err
		}, "action"},
		// NUL bytes (valid UTF-8, so protobuf lets them through) in every
		// text field that could reach PostgreSQL (issue 18, item 5).
		{"NULGetEmail", get(&userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_Email{Email: "val\x00id@example.com"}}), "email"},
		{"NULGetClerkID", get(&userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_ClerkUserId{ClerkUserId: "user_\x00"}}), "clerk_user_id"},
		{"NULGetID", get(&userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_Id{Id: "\x00"}}), "id"},
		{"NULEnsureEmail", ensure(&userdv1.EnsureUserRequest{ClerkUserId: "user_new", Email: "a\x00@example.com"}), "email"},
		{"NULEnsureFirstName", ensure(&userdv1.EnsureUserRequest{ClerkUserId: "user_new", FirstName: "\x00"}), "first_name"},
		{"NULEnsureImage", ensure(&userdv1.EnsureUserRequest{ClerkUserId: "user_new", ImageUrl: "https://img.example.com/\x00.png"}), "image_url"},
		{"NULDeductKey", deduct(&userdv1.DeductCreditsRequest{ClerkUserId: valid, Amount: 1, IdempotencyKey: "k\x00"}), "idempotency_key"},
		{"NULDeductReason", deduct(&userdv1.DeductCreditsRequest{ClerkUserId: valid, Amount: 1, IdempotencyKey: "k", Reason: "r\x00"}), "reason"},
		{"NULDeductAction", deduct(&userdv1.DeductCreditsRequest{ClerkUserId: valid, Action: "render\x00", IdempotencyKey: "k"}), "action"},
		{"NULGrantReason", grant(&userdv1.GrantCreditsRequest{ClerkUserId: valid, Amount: 1, IdempotencyKey: "k", Reason: "\x00"}), "reason"},
		{"NULSetPlanReason", setPlan(&userdv1.SetPlanRequest{ClerkUserId: valid, Plan: userdv1.Plan_PLAN_PRO, IdempotencyKey: "k", Reason: "\x00"}), "reason"},
		{"NULListToken", list(&userdv1.ListCreditTransactionsRequest{ClerkUserId: valid, PageToken: "\x00"}), "page_token"},
		{"NULAffordAction", afford(&userdv1.CanAffordRequest{ClerkUserId: valid, Action: "\x00"}), "action"},
		{"NULSetPriceAction", setPrice(&userdv1.SetPriceRequest{Action: "re\x00nder", Credits: 3}), "action"},
		{"NULListPricesToken", func() error { _, err := c.ListPrices(ctx, &userdv1.ListPricesRequest{PageToken: "\x00"}); return err }, "page_token"},
		{"NULListPriceChangesAction", func() error {
			_, err := c.ListPriceChanges(ctx, &userdv1.ListPriceChangesRequest{Action: "render\x00"})
			return err
		}, "action"},
		{"NULListPriceChangesToken", func() error {
			_, err := c.ListPriceChanges(ctx, &userdv1.ListPriceChangesRequest{PageToken: "\x00"})
			return err
		}, "page_token"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := wantCode(t, tc.call(), codes.InvalidArgument)
			fields := fieldViolations(st)
			if len(fields) == 0 || fields[0] != tc.field {
				t.Errorf("field violations = %v, want first %q", fields, tc.field)
			}
		})
	}
	if diff := cmp.Diff(before, snapshot()); diff != "" {
		t.Errorf("invalid requests changed data (-before +after):\n%s", diff)
	}
	prices, err := c.ListPrices(ctx, &userdv1.ListPricesRequest{})
	if err != nil || len(prices.GetPrices()) != 1 || prices.GetPrices()[0].GetCredits() != 2 {
		t.Errorf("invalid requests changed the price list: %v, %v", prices, err)
	}
	if _, err := c.GetUser(ctx, &userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_ClerkUserId{ClerkUserId: "user_new"}}); status.Code(err) != codes.NotFound {
		t.Errorf("an invalid EnsureUser created user_new (err %v)", err)
	}
}

// TestPricesAndUsageRPCs: the price list, deductions by action, the
// affordability check and the usage summary over gRPC, as a service.
func TestPricesAndUsageRPCs(t *testing.T) {
	t.Parallel()
	in := apptest.Start(t, nil)
	c := in.Client
	ctx := context.Background()
	if _, err := c.EnsureUser(ctx, &userdv1.EnsureUserRequest{ClerkUserId: "user_usage"}); err != nil {
		t.Fatal(err)
	}
	set, err := c.SetPrice(ctx, &userdv1.SetPriceRequest{Action: "render", Credits: 3})
	if err != nil {
		t.Fatal(err)
	}
	if set.GetPrice().GetCredits() != 3 || set.GetPrice().GetUpdatedBy() != "service:tests" ||
		set.GetChange().GetPreviousCredits() != 0 || set.GetChange().GetChangedBy() != "service:tests" {
		t.Errorf("SetPrice = %v", set)
	}
	if again, err := c.SetPrice(ctx, &userdv1.SetPriceRequest{Action: "render", Credits: 3}); err != nil || again.GetChange() != nil {
		t.Errorf("SetPrice to the same price = %v, %v; want no change", again, err)
	}

	aff, err := c.CanAfford(ctx, &userdv1.CanAffordRequest{ClerkUserId: "user_usage", Action: "render"})
	if err != nil || !proto.Equal(aff, &userdv1.CanAffordResponse{Required: 3, Available: 10, Allowed: true}) {
		t.Errorf("CanAfford(render) = %v, %v", aff, err)
	}
	ded, err := c.DeductCredits(ctx, &userdv1.DeductCreditsRequest{ClerkUserId: "user_usage", Action: "render", IdempotencyKey: "r1"})
	if err != nil || ded.GetBalance() != 7 || ded.GetTransaction().GetDelta() != -3 || ded.GetTransaction().GetReason() != "render" {
		t.Fatalf("DeductCredits(render) = %v, %v", ded, err)
	}
	if _, err := c.SetPrice(ctx, &userdv1.SetPriceRequest{Action: "render", Credits: 8}); err != nil {
		t.Fatal(err)
	}
	if replay, err := c.DeductCredits(ctx, &userdv1.DeductCreditsRequest{ClerkUserId: "user_usage", Action: "render", IdempotencyKey: "r1"}); err != nil || !replay.GetReplayed() || ded.GetReplayed() ||
		!proto.Equal(replay.GetTransaction(), ded.GetTransaction()) || replay.GetBalance() != ded.GetBalance() {
		t.Errorf("replay after the price rose = %v, %v; want %v", replay, err, ded)
	}
	_, err = c.DeductCredits(ctx, &userdv1.DeductCreditsRequest{ClerkUserId: "user_usage", Action: "render", IdempotencyKey: "r2"})
	st := wantCode(t, err, codes.FailedPrecondition)
	if md := errorInfo(st).GetMetadata(); md["required"] != "8" || md["available"] != "7" {
		t.Errorf("insufficient for render: %v", md)
	}
	if aff, err := c.CanAfford(ctx, &userdv1.CanAffordRequest{ClerkUserId: "user_usage", Action: "render"}); err != nil || aff.GetAllowed() || aff.GetRequired() != 8 {
		t.Errorf("CanAfford(render at 8) = %v, %v", aff, err)
	}

	prices, err := c.ListPrices(ctx, &userdv1.ListPricesRequest{})
	if err != nil || len(prices.GetPrices()) != 1 || prices.GetPrices()[0].GetCredits() != 8 {
		t.Errorf("ListPrices = %v, %v", prices, err)
	}
	changes, err := c.ListPriceChanges(ctx, &userdv1.ListPriceChangesRequest{Action: "render"})
	if err != nil || len(changes.GetChanges()) != 2 || changes.GetChanges()[0].GetPreviousCredits() != 3 || changes.GetChanges()[0].GetCredits() != 8 {
		t.Errorf("ListPriceChanges = %v, %v", changes, err)
	}

	start := time.Now().UTC().Add(-time.Hour).Truncate(time.Microsecond)
	sum, err := c.GetUsageSummary(ctx, &userdv1.GetUsageSummaryRequest{
		ClerkUserId: "user_usage", StartTime: timestamppb.New(start), GroupBy: userdv1.UsagePeriod_USAGE_PERIOD_DAY,
	})
	if err != nil {
		t.Fatal(err)
	}
	if sum.GetBalance() != 7 || sum.GetSpent() != 3 || sum.GetGranted() != 10 || sum.GetEntryCount() != 2 ||
		sum.GetGroupBy() != userdv1.UsagePeriod_USAGE_PERIOD_DAY || !sum.GetStartTime().AsTime().Equal(start) {
		t.Errorf("GetUsageSummary = %v", sum)
	}
	wantReasons := []*userdv1.UsageByReason{
		{Reason: "", Granted: 10, EntryCount: 1},
		{Reason: "render", Spent: 3, EntryCount: 1},
	}
	if diff := cmp.Diff(wantReasons, sum.GetReasons(), protocmp.Transform()); diff != "" {
		t.Errorf("reasons (-want +got):\n%s", diff)
	}
	if n := len(sum.GetPeriods()); n < 1 || n > 2 || !sum.GetPeriods()[n-1].GetEndTime().AsTime().Equal(sum.GetEndTime().AsTime()) {
		t.Errorf("periods = %v", sum.GetPeriods())
	}
}
