package grpcapi

import (
	"context"
	"log/slog"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	middleware "github.com/grpc-ecosystem/go-grpc-middleware/v2"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/auth"
	"github.com/userd/userd/internal/connlimit"
	"github.com/userd/userd/internal/requestid"
)

// callInfo is what the interceptors learn about a call, shared through
// the context so that the logging interceptor (outside) can report the
// principal the auth interceptor (inside) found.
type callInfo struct {
	requestID string
	method    string
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
		ctx, id := withRequestID(ctx, info.FullMethod)
		_ = grpc.SetHeader(ctx, metadata.MD{requestid.Key: {id}})
		return handler(ctx, req)
	}
}

// RequestIDStreamInterceptor is RequestIDInterceptor for streams.
func RequestIDStreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, id := withRequestID(ss.Context(), info.FullMethod)
		_ = ss.SetHeader(metadata.MD{requestid.Key: {id}})
		return handler(srv, withContext(ss, ctx))
	}
}

// withRequestID returns ctx with the call's info, under the caller's
// request id if it sent a sane one, else under a new one.
func withRequestID(ctx context.Context, method string) (context.Context, string) {
	id := ""
	if v := metadata.ValueFromIncomingContext(ctx, requestid.Key); len(v) > 0 && requestid.Valid(v[0]) {
		id = v[0]
	}
	if id == "" {
		id = requestid.New()
	}
	return context.WithValue(ctx, callInfoKey{}, &callInfo{requestID: id, method: method}), id
}

// withContext is ss with ctx as its context. A new wrapper each time, not
// middleware.WrapServerStream, which would change the context of a wrapper
// that interceptors outside this one also hold.
func withContext(ss grpc.ServerStream, ctx context.Context) grpc.ServerStream {
	return &middleware.WrappedServerStream{ServerStream: ss, WrappedContext: ctx}
}

// LoggingInterceptor logs one line per call: transport, method, code,
// duration, principal and request id. It never logs requests or responses
// (they may carry personal data). Of the successful read-only calls
// (readOnly), it logs at most readsPerSecond a second (0: all of them);
// the next one it logs says how many it skipped (skipped_reads). Errors
// and writes are always logged.
func LoggingInterceptor(log *slog.Logger, readsPerSecond int) grpc.UnaryServerInterceptor {
	cl := newCallLog(log)
	if readsPerSecond > 0 {
		cl.reads = &readSampler{perSecond: int64(readsPerSecond)}
	}
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		cl.log(ctx, info.FullMethod, start, err)
		return resp, err
	}
}

// LoggingStreamInterceptor is LoggingInterceptor for streams: one line when
// the stream ends.
func LoggingStreamInterceptor(log *slog.Logger) grpc.StreamServerInterceptor {
	cl := newCallLog(log)
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		start := time.Now()
		err := handler(srv, ss)
		cl.log(ss.Context(), info.FullMethod, start, err)
		return err
	}
}

// callLog writes the one line of a call.
type callLog struct {
	grpc, rest slog.Handler
	// reads, if set, samples the lines of successful reads.
	reads *readSampler
}

// readOnly are the methods whose successful calls the access log may
// sample: the reads a standby may serve, and health checks.
func readOnly(method string) bool {
	return standbyReadable[method] || method == healthpb.Health_Check_FullMethodName
}

// readSampler lets at most perSecond successful reads a second (by the
// wall clock's second) be logged, and counts the others.
type readSampler struct {
	perSecond int64
	second    atomic.Int64 // the Unix second being counted
	logged    atomic.Int64 // reads admitted in it
	skipped   atomic.Int64 // reads not logged since one was last logged
}

// admit reports whether the access log shows a successful read finished
// at now and, if so, how many it did not show since it last showed one.
// Concurrent calls at a second's turn may admit a few more than perSecond:
// a bound on the log's volume, not an exact quota.
func (s *readSampler) admit(now time.Time) (bool, int64) {
	sec := now.Unix()
	if cur := s.second.Load(); cur != sec && s.second.CompareAndSwap(cur, sec) {
		s.logged.Store(0)
	}
	if s.logged.Add(1) > s.perSecond {
		s.skipped.Add(1)
		return false, 0
	}
	return true, s.skipped.Swap(0)
}

func newCallLog(log *slog.Logger) callLog {
	// The transport attribute is formatted once, here, which also keeps a
	// line's other attributes within what a slog.Record holds without
	// allocating; and the record is handed to the handler directly, as
	// slog.Logger would record the caller's program counter for every line
	// (runtime.Callers, ~1% of a GetUser) for a source nobody logs.
	return callLog{
		grpc: log.With(slog.String("transport", "grpc")).Handler(),
		rest: log.With(slog.String("transport", "rest")).Handler(),
	}
}

func (cl callLog) log(ctx context.Context, method string, start time.Time, err error) {
	code := status.Code(err)
	level := slog.LevelInfo
	switch code {
	case codes.Internal, codes.Unknown, codes.DataLoss:
		level = slog.LevelError
	case codes.Unavailable:
		level = slog.LevelWarn
	}
	h := cl.grpc
	if fromREST(ctx) {
		h = cl.rest
	}
	if !h.Enabled(ctx, level) {
		return
	}
	now := time.Now()
	skipped := int64(0)
	if code == codes.OK && cl.reads != nil && readOnly(method) {
		var ok bool
		if ok, skipped = cl.reads.admit(now); !ok {
			return
		}
	}
	principal, requestID := "", ""
	if ci := infoOf(ctx); ci != nil {
		principal, requestID = ci.principal, ci.requestID
	}
	r := slog.NewRecord(now, level, "call", 0)
	r.AddAttrs(
		slog.String("method", method),
		slog.String("code", code.String()),
		slog.Float64("duration_ms", float64(now.Sub(start).Microseconds())/1000),
		slog.String("principal", principal),
		slog.String("request_id", requestID))
	if skipped > 0 {
		r.AddAttrs(slog.Int64("skipped_reads", skipped))
	}
	_ = h.Handle(ctx, r) // as slog.Logger does, a failed write is not the call's error
}

