// Package clerkhook is the Clerk webhook endpoint: it verifies Svix
// signatures over the raw body, parses Clerk's user events (and the user
// that session events embed), organization and organization membership
// events, and hands them to the domain service — the
// same one gRPC uses; it holds no SQL and no business rules of its own.
//
// Delivery is at least once and in any order; the domain makes the effect
// exactly once (message ids are recorded with the change) and order-safe
// (Clerk's updated_at versions each state; deletions are final). This
// handler's part is to answer 2xx only after the change committed, 5xx when
// the database failed (Svix retries), and 4xx for what can never be applied.
package clerkhook

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	svix "github.com/svix/svix-webhooks/go"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/httpmw"
	"github.com/userd/userd/internal/users"
	"github.com/userd/userd/internal/webhookhttp"
)

// Path is where Clerk posts.
const Path = "/webhooks/clerk"

// DefaultTolerance is how far a delivery's svix-timestamp may be from now,
// the window Svix's own libraries use against replays.
const DefaultTolerance = 5 * time.Minute

// Domain is what the handler needs from the users service.
type Domain interface {
	ApplyClerkUser(ctx context.Context, ev users.ClerkEvent) (users.EventOutcome, error)
	DeleteClerkUser(ctx context.Context, messageID, eventType, clerkUserID string) (users.EventOutcome, error)
	ApplyClerkOrganization(ctx context.Context, ev users.ClerkOrgEvent) (users.EventOutcome, error)
	DeleteClerkOrganization(ctx context.Context, messageID, eventType, clerkOrgID string) (users.EventOutcome, error)
	ApplyClerkMembership(ctx context.Context, ev users.ClerkMembershipEvent) (users.EventOutcome, error)
}

// Config configures the handler.
type Config struct {
	// Secrets are the endpoint's signing secrets ("whsec_..."); a delivery
	// signed with any of them is accepted, so a secret can be rotated. None:
	// every delivery is rejected.
	Secrets []string
	// Tolerance is the accepted clock distance of svix-timestamp.
	Tolerance time.Duration
	// Timeout bounds the database work of one delivery; past it the answer
	// is 503 and Svix retries.
	Timeout time.Duration
	// Recorder counts deliveries by type and outcome, and rejections by
	// reason; nil counts nothing.
	Recorder Recorder
}

// Recorder counts deliveries (telemetry.Metrics implements it).
type Recorder interface {
	// WebhookEvent counts a verified delivery by event type and outcome.
	WebhookEvent(eventType, outcome string)
	// WebhookRejected counts a delivery refused by verification (or for
	// want of a secret), by reason.
	WebhookRejected(reason string)
}

type noRecorder struct{}

func (noRecorder) WebhookEvent(string, string) {}
func (noRecorder) WebhookRejected(string)      {}

// Handler serves POST /webhooks/clerk.
type Handler struct {
	verifiers  []*svix.Webhook
	cfg        Config
	domain     Domain
	log        *slog.Logger
	rejections *webhookhttp.RejectionLog
	now        func() time.Time
}

// ParseSecrets splits a comma-separated CLERK_WEBHOOK_SECRET value and checks
// each secret's form without ever printing it.
func ParseSecrets(value string) ([]string, error) {
	var out []string
	for i, s := range strings.Split(value, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if _, err := newVerifier(s); err != nil {
			return nil, fmt.Errorf("CLERK_WEBHOOK_SECRET: secret #%d: %w", i+1, err)
		}
		out = append(out, s)
	}
	return out, nil
}

func newVerifier(secret string) (*svix.Webhook, error) {
	switch {
	case strings.HasPrefix(secret, "v1,"):
		return nil, errors.New(`looks like a signature ("v1,..."), not a signing secret: copy the "whsec_..." value from the Clerk dashboard`)
	case !strings.HasPrefix(secret, "whsec_"):
		return nil, errors.New(`must start with "whsec_" (copy it from the Clerk dashboard, Webhooks, your endpoint, Signing Secret)`)
	}
	wh, err := svix.NewWebhook(secret)
	if err != nil {
		return nil, errors.New(`is not "whsec_" followed by base64`)
	}
	return wh, nil
}

