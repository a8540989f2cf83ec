package grpcapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/auth"
	"github.com/userd/userd/internal/grpcapi"
	"github.com/userd/userd/internal/requestid"
)

// chain runs handler through the server's interceptor chain, as grpc does.
func chain(log *slog.Logger, handler grpc.UnaryHandler) error {
	// Another service's method: authentication (tested end to end
	// elsewhere) does not apply.
	ics := grpcapi.Chain{Log: log, Authn: auth.NewAuthenticator(auth.ServiceTokens{}, nil, log), RequestTimeout: time.Minute}.Interceptors()
	info := &grpc.UnaryServerInfo{FullMethod: "/test.v1.Probe/Call"}
	h := handler
	for i := len(ics) - 1; i >= 0; i-- {
		ic, next := ics[i], h
		h = func(ctx context.Context, req any) (any, error) { return ic(ctx, req, info, next) }
	}
	_, err := h(context.Background(), nil)
	return err
}

func TestInterceptorsHideInternalsAndRecoverPanics(t *testing.T) {
	t.Parallel()
	const secret = "password=hunter2 relation users does not exist"
	cases := []struct {
		name    string
		handler grpc.UnaryHandler
		want    codes.Code
	}{
		{"PlainError", func(context.Context, any) (any, error) { return nil, errors.New(secret) }, codes.Internal},
		{"WrappedInternal", func(context.Context, any) (any, error) {
			return nil, fmt.Errorf("get user: %w", &apperr.Error{Kind: apperr.KindInternal, Message: secret})
		}, codes.Internal},
		{"Panic", func(context.Context, any) (any, error) { panic(secret) }, codes.Internal},
		{"Unavailable", func(context.Context, any) (any, error) {
			return nil, fmt.Errorf("get user: %w", apperr.Unavailable(errors.New(secret)))
		}, codes.Unavailable},
		{"NotFound", func(context.Context, any) (any, error) { return nil, apperr.NotFound("user not found") }, codes.NotFound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			err := chain(slog.New(slog.NewJSONHandler(&logs, nil)), tc.handler)
			st, _ := status.FromError(err)
			if st.Code() != tc.want {
				t.Errorf("code = %v, want %v", st.Code(), tc.want)
			}
			if strings.Contains(st.Message(), "hunter2") {
				t.Errorf("status message leaks the cause: %q", st.Message())
			}
			if tc.want == codes.Internal {
				if !strings.Contains(st.Message(), "request id ") {
					t.Errorf("internal message %q lacks a request id", st.Message())
				}
				// The cause is logged for operators, with the same request id.
				id := st.Message()[strings.LastIndex(st.Message(), " ")+1 : len(st.Message())-1]
				if !strings.Contains(logs.String(), "hunter2") || !strings.Contains(logs.String(), id) {
					t.Errorf("log lacks the cause or request id %s:\n%s", id, logs.String())
				}
				// A panic is logged with the method and where it happened.
				if tc.name == "Panic" && (!strings.Contains(logs.String(), `"msg":"panic in handler","method":"/test.v1.Probe/Call"`) ||
					!strings.Contains(logs.String(), "middleware_test.go")) {
					t.Errorf("the panic's log line lacks the method or the stack:\n%s", logs.String())
				}
			}
		})
	}
}

// TestBoundInterceptor: a call without a deadline, or with a longer one,
// runs under the bound; a caller's shorter deadline is kept.
func TestBoundInterceptor(t *testing.T) {
	t.Parallel()
	const bound = time.Minute
	ic := grpcapi.BoundInterceptor(bound)
	info := &grpc.UnaryServerInfo{FullMethod: "/test.v1.Probe/Call"}
	deadlineIn := func(ctx context.Context) time.Duration {
		var left time.Duration
		_, _ = ic(ctx, nil, info, func(ctx context.Context, _ any) (any, error) {
			d, ok := ctx.Deadline()
			if !ok {
				t.Fatal("the handler's context has no deadline")
			}
			left = time.Until(d)
			return nil, nil
		})
		return left
	}
	if left := deadlineIn(context.Background()); left > bound || left < bound-10*time.Second {
		t.Errorf("no caller deadline: %s left, want the %s bound", left, bound)
	}
	longer, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	if left := deadlineIn(longer); left > bound {
		t.Errorf("caller deadline of 1h: %s left, want at most the %s bound", left, bound)
	}
	shorter, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if left := deadlineIn(shorter); left > time.Second {
		t.Errorf("caller deadline of 1s: %s left, want the caller's", left)
	}
}

// stubUsers answers GetUser without a database.
type stubUsers struct {
	userdv1.UnimplementedUserServiceServer
}

