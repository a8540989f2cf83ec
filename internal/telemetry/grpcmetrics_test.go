package telemetry_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/userd/userd/internal/telemetry"
)

// TestGRPCMetricsMatchGoGRPCMiddleware: the cached interceptors expose
// exactly what go-grpc-middleware's Prometheus interceptors did for the
// same calls — names, help, labels, counts, histogram buckets and sample
// counts — including the series InitializeMetrics creates at zero.
func TestGRPCMetricsMatchGoGRPCMiddleware(t *testing.T) {
	t.Parallel()
	buckets := []float64{.001, .01, .1, 1}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())

	theirs := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(grpcprom.WithHistogramBuckets(buckets)))
	ours := telemetry.NewGRPCMetrics(buckets)
	theirs.InitializeMetrics(srv)
	ours.InitializeMetrics(srv)

	type instrumented struct {
		unary  grpc.UnaryServerInterceptor
		stream grpc.StreamServerInterceptor
	}
	drive := func(in instrumented) {
		check := &grpc.UnaryServerInfo{FullMethod: healthpb.Health_Check_FullMethodName}
		other := &grpc.UnaryServerInfo{FullMethod: "/userd.v1.UserService/GetUser"}
		for i, err := range []error{nil, nil, status.Error(codes.NotFound, "no"), context.Canceled, context.DeadlineExceeded, fmt.Errorf("plain")} {
			info := check
			if i%2 == 1 {
				info = other // not initialized: created on first use
			}
			_, _ = in.unary(context.Background(), nil, info, func(context.Context, any) (any, error) { return nil, err })
		}
		watch := &grpc.StreamServerInfo{FullMethod: healthpb.Health_Watch_FullMethodName, IsServerStream: true}
		for _, err := range []error{nil, status.Error(codes.ResourceExhausted, "full")} {
			_ = in.stream(nil, fakeStream{}, watch, func(_ any, ss grpc.ServerStream) error {
				_ = ss.RecvMsg(nil)
				_ = ss.SendMsg(nil)
				_ = ss.SendMsg(nil)
				return err
			})
		}
	}
	drive(instrumented{theirs.UnaryServerInterceptor(), theirs.StreamServerInterceptor()})
	drive(instrumented{ours.UnaryServerInterceptor(), ours.StreamServerInterceptor()})

	want, got := exposition(t, theirs), exposition(t, ours)
	if want != got {
		t.Errorf("exposition differs\n--- go-grpc-middleware:\n%s\n--- ours:\n%s", want, got)
	}
	if !strings.Contains(got, `grpc_server_handled_total{grpc_code="Canceled",grpc_method="GetUser",grpc_service="userd.v1.UserService",grpc_type="unary"} 1`) {
		t.Errorf("no cancelled GetUser counted:\n%s", got)
	}
}

// exposition renders what c exposes, without the histograms' sums (the
// calls' durations differ).
func exposition(t *testing.T, c prometheus.Collector) string {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, mf := range mfs {
		lines = append(lines, fmt.Sprintf("# %s %s %s", mf.GetName(), mf.GetType(), mf.GetHelp()))
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			series := mf.GetName() + "{" + strings.Join(labels, ",") + "}"
			switch mf.GetType().String() {
			case "COUNTER":
				lines = append(lines, fmt.Sprintf("%s %g", series, m.GetCounter().GetValue()))
			case "HISTOGRAM":
				h := m.GetHistogram()
				var bs []string
				for _, b := range h.GetBucket() {
					bs = append(bs, fmt.Sprintf("%g", b.GetUpperBound()))
				}
				lines = append(lines, fmt.Sprintf("%s count=%d buckets=%s", series, h.GetSampleCount(), strings.Join(bs, ",")))
			}
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// fakeStream is the least a grpc.ServerStream needs here.
type fakeStream struct{ grpc.ServerStream }

func (fakeStream) Context() context.Context { return context.Background() }
func (fakeStream) SendMsg(any) error        { return nil }
func (fakeStream) RecvMsg(any) error        { return nil }
