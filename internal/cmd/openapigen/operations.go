package main

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc/codes"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/errstatus"
)

// errorResponse is one documented error status: the HTTP status of
// errstatus's table, the gRPC code in the body and what it means.
type errorResponse struct {
	name    string
	status  int
	code    codes.Code
	meaning string
	example map[string]any
	headers openapi3.Headers
}

func (e errorResponse) response() *openapi3.Response {
	desc := fmt.Sprintf("%s (gRPC %s): %s", http.StatusText(e.status), grpcCodeName(e.code), e.meaning)
	media := openapi3.NewMediaType().WithSchemaRef(openapi3.NewSchemaRef("#/components/schemas/Status", nil))
	if e.example != nil {
		media.Example = e.example
	}
	headers := openapi3.Headers{"X-Request-Id": {Ref: "#/components/headers/X-Request-Id"}}
	for k, v := range e.headers {
		headers[k] = v
	}
	return &openapi3.Response{
		Description: &desc,
		Headers:     headers,
		Content:     openapi3.Content{"application/json": media},
	}
}

// grpcCodeName is the code's canonical name (FAILED_PRECONDITION), as in
// the proto and docs/api.md; codes.Code.String says FailedPrecondition.
func grpcCodeName(c codes.Code) string {
	return code.Code_name[int32(c)]
}

func kindError(name string, k apperr.Kind, meaning string) errorResponse {
	return errorResponse{name: name, status: errstatus.HTTPStatus(k), code: errstatus.GRPCCode(k), meaning: meaning}
}

// errorResponses are the error statuses of the API, from apperr's table
// (the one the gateway answers with) plus the gateway's own.
var errorResponses = []errorResponse{
	kindError("InvalidArgument", apperr.KindInvalidArgument,
		"the request is malformed or a field is out of range; nothing changed. "+
			"details holds a google.rpc.BadRequest whose fieldViolations name each invalid field; "+
			"for an action not in the price list, also an ErrorInfo with reason "+apperr.ReasonUnknownAction+"."),
	func() errorResponse {
		e := kindError("Unauthenticated", apperr.KindUnauthenticated,
			"no credentials, or a token that is invalid, expired or not for this service.")
		e.headers = openapi3.Headers{"WWW-Authenticate": {Ref: "#/components/headers/WWW-Authenticate"}}
		return e
	}(),
	func() errorResponse {
		e := kindError("InsufficientCredits", apperr.KindInsufficientCredits,
			"the balance is lower than the amount (or the action's price); nothing changed. details holds a "+
				"google.rpc.ErrorInfo with reason "+apperr.ReasonInsufficientCredits+", domain "+
				apperr.Domain+" and metadata required and available (decimal strings). "+
				"From an organization's account, the member's spending cap can refuse it too: reason "+
				apperr.ReasonMemberCapReached+" with metadata cap, spent, remaining, required and period (day, week or month, UTC).")
		e.example = map[string]any{
			"code": int(e.code), "message": "insufficient credits: 25 required, 10 available",
			"details": []any{map[string]any{
				"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": apperr.ReasonInsufficientCredits,
				"domain": apperr.Domain, "metadata": map[string]any{"required": "25", "available": "10"},
			}},
		}
		return e
	}(),
	kindError("PermissionDenied", apperr.KindPermissionDenied,
		"valid credentials that may not do this: credits, plans and the price list are for backend services only; "+
			"a write authenticated by the __session cookie needs an Origin among the authorized parties. "+
			"On an organization's account (ErrorInfo reasons): "+apperr.ReasonNotOrganizationMember+" (not a live member), "+
			apperr.ReasonMissingOrganizationPermission+" (the membership or the token lacks the permission in metadata permission), "+
			apperr.ReasonOrganizationNotActive+" (not the session token's active organization), "+
			apperr.ReasonImpersonationNotAllowed+" (an impersonation token); grants and plan changes are for services only."),
	kindError("AccountClosed", apperr.KindFailedPrecondition,
		"the organization's account is closed (its organization was deleted in Clerk): no spends, grants or plan changes; "+
			"its ledger stays readable. ErrorInfo reason "+apperr.ReasonAccountClosed+"."),
	kindError("NotFound", apperr.KindNotFound,
		"no live user matches, or it is not the caller's own (an end user cannot tell the two apart). "+
			"For EnsureUser of a user Clerk deleted, details holds an ErrorInfo with reason "+apperr.ReasonUserDeleted+"."),
	kindError("Conflict", apperr.KindConflict,
		"the idempotency key was used before with other parameters or another operation "+
			"(ErrorInfo reason "+apperr.ReasonIdempotencyKeyReused+"; retrying cannot succeed), or, "+
			"for EnsureUser, the email belongs to another live user (reason "+apperr.ReasonEmailInUse+")."),
	{name: "PayloadTooLarge", status: http.StatusRequestEntityTooLarge, code: codes.InvalidArgument,
		meaning: "the request body is larger than 1 MiB."},
	kindError("Internal", apperr.KindInternal,
		"an unexpected error; the message carries the request id, the cause is only in userd's log."),
	kindError("Unavailable", apperr.KindUnavailable,
		"the database is unreachable or timed out; nothing was committed. Safe to retry with the same idempotency key."),
	func() errorResponse {
		e := kindError("CursorExpired", apperr.KindExpired,
			"the cursor is older than the change feed keeps (USERD_FEED_RETENTION): events after it are gone. "+
				"details holds a google.rpc.ErrorInfo with reason "+apperr.ReasonCursorExpired+" and metadata "+
				"oldest_cursor, where the retained feed starts. Resynchronise (GetUser, ListCreditTransactions), "+
				"then watch from now.")
		e.example = map[string]any{
			"code": int(e.code), "message": "cursor is older than the events userd keeps (USERD_FEED_RETENTION): " +
				"resynchronise your copy with GetUser and ListCreditTransactions, then watch from now",
			"details": []any{map[string]any{
				"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": apperr.ReasonCursorExpired,
				"domain": apperr.Domain, "metadata": map[string]any{"oldest_cursor": "ZXYxOjE0OTk4MjEuMTIz"},
			}},
		}
		return e
	}(),
	func() errorResponse {
		e := kindError("TooManyWatches", apperr.KindResourceExhausted,
			"the caller has as many change feed streams open on this replica as it may "+
				"(USERD_FEED_MAX_WATCHES_PER_USER, _PER_SERVICE), or the replica as many as it serves "+
				"(USERD_FEED_MAX_WATCHES). Retry-After (and a google.rpc.RetryInfo in details) says when to try again; "+
				"close a stream you no longer read first.")
		e.headers = openapi3.Headers{"Retry-After": {Ref: "#/components/headers/Retry-After"}}
		return e
	}(),
	{name: "DeadlineExceeded", status: runtime.HTTPStatusFromCode(codes.DeadlineExceeded), code: codes.DeadlineExceeded,
		meaning: "the call did not finish within its deadline (the server's, or a shorter one the caller set " +
			"with grpc-timeout). A mutation may or may not have been applied: retry with the same idempotency key."},
}