// New returns the handler. Secrets must have passed ParseSecrets.
func New(cfg Config, domain Domain, log *slog.Logger) (*Handler, error) {
	if cfg.Tolerance <= 0 {
		cfg.Tolerance = DefaultTolerance
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Recorder == nil {
		cfg.Recorder = noRecorder{}
	}
	h := &Handler{cfg: cfg, domain: domain, log: log, now: time.Now, rejections: newRejectionLog(log, rejectionSummaryEvery)}
	for _, s := range cfg.Secrets {
		wh, err := newVerifier(s)
		if err != nil {
			return nil, err
		}
		h.verifiers = append(h.verifiers, wh)
	}
	if len(h.verifiers) == 0 {
		log.Warn("CLERK_WEBHOOK_SECRET is not set: " + Path + " rejects every delivery with 503 " +
			"(Svix keeps retrying them); set it to the endpoint's whsec_ signing secret from the Clerk dashboard")
	}
	return h, nil
}

// Close logs the summary of rejections not logged yet, instead of leaving
// it to a timer. Call it once the listener has stopped.
func (h *Handler) Close() { h.rejections.Summarize() }

// Routes returns the webhook listener's mux: POST /webhooks/clerk and
// nothing else (other methods 405, other paths 404).
func (h *Handler) Routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST "+Path, h)
	return mux
}

// rejection is a delivery refused before any database work.
type rejection = webhookhttp.Rejection

var (
	rejectNoSecret     = rejection{Status: http.StatusServiceUnavailable, Reason: "secret_not_configured"}
	rejectTooLarge     = rejection{Status: http.StatusRequestEntityTooLarge, Reason: "body_too_large"}
	rejectNoHeaders    = rejection{Status: http.StatusBadRequest, Reason: "missing_headers"}
	rejectBadTimestamp = rejection{Status: http.StatusBadRequest, Reason: "malformed_timestamp"}
	rejectBadSignature = rejection{Status: http.StatusUnauthorized, Reason: "bad_signature"}
	rejectOutOfWindow  = rejection{Status: http.StatusBadRequest, Reason: "timestamp_out_of_tolerance"}
	rejectUnreadable   = rejection{Status: http.StatusBadRequest, Reason: "unreadable_body"}
)

// ServeHTTP verifies, parses and applies one delivery.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := h.now()
	msgID, ts, sig := deliveryHeaders(r.Header)
	body, rej, ok := h.verify(w, r, msgID, ts, sig)
	if !ok {
		h.cfg.Recorder.WebhookRejected(rej.Reason)
		h.rejections.Write(rej, msgID, r.RemoteAddr)
		writeField(w, rej.Status, "error", rej.Reason)
		return
	}
	ev, err := parseEvent(body)
	if err != nil {
		h.log.Warn("webhook rejected", "reason", "bad_payload", "status", http.StatusBadRequest, "svix_id", msgID, "err", err)
		h.cfg.Recorder.WebhookEvent("unparsed", "bad_payload")
		writeField(w, http.StatusBadRequest, "error", "bad_payload")
		return
	}

	ctx, cancel := context.WithTimeout(r.Context(), h.cfg.Timeout)
	defer cancel()
	var outcome users.EventOutcome
	switch {
	case ev.User != nil:
		outcome, err = h.domain.ApplyClerkUser(ctx, users.ClerkEvent{MessageID: msgID, Type: ev.Type, User: *ev.User})
	case ev.Type == typeUserDeleted:
		outcome, err = h.domain.DeleteClerkUser(ctx, msgID, ev.Type, ev.DeletedID)
	case ev.Org != nil:
		outcome, err = h.domain.ApplyClerkOrganization(ctx, users.ClerkOrgEvent{MessageID: msgID, Type: ev.Type, Org: *ev.Org})
	case ev.Type == typeOrgDeleted:
		outcome, err = h.domain.DeleteClerkOrganization(ctx, msgID, ev.Type, ev.DeletedID)
	case ev.Membership != nil:
		outcome, err = h.domain.ApplyClerkMembership(ctx, users.ClerkMembershipEvent{
			MessageID: msgID, Type: ev.Type, Deleted: ev.Type == typeMembershipDeleted, Membership: *ev.Membership,
		})
	default:
		h.log.Info("webhook ignored", "svix_id", msgID, "type", ev.Type)
		h.cfg.Recorder.WebhookEvent(ev.Type, "ignored")
		writeField(w, http.StatusOK, "status", "ignored")
		return
	}
	if err != nil {
		h.fail(w, msgID, ev.Type, err)
		return
	}
	h.log.Info("webhook applied", "svix_id", msgID, "type", ev.Type, "outcome", string(outcome),
		"duration_ms", float64(h.now().Sub(start).Microseconds())/1000)
	h.cfg.Recorder.WebhookEvent(ev.Type, string(outcome))
	writeField(w, http.StatusOK, "status", string(outcome))
}