// RecoveryInterceptor turns a panic in a handler into INTERNAL and logs it
// with its stack (go-grpc-middleware's recovery, with recoverPanic).
func RecoveryInterceptor(log *slog.Logger) grpc.UnaryServerInterceptor {
	return recovery.UnaryServerInterceptor(recovery.WithRecoveryHandlerContext(recoverPanic(log)))
}

// RecoveryStreamInterceptor is RecoveryInterceptor for streams.
func RecoveryStreamInterceptor(log *slog.Logger) grpc.StreamServerInterceptor {
	return recovery.StreamServerInterceptor(recovery.WithRecoveryHandlerContext(recoverPanic(log)))
}

// recoverPanic logs a recovered panic with the method, the request id and
// the stack (it runs in the panicking goroutine's deferred call, so
// debug.Stack still shows where the panic happened), and answers INTERNAL
// with the request id and nothing of the panic.
func recoverPanic(log *slog.Logger) recovery.RecoveryHandlerFuncContext {
	return func(ctx context.Context, p any) error {
		method := ""
		if ci := infoOf(ctx); ci != nil {
			method = ci.method
		}
		log.ErrorContext(ctx, "panic in handler",
			"method", method, "request_id", RequestID(ctx),
			"panic", p, "stack", string(debug.Stack()))
		return status.Error(codes.Internal, "internal error (request id "+RequestID(ctx)+")")
	}
}

// AuthInterceptor authenticates every UserService call from its
// authorization metadata (gRPC clients and the REST gateway alike) and puts
// the principal in the context. Health and reflection are other services
// and need no credentials.
func AuthInterceptor(authn *auth.Authenticator) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, err := authenticate(ctx, authn, info.FullMethod)
		if err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// AuthStreamInterceptor is AuthInterceptor for streams (WatchUserEvents;
// health's Watch and reflection need no credentials).
func AuthStreamInterceptor(authn *auth.Authenticator) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, err := authenticate(ss.Context(), authn, info.FullMethod)
		if err != nil {
			return err
		}
		return handler(srv, withContext(ss, ctx))
	}
}

var userServicePrefix = "/" + userdv1.UserService_ServiceDesc.ServiceName + "/"

// authenticate returns ctx with the caller's principal for a UserService
// method, and ctx itself for other services'.
func authenticate(ctx context.Context, authn *auth.Authenticator, method string) (context.Context, error) {
	if !strings.HasPrefix(method, userServicePrefix) {
		return ctx, nil
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
	// The connection carried an authenticated call: a full listener no
	// longer closes it to make room (internal/connlimit).
	connlimit.MarkProven(ctx)
	return auth.WithPrincipal(ctx, p), nil
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

// Chain configures the server's interceptor chains.
type Chain struct {
	Log   *slog.Logger
	Authn *auth.Authenticator
	// RequestTimeout bounds every unary call's work (a caller's shorter
	// deadline wins).
	RequestTimeout time.Duration
	// AccessLogReads is how many successful read-only calls a second the
	// access log shows at most (0: every call; see LoggingInterceptor).
	AccessLogReads int
	// Metrics and StreamMetrics, if set, count calls by method and code.
	// They sit inside the logging and outside the recovery and error
	// mapping, so they count the codes callers see, panics included.
	Metrics       grpc.UnaryServerInterceptor
	StreamMetrics grpc.StreamServerInterceptor
	// StandbyReads: standbys may serve reads, and writes answer with a
	// consistency token (ConsistencyInterceptor).
	StandbyReads bool
	// ReadCache, if set (and not StandbyReads), is the read cache whose
	// tokens calls send and writes answer (ConsistencyInterceptorWith).
	ReadCache CacheTokens
}

// Interceptors returns the unary chain, outermost first: errors from
// authentication are mapped like any other, and every call's work is
// bounded.
func (c Chain) Interceptors() []grpc.UnaryServerInterceptor {
	chain := []grpc.UnaryServerInterceptor{RequestIDInterceptor(), LoggingInterceptor(c.Log, c.AccessLogReads)}
	if c.Metrics != nil {
		chain = append(chain, c.Metrics)
	}
	return append(chain,
		RecoveryInterceptor(c.Log),
		ErrorInterceptor(c.Log),
		AuthInterceptor(c.Authn),
		ConsistencyInterceptorWith(c.StandbyReads, c.ReadCache),
		BoundInterceptor(c.RequestTimeout),
	)
}

// StreamInterceptors returns the stream chain: the unary chain's
// interceptors, in the same order, except the bound: a stream
// (WatchUserEvents) lives until the caller or userd ends it, and each of
// its database reads is bounded by the session's statement timeout.
func (c Chain) StreamInterceptors() []grpc.StreamServerInterceptor {
	chain := []grpc.StreamServerInterceptor{RequestIDStreamInterceptor(), LoggingStreamInterceptor(c.Log)}
	if c.StreamMetrics != nil {
		chain = append(chain, c.StreamMetrics)
	}
	return append(chain,
		RecoveryStreamInterceptor(c.Log),
		ErrorStreamInterceptor(c.Log),
		AuthStreamInterceptor(c.Authn),
		ConsistencyStreamInterceptor(c.StandbyReads),
	)
}