// operation is what openapigen adds to one operation.
type operation struct {
	summary string
	// servicesOnly: end users are refused with 403.
	servicesOnly bool
	// keyed: the operation takes an idempotency key (Idempotency-Key).
	keyed bool
	// errors names the error responses the operation can answer.
	errors []string
	// me: the path's clerkUserId may be "me".
	me bool
	// optionalBody: an empty body is as good as {}.
	optionalBody bool
	// rename gives the operation a better id than the generator's.
	rename string
	// stream: the 200 response is a stream of JSON lines.
	stream bool
}

var (
	watchErrors = []string{"InvalidArgument", "Unauthenticated", "PermissionDenied", "CursorExpired", "TooManyWatches", "Internal", "Unavailable"}
	readErrors  = []string{"InvalidArgument", "Unauthenticated", "NotFound", "Internal", "Unavailable", "DeadlineExceeded"}
	// orgReadErrors: reading an organization's account can be refused.
	orgReadErrors = []string{"InvalidArgument", "Unauthenticated", "PermissionDenied", "NotFound", "Internal", "Unavailable", "DeadlineExceeded"}
	writeErrors   = []string{"InvalidArgument", "Unauthenticated", "PermissionDenied", "NotFound", "Conflict",
		"PayloadTooLarge", "Internal", "Unavailable", "DeadlineExceeded"}
	priceErrors = []string{"InvalidArgument", "Unauthenticated", "PermissionDenied", "PayloadTooLarge", "Internal",
		"Unavailable", "DeadlineExceeded"}
)

