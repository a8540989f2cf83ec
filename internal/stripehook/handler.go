// Package stripehook is the Stripe webhook endpoint, POST /webhooks/stripe
// on the webhook listener: it verifies the Stripe-Signature header over the
// raw body with stripe-go's webhook package (several secrets at once, for
// rotation), refuses events of another API version than the one userd is
// pinned to, translates the event into billing.Event and hands it to the
// billing domain, which applies it exactly once. It shares the Clerk
// endpoint's body limit, rejection log and answers (internal/webhookhttp);
// the listener's header limit and timeouts are the same server's.
//
// Answers: 2xx only after the event's effects committed (or it was applied
// before, or is of a type userd does not handle); 4xx for what Stripe must
// not be told is fine (a bad signature, another API version, an event that
// cannot be applied now — Stripe retries those for three days, and shows
// them failed in its dashboard); 5xx when the database or Stripe's API
// failed.
package stripehook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/stripe/stripe-go/v82"
	"github.com/stripe/stripe-go/v82/webhook"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/billing"
	"github.com/userd/userd/internal/httpmw"
	"github.com/userd/userd/internal/stripeapi"
	"github.com/userd/userd/internal/webhookhttp"
)

// Path is where Stripe posts.
const Path = "/webhooks/stripe"

// APIVersion is the Stripe API version userd is pinned to (stripe-go's):
// the Stripe webhook endpoint must be created with it. Events of another
// release train ("basil" here) are refused with 400 api_version_mismatch.
const APIVersion = stripe.APIVersion

// DefaultTolerance is how far a delivery's signed timestamp may be from
// now (stripe-go's default, webhook.DefaultTolerance).
const DefaultTolerance = webhook.DefaultTolerance

// Domain is what the handler needs of billing.
type Domain interface {
	ApplyEvent(ctx context.Context, ev billing.Event) (string, error)
}

// Recorder counts deliveries (telemetry.Metrics implements it).
type Recorder interface {
	StripeWebhookEvent(eventType, outcome string)
	StripeWebhookRejected(reason string)
}

type noRecorder struct{}

func (noRecorder) StripeWebhookEvent(string, string) {}
func (noRecorder) StripeWebhookRejected(string)      {}

// Config configures the handler.
type Config struct {
	// Secrets are the endpoint's signing secrets ("whsec_..."); a delivery
	// signed with any of them is accepted. None: every delivery is
	// refused (503).
	Secrets []string
	// Tolerance is the accepted distance of the signed timestamp from now.
	Tolerance time.Duration
	// Timeout bounds one delivery's work.
	Timeout  time.Duration
	Recorder Recorder
	// Clock is the handler's clock (tests); time.Now when nil.
	Clock func() time.Time
}

// Handler serves POST /webhooks/stripe.
type Handler struct {
	cfg        Config
	domain     Domain
	log        *slog.Logger
	rejections *webhookhttp.RejectionLog
	// versions holds the mismatched API versions already logged.
	versions sync.Map
}

// ParseSecrets splits a comma-separated USERD_STRIPE_WEBHOOK_SECRETS value
// and checks each secret's form without ever printing it.
func ParseSecrets(value string) ([]string, error) {
	var out []string
	for i, s := range strings.Split(value, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !strings.HasPrefix(s, "whsec_") || len(s) < len("whsec_")+8 {
			return nil, fmt.Errorf(`USERD_STRIPE_WEBHOOK_SECRETS: secret #%d must be an endpoint's signing secret, "whsec_..." (Stripe dashboard, Developers, Webhooks, your endpoint, Signing secret)`, i+1)
		}
		out = append(out, s)
	}
	return out, nil
}

