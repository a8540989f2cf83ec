package grpcapi

import (
	"context"
	"log/slog"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/errstatus"
)

// ErrorInterceptor maps every error a handler returns to a gRPC status with
// the code from apperr's table, adding BadRequest and ErrorInfo details.
// Internal errors are logged with the request id and answered with a generic
// message; their text never reaches the caller.
func ErrorInterceptor(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		if err == nil {
			return resp, nil
		}
		return resp, toStatus(ctx, log, info.FullMethod, err)
	}
}

// ErrorStreamInterceptor is ErrorInterceptor for streams: the error that
// ends a stream is mapped the same way.
func ErrorStreamInterceptor(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		err := handler(srv, ss)
		if err == nil {
			return nil
		}
		return toStatus(ss.Context(), log, info.FullMethod, err)
	}
}

func toStatus(ctx context.Context, log *slog.Logger, method string, err error) error {
	if _, ok := status.FromError(err); ok {
		// Already a status (from an interceptor or grpc itself).
		return err
	}
	e, ok := apperr.As(err)
	if !ok {
		e = &apperr.Error{Kind: apperr.KindInternal, Err: err}
	}
	switch e.Kind {
	case apperr.KindInternal:
		id := RequestID(ctx)
		log.ErrorContext(ctx, "internal error", "method", method, "request_id", id, "err", err)
		return status.Error(codes.Internal, "internal error (request id "+id+")")
	case apperr.KindUnavailable:
		log.WarnContext(ctx, "database unavailable", "method", method, "request_id", RequestID(ctx), "err", err)
	}
	st := status.New(errstatus.GRPCCode(e.Kind), e.Message)
	var details []protoadapt.MessageV1
	if len(e.Violations) > 0 {
		br := &errdetails.BadRequest{}
		for _, v := range e.Violations {
			br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{
				Field: v.Field, Description: v.Description,
			})
		}
		details = append(details, br)
	}
	if e.Reason != "" {
		details = append(details, &errdetails.ErrorInfo{Reason: e.Reason, Domain: apperr.Domain, Metadata: e.Metadata})
	}
	if e.RetryAfter > 0 {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(e.RetryAfter)})
	}
	if len(details) > 0 {
		// WithDetails fails only for messages that cannot be marshalled,
		// which these generated types always can.
		if withDetails, derr := st.WithDetails(details...); derr == nil {
			st = withDetails
		}
	}
	return st.Err()
}
