package gateway

import (
	"context"
	"net/http"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	userdv1 "github.com/userd/userd/gen/userd/v1"
)

// methodProbe knows which HTTP methods the gateway routes for a path, so a
// wrong method is answered 405 with an Allow header (grpc-gateway answers
// 501 and does not say which methods exist). It holds the same generated
// routes on a mux whose handlers never run: each answers 204 instead.
type methodProbe struct {
	mux *runtime.ServeMux
}

// probeMethods are the methods tried for Allow.
var probeMethods = []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete}

func newMethodProbe(ctx context.Context) (*methodProbe, error) {
	matched := func(runtime.HandlerFunc) runtime.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request, _ map[string]string) {
			w.WriteHeader(http.StatusNoContent)
		}
	}
	mux := runtime.NewServeMux(
		runtime.WithMiddlewares(matched),
		runtime.WithDisablePathLengthFallback(),
		runtime.WithDisableHTTPMethodOverride(),
		runtime.WithRoutingErrorHandler(func(_ context.Context, _ *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, _ *http.Request, code int) {
			w.WriteHeader(code)
		}),
	)
	if err := userdv1.RegisterUserServiceHandlerServer(ctx, mux, userdv1.UnimplementedUserServiceServer{}); err != nil {
		return nil, err
	}
	return &methodProbe{mux: mux}, nil
}

// allowed lists the methods routed for r's path.
func (p *methodProbe) allowed(r *http.Request) []string {
	var out []string
	for _, m := range probeMethods {
		probe := (&http.Request{Method: m, URL: r.URL, Header: http.Header{}, Host: r.Host}).WithContext(r.Context())
		rec := &codeRecorder{header: http.Header{}}
		p.mux.ServeHTTP(rec, probe)
		if rec.code == http.StatusNoContent {
			out = append(out, m)
		}
	}
	return out
}

// routingError answers requests no route takes: 404 for an unknown path,
// 405 with Allow for a known path and another method.
func (p *methodProbe) routingError(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, code int) {
	switch code {
	case http.StatusMethodNotAllowed:
		allow := strings.Join(p.allowed(r), ", ")
		w.Header().Set("Allow", allow)
		writeStatus(w, code, m, status.New(codes.Unimplemented, "method "+r.Method+" not allowed; use "+allow))
	case http.StatusNotFound:
		writeStatus(w, code, m, status.New(codes.NotFound, "no such route"))
	default:
		runtime.DefaultRoutingErrorHandler(ctx, mux, m, w, r, code)
	}
}

// codeRecorder keeps only the status a probe handler writes.
type codeRecorder struct {
	header http.Header
	code   int
}

func (c *codeRecorder) Header() http.Header         { return c.header }
func (c *codeRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (c *codeRecorder) WriteHeader(code int)        { c.code = code }