// operations describes every operation by its generated id.
var operations = map[string]operation{
	"GetUser":  {summary: "Get a user by Clerk user id (or me)", errors: readErrors, me: true},
	"GetUser2": {summary: "Look a user up by email or id", errors: readErrors, rename: "LookupUser"},
	"EnsureUser": {summary: "Create a user if missing, and return it", me: true, optionalBody: true,
		errors: []string{"InvalidArgument", "Unauthenticated", "PermissionDenied", "NotFound", "Conflict", "PayloadTooLarge", "Internal", "Unavailable", "DeadlineExceeded"}},
	"DeductCredits": {summary: "Spend credits", servicesOnly: true, keyed: true,
		errors: append([]string{"InsufficientCredits"}, writeErrors...)},
	"DeductCredits2": {summary: "Spend credits from an organization's account (members, with the organization active)", keyed: true,
		rename: "DeductOrganizationCredits", errors: append([]string{"InsufficientCredits", "AccountClosed"}, writeErrors...)},
	"GrantCredits": {summary: "Add credits", servicesOnly: true, keyed: true, errors: writeErrors},
	"GrantCredits2": {summary: "Add credits to an organization's account", servicesOnly: true, keyed: true,
		rename: "GrantOrganizationCredits", errors: append([]string{"AccountClosed"}, writeErrors...)},
	"SetPlan": {summary: "Change the plan, with optional bonus credits", servicesOnly: true, keyed: true, errors: writeErrors},
	"SetPlan2": {summary: "Change an organization account's plan, with optional bonus credits", servicesOnly: true, keyed: true,
		rename: "SetOrganizationPlan", errors: append([]string{"AccountClosed"}, writeErrors...)},
	"GetUsageSummary2": {summary: "Sum an organization account's ledger over a window: by reason, period and (optionally) member",
		rename: "GetOrganizationUsageSummary", errors: orgReadErrors},
	"CanAfford2": {summary: "Whether an organization's balance and the member's cap cover an amount or an action's price",
		rename: "CanAffordOrganization", errors: orgReadErrors},
	"ListCreditTransactions2": {summary: "Page through an organization account's ledger, newest first (optionally one member's)",
		rename: "ListOrganizationCreditTransactions", errors: orgReadErrors},
	"GetAccount":  {summary: "Get a user's personal account (or me)", errors: readErrors, me: true},
	"GetAccount2": {summary: "Get an organization's account, with its members, their caps and spending", rename: "GetOrganizationAccount", errors: orgReadErrors},
	"SetMemberSpendingCap": {summary: "Set or remove a member's spending cap per UTC day, week or month (admins, services)",
		errors: writeErrors},
	"ListCreditTransactions": {summary: "Page through the ledger, newest first", errors: readErrors, me: true},
	"GetUsageSummary":        {summary: "Sum the ledger over a window: by reason and by UTC day, week or month", errors: readErrors, me: true},
	"CanAfford":              {summary: "Whether the balance covers an amount or an action's price", errors: readErrors, me: true},
	"SetPrice":               {summary: "Set what one use of an action costs (audited)", servicesOnly: true, errors: priceErrors},
	"ListPrices":             {summary: "Page through the price list by action", servicesOnly: true, errors: priceErrors},
	"ListPriceChanges":       {summary: "Page through the price list's history, newest first", servicesOnly: true, errors: priceErrors},
	"ListGrants":             {summary: "An account's credits by expiry: live expiring grants, the credits that never expire, the next allowance (or me)", errors: readErrors, me: true},
	"ListGrants2":            {summary: "An organization account's credits by expiry", rename: "ListOrganizationGrants", errors: orgReadErrors},
	"GetPlanCatalog": {summary: "The plan catalog: each plan's allowance per period, rollover cap and upgrade bonus",
		errors: []string{"InvalidArgument", "Unauthenticated", "Internal", "Unavailable", "DeadlineExceeded"}},
	"SetPlanAllowance": {summary: "Set one plan's catalog entry (audited; applies from each account's next period)", servicesOnly: true, errors: priceErrors},
	"EnsureBillingCustomer": {summary: "Get or create the Stripe customer of an account (services)", servicesOnly: true,
		errors: writeErrors},
	"SetStripePrice":   {summary: "Map a Stripe price to a plan or a credit pack (audited)", servicesOnly: true, errors: priceErrors},
	"ListStripePrices": {summary: "List the Stripe price map", servicesOnly: true, errors: priceErrors},
	"WatchUserEvents": {summary: "Watch the change feed of every user (services)", servicesOnly: true, stream: true,
		errors: watchErrors},
	"WatchUserEvents2": {summary: "Watch one user's change feed (me: the caller's own)", me: true, stream: true,
		rename: "WatchUserEventsOfUser", errors: append([]string{"NotFound"}, watchErrors...)},
}

