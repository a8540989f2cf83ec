// Package gateway serves userd.v1.UserService as REST/JSON (grpc-gateway)
// for the frontend. It calls the gRPC server's implementation directly,
// through the same interceptor chain (grpcapi.Chained), so authentication,
// authorization, validation and error mapping are exactly the gRPC ones; it
// only adds the HTTP status of the error table (internal/errstatus, docs/api.md) and serves the
// OpenAPI document.
package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/rs/cors"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/grpclog"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/userd/userd/gen/openapi"
	userdv1 "github.com/userd/userd/gen/userd/v1"
	"github.com/userd/userd/internal/consistency"
	"github.com/userd/userd/internal/errstatus"
	"github.com/userd/userd/internal/grpcapi"
	"github.com/userd/userd/internal/httpmw"
	"github.com/userd/userd/internal/requestid"
)

// Config configures the gateway.
type Config struct {
	// CORSOrigins are the browser origins allowed to call the API.
	CORSOrigins []string
	// AuthorizedParties are the frontend origins (CLERK_AUTHORIZED_PARTIES)
	// whose writes may be authenticated by the __session cookie.
	AuthorizedParties []string
	// Version replaces info.version of the served OpenAPI document (the
	// committed one says "v1"); empty leaves it.
	Version string
}

// New returns the HTTP API handler: /v1/... and GET /openapi.json.
func New(ctx context.Context, srv userdv1.UserServiceServer, cfg Config) (http.Handler, error) {
	methods, err := newMethodProbe(ctx)
	if err != nil {
		return nil, err
	}
	mux := runtime.NewServeMux(
		runtime.WithErrorHandler(writeError),
		runtime.WithRoutingErrorHandler(methods.routingError),
		// One route, one method: a form POST is not a GET in disguise, and
		// X-HTTP-Method-Override does not turn a POST into anything else.
		runtime.WithDisablePathLengthFallback(),
		runtime.WithDisableHTTPMethodOverride(),
		runtime.WithIncomingHeaderMatcher(incomingHeader),
		// Of the gRPC header metadata, only a write's consistency token
		// becomes an HTTP header: the server also sets x-request-id, but
		// httpmw already answers with X-Request-Id (the same id, which the
		// interceptor adopted from the request); forwarding it too sent
		// the header twice.
		runtime.WithOutgoingHeaderMatcher(outgoingHeader),
		runtime.WithMarshalerOption(runtime.MIMEWildcard, &runtime.JSONPb{
			// Zero balances and empty names are shown, not omitted.
			MarshalOptions: protojson.MarshalOptions{EmitDefaultValues: true},
			// A client built against a newer API may send fields this
			// server does not know yet; gRPC ignores them too.
			UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: true},
		}),
	)
	if err := userdv1.RegisterUserServiceHandlerServer(ctx, mux, srv); err != nil {
		return nil, err
	}
	if err := watchRoutes(mux, srv); err != nil {
		return nil, err
	}
	root := http.NewServeMux()
	root.Handle("/v1/", limitBody(sessionCookie(literalPlus(mux), cfg.AuthorizedParties)))
	doc, err := stampVersion(openapi.JSON, cfg.Version)
	if err != nil {
		return nil, err
	}
	root.HandleFunc("GET /openapi.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(doc)
	})
	if len(cfg.CORSOrigins) == 0 {
		return root, nil
	}
	return cors.New(cors.Options{
		AllowedOrigins: cfg.CORSOrigins,
		AllowedMethods: []string{http.MethodGet, http.MethodPost},
		AllowedHeaders: []string{"Authorization", "Content-Type", "Idempotency-Key", "X-Request-Id", consistency.HTTPHeader},
		ExposedHeaders: []string{"X-Request-Id", consistency.HTTPHeader},
		MaxAge:         600,
	}).Handler(root), nil
}

