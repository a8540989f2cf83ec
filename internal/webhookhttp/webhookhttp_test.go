package webhookhttp

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/userd/userd/internal/httpmw"
)

// WriteField writes exactly what WriteJSON writes for the one-field map it
// replaces, escaping included.
func TestWriteFieldIsWriteJSON(t *testing.T) {
	t.Parallel()
	for _, v := range []string{"created", "", `a"b\c`, "<script>&", "\x00\x1f", "é\u2028", "\xff"} {
		want, got := httptest.NewRecorder(), httptest.NewRecorder()
		WriteJSON(want, http.StatusTeapot, map[string]string{"status": v})
		WriteField(got, http.StatusTeapot, "status", v)
		if got.Code != want.Code || got.Body.String() != want.Body.String() ||
			got.Header().Get("Content-Type") != want.Header().Get("Content-Type") {
			t.Errorf("%q: WriteField %d %q %q, WriteJSON %d %q %q", v, got.Code, got.Body, got.Header().Get("Content-Type"),
				want.Code, want.Body, want.Header().Get("Content-Type"))
		}
	}
}

// ReadBody returns the body whatever Content-Length announced, and refuses
// one past the limit as io.ReadAll over http.MaxBytesReader did.
func TestReadBody(t *testing.T) {
	t.Parallel()
	small := strings.Repeat("x", 3000)
	over := strings.Repeat("y", httpmw.MaxBodyBytes+1)
	for _, tc := range []struct {
		name          string
		body          string
		contentLength int64
		wantTooLarge  bool
	}{
		{"announced", small, int64(len(small)), false},
		{"unknown length", small, -1, false},
		{"empty", "", 0, false},
		{"past the presized buffer", strings.Repeat("z", presizeMax+10), presizeMax + 10, false},
		{"too large, unknown length", over, -1, true},
		{"too large, announced", over, int64(len(over)), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := httptest.NewRequest(http.MethodPost, "/", io.NopCloser(strings.NewReader(tc.body)))
			r.ContentLength = tc.contentLength
			got, err := ReadBody(httptest.NewRecorder(), r)
			var tooLarge *http.MaxBytesError
			switch {
			case tc.wantTooLarge && !errors.As(err, &tooLarge):
				t.Fatalf("err %v, want *http.MaxBytesError", err)
			case tc.wantTooLarge:
			case err != nil:
				t.Fatal(err)
			case !bytes.Equal(got, []byte(tc.body)):
				t.Fatalf("read %d bytes, want %d", len(got), len(tc.body))
			}
		})
	}
}