func (s operation) apply(op *openapi3.Operation) error {
	// protoc-gen-openapiv2 puts the proto comment's first paragraph in the
	// summary and the others in the description.
	if op.Description != "" {
		op.Description = op.Summary + "\n\n" + op.Description
	} else {
		op.Description = op.Summary
	}
	op.Summary = s.summary
	if s.rename != "" {
		op.OperationID = s.rename
	}
	if s.servicesOnly {
		op.Security = &servicesOnly
	}
	for _, p := range op.Parameters {
		switch {
		case p.Value.In == openapi3.ParameterInPath && p.Value.Name == "clerkUserId" && s.me:
			p.Value.Description = `Clerk user id ("user_..."), or "me" for the caller's own user ` +
				"(session tokens only; a service must name the user)."
			p.Value.Examples = openapi3.Examples{
				"me":      {Value: &openapi3.Example{Summary: "the signed-in user", Value: "me"}},
				"clerkId": {Value: &openapi3.Example{Summary: "a Clerk user id", Value: "user_2abcDEF"}},
			}
		case p.Value.In == openapi3.ParameterInPath && p.Value.Name == "clerkUserId":
			p.Value.Description = `Clerk user id ("user_...") of the user.`
		case p.Value.In == openapi3.ParameterInPath && p.Value.Name == "clerkOrganizationId":
			p.Value.Description = `Clerk organization id ("org_..."). An end user: its session token's active organization.`
		case p.Value.In == openapi3.ParameterInQuery && s.rename == "LookupUser":
			p.Value.Description += " Exactly one of clerkUserId, id and email."
		}
	}
	op.Parameters = append(op.Parameters, &openapi3.ParameterRef{Ref: "#/components/parameters/RequestId"})
	if s.keyed {
		op.Parameters = append(op.Parameters, &openapi3.ParameterRef{Ref: "#/components/parameters/IdempotencyKey"})
	}
	if op.RequestBody != nil {
		op.RequestBody.Value.Required = !s.optionalBody
		if s.optionalBody {
			op.RequestBody.Value.Description = "Optional: an empty body is the same as {}. " +
				"For a session token the profile comes from Clerk and the body is ignored."
		}
		delete(op.RequestBody.Value.Extensions, "x-originalParamName")
	}

	ok := op.Responses.Value("200")
	if ok == nil || ok.Value == nil {
		return fmt.Errorf("no 200 response")
	}
	ok.Value.Headers = openapi3.Headers{"X-Request-Id": {Ref: "#/components/headers/X-Request-Id"}}
	desc := "The result."
	if s.stream {
		// grpc-gateway's stream format, as internal/gateway serves it.
		desc = "A stream of JSON objects, one per line (newline-delimited JSON), flushed as they come: " +
			`{"result": WatchUserEventsResponse} — an event or a heartbeat, the first line always a heartbeat — ` +
			`and, if the stream fails after it started, a last {"error": Status}. It stays open until the client ` +
			"closes it or userd stops (then: watch again from the last cursor received)."
		line := ok.Value.Content.Get("application/json")
		if line == nil {
			return fmt.Errorf("stream without a JSON response schema")
		}
		ok.Value.Content = openapi3.Content{"application/x-ndjson": line}
	}
	ok.Value.Description = &desc

	responses := openapi3.NewResponses()
	responses.Delete("default")
	responses.Set("200", ok)
	for _, name := range s.errors {
		i := slices.IndexFunc(errorResponses, func(e errorResponse) bool { return e.name == name })
		if i < 0 {
			return fmt.Errorf("unknown error response %q", name)
		}
		responses.Set(strconv.Itoa(errorResponses[i].status), &openapi3.ResponseRef{Ref: "#/components/responses/" + name})
	}
	otherDesc := "Any other error, e.g. 405 for a method the path does not support. The body is a Status."
	responses.Set("default", &openapi3.ResponseRef{Value: &openapi3.Response{
		Description: &otherDesc,
		Content:     openapi3.NewContentWithJSONSchemaRef(openapi3.NewSchemaRef("#/components/schemas/Status", nil)),
	}})
	op.Responses = responses
	return nil
}
