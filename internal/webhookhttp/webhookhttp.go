// Package webhookhttp holds what userd's webhook endpoints (Clerk's,
// internal/clerkhook, and Stripe's, internal/stripehook) share: the bounded
// raw-body read, JSON answers, and the rate-limited log of refused
// deliveries, so both answer floods alike.
package webhookhttp

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/userd/userd/internal/httpmw"
)

// Rejection is a delivery refused before any database work.
type Rejection struct {
	Status int
	Reason string
}

// Rejection logging: anyone can send deliveries, so a flood of forged ones
// must not become a flood of log lines. The first LogBurst are logged, then
// one every LogEvery; the others are counted and summed up in one line at
// most every SummaryEvery. Metrics count every one. Under a sustained flood
// that is 11 lines a minute.
const (
	LogBurst     = 10
	LogEvery     = 6 * time.Second
	SummaryEvery = time.Minute
)

// RejectionLog logs refused deliveries at a bounded rate.
type RejectionLog struct {
	log     *slog.Logger
	limiter *rate.Limiter
	every   time.Duration
	// idKey names the delivery id in log lines ("svix_id", "stripe_event").
	idKey string

	mu sync.Mutex
	// unlogged counts rejections by reason since the last summary; nil
	// when none is due, else summary is the timer that will log it.
	unlogged map[string]int
	summary  *time.Timer
}

// NewRejectionLog returns a log that sums up what it did not log every
// summaryEvery.
func NewRejectionLog(log *slog.Logger, summaryEvery time.Duration, idKey string) *RejectionLog {
	return &RejectionLog{log: log, limiter: rate.NewLimiter(rate.Every(LogEvery), LogBurst), every: summaryEvery, idKey: idKey}
}

// SetLimit changes the rate of logged lines past the burst (tests).
func (l *RejectionLog) SetLimit(r rate.Limit) { l.limiter.SetLimit(r) }

// Write logs one rejection, or counts it for the next summary. id is an
// unverified header value: it is cut to a loggable size.
func (l *RejectionLog) Write(rej Rejection, id, remote string) {
	if l.limiter.Allow() {
		// Never the body or the signature.
		l.log.Warn("webhook rejected", "reason", rej.Reason, "status", rej.Status, l.idKey, LogSafe(id), "remote", remote)
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.unlogged == nil {
		l.unlogged = map[string]int{}
		l.summary = time.AfterFunc(l.every, l.Summarize)
	}
	l.unlogged[rej.Reason]++
}

// Summarize logs how many rejections, by reason, were not logged, if any.
func (l *RejectionLog) Summarize() {
	l.mu.Lock()
	counts := l.unlogged
	l.unlogged = nil
	if l.summary != nil {
		l.summary.Stop()
		l.summary = nil
	}
	l.mu.Unlock()
	if counts == nil {
		return
	}
	total := 0
	reasons := make([]any, 0, len(counts))
	for reason, n := range counts {
		total += n
		reasons = append(reasons, slog.Int(reason, n))
	}
	l.log.Warn("webhook rejections not logged (rate limited); the rejection metric counts them all",
		"count", total, "interval", l.every.String(), slog.Group("by_reason", reasons...))
}

// presizeMax bounds the buffer ReadBody allocates from the unverified
// Content-Length before any byte arrived: a client that announces 1 MiB and
// sends nothing pins this much, not the whole limit. Clerk's and Stripe's
// events are a few KiB.
const presizeMax = 64 << 10

// ReadBody reads a request's raw body, at most httpmw.MaxBodyBytes. The
// buffer is sized from Content-Length (up to presizeMax), so a delivery is
// read into one allocation instead of io.ReadAll's doubling copies.
func ReadBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	body := http.MaxBytesReader(w, r.Body, httpmw.MaxBodyBytes)
	size := int64(bytes.MinRead)
	if n := r.ContentLength; n > 0 {
		// ReadFrom grows the buffer when less than MinRead is free, so
		// this much room reads a body of n bytes and its EOF without
		// growing.
		size = min(n, presizeMax) + bytes.MinRead
	}
	buf := bytes.NewBuffer(make([]byte, 0, size))
	if _, err := buf.ReadFrom(body); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// LogSafe cuts an unverified header value to a loggable size.
func LogSafe(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return strconv.Quote(s)
}

// WriteField answers status with the JSON object {key: value}, the bytes
// WriteJSON writes for map[string]string{key: value} without its
// reflection, map and encoder: the answer of every delivery.
func WriteField(w http.ResponseWriter, status int, key, value string) {
	b := make([]byte, 0, 8+len(key)+len(value))
	b = append(b, '{')
	b = appendJSONString(b, key)
	b = append(b, ':')
	b = appendJSONString(b, value)
	b = append(b, "}\n"...)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// appendJSONString appends s as a JSON string, escaped as encoding/json
// escapes it (HTML characters included).
func appendJSONString(b []byte, s string) []byte {
	q, err := json.Marshal(s)
	if err != nil {
		// A string always encodes; invalid UTF-8 becomes U+FFFD.
		panic(err)
	}
	return append(b, q...)
}

// WriteJSON answers status with v as JSON.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
