package userdclient

import (
	"errors"
	"strconv"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/userd/userd/internal/apperr"
)

// Stable ErrorInfo reasons of userd's errors.
const (
	ReasonInsufficientCredits  = apperr.ReasonInsufficientCredits
	ReasonIdempotencyKeyReused = apperr.ReasonIdempotencyKeyReused
	ReasonEmailInUse           = apperr.ReasonEmailInUse
	ReasonUserDeleted          = apperr.ReasonUserDeleted
	ReasonUnknownAction        = apperr.ReasonUnknownAction
	ReasonCursorExpired        = apperr.ReasonCursorExpired

	ReasonMemberCapReached              = apperr.ReasonMemberCapReached
	ReasonAccountClosed                 = apperr.ReasonAccountClosed
	ReasonNotOrganizationMember         = apperr.ReasonNotOrganizationMember
	ReasonMissingOrganizationPermission = apperr.ReasonMissingOrganizationPermission
	ReasonOrganizationNotActive         = apperr.ReasonOrganizationNotActive
	ReasonImpersonationNotAllowed       = apperr.ReasonImpersonationNotAllowed
)

// MemberCap is what a deduction refused by a member's spending cap
// reports.
type MemberCap struct {
	// Cap is the member's cap per Period ("day", "week" or "month", UTC).
	Cap    int64
	Period string
	// Spent is what the member spent in the current period, Remaining
	// what the cap leaves (Cap - Spent, at least 0), Required the
	// deduction refused.
	Spent, Remaining, Required int64
}

// IsMemberCapReached reports whether a deduction from an organization's
// account was refused because the member's spending cap for the period
// leaves too little, and the figures. Nothing was changed. (gRPC
// FAILED_PRECONDITION, REST 402, like insufficient credits.)
func IsMemberCapReached(err error) (MemberCap, bool) {
	info := errorInfo(err)
	if info == nil || info.GetReason() != ReasonMemberCapReached {
		return MemberCap{}, false
	}
	md := info.GetMetadata()
	n := func(k string) int64 { v, _ := strconv.ParseInt(md[k], 10, 64); return v }
	return MemberCap{Cap: n("cap"), Period: md["period"], Spent: n("spent"), Remaining: n("remaining"), Required: n("required")}, true
}

// IsAccountClosed reports whether the organization's account is closed
// (its organization was deleted in Clerk): no spends, grants or plan
// changes.
func IsAccountClosed(err error) bool { return Reason(err) == ReasonAccountClosed }

// IsNotOrganizationMember reports whether the user acting is not a live
// member of the organization; IsPermissionDenied is true too.
func IsNotOrganizationMember(err error) bool { return Reason(err) == ReasonNotOrganizationMember }

// IsInsufficientCredits reports whether err is a deduction refused because
// the balance is too low, and the amounts: required is the deduction,
// available the balance. Nothing was changed.
func IsInsufficientCredits(err error) (required, available int64, ok bool) {
	info := errorInfo(err)
	if info == nil || info.GetReason() != ReasonInsufficientCredits {
		return 0, 0, false
	}
	required, _ = strconv.ParseInt(info.GetMetadata()["required"], 10, 64)
	available, _ = strconv.ParseInt(info.GetMetadata()["available"], 10, 64)
	return required, available, true
}

// IsNotFound reports whether no live user matched (or, for an end user's
// token, the user is not its own).
func IsNotFound(err error) bool { return code(err) == codes.NotFound }

// IsUserDeleted reports whether EnsureUser named a user Clerk deleted
// (which is never recreated); IsNotFound is true too.
func IsUserDeleted(err error) bool { return Reason(err) == ReasonUserDeleted }

// IsUnknownAction reports whether a deduction (or CanAfford) named an
// action the price list does not have; IsInvalidArgument is true too, and
// nothing changed.
func IsUnknownAction(err error) bool { return Reason(err) == ReasonUnknownAction }

// IsKeyReused reports whether the idempotency key was used before with
// other parameters or for another operation. Retrying cannot succeed.
func IsKeyReused(err error) bool { return Reason(err) == ReasonIdempotencyKeyReused }

// IsEmailInUse reports whether EnsureUser's email belongs to another live
// user.
func IsEmailInUse(err error) bool { return Reason(err) == ReasonEmailInUse }

// IsPermissionDenied reports whether the caller may not do this (end
// users cannot change their credits or plans; on an organization's
// account: not a member, a permission missing, another organization
// active, an impersonation token — see Reason).
func IsPermissionDenied(err error) bool { return code(err) == codes.PermissionDenied }

// IsUnauthenticated reports whether the token is missing or invalid.
func IsUnauthenticated(err error) bool { return code(err) == codes.Unauthenticated }

// IsInvalidArgument reports whether the request was malformed; see
// FieldViolations.
func IsInvalidArgument(err error) bool { return code(err) == codes.InvalidArgument }

// IsUnavailable reports whether userd could not answer (its database was
// unreachable) even after the client's retries. Safe to retry later with
// the same idempotency key.
func IsUnavailable(err error) bool { return code(err) == codes.Unavailable }

// FieldViolation names one invalid request field.
type FieldViolation struct {
	Field       string
	Description string
}

// FieldViolations lists the invalid fields of an INVALID_ARGUMENT error.
func FieldViolations(err error) []FieldViolation {
	var out []FieldViolation
	for _, d := range details(err) {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				out = append(out, FieldViolation{Field: v.GetField(), Description: v.GetDescription()})
			}
		}
	}
	return out
}

// Reason is the ErrorInfo reason of err, or "".
func Reason(err error) string { return errorInfo(err).GetReason() }

func code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	if st, ok := status.FromError(err); ok {
		return st.Code()
	}
	return codes.Unknown
}

func details(err error) []any {
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) {
		return nil
	}
	return se.GRPCStatus().Details()
}

func errorInfo(err error) *errdetails.ErrorInfo {
	for _, d := range details(err) {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == apperr.Domain {
			return info
		}
	}
	return nil
}
