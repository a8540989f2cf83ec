package userdclient

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	userdv1 "github.com/userd/userd/gen/userd/v1"
)

// WatchHandler receives what Watch delivers.
type WatchHandler struct {
	// Event handles one event. Return nil once it is processed: its
	// cursor is then the one Watch resumes from (and hands to Cursor).
	// An error ends Watch with it.
	Event func(ctx context.Context, ev *userdv1.UserEvent) error
	// Cursor, if set, is called with the cursor to resume from after each
	// processed event and each heartbeat. Save it (durably) to resume
	// after a restart of your service: pass it back as the request's
	// cursor. An error ends Watch with it.
	Cursor func(cursor string) error
}

// Watch follows userd's change feed (WatchUserEvents): every event req
// selects, in feed order, to h.Event. After a disconnect or a userd
// restart (UNAVAILABLE, or the stream ending) it watches again from the
// last processed event's cursor (or heartbeat's), on any replica the
// target reaches, backing off from 100ms to 5s; within one Watch no event
// is delivered twice. It returns when ctx ends (ctx.Err()), when a handler
// fails (its error), or on an error retrying cannot fix: a bad request,
// missing rights, or an expired cursor (IsCursorExpired: resynchronise
// with GetUser and ListCreditTransactions, then watch from now).
//
// Events are delivered at least once across Watch calls: a service that
// saves its cursor after acting on an event may see that event again
// after a crash in between. Make handlers idempotent, or skip event ids
// already handled.
func (c *Client) Watch(ctx context.Context, req *userdv1.WatchUserEventsRequest, h WatchHandler) error {
	if h.Event == nil {
		return errors.New("userdclient: Watch needs an Event handler")
	}
	req = &userdv1.WatchUserEventsRequest{
		Cursor: req.GetCursor(), Start: req.GetStart(), ClerkUserId: req.GetClerkUserId(), Kinds: req.GetKinds(),
	}
	backoff := watchMinBackoff
	for {
		progressed, err := c.watchOnce(ctx, req, h)
		var handlerFailed errHandler
		switch {
		case errors.As(err, &handlerFailed):
			return handlerFailed.err
		case ctx.Err() != nil:
			return ctx.Err()
		case err == nil, status.Code(err) == codes.Unavailable:
		default:
			return err
		}
		if progressed {
			backoff = watchMinBackoff
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, watchMaxBackoff)
	}
}

// Backoff between reconnections of Watch.
const (
	watchMinBackoff = 100 * time.Millisecond
	watchMaxBackoff = 5 * time.Second
)

// errHandler marks an error of a handler that looks retryable, so that it
// ends Watch as it is.
type errHandler struct{ err error }

func (e errHandler) Error() string { return e.err.Error() }

// watchOnce runs one stream until it fails, moving req's cursor past every
// processed event and heartbeat; progressed says whether any arrived.
func (c *Client) watchOnce(ctx context.Context, req *userdv1.WatchUserEventsRequest, h WatchHandler) (progressed bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.WatchUserEvents(ctx, req)
	if err != nil {
		return false, err
	}
	for {
		item, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return progressed, nil // the server ended it: watch again
		}
		if err != nil {
			return progressed, err
		}
		progressed = true
		cursor := item.GetHeartbeat().GetCursor()
		if ev := item.GetEvent(); ev != nil {
			if err := h.Event(ctx, ev); err != nil {
				return progressed, handlerErr(err)
			}
			cursor = ev.GetCursor()
		}
		if cursor == "" {
			continue
		}
		// Resume from here, and never from the start again.
		req.Cursor, req.Start = cursor, userdv1.WatchStart_WATCH_START_UNSPECIFIED
		if h.Cursor != nil {
			if err := h.Cursor(cursor); err != nil {
				return progressed, handlerErr(err)
			}
		}
	}
}

// handlerErr keeps a handler's error from being taken for a retryable
// status: it ends Watch unchanged.
func handlerErr(err error) error {
	if status.Code(err) == codes.Unavailable {
		return errHandler{err}
	}
	return err
}

// IsCursorExpired reports whether a watch's cursor is older than the
// events userd keeps (USERD_FEED_RETENTION): events after it are gone.
// Resynchronise (GetUser, ListCreditTransactions) and watch from now;
// OldestCursor says where the retained feed starts.
func IsCursorExpired(err error) bool { return Reason(err) == ReasonCursorExpired }

// OldestCursor returns, for an expired cursor's error, the cursor where the
// retained feed starts ("" otherwise).
func OldestCursor(err error) string {
	if !IsCursorExpired(err) {
		return ""
	}
	return errorInfo(err).GetMetadata()["oldest_cursor"]
}
