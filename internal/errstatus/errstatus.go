// Package errstatus is the one table from the domain's error kinds
// (internal/apperr) to gRPC codes and HTTP statuses, used at the transport
// edge (grpcapi, gateway, the OpenAPI generator) and nowhere below it.
package errstatus

import (
	"net/http"

	"google.golang.org/grpc/codes"

	"github.com/userd/userd/internal/apperr"
)

var table = map[apperr.Kind]struct {
	grpc codes.Code
	http int
}{
	apperr.KindInternal:            {codes.Internal, http.StatusInternalServerError},
	apperr.KindInvalidArgument:     {codes.InvalidArgument, http.StatusBadRequest},
	apperr.KindUnauthenticated:     {codes.Unauthenticated, http.StatusUnauthorized},
	apperr.KindPermissionDenied:    {codes.PermissionDenied, http.StatusForbidden},
	apperr.KindNotFound:            {codes.NotFound, http.StatusNotFound},
	apperr.KindInsufficientCredits: {codes.FailedPrecondition, http.StatusPaymentRequired},
	apperr.KindConflict:            {codes.AlreadyExists, http.StatusConflict},
	apperr.KindUnavailable:         {codes.Unavailable, http.StatusServiceUnavailable},
	// 499 is the de-facto "client closed request" status.
	apperr.KindCanceled:          {codes.Canceled, 499},
	apperr.KindExpired:           {codes.OutOfRange, http.StatusGone},
	apperr.KindResourceExhausted: {codes.ResourceExhausted, http.StatusTooManyRequests},
	// FAILED_PRECONDITION as insufficient credits is: told apart by the
	// ErrorInfo reason (byReason).
	apperr.KindFailedPrecondition: {codes.FailedPrecondition, http.StatusPreconditionFailed},
}

// byReason names the kinds that share their gRPC code with another kind,
// by the ErrorInfo reasons their errors carry.
var byReason = map[string]apperr.Kind{
	apperr.ReasonAccountClosed: apperr.KindFailedPrecondition,
}

// GRPCCode is the gRPC status code of the kind.
func GRPCCode(k apperr.Kind) codes.Code { return table[k].grpc }

// HTTPStatus is the HTTP status of the kind.
func HTTPStatus(k apperr.Kind) int { return table[k].http }

// KindForStatus returns the kind of a status with code and the reason of
// its ErrorInfo detail ("" for none), if any kind has that code.
func KindForStatus(code codes.Code, reason string) (apperr.Kind, bool) {
	if k, ok := byReason[reason]; ok && table[k].grpc == code {
		return k, true
	}
	for k, row := range table {
		if row.grpc != code {
			continue
		}
		if shared := func() bool {
			for _, sk := range byReason {
				if sk == k {
					return true
				}
			}
			return false
		}(); !shared {
			return k, true
		}
	}
	return 0, false
}
