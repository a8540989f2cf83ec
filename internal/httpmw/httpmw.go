// Package httpmw is the middleware every userd HTTP listener shares:
// request ids, panic recovery, optional access logs, metrics and tracing.
package httpmw

import (
	"log/slog"
	"net/http"
	"runtime/debug"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"

	"github.com/userd/userd/internal/requestid"
	"github.com/userd/userd/internal/telemetry"
)

// MaxBodyBytes bounds the body of a request to any of userd's HTTP
// listeners: REST requests and Clerk's deliveries are a few KiB.
const MaxBodyBytes = 1 << 20

// Options configures Wrap.
type Options struct {
	// Listener names the listener in metrics and spans ("api", "webhook").
	Listener string
	Log      *slog.Logger
	Metrics  *telemetry.Metrics
	// AccessLog logs one line per request unless Skip says the handler
	// logs the request itself (the REST gateway's calls are logged by the
	// gRPC layer, with the principal).
	AccessLog bool
	Skip      func(*http.Request) bool
}

// Wrap returns h with the shared middleware, outermost first: tracing
// (when an OTLP endpoint is configured), metrics, request id, access log,
// recovery.
func Wrap(h http.Handler, o Options) http.Handler {
	h = recoverPanics(h, o.Log)
	if o.AccessLog {
		h = accessLog(h, o)
	}
	h = requestID(h)
	if o.Metrics != nil {
		h = o.Metrics.InstrumentHTTP(o.Listener, h)
	}
	if !telemetry.TracingEnabled() {
		return h
	}
	return otelhttp.NewHandler(h, o.Listener)
}

// requestID keeps a sane caller-supplied X-Request-Id or makes one, and
// sets it on the request (so the gateway forwards it to gRPC) and the
// response.
func requestID(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get(requestid.Key)
		if !requestid.Valid(id) {
			id = requestid.New()
			r.Header.Set(requestid.Key, id)
		}
		w.Header().Set(requestid.Key, id)
		h.ServeHTTP(w, r)
	})
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func accessLog(h http.Handler, o Options) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if o.Skip != nil && o.Skip(r) {
			h.ServeHTTP(w, r)
			return
		}
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		h.ServeHTTP(sw, r)
		o.Log.InfoContext(r.Context(), "http request",
			"listener", o.Listener, "method", r.Method, "path", r.URL.Path, "status", sw.status,
			"duration_ms", float64(time.Since(start).Microseconds())/1000,
			"request_id", r.Header.Get(requestid.Key))
	})
}

// recoverPanics answers 500 and logs the panic with its stack instead of
// dropping the connection.
func recoverPanics(h http.Handler, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			p := recover()
			if p == nil || p == http.ErrAbortHandler {
				if p != nil {
					panic(p)
				}
				return
			}
			log.ErrorContext(r.Context(), "panic in HTTP handler", "path", r.URL.Path,
				"request_id", r.Header.Get(requestid.Key), "panic", p, "stack", string(debug.Stack()))
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = w.Write([]byte(`{"code":13,"message":"internal error (request id ` + r.Header.Get(requestid.Key) + `)"}`))
		}()
		h.ServeHTTP(w, r)
	})
}