// New returns the handler. Secrets must have passed ParseSecrets.
func New(cfg Config, domain Domain, log *slog.Logger) *Handler {
	if cfg.Tolerance <= 0 {
		cfg.Tolerance = DefaultTolerance
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Recorder == nil {
		cfg.Recorder = noRecorder{}
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if len(cfg.Secrets) == 0 {
		log.Warn("USERD_STRIPE_WEBHOOK_SECRETS is not set: " + Path + " refuses every delivery with 503 " +
			"(Stripe retries them for three days); set it to the endpoint's whsec_ signing secret")
	}
	return &Handler{cfg: cfg, domain: domain, log: log,
		rejections: webhookhttp.NewRejectionLog(log, webhookhttp.SummaryEvery, "stripe_signature_t")}
}

// Close logs the summary of rejections not logged yet.
func (h *Handler) Close() { h.rejections.Summarize() }

var (
	rejectNoSecret     = webhookhttp.Rejection{Status: http.StatusServiceUnavailable, Reason: "secret_not_configured"}
	rejectTooLarge     = webhookhttp.Rejection{Status: http.StatusRequestEntityTooLarge, Reason: "body_too_large"}
	rejectNoHeader     = webhookhttp.Rejection{Status: http.StatusBadRequest, Reason: "missing_headers"}
	rejectBadTimestamp = webhookhttp.Rejection{Status: http.StatusBadRequest, Reason: "malformed_timestamp"}
	rejectBadSignature = webhookhttp.Rejection{Status: http.StatusUnauthorized, Reason: "bad_signature"}
	rejectOutOfWindow  = webhookhttp.Rejection{Status: http.StatusBadRequest, Reason: "timestamp_out_of_tolerance"}
	rejectUnreadable   = webhookhttp.Rejection{Status: http.StatusBadRequest, Reason: "unreadable_body"}
)

// signedAt returns the t= of a Stripe-Signature header.
func signedAt(header string) (time.Time, bool) {
	for _, part := range strings.Split(header, ",") {
		if v, ok := strings.CutPrefix(part, "t="); ok {
			sec, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return time.Time{}, false
			}
			return time.Unix(sec, 0), true
		}
	}
	return time.Time{}, false
}

// verify checks the header and timestamp, then reads the body and checks
// its signature with stripe-go against every secret: what can be refused
// without reading and hashing a body is refused first.
func (h *Handler) verify(w http.ResponseWriter, r *http.Request) ([]byte, webhookhttp.Rejection, bool) {
	if len(h.cfg.Secrets) == 0 {
		return nil, rejectNoSecret, false
	}
	if r.ContentLength > httpmw.MaxBodyBytes {
		return nil, rejectTooLarge, false
	}
	sig := r.Header.Get("Stripe-Signature")
	if sig == "" {
		return nil, rejectNoHeader, false
	}
	t, ok := signedAt(sig)
	if !ok {
		return nil, rejectBadTimestamp, false
	}
	// Both ways: stripe-go checks only the past.
	if d := h.cfg.Clock().Sub(t); d > h.cfg.Tolerance || d < -h.cfg.Tolerance {
		return nil, rejectOutOfWindow, false
	}
	body, err := webhookhttp.ReadBody(w, r)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, rejectTooLarge, false
		}
		return nil, rejectUnreadable, false
	}
	for _, secret := range h.cfg.Secrets {
		// The window was checked above, on the handler's clock.
		if webhook.ValidatePayloadIgnoringTolerance(body, sig, secret) == nil {
			return body, webhookhttp.Rejection{}, true
		}
	}
	return nil, rejectBadSignature, false
}