// verify checks headers and timestamp, then reads the body and checks its
// signature: what can be refused without reading a body (up to 1 MiB) and
// hashing it is refused first, as the Svix library does. id, ts and sig
// are the delivery's headers (deliveryHeaders).
func (h *Handler) verify(w http.ResponseWriter, r *http.Request, id, ts, sig string) ([]byte, rejection, bool) {
	if len(h.verifiers) == 0 {
		return nil, rejectNoSecret, false
	}
	if r.ContentLength > httpmw.MaxBodyBytes {
		return nil, rejectTooLarge, false
	}
	if id == "" || ts == "" || sig == "" {
		return nil, rejectNoHeaders, false
	}
	sent, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return nil, rejectBadTimestamp, false
	}
	if d := h.now().Sub(time.Unix(sent, 0)); d > h.cfg.Tolerance || d < -h.cfg.Tolerance {
		return nil, rejectOutOfWindow, false
	}
	body, err := readBody(w, r)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, rejectTooLarge, false
		}
		return nil, rejectUnreadable, false
	}
	// The signature covers the raw bytes: verify before decoding anything.
	signed := false
	for _, v := range h.verifiers {
		if v.VerifyIgnoringTimestamp(body, r.Header) == nil {
			signed = true
			break
		}
	}
	if !signed {
		return nil, rejectBadSignature, false
	}
	return body, rejection{}, true
}

// The rejection log and its bounds are webhookhttp's, shared with the
// Stripe endpoint.
const (
	rejectionLogBurst     = webhookhttp.LogBurst
	rejectionSummaryEvery = webhookhttp.SummaryEvery
)

func newRejectionLog(log *slog.Logger, summaryEvery time.Duration) *webhookhttp.RejectionLog {
	return webhookhttp.NewRejectionLog(log, summaryEvery, "svix_id")
}

func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	return webhookhttp.ReadBody(w, r)
}

// fail answers a delivery the domain could not apply: 400 for events that
// can never be applied, 503 for database trouble and 500 otherwise — both
// of which Svix retries.
func (h *Handler) fail(w http.ResponseWriter, msgID, typ string, err error) {
	switch apperr.KindOf(err) {
	case apperr.KindInvalidArgument:
		h.log.Warn("webhook rejected", "reason", "invalid_event", "status", http.StatusBadRequest, "svix_id", msgID, "type", typ, "err", err)
		h.cfg.Recorder.WebhookEvent(typ, "invalid_event")
		writeField(w, http.StatusBadRequest, "error", "invalid_event")
	case apperr.KindUnavailable, apperr.KindCanceled:
		h.log.Warn("webhook failed; Svix will retry", "status", http.StatusServiceUnavailable, "svix_id", msgID, "type", typ, "err", err)
		h.cfg.Recorder.WebhookEvent(typ, "unavailable")
		writeField(w, http.StatusServiceUnavailable, "error", "unavailable")
	default:
		h.log.Error("webhook failed; Svix will retry", "status", http.StatusInternalServerError, "svix_id", msgID, "type", typ, "err", err)
		h.cfg.Recorder.WebhookEvent(typ, "internal")
		writeField(w, http.StatusInternalServerError, "error", "internal")
	}
}

// deliveryHeaders returns the id, timestamp and signature of a delivery
// from one family of headers, exactly as the Svix library picks them: the
// svix-* set when all three are present, else the webhook-* set. Mixing
// families would let a replayed signature pass with a fresh svix-timestamp
// and a new svix-id.
func deliveryHeaders(h http.Header) (id, ts, sig string) {
	id, ts, sig = h.Get("svix-id"), h.Get("svix-timestamp"), h.Get("svix-signature")
	if id != "" && ts != "" && sig != "" {
		return id, ts, sig
	}
	return h.Get("webhook-id"), h.Get("webhook-timestamp"), h.Get("webhook-signature")
}

func writeField(w http.ResponseWriter, status int, key, value string) {
	webhookhttp.WriteField(w, status, key, value)
}