// stampVersion sets info.version of the OpenAPI document to the binary's
// version, which the committed document cannot know.
func stampVersion(doc []byte, version string) ([]byte, error) {
	if version == "" {
		return doc, nil
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(doc, &top); err != nil {
		return nil, fmt.Errorf("embedded OpenAPI document: %w", err)
	}
	var info map[string]any
	if err := json.Unmarshal(top["info"], &info); err != nil {
		return nil, fmt.Errorf("embedded OpenAPI document's info: %w", err)
	}
	info["version"] = version
	raw, err := json.Marshal(info)
	if err != nil {
		return nil, err
	}
	top["info"] = raw
	return json.Marshal(top)
}

// limitBody answers 413 to a body over httpmw.MaxBodyBytes. A body of
// unknown length (chunked) is read here, up to the limit, so that one over
// it is answered 413 too: read by grpc-gateway's decoder, the limit's error
// would come out as a decoding error (400).
func limitBody(h http.Handler) http.Handler {
	tooLarge := func(w http.ResponseWriter) {
		writeStatus(w, http.StatusRequestEntityTooLarge, &runtime.JSONPb{},
			status.New(codes.InvalidArgument, "request body larger than 1 MiB"))
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > httpmw.MaxBodyBytes {
			tooLarge(w)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, httpmw.MaxBodyBytes)
		if r.ContentLength < 0 {
			body, err := io.ReadAll(r.Body)
			var mbe *http.MaxBytesError
			switch {
			case errors.As(err, &mbe):
				tooLarge(w)
				return
			case err != nil:
				writeStatus(w, http.StatusBadRequest, &runtime.JSONPb{},
					status.New(codes.InvalidArgument, "request body could not be read"))
				return
			}
			r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
		}
		h.ServeHTTP(w, r)
	})
}

// incomingHeader forwards, besides Authorization (which grpc-gateway
// always forwards), only the headers the server reads: the idempotency key,
// the request id and the consistency token. grpc-gateway's default matcher would also copy the
// standard headers (user agent, cookies, the Authorization header a second
// time, ...) into every call's metadata for nothing to read them.
func incomingHeader(key string) (string, bool) {
	switch strings.ToLower(key) {
	case grpcapi.IdempotencyKeyHeader:
		return grpcapi.IdempotencyKeyHeader, true
	case requestid.Key:
		return requestid.Key, true
	case consistency.Header:
		return consistency.Header, true
	}
	return "", false
}

// outgoingHeader turns a write's consistency token into the
// Userd-Consistency-Token response header; no other metadata is sent.
func outgoingHeader(key string) (string, bool) {
	if key == consistency.Header {
		return consistency.HTTPHeader, true
	}
	return "", false
}

// literalPlus makes a '+' in the query string a plus sign, as in RFC 3986,
// not a space as in HTML form encoding: "?email=ada+tag@example.com"
// finds ada+tag@example.com. No query parameter of the API can contain a
// space (emails, UUIDs, page sizes and URL-safe page tokens), so no form
// encoder's output is misread; "%2B" and "%20" keep their meaning.
func literalPlus(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.RawQuery, "+") {
			r.URL.RawQuery = strings.ReplaceAll(r.URL.RawQuery, "+", "%2B")
		}
		h.ServeHTTP(w, r)
	})
}

// writeError writes the status as JSON ({"code", "message", "details"})
// with the HTTP status of userd's error table: 402 for insufficient
// credits (and a member's spending cap), 412 for a closed account, 409 for
// conflicts, 503 for an unavailable database.
func writeError(_ context.Context, _ *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, _ *http.Request, err error) {
	st := status.Convert(err)
	code := runtime.HTTPStatusFromCode(st.Code())
	if k, ok := errstatus.KindForStatus(st.Code(), errorReason(st)); ok {
		code = errstatus.HTTPStatus(k)
	}
	writeStatus(w, code, m, st)
}

// errorReason is the reason of the status's ErrorInfo detail, or "".
func errorReason(st *status.Status) string {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.GetReason()
		}
	}
	return ""
}

// retryDelay is the delay of the status's RetryInfo detail, or 0.
func retryDelay(st *status.Status) time.Duration {
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	return 0
}

func writeStatus(w http.ResponseWriter, code int, m runtime.Marshaler, st *status.Status) {
	pb := st.Proto()
	body, merr := m.Marshal(pb)
	if merr != nil {
		grpclog.Errorf("marshal error status: %v", merr)
		body = []byte(`{"code":13,"message":"internal error"}`)
		code = http.StatusInternalServerError
	}
	w.Header().Set("Content-Type", "application/json")
	if code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="userd"`)
	}
	if d := retryDelay(st); d > 0 {
		// Whole seconds (RFC 9110 §10.2.3), rounded up.
		w.Header().Set("Retry-After", strconv.FormatInt(int64((d+time.Second-1)/time.Second), 10))
	}
	w.WriteHeader(code)
	_, _ = w.Write(body)
}
