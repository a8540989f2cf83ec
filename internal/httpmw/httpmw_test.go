package httpmw_test

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/userd/userd/internal/httpmw"
)

func TestPanicsBecome500WithRequestID(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	h := httpmw.Wrap(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("boom") }), httpmw.Options{
		Listener: "test", Log: slog.New(slog.NewJSONHandler(&logs, nil)), AccessLog: true,
	})
	srv := httptest.NewServer(h)
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/x", nil)
	req.Header.Set("X-Request-Id", "req-42")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusInternalServerError || resp.Header.Get("X-Request-Id") != "req-42" {
		t.Errorf("got %d, X-Request-Id %q", resp.StatusCode, resp.Header.Get("X-Request-Id"))
	}
	if !strings.Contains(logs.String(), "boom") || !strings.Contains(logs.String(), `"status":500`) {
		t.Errorf("logs lack the panic or the access line:\n%s", logs.String())
	}
}

func TestUnsafeRequestIDsAreReplaced(t *testing.T) {
	t.Parallel()
	var seen string
	h := httpmw.Wrap(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { seen = r.Header.Get("X-Request-Id") }),
		httpmw.Options{Listener: "test", Log: slog.New(slog.DiscardHandler)})
	req := httptest.NewRequest("GET", "/", nil)
	req.Header.Set("X-Request-Id", "evil\nline")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if seen == "" || strings.ContainsAny(seen, "\n ") || rec.Header().Get("X-Request-Id") != seen {
		t.Errorf("request id %q (response %q)", seen, rec.Header().Get("X-Request-Id"))
	}
}
