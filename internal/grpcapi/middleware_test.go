package grpcapi_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/auth"
	"github.com/userd/userd/internal/grpcapi"
)

// chain runs handler through the server's interceptor chain, as grpc does.
func chain(log *slog.Logger, handler grpc.UnaryHandler) error {
	// Another service's method: authentication (tested end to end
	// elsewhere) does not apply.
	ics := grpcapi.Interceptors(log, auth.NewAuthenticator(auth.ServiceTokens{}, nil, log))
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
			}
		})
	}
}
