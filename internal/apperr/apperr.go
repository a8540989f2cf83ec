// Package apperr defines the small set of error kinds userd's domain speaks.
// It knows no transport: internal/errstatus maps each kind to a gRPC code
// and an HTTP status, once, at the edge.
//
// Layers below the transports return *Error (or wrap one). Messages of
// kinds other than Internal and Unavailable are meant for the caller; the
// wrapped cause never is.
package apperr

import (
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Kind classifies an error for callers.
type Kind int

const (
	// KindInternal is anything unexpected. Callers see a generic message.
	KindInternal Kind = iota
	// KindInvalidArgument: the request is malformed; Violations say where.
	KindInvalidArgument
	// KindUnauthenticated: no valid credentials.
	KindUnauthenticated
	// KindPermissionDenied: valid credentials, operation not allowed.
	KindPermissionDenied
	// KindNotFound: the user does not exist or is not visible to the caller.
	KindNotFound
	// KindInsufficientCredits: a deduction larger than the balance.
	KindInsufficientCredits
	// KindConflict: an idempotency key reused with other parameters, or a
	// unique value (email) held by another user.
	KindConflict
	// KindUnavailable: the database is unreachable or timed out; retry.
	KindUnavailable
	// KindCanceled: the caller went away.
	KindCanceled
	// KindExpired: the request names something userd no longer keeps (a
	// change feed cursor older than the retention); retrying cannot help.
	KindExpired
	// KindResourceExhausted: the caller (or the server) has as much of
	// something open as it may (watch streams); retry after RetryAfter.
	KindResourceExhausted
	// KindFailedPrecondition: the target is in a state that refuses the
	// operation whoever asks (an organization's account closed with its
	// organization); retrying cannot help. It shares its gRPC code with
	// KindInsufficientCredits: Reason tells them apart.
	KindFailedPrecondition
)

// Stable ErrorInfo reasons.
const (
	ReasonInsufficientCredits  = "INSUFFICIENT_CREDITS"
	ReasonIdempotencyKeyReused = "IDEMPOTENCY_KEY_REUSED"
	ReasonEmailInUse           = "EMAIL_IN_USE"
	ReasonUserDeleted          = "USER_DELETED"
	ReasonUnknownAction        = "UNKNOWN_ACTION"
	ReasonCursorExpired        = "CURSOR_EXPIRED"
	// ReasonMemberCapReached: a member's spending cap for the period is
	// reached (KindInsufficientCredits, like an insufficient balance).
	ReasonMemberCapReached = "MEMBER_CAP_REACHED"
	// ReasonAccountClosed: the organization's account is closed.
	ReasonAccountClosed = "ACCOUNT_CLOSED"
	// ReasonNotOrganizationMember: the acting user is not a live member of
	// the organization (KindPermissionDenied).
	ReasonNotOrganizationMember = "NOT_ORGANIZATION_MEMBER"
	// ReasonMissingOrganizationPermission: the member's organization
	// permissions lack the one required (KindPermissionDenied).
	ReasonMissingOrganizationPermission = "MISSING_ORGANIZATION_PERMISSION"
	// ReasonOrganizationNotActive: an end user named an organization that
	// is not its session token's active organization (KindPermissionDenied).
	ReasonOrganizationNotActive = "ORGANIZATION_NOT_ACTIVE"
	// ReasonImpersonationNotAllowed: an impersonation token (Clerk's "act"
	// claim) asked to act on an organization's account
	// (KindPermissionDenied).
	ReasonImpersonationNotAllowed = "IMPERSONATION_NOT_ALLOWED"
)

// Domain is the ErrorInfo domain of every reason above.
const Domain = "userd"

var kindNames = map[Kind]string{
	KindInternal:            "internal",
	KindInvalidArgument:     "invalid argument",
	KindUnauthenticated:     "unauthenticated",
	KindPermissionDenied:    "permission denied",
	KindNotFound:            "not found",
	KindInsufficientCredits: "insufficient credits",
	KindConflict:            "conflict",
	KindUnavailable:         "unavailable",
	KindCanceled:            "canceled",
	KindExpired:             "expired",
	KindResourceExhausted:   "resource exhausted",
	KindFailedPrecondition:  "failed precondition",
}

func (k Kind) String() string { return kindNames[k] }

// Kinds lists every kind, for tables that must cover them all.
func Kinds() []Kind {
	return []Kind{KindInternal, KindInvalidArgument, KindUnauthenticated, KindPermissionDenied,
		KindNotFound, KindInsufficientCredits, KindConflict, KindUnavailable, KindCanceled, KindExpired,
		KindResourceExhausted, KindFailedPrecondition}
}

// FieldViolation names one invalid request field.
type FieldViolation struct {
	Field       string
	Description string
}

// Error is a classified error.
type Error struct {
	Kind Kind
	// Message is safe to show to the caller (ignored for Internal).
	Message string
	// Reason is a stable machine-readable reason (ErrorInfo), or empty.
	Reason string
	// Metadata accompanies Reason.
	Metadata map[string]string
	// Violations lists bad fields for KindInvalidArgument.
	Violations []FieldViolation
	// RetryAfter, when positive, is how long the caller should wait
	// before retrying (RetryInfo over gRPC, Retry-After over HTTP).
	RetryAfter time.Duration
	// Err is the cause; never shown to callers.
	Err error
}

func (e *Error) Error() string {
	msg := e.Message
	if msg == "" {
		msg = e.Kind.String()
	}
	if len(e.Violations) > 0 {
		msg += ":"
		for i, v := range e.Violations {
			if i > 0 {
				msg += ";"
			}
			msg += " " + v.Field + ": " + v.Description
		}
	}
	if e.Err != nil {
		return msg + ": " + e.Err.Error()
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// KindOf returns the kind of the first *Error in err's chain, or
// KindInternal.
func KindOf(err error) Kind {
	if e, ok := As(err); ok {
		return e.Kind
	}
	return KindInternal
}

// As returns the first *Error in err's chain.
func As(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}

// InvalidArgument reports bad request fields.
func InvalidArgument(violations ...FieldViolation) *Error {
	return &Error{Kind: KindInvalidArgument, Message: "invalid request", Violations: violations}
}

// NotFound reports a missing or invisible user.
func NotFound(msg string) *Error {
	return &Error{Kind: KindNotFound, Message: msg}
}

// InsufficientCredits reports a deduction larger than the balance.
func InsufficientCredits(required, available int64) *Error {
	return &Error{
		Kind:    KindInsufficientCredits,
		Message: fmt.Sprintf("insufficient credits: %d required, %d available", required, available),
		Reason:  ReasonInsufficientCredits,
		Metadata: map[string]string{
			"required":  strconv.FormatInt(required, 10),
			"available": strconv.FormatInt(available, 10),
		},
	}
}

// Conflict reports a clash with existing state.
func Conflict(reason, msg string) *Error {
	return &Error{Kind: KindConflict, Message: msg, Reason: reason}
}

// Unavailable wraps a database failure that is worth retrying.
func Unavailable(err error) *Error {
	return &Error{Kind: KindUnavailable, Message: "service temporarily unavailable", Err: err}
}

// Canceled wraps a cancellation by the caller.
func Canceled(err error) *Error {
	return &Error{Kind: KindCanceled, Message: "request canceled", Err: err}
}

// Unauthenticated reports missing or invalid credentials.
func Unauthenticated(msg string) *Error {
	return &Error{Kind: KindUnauthenticated, Message: msg}
}

// ResourceExhausted reports a limit reached; the caller may retry after
// retryAfter.
func ResourceExhausted(msg string, retryAfter time.Duration) *Error {
	return &Error{Kind: KindResourceExhausted, Message: msg, RetryAfter: retryAfter}
}

// PermissionDenied reports an operation the caller may not perform.
func PermissionDenied(msg string) *Error {
	return &Error{Kind: KindPermissionDenied, Message: msg}
}

// MemberCapReached reports a deduction that would take a member's spending
// in the current period of its cap past the cap: cap is the cap, spent
// what the member spent in the period, remaining what is left of it
// (cap - spent, at least 0), required the deduction, and period "day",
// "week" or "month" (UTC). It is answered like insufficient credits.
func MemberCapReached(capCredits, spent, remaining, required int64, period string) *Error {
	return &Error{
		Kind: KindInsufficientCredits,
		Message: fmt.Sprintf("member spending cap reached: %d required, %d of the %s's cap of %d remaining",
			required, remaining, period, capCredits),
		Reason: ReasonMemberCapReached,
		Metadata: map[string]string{
			"cap":       strconv.FormatInt(capCredits, 10),
			"spent":     strconv.FormatInt(spent, 10),
			"remaining": strconv.FormatInt(remaining, 10),
			"required":  strconv.FormatInt(required, 10),
			"period":    period,
		},
	}
}

// AccountClosed reports an operation on a closed account.
func AccountClosed() *Error {
	return &Error{Kind: KindFailedPrecondition, Message: "the account is closed", Reason: ReasonAccountClosed}
}

// NotOrganizationMember reports a user acting on an organization it is
// not a live member of.
func NotOrganizationMember() *Error {
	return &Error{Kind: KindPermissionDenied, Message: "not a member of the organization",
		Reason: ReasonNotOrganizationMember}
}

// MissingOrganizationPermission reports a member whose organization
// permissions lack permission.
func MissingOrganizationPermission(permission string) *Error {
	return &Error{Kind: KindPermissionDenied,
		Message:  "the membership lacks the organization permission " + permission,
		Reason:   ReasonMissingOrganizationPermission,
		Metadata: map[string]string{"permission": permission}}
}

// OrganizationNotActive reports an end user naming an organization other
// than its session's active one.
func OrganizationNotActive() *Error {
	return &Error{Kind: KindPermissionDenied,
		Message: "clerk_organization_id is not the session's active organization: switch to it in Clerk (setActive) and retry with a fresh token",
		Reason:  ReasonOrganizationNotActive}
}

// ImpersonationNotAllowed reports an impersonation token acting on an
// organization's account.
func ImpersonationNotAllowed() *Error {
	return &Error{Kind: KindPermissionDenied,
		Message: "an impersonation session may not act on an organization's account",
		Reason:  ReasonImpersonationNotAllowed}
}
