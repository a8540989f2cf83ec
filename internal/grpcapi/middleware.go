package grpcapi

import (
	"context"
	"log/slog"
	"runtime/debug"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/auth"
	"github.com/userd/userd/internal/requestid"
)

// callInfo is what the interceptors learn about a call, shared through
// the context so that the logging interceptor (outside) can report the
// principal the auth interceptor (inside) found.
type callInfo struct {
	requestID string
	principal string
}

type callInfoKey struct{}

func infoOf(ctx context.Context) *callInfo {
	ci, _ := ctx.Value(callInfoKey{}).(*callInfo)
	return ci
}

// RequestID returns the request id of ctx, or "".
func RequestID(ctx context.Context) string {
	if ci := infoOf(ctx); ci != nil {
		return ci.requestID
	}
	return ""
}

// RequestIDInterceptor puts a request id into the context and the response
// header.
func RequestIDInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		id := ""
		if v := metadata.ValueFromIncomingContext(ctx, requestid.Key); len(v) > 0 && requestid.Valid(v[0]) {
			id = v[0]
		}
		if id == "" {
			id = requestid.New()
		}
		_ = grpc.SetHeader(ctx, metadata.MD{requestid.Key: {id}})
		return handler(context.WithValue(ctx, callInfoKey{}, &callInfo{requestID: id}), req)
	}
}

// LoggingInterceptor logs one line per call: transport, method, code,
// duration, principal and request id. It never logs requests or responses
// (they may carry personal data).
func LoggingInterceptor(log *slog.Logger) grpc.UnaryServerInterceptor {
	// The transport attribute is formatted once, here, which also keeps a
	// line's other attributes within what a slog.Record holds without
	// allocating; and the record is handed to the handler directly, as
	// slog.Logger would record the caller's program counter for every line
	// (runtime.Callers, ~1% of a GetUser) for a source nobody logs.
	grpcLog := log.With(slog.String("transport", "grpc")).Handler()
	restLog := log.With(slog.String("transport", "rest")).Handler()
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		code := status.Code(err)
		level := slog.LevelInfo
		switch code {
		case codes.Internal, codes.Unknown, codes.DataLoss:
			level = slog.LevelError
		case codes.Unavailable:
			level = slog.LevelWarn
		}
		h := grpcLog
		if fromREST(ctx) {
			h = restLog
		}
		if !h.Enabled(ctx, level) {
			return resp, err
		}
		principal, requestID := "", ""
		if ci := infoOf(ctx); ci != nil {
			principal, requestID = ci.principal, ci.requestID
		}
		now := time.Now()
		r := slog.NewRecord(now, level, "call", 0)
		r.AddAttrs(
			slog.String("method", info.FullMethod),
			slog.String("code", code.String()),
			slog.Float64("duration_ms", float64(now.Sub(start).Microseconds())/1000),
			slog.String("principal", principal),
			slog.String("request_id", requestID))
		_ = h.Handle(ctx, r) // as slog.Logger does, a failed write is not the call's error
		return resp, err
	}
}

// RecoveryInterceptor turns a panic in a handler into INTERNAL and logs it
// with its stack.
func RecoveryInterceptor(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if p := recover(); p != nil {
				log.ErrorContext(ctx, "panic in handler",
					"method", info.FullMethod, "request_id", RequestID(ctx),
					"panic", p, "stack", string(debug.Stack()))
				err = status.Error(codes.Internal, "internal error (request id "+RequestID(ctx)+")")
			}
		}()
		return handler(ctx, req)
	}
}

// AuthInterceptor authenticates every UserService call from its
// authorization metadata (gRPC clients and the REST gateway alike) and puts
// the principal in the context. Health and reflection are other services
// and need no credentials.
func AuthInterceptor(authn *auth.Authenticator) grpc.UnaryServerInterceptor {
	prefix := "/" + userdv1.UserService_ServiceDesc.ServiceName + "/"
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if !strings.HasPrefix(info.FullMethod, prefix) {
			return handler(ctx, req)
		}
		header := ""
		if v := metadata.ValueFromIncomingContext(ctx, "authorization"); len(v) > 0 {
			header = v[0]
		}
		p, err := authn.Authenticate(header)
		if err != nil {
			return nil, err
		}
		if ci := infoOf(ctx); ci != nil {
			ci.principal = p.Name()
		}
		return handler(auth.WithPrincipal(ctx, p), req)
	}
}

// BoundInterceptor gives every call at most bound to run: a caller's
// shorter deadline stays, a longer or missing one is cut to bound. Work
// below honours the context, so a call waiting on a database that does not
// answer ends at the bound as UNAVAILABLE (the store's translation of the
// deadline), whether it came over gRPC, through the REST gateway (which
// also takes a client's deadline from a Grpc-Timeout header) or not at all.
func BoundInterceptor(bound time.Duration) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, cancel := context.WithTimeout(ctx, bound)
		defer cancel()
		return handler(ctx, req)
	}
}

// Chain configures the server's unary interceptor chain.
type Chain struct {
	Log   *slog.Logger
	Authn *auth.Authenticator
	// RequestTimeout bounds every call's work (a caller's shorter deadline
	// wins).
	RequestTimeout time.Duration
	// Metrics, if set, counts calls by method and code. It sits inside the
	// logging and outside the recovery and error mapping, so it counts the
	// codes callers see, panics included.
	Metrics grpc.UnaryServerInterceptor
}

// Interceptors returns the chain, outermost first: errors from
// authentication are mapped like any other, and every call's work is
// bounded.
func (c Chain) Interceptors() []grpc.UnaryServerInterceptor {
	chain := []grpc.UnaryServerInterceptor{RequestIDInterceptor(), LoggingInterceptor(c.Log)}
	if c.Metrics != nil {
		chain = append(chain, c.Metrics)
	}
	return append(chain,
		RecoveryInterceptor(c.Log),
		ErrorInterceptor(c.Log),
		AuthInterceptor(c.Authn),
		BoundInterceptor(c.RequestTimeout),
	)
}
