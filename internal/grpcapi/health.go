package grpcapi

import (
	"context"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/userd/userd/internal/auth"
	"github.com/userd/userd/internal/connlimit"
)

// HealthWatchObserver learns about unauthenticated health watches.
type HealthWatchObserver interface {
	// HealthWatches reports a watch starting (+1) or ending (-1).
	HealthWatches(delta int)
	// HealthWatchRejected reports a watch refused.
	HealthWatchRejected()
}

// HealthWatchLimit bounds the grpc.health.v1.Health/Watch streams open at
// once without a service token. Health needs no credentials (orchestrators
// and load balancers call it), and a watch is a stream that lasts as long
// as its caller wants: unbounded, every one of them held a goroutine and
// its connection for nothing (issue 18: 20,000 connections, each with one
// watch, took every file descriptor). Beyond max, a watch is refused with
// RESOURCE_EXHAUSTED; Check (one answer, then done) is never limited. A
// watch that carries a valid service token — grpc-go's client-side health
// checking sends the channel's per-RPC credentials with it — is not
// counted, and proves its connection (internal/connlimit).
func HealthWatchLimit(authn *auth.Authenticator, max int, obs HealthWatchObserver) grpc.StreamServerInterceptor {
	slots := make(chan struct{}, max)
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if info.FullMethod != healthpb.Health_Watch_FullMethodName {
			return handler(srv, ss)
		}
		if isService(ss.Context(), authn) {
			connlimit.MarkProven(ss.Context())
			return handler(srv, ss)
		}
		select {
		case slots <- struct{}{}:
		default:
			obs.HealthWatchRejected()
			return status.Error(codes.ResourceExhausted,
				"too many health watches open: use grpc.health.v1.Health/Check, or watch with a service token")
		}
		obs.HealthWatches(1)
		defer func() {
			<-slots
			obs.HealthWatches(-1)
		}()
		return handler(srv, ss)
	}
}

// isService reports whether the call carries a valid service token.
func isService(ctx context.Context, authn *auth.Authenticator) bool {
	v := metadata.ValueFromIncomingContext(ctx, "authorization")
	if len(v) == 0 || !strings.HasPrefix(strings.TrimSpace(strings.ToLower(v[0])), "bearer ") {
		return false
	}
	p, err := authn.Authenticate(v[0])
	return err == nil && p.Kind == auth.KindService
}
