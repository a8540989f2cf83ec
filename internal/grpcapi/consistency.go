package grpcapi

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/consistency"
)

// standbyReadable are the methods whose reads a standby may serve
// (internal/standby): they only read.
var standbyReadable = map[string]bool{
	userdv1.UserService_GetUser_FullMethodName:                true,
	userdv1.UserService_GetAccount_FullMethodName:             true,
	userdv1.UserService_ListCreditTransactions_FullMethodName: true,
	userdv1.UserService_GetUsageSummary_FullMethodName:        true,
	userdv1.UserService_CanAfford_FullMethodName:              true,
	userdv1.UserService_ListPrices_FullMethodName:             true,
	userdv1.UserService_ListPriceChanges_FullMethodName:       true,
}

// ConsistencyInterceptor gives reads and writes their consistency with
// standbys (docs/operations.md, "Reads from standbys"). A call may send
// the token of an earlier write in its metadata (consistency.Header; REST:
// the Userd-Consistency-Token header); one that is not a token is
// INVALID_ARGUMENT. With standbys on, a read-only method may be served by
// a standby that has replayed at least that token (and lags within the
// bound), and every other method answers with the token of its writes in
// its response header. With them off, the token is checked and ignored:
// the primary serves everything.
func ConsistencyInterceptor(standbys bool) grpc.UnaryServerInterceptor {
	return ConsistencyInterceptorWith(standbys, nil)
}

// CacheTokens is the read cache's side of the consistency tokens
// (internal/store/readcache.go).
type CacheTokens interface {
	// FeedXidNow returns the version-2 token value of every write
	// committed before the call.
	FeedXidNow(ctx context.Context) (uint64, error)
}

// ConsistencyInterceptorWith is ConsistencyInterceptor with the read
// cache on (cache not nil, and no standbys): every call's reads honour
// the version-2 token it sends (a read-only method's statements never
// raise the cache's write fence), and every other method answers with
// the version-2 token of its writes: the one its write batch read, or
// one read after the call when it ran statements of its own.
func ConsistencyInterceptorWith(standbys bool, cache CacheTokens) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		min, err := incomingToken(ctx)
		if err != nil {
			return nil, err
		}
		if !standbys && cache != nil {
			ctx = consistency.WithReadToken(ctx, min)
			if standbyReadable[info.FullMethod] {
				return handler(consistency.Unfenced(ctx), req)
			}
			ctx, rec := consistency.WithRecorder(ctx)
			resp, err := handler(ctx, req)
			t, ok, ran := rec.CacheToken()
			if ran {
				if x, xerr := cache.FeedXidNow(ctx); xerr == nil {
					t.Xid, ok = max(t.Xid, x), true
				}
			}
			if ok {
				_ = grpc.SetHeader(ctx, metadata.Pairs(consistency.Header, t.String()))
			}
			return resp, err
		}
		if !standbys {
			return handler(ctx, req)
		}
		if standbyReadable[info.FullMethod] {
			if min.Xid != 0 {
				// A read cache's token: no standby position is known to
				// have the write; the primary serves.
				return handler(ctx, req)
			}
			return handler(consistency.AllowStandby(ctx, min), req)
		}
		ctx, rec := consistency.WithRecorder(ctx)
		resp, err := handler(ctx, req)
		if t, ok := rec.Token(); ok {
			_ = grpc.SetHeader(ctx, metadata.Pairs(consistency.Header, t.String()))
		}
		return resp, err
	}
}

// incomingToken reads the call's consistency token (the zero Token if
// none); one that is not a token is INVALID_ARGUMENT.
func incomingToken(ctx context.Context) (consistency.Token, error) {
	v := metadata.ValueFromIncomingContext(ctx, consistency.Header)
	if len(v) == 0 {
		return consistency.Token{}, nil
	}
	t, err := consistency.ParseToken(v[len(v)-1])
	if err != nil {
		return t, apperr.InvalidArgument(apperr.FieldViolation{
			Field: consistency.Header, Description: "is not a consistency token returned by this API",
		})
	}
	return t, nil
}

// ConsistencyStreamInterceptor is ConsistencyInterceptor for
// WatchUserEvents: the token is checked the same way and, with standbys
// on, the watch's catch-up reads may be served by a standby that has
// replayed it (the handler moves the permission from the context into
// the feed.Request, so that nothing else of the watch reads a standby),
// and its events and heartbeats carry tokens.
func ConsistencyStreamInterceptor(standbys bool) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		min, err := incomingToken(ss.Context())
		if err != nil {
			return err
		}
		if !standbys || min.Xid != 0 {
			return handler(srv, ss)
		}
		return handler(srv, withContext(ss, consistency.AllowStandby(ss.Context(), min)))
	}
}
