package telemetry

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// GRPCMetrics instruments the gRPC server with go-grpc-middleware's
// Prometheus metrics (the same names, labels and meaning:
// grpc_server_started_total, grpc_server_handled_total,
// grpc_server_msg_received_total, grpc_server_msg_sent_total and
// grpc_server_handling_seconds), but resolves each method's series once
// instead of on every call: go-grpc-middleware's interceptor hashed the
// label values of five series and allocated a reporter per call (about
// 1.7 µs of a GetUser's).
type GRPCMetrics struct {
	started, handled, received, sent *prometheus.CounterVec
	handling                         *prometheus.HistogramVec
	// methods holds the series of each method seen or initialized, by
	// full method name.
	methods sync.Map // string → *methodMetrics
}

// methodMetrics are one method's series.
type methodMetrics struct {
	started, received, sent prometheus.Counter
	handling                prometheus.Observer
	// handled are the series by code, resolved on first use (all of them
	// by InitializeMetrics, as go-grpc-middleware does).
	handled            [codes.Unauthenticated + 1]atomic.Pointer[prometheus.Counter]
	vec                *prometheus.CounterVec
	typ, service, name string
}

// handledCounter returns the series of calls that ended with code c.
func (mm *methodMetrics) handledCounter(c codes.Code) prometheus.Counter {
	if p := mm.handled[c].Load(); p != nil {
		return *p
	}
	ctr := mm.vec.WithLabelValues(mm.typ, mm.service, mm.name, c.String())
	mm.handled[c].Store(&ctr)
	return ctr
}

var grpcLabels = []string{"grpc_type", "grpc_service", "grpc_method"}

// NewGRPCMetrics returns the collectors of the gRPC server; the latency
// histogram has buckets.
func NewGRPCMetrics(buckets []float64) *GRPCMetrics {
	counter := func(name, help string, labels []string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	}
	return &GRPCMetrics{
		started: counter("grpc_server_started_total", "Total number of RPCs started on the server.", grpcLabels),
		handled: counter("grpc_server_handled_total", "Total number of RPCs completed on the server, regardless of success or failure.",
			append(append([]string(nil), grpcLabels...), "grpc_code")),
		received: counter("grpc_server_msg_received_total", "Total number of RPC stream messages received on the server.", grpcLabels),
		sent:     counter("grpc_server_msg_sent_total", "Total number of gRPC stream messages sent by the server.", grpcLabels),
		handling: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "grpc_server_handling_seconds",
			Help:    "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
			Buckets: buckets,
		}, grpcLabels),
	}
}

// Describe implements prometheus.Collector.
func (m *GRPCMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.started.Describe(ch)
	m.handled.Describe(ch)
	m.received.Describe(ch)
	m.sent.Describe(ch)
	m.handling.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *GRPCMetrics) Collect(ch chan<- prometheus.Metric) {
	m.started.Collect(ch)
	m.handled.Collect(ch)
	m.received.Collect(ch)
	m.sent.Collect(ch)
	m.handling.Collect(ch)
}

// InitializeMetrics creates the series of every method of server, at
// zero, so that they exist before the first call.
func (m *GRPCMetrics) InitializeMetrics(server interface {
	GetServiceInfo() map[string]grpc.ServiceInfo
},
) {
	for service, info := range server.GetServiceInfo() {
		for _, mi := range info.Methods {
			mm := m.method("/"+service+"/"+mi.Name, grpcType(mi.IsClientStream, mi.IsServerStream))
			for c := range mm.handled {
				mm.handledCounter(codes.Code(c))
			}
		}
	}
}

// method returns the series of a method, creating them on first use.
func (m *GRPCMetrics) method(fullMethod, typ string) *methodMetrics {
	if mm, ok := m.methods.Load(fullMethod); ok {
		return mm.(*methodMetrics)
	}
	service, name := splitMethod(fullMethod)
	mm := &methodMetrics{
		started:  m.started.WithLabelValues(typ, service, name),
		received: m.received.WithLabelValues(typ, service, name),
		sent:     m.sent.WithLabelValues(typ, service, name),
		handling: m.handling.WithLabelValues(typ, service, name),
		vec:      m.handled, typ: typ, service: service, name: name,
	}
	actual, _ := m.methods.LoadOrStore(fullMethod, mm)
	return actual.(*methodMetrics)
}

// done counts a finished call by its code and times it.
func (mm *methodMetrics) done(err error, start time.Time) {
	if c := codeOf(err); int(c) < len(mm.handled) {
		mm.handledCounter(c).Inc()
	} else {
		mm.vec.WithLabelValues(mm.typ, mm.service, mm.name, c.String()).Inc()
	}
	mm.handling.Observe(time.Since(start).Seconds())
}

// UnaryServerInterceptor counts and times unary calls.
func (m *GRPCMetrics) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		mm := m.method(info.FullMethod, "unary")
		mm.started.Inc()
		mm.received.Inc()
		resp, err := handler(ctx, req)
		if err == nil {
			mm.sent.Inc()
		}
		mm.done(err, start)
		return resp, err
	}
}

// StreamServerInterceptor counts and times streams and their messages.
func (m *GRPCMetrics) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		start := time.Now()
		mm := m.method(info.FullMethod, grpcType(info.IsClientStream, info.IsServerStream))
		mm.started.Inc()
		err := handler(srv, &countedStream{ServerStream: ss, mm: mm})
		mm.done(err, start)
		return err
	}
}

// countedStream counts a stream's messages.
type countedStream struct {
	grpc.ServerStream
	mm *methodMetrics
}

func (s *countedStream) SendMsg(msg any) error {
	err := s.ServerStream.SendMsg(msg)
	if err == nil {
		s.mm.sent.Inc()
	}
	return err
}

func (s *countedStream) RecvMsg(msg any) error {
	err := s.ServerStream.RecvMsg(msg)
	if err == nil {
		s.mm.received.Inc()
	}
	return err
}

// codeOf is the code a caller sees for err, as the gRPC server (and
// go-grpc-middleware) derive it: context errors are CANCELLED and
// DEADLINE_EXCEEDED.
func codeOf(err error) codes.Code {
	s, ok := status.FromError(err)
	if !ok {
		s = status.FromContextError(err)
	}
	return s.Code()
}

// grpcType is the grpc_type label, as go-grpc-middleware names it.
func grpcType(clientStream, serverStream bool) string {
	switch {
	case clientStream && serverStream:
		return "bidi_stream"
	case clientStream:
		return "client_stream"
	case serverStream:
		return "server_stream"
	}
	return "unary"
}

// splitMethod splits "/package.Service/Method".
func splitMethod(fullMethod string) (service, method string) {
	fullMethod = strings.TrimPrefix(fullMethod, "/")
	if i := strings.Index(fullMethod, "/"); i >= 0 {
		return fullMethod[:i], fullMethod[i+1:]
	}
	return "unknown", "unknown"
}
