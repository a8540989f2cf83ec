package grpcapi_test

import (
	"context"
	"io"
	"testing"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/auth"
	"github.com/userd/userd/internal/grpcapi"
	"github.com/userd/userd/internal/telemetry"
)

// BenchmarkInterceptors measures what the server's unary chain (request
// id, access log line, Prometheus, recovery, error mapping, service-token
// authentication, deadline bound), assembled as internal/app does, costs a GetUser call
// around a handler that does nothing; at level warn, without the access
// log line; sampled, with the access log of successful reads at its
// default of 100 a second (USERD_ACCESS_LOG_READS); and, for comparison,
// what it costs a grpc.health.v1.Health/Check (no authentication), the
// floor make bench compares GetUser with.
func BenchmarkInterceptors(b *testing.B) {
	for _, c := range []struct {
		name, level, method string
		reads               int
	}{
		{"log=info", "info", userdv1.UserService_GetUser_FullMethodName, 0},
		{"log=warn", "warn", userdv1.UserService_GetUser_FullMethodName, 0},
		{"log=sampled", "info", userdv1.UserService_GetUser_FullMethodName, 100},
		{"log=sampled/HealthCheck", "info", healthpb.Health_Check_FullMethodName, 100},
	} {
		b.Run(c.name, func(b *testing.B) { benchmarkInterceptors(b, c.level, c.method, c.reads) })
	}
}

func benchmarkInterceptors(b *testing.B, level, method string, reads int) {
	const token = "bench-service-token-0123456789abcdef"
	tokens, err := auth.ParseServiceTokens("bench=" + token)
	if err != nil {
		b.Fatal(err)
	}
	log := telemetry.NewLogger(io.Discard, "json", level)
	metrics := telemetry.NewMetrics()
	ics := grpcapi.Chain{
		Log: log, Authn: auth.NewAuthenticator(tokens, nil, log), RequestTimeout: 10 * time.Second,
		Metrics: metrics.GRPC.UnaryServerInterceptor(), AccessLogReads: reads,
	}.Interceptors()
	info := &grpc.UnaryServerInfo{FullMethod: method}
	resp := &userdv1.GetUserResponse{User: &userdv1.User{ClerkUserId: "user_bench1"}}
	handler := grpc.UnaryHandler(func(context.Context, any) (any, error) { return resp, nil })
	for i := len(ics) - 1; i >= 0; i-- {
		ic, next := ics[i], handler
		handler = func(ctx context.Context, req any) (any, error) { return ic(ctx, req, info, next) }
	}
	// What grpc-go puts in a call's incoming metadata.
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(
		":authority", "127.0.0.1:9090", "content-type", "application/grpc", "user-agent", "grpc-go/1.85.0",
		"authorization", "Bearer "+token))
	ctx = grpc.NewContextWithServerTransportStream(ctx, stream{})
	req := &userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_ClerkUserId{ClerkUserId: "user_bench1"}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := handler(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

// stream stands in for the call's transport stream (grpc.SetHeader).
type stream struct{}

func (stream) Method() string               { return userdv1.UserService_GetUser_FullMethodName }
func (stream) SetHeader(metadata.MD) error  { return nil }
func (stream) SendHeader(metadata.MD) error { return nil }
func (stream) SetTrailer(metadata.MD) error { return nil }