// ServeHTTP verifies, translates and applies one delivery.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := h.cfg.Clock()
	body, rej, ok := h.verify(w, r)
	if !ok {
		h.cfg.Recorder.StripeWebhookRejected(rej.Reason)
		t, _ := signedAt(r.Header.Get("Stripe-Signature"))
		h.rejections.Write(rej, strconv.FormatInt(t.Unix(), 10), r.RemoteAddr)
		webhookhttp.WriteJSON(w, rej.Status, map[string]string{"error": rej.Reason})
		return
	}
	var e stripe.Event
	if err := json.Unmarshal(body, &e); err != nil || e.ID == "" || e.Data == nil {
		h.log.Warn("stripe webhook rejected", "reason", "bad_payload", "status", http.StatusBadRequest, "err", errString(err))
		h.cfg.Recorder.StripeWebhookEvent("unparsed", "bad_payload")
		webhookhttp.WriteJSON(w, http.StatusBadRequest, map[string]string{"error": "bad_payload"})
		return
	}
	if !CompatibleVersion(e.APIVersion) {
		h.versionMismatch(e.APIVersion)
		h.cfg.Recorder.StripeWebhookRejected("api_version_mismatch")
		webhookhttp.WriteJSON(w, http.StatusBadRequest, map[string]string{
			"error": "api_version_mismatch", "expected": APIVersion, "received": e.APIVersion,
		})
		return
	}
	typ := string(e.Type)
	ev, err := Translate(e)
	if err != nil {
		h.log.Warn("stripe webhook rejected", "reason", "bad_payload", "status", http.StatusBadRequest, "stripe_event", e.ID, "type", typ, "err", err)
		h.cfg.Recorder.StripeWebhookEvent(typ, "bad_payload")
		webhookhttp.WriteJSON(w, http.StatusBadRequest, map[string]string{"error": "bad_payload"})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.cfg.Timeout)
	defer cancel()
	outcome, err := h.domain.ApplyEvent(ctx, ev)
	if err != nil {
		h.fail(w, e.ID, typ, err)
		return
	}
	level := slog.LevelInfo
	if outcome == billing.OutcomeIgnored {
		level = slog.LevelDebug
	}
	h.log.Log(ctx, level, "stripe webhook applied", "stripe_event", e.ID, "type", typ, "outcome", outcome,
		"duration_ms", float64(h.cfg.Clock().Sub(start).Microseconds())/1000)
	h.cfg.Recorder.StripeWebhookEvent(typ, outcome)
	webhookhttp.WriteJSON(w, http.StatusOK, map[string]string{"status": outcome})
}

// CompatibleVersion says whether an event's API version is of the release
// train userd is pinned to (stripeapi.CompatibleVersion).
func CompatibleVersion(v string) bool { return stripeapi.CompatibleVersion(v) }

// versionMismatch logs a mismatched API version once per version (the
// metric counts every delivery).
func (h *Handler) versionMismatch(v string) {
	if len(v) > 40 {
		v = v[:40]
	}
	if _, logged := h.versions.LoadOrStore(v, true); logged {
		return
	}
	h.log.Error("stripe webhook refused: the endpoint sends events of another API version; "+
		"create the endpoint in Stripe with userd's version (Stripe answers 400 are retried for three days)",
		"received", strconv.Quote(v), "expected", APIVersion, "status", http.StatusBadRequest)
}

// fail answers an event billing could not apply.
func (h *Handler) fail(w http.ResponseWriter, id, typ string, err error) {
	switch kind := apperr.KindOf(err); kind {
	case apperr.KindInvalidArgument, apperr.KindFailedPrecondition, apperr.KindNotFound, apperr.KindConflict:
		// Stripe retries these too: a price mapped, or a customer linked,
		// meanwhile makes the retry succeed.
		h.log.Warn("stripe webhook not applied", "reason", "cannot_apply", "status", http.StatusUnprocessableEntity,
			"stripe_event", id, "type", typ, "err", err)
		h.cfg.Recorder.StripeWebhookEvent(typ, "cannot_apply")
		msg := "cannot_apply"
		if e, ok := apperr.As(err); ok && e.Message != "" {
			msg = e.Message
		}
		webhookhttp.WriteJSON(w, http.StatusUnprocessableEntity, map[string]string{"error": "cannot_apply", "message": msg})
	case apperr.KindUnavailable, apperr.KindCanceled:
		h.log.Warn("stripe webhook failed; Stripe will retry", "status", http.StatusServiceUnavailable, "stripe_event", id, "type", typ, "err", err)
		h.cfg.Recorder.StripeWebhookEvent(typ, "unavailable")
		webhookhttp.WriteJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "unavailable"})
	default:
		h.log.Error("stripe webhook failed; Stripe will retry", "status", http.StatusInternalServerError, "stripe_event", id, "type", typ, "err", err)
		h.cfg.Recorder.StripeWebhookEvent(typ, "internal")
		webhookhttp.WriteJSON(w, http.StatusInternalServerError, map[string]string{"error": "internal"})
	}
}

func errString(err error) string {
	if err == nil {
		return "missing id or data"
	}
	return err.Error()
}
