package clerkhook

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/userd/userd/internal/users"
)

// nopDomain accepts every event without a database, so that the benchmark
// measures verification, parsing and the handler alone.
type nopDomain struct{}

func (nopDomain) ApplyClerkUser(context.Context, users.ClerkEvent) (users.EventOutcome, error) {
	return users.OutcomeCreated, nil
}

func (nopDomain) DeleteClerkUser(context.Context, string, string, string) (users.EventOutcome, error) {
	return users.OutcomeDeleted, nil
}

func (nopDomain) ApplyClerkOrganization(context.Context, users.ClerkOrgEvent) (users.EventOutcome, error) {
	return users.OutcomeCreated, nil
}

func (nopDomain) DeleteClerkOrganization(context.Context, string, string, string) (users.EventOutcome, error) {
	return users.OutcomeDeleted, nil
}

func (nopDomain) ApplyClerkMembership(context.Context, users.ClerkMembershipEvent) (users.EventOutcome, error) {
	return users.OutcomeCreated, nil
}

const benchSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

// BenchmarkWebhookVerifyAndParse: signature check over the raw body,
// timestamp window, JSON parsing of a full Clerk user.created, response.
func BenchmarkWebhookVerifyAndParse(b *testing.B) {
	h, err := New(Config{Secrets: []string{benchSecret}}, nopDomain{}, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	body := SampleEvent("user.created", SampleUser{ID: "user_bench", Email: "b@example.com", FirstName: "B", UpdatedAt: now})
	headers, err := SignHeaders(benchSecret, "msg_bench", now, body)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, Path, bytes.NewReader(body))
		req.Header = headers
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
	}
}

// BenchmarkParseEvent: JSON parsing of a full Clerk user.created alone.
func BenchmarkParseEvent(b *testing.B) {
	body := SampleEvent("user.created", SampleUser{ID: "user_bench", Email: "b@example.com", UpdatedAt: time.Now()})
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parseEvent(body); err != nil {
			b.Fatal(err)
		}
	}
}