func (stubUsers) GetUser(context.Context, *userdv1.GetUserRequest) (*userdv1.GetUserResponse, error) {
	return &userdv1.GetUserResponse{User: &userdv1.User{ClerkUserId: "user_1"}}, nil
}

// TestAccessLogLine checks the line logged per call, over gRPC's chain and
// the REST gateway's (grpcapi.Chained): one JSON line at info with the
// transport, method, code, duration, principal and request id.
func TestAccessLogLine(t *testing.T) {
	t.Parallel()
	const token = "log-test-service-token-0123456789abcdef"
	tokens, err := auth.ParseServiceTokens("billing=" + token)
	if err != nil {
		t.Fatal(err)
	}
	for _, transport := range []string{"grpc", "rest"} {
		t.Run(transport, func(t *testing.T) {
			var logs bytes.Buffer
			log := slog.New(slog.NewJSONHandler(&logs, nil))
			ics := grpcapi.Chain{Log: log, Authn: auth.NewAuthenticator(tokens, nil, log), RequestTimeout: time.Minute}.Interceptors()
			ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(
				"authorization", "Bearer "+token, requestid.Key, "req-42"))
			req := &userdv1.GetUserRequest{Lookup: &userdv1.GetUserRequest_ClerkUserId{ClerkUserId: "user_1"}}
			if transport == "rest" {
				if _, err := grpcapi.Chained(stubUsers{}, ics, nil).GetUser(ctx, req); err != nil {
					t.Fatal(err)
				}
			} else {
				info := &grpc.UnaryServerInfo{FullMethod: userdv1.UserService_GetUser_FullMethodName}
				h := grpc.UnaryHandler(func(ctx context.Context, req any) (any, error) {
					return stubUsers{}.GetUser(ctx, req.(*userdv1.GetUserRequest))
				})
				for i := len(ics) - 1; i >= 0; i-- {
					ic, next := ics[i], h
					h = func(ctx context.Context, req any) (any, error) { return ic(ctx, req, info, next) }
				}
				if _, err := h(ctx, req); err != nil {
					t.Fatal(err)
				}
			}
			var line map[string]any
			if err := json.Unmarshal(logs.Bytes(), &line); err != nil {
				t.Fatalf("not one JSON line: %v\n%s", err, logs.String())
			}
			want := map[string]any{
				"level": "INFO", "msg": "call", "transport": transport, "method": userdv1.UserService_GetUser_FullMethodName,
				"code": "OK", "principal": "service:billing", "request_id": "req-42",
			}
			for k, v := range want {
				if line[k] != v {
					t.Errorf("%s = %v, want %v\n%s", k, line[k], v, logs.String())
				}
			}
			if d, ok := line["duration_ms"].(float64); !ok || d < 0 {
				t.Errorf("duration_ms = %v\n%s", line["duration_ms"], logs.String())
			}
		})
	}
}

// TestAccessLogSamplesSuccessfulReads: with USERD_ACCESS_LOG_READS=1, of
// many successful reads (GetUser, Health/Check) at most one a second is
// logged, and the skipped ones are counted in a later line; every failed
// read and every write is logged; with 0, every call is.
func TestAccessLogSamplesSuccessfulReads(t *testing.T) {
	t.Parallel()
	const token = "log-test-service-token-0123456789abcdef"
	tokens, err := auth.ParseServiceTokens("billing=" + token)
	if err != nil {
		t.Fatal(err)
	}
	const reads, failed, writes = 40, 3, 3
	for _, perSecond := range []int{1, 0} {
		t.Run(fmt.Sprintf("reads=%d", perSecond), func(t *testing.T) {
			var logs bytes.Buffer
			log := slog.New(slog.NewJSONHandler(&logs, nil))
			ics := grpcapi.Chain{Log: log, Authn: auth.NewAuthenticator(tokens, nil, log), RequestTimeout: time.Minute, AccessLogReads: perSecond}.Interceptors()
			ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+token))
			call := func(method string, err error) {
				info := &grpc.UnaryServerInfo{FullMethod: method}
				h := grpc.UnaryHandler(func(context.Context, any) (any, error) { return nil, err })
				for i := len(ics) - 1; i >= 0; i-- {
					ic, next := ics[i], h
					h = func(ctx context.Context, req any) (any, error) { return ic(ctx, req, info, next) }
				}
				_, _ = h(ctx, nil)
			}
			start := time.Now()
			for i := range reads {
				call(userdv1.UserService_GetUser_FullMethodName, nil)
				call("/grpc.health.v1.Health/Check", nil)
				if i < failed {
					call(userdv1.UserService_GetUser_FullMethodName, apperr.NotFound("user not found"))
				}
				if i < writes {
					call(userdv1.UserService_DeductCredits_FullMethodName, nil)
				}
			}
			seconds := int(time.Since(start).Seconds()) + 2 // the seconds the calls spanned, at most
			okReads, failedReads, writesLogged, skipped := 0, 0, 0, 0
			for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
				var line map[string]any
				if err := json.Unmarshal([]byte(l), &line); err != nil {
					t.Fatalf("not a JSON line: %v\n%s", err, l)
				}
				switch {
				case line["method"] == userdv1.UserService_DeductCredits_FullMethodName:
					writesLogged++
				case line["code"] != "OK":
					failedReads++
				default:
					okReads++
				}
				if n, ok := line["skipped_reads"].(float64); ok {
					skipped += int(n)
				}
			}
			if failedReads != failed || writesLogged != writes {
				t.Errorf("logged %d failed reads and %d writes, want every one (%d, %d)\n%s", failedReads, writesLogged, failed, writes, logs.String())
			}
			if perSecond == 0 {
				if okReads != 2*reads || skipped != 0 {
					t.Errorf("unsampled: logged %d successful reads (skipped_reads %d), want all %d", okReads, skipped, 2*reads)
				}
				return
			}
			if okReads < 1 || okReads > seconds*perSecond || okReads+skipped > 2*reads {
				t.Errorf("sampled at %d/s over at most %d s: logged %d of %d successful reads, skipped_reads %d\n%s",
					perSecond, seconds, okReads, 2*reads, skipped, logs.String())
			}
		})
	}
}

