package gateway

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/grpc-ecosystem/grpc-gateway/v2/utilities"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	userdv1 "github.com/userd/userd/gen/userd/v1"
)

// streamWriteTimeout bounds one write of a watch stream: a client that
// stops reading for that long is cut off (its cursor lets it resume). It
// replaces the listener's WriteTimeout, which would end every stream.
const streamWriteTimeout = time.Minute

// NDJSONContentType is the media type of a streamed response: one JSON
// object per line.
const NDJSONContentType = "application/x-ndjson"

// watchRoutes serves WatchUserEvents, the API's server stream, as
// newline-delimited JSON in grpc-gateway's stream format: one
// {"result": WatchUserEventsResponse} per line and, if the stream fails
// after it started, a last {"error": Status}. A failure before the first
// line is an ordinary error response with the status of userd's error
// table. grpc-gateway's in-process handlers cannot stream, so this handler
// calls the server's implementation itself, through the same stream
// interceptors as gRPC (grpcapi.Chained).
func watchRoutes(mux *runtime.ServeMux, srv userdv1.UserServiceServer) error {
	routes := []struct {
		pattern string
		// pathFields may not be set from the query.
		pathFields *utilities.DoubleArray
	}{
		{"/v1/events:watch", utilities.NewDoubleArray(nil)},
		{"/v1/users/{clerk_user_id}/events:watch", utilities.NewDoubleArray([][]string{{"clerk_user_id"}})},
	}
	for _, rt := range routes {
		// Registered after the generated handlers, so these win.
		err := mux.HandlePath(http.MethodGet, rt.pattern, func(w http.ResponseWriter, r *http.Request, pathParams map[string]string) {
			serveWatch(mux, srv, rt.pattern, rt.pathFields, w, r, pathParams)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func serveWatch(mux *runtime.ServeMux, srv userdv1.UserServiceServer, pattern string, pathFields *utilities.DoubleArray,
	w http.ResponseWriter, r *http.Request, pathParams map[string]string,
) {
	_, out := runtime.MarshalerForRequest(mux, r)
	ctx, err := runtime.AnnotateIncomingContext(r.Context(), mux, r, userdv1.UserService_WatchUserEvents_FullMethodName,
		runtime.WithHTTPPathPattern(pattern))
	if err != nil {
		runtime.HTTPError(r.Context(), mux, out, w, r, err)
		return
	}
	req := &userdv1.WatchUserEventsRequest{ClerkUserId: pathParams["clerk_user_id"]}
	if err := r.ParseForm(); err != nil {
		runtime.HTTPError(ctx, mux, out, w, r, status.Error(codes.InvalidArgument, "malformed query"))
		return
	}
	if err := runtime.PopulateQueryParameters(req, r.Form, pathFields); err != nil {
		runtime.HTTPError(ctx, mux, out, w, r, status.Error(codes.InvalidArgument, err.Error()))
		return
	}
	rc := http.NewResponseController(w)
	// The listener's read timeout would cancel the request (net/http's
	// background read fails) and its write timeout end the stream.
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
	stream := &ndjsonStream{ctx: ctx, w: w, rc: rc, marshaler: out}
	err = srv.WatchUserEvents(req, &grpc.GenericServerStream[userdv1.WatchUserEventsRequest, userdv1.WatchUserEventsResponse]{ServerStream: stream})
	switch {
	case err == nil:
	case !stream.started:
		runtime.HTTPError(ctx, mux, out, w, r, err)
	case stream.failed || r.Context().Err() != nil:
		// The client is gone: nobody to tell.
	default:
		_ = stream.write(map[string]proto.Message{"error": status.Convert(err).Proto()})
	}
}

// ndjsonStream is the grpc.ServerStream of a watch over HTTP.
type ndjsonStream struct {
	ctx       context.Context
	w         http.ResponseWriter
	rc        *http.ResponseController
	marshaler runtime.Marshaler
	started   bool
	failed    bool
}

// Response headers come from httpmw (X-Request-Id) and here; the call's
// gRPC header metadata is not forwarded, as for unary calls.
func (s *ndjsonStream) SetHeader(metadata.MD) error  { return nil }
func (s *ndjsonStream) SendHeader(metadata.MD) error { return nil }
func (s *ndjsonStream) SetTrailer(metadata.MD)       {}
func (s *ndjsonStream) Context() context.Context     { return s.ctx }
func (s *ndjsonStream) RecvMsg(any) error            { return errors.New("a watch receives no messages") }

func (s *ndjsonStream) SendMsg(m any) error {
	return s.write(map[string]any{"result": m})
}

func (s *ndjsonStream) write(v any) error {
	if s.failed {
		return status.Error(codes.Canceled, "client gone")
	}
	b, err := s.marshaler.Marshal(v)
	if err != nil {
		return err
	}
	if !s.started {
		s.started = true
		h := s.w.Header()
		h.Set("Content-Type", NDJSONContentType)
		h.Set("Cache-Control", "no-store")
		// nginx buffers responses unless told not to.
		h.Set("X-Accel-Buffering", "no")
		s.w.WriteHeader(http.StatusOK)
	}
	_ = s.rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
	if _, err := s.w.Write(append(b, '\n')); err != nil {
		s.failed = true
		return status.Error(codes.Unavailable, "writing the stream failed")
	}
	if err := s.rc.Flush(); err != nil {
		s.failed = true
		return status.Error(codes.Unavailable, "flushing the stream failed")
	}
	return nil
}