// fakeStream is the least a grpc.ServerStream needs for the interceptors.
type fakeStream struct{ grpc.ServerStream }

func (fakeStream) Context() context.Context     { return context.Background() }
func (fakeStream) SetHeader(metadata.MD) error  { return nil }
func (fakeStream) SendHeader(metadata.MD) error { return nil }
func (fakeStream) SetTrailer(metadata.MD)       {}

// TestStreamInterceptorsMapErrorsLikeUnary: a stream's ending error gets
// the same treatment as a unary call's: codes from the table, internals
// hidden and logged with the request id, panics recovered, one log line;
// and a UserService stream without credentials never reaches its handler.
func TestStreamInterceptorsMapErrorsLikeUnary(t *testing.T) {
	t.Parallel()
	const secret = "password=hunter2 relation users does not exist"
	run := func(log *slog.Logger, method string, handler grpc.StreamHandler) error {
		ics := grpcapi.Chain{Log: log, Authn: auth.NewAuthenticator(auth.ServiceTokens{}, nil, log)}.StreamInterceptors()
		info := &grpc.StreamServerInfo{FullMethod: method, IsServerStream: true}
		h := handler
		for i := len(ics) - 1; i >= 0; i-- {
			ic, next := ics[i], h
			h = func(srv any, ss grpc.ServerStream) error { return ic(srv, ss, info, next) }
		}
		return h(nil, fakeStream{})
	}
	for _, tc := range []struct {
		name    string
		handler grpc.StreamHandler
		want    codes.Code
	}{
		{"PlainError", func(any, grpc.ServerStream) error { return errors.New(secret) }, codes.Internal},
		{"Panic", func(any, grpc.ServerStream) error { panic(secret) }, codes.Internal},
		{"Expired", func(any, grpc.ServerStream) error {
			return &apperr.Error{Kind: apperr.KindExpired, Message: "cursor expired", Reason: apperr.ReasonCursorExpired}
		}, codes.OutOfRange},
		{"Unavailable", func(any, grpc.ServerStream) error { return apperr.Unavailable(errors.New(secret)) }, codes.Unavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			err := run(slog.New(slog.NewJSONHandler(&logs, nil)), "/test.v1.Probe/Watch", tc.handler)
			st, _ := status.FromError(err)
			if st.Code() != tc.want || strings.Contains(st.Message(), "hunter2") {
				t.Errorf("status = %v %q, want %v without the cause", st.Code(), st.Message(), tc.want)
			}
			if !strings.Contains(logs.String(), `"msg":"call"`) || !strings.Contains(logs.String(), "/test.v1.Probe/Watch") {
				t.Errorf("no call log line:\n%s", logs.String())
			}
			if tc.want == codes.Internal && !strings.Contains(logs.String(), "hunter2") {
				t.Errorf("the cause is not logged:\n%s", logs.String())
			}
		})
	}
	reached := false
	err := run(slog.New(slog.DiscardHandler), "/userd.v1.UserService/WatchUserEvents", func(any, grpc.ServerStream) error {
		reached = true
		return nil
	})
	if st, _ := status.FromError(err); st.Code() != codes.Unauthenticated || reached {
		t.Errorf("WatchUserEvents without credentials: %v (handler reached: %v)", err, reached)
	}
}
