package apptest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/userd/userd/gen/openapi"
)

// HTTPClient returns a client for the HTTP API that checks every response
// to /v1/... against the OpenAPI document (the one the server serves) and
// reports each mismatch as a test error: the status must be one the
// operation lists, headers and body must match their schemas, and a body
// may have no field the schema lacks. A request no operation matches must
// be answered 404 or 405 with a Status body.
func (in *Instance) HTTPClient(t testing.TB) *http.Client {
	c := loadContract(t)
	return &http.Client{Transport: &contractTransport{t: t, c: c, next: http.DefaultTransport}}
}

type contract struct {
	doc    *openapi3.T
	router routers.Router
}

var (
	contractOnce sync.Once
	contractDoc  *contract
	contractErr  error
)

// loadContract parses and validates the embedded document once per test
// binary.
func loadContract(t testing.TB) *contract {
	t.Helper()
	contractOnce.Do(func() {
		doc, err := openapi3.NewLoader().LoadFromData(openapi.JSON)
		if err != nil {
			contractErr = err
			return
		}
		if err = doc.Validate(context.Background()); err != nil {
			contractErr = err
			return
		}
		closeObjects(doc)
		// The contract is paths, statuses and bodies: a test instance
		// listens on a port of its own, not on the documented server's
		// default host, which the router would otherwise match.
		doc.Servers = nil
		router, err := gorillamux.NewRouter(doc)
		if err != nil {
			contractErr = err
			return
		}
		contractDoc = &contract{doc: doc, router: router}
	})
	if contractErr != nil {
		t.Fatalf("OpenAPI document: %v", contractErr)
	}
	return contractDoc
}

// closeObjects forbids properties a schema does not name, for checking
// only: the published document leaves objects open, so that clients
// accept fields a newer server adds.
func closeObjects(doc *openapi3.T) {
	no := false
	for _, s := range doc.Components.Schemas {
		closeObject(s.Value, map[*openapi3.Schema]bool{}, &no)
	}
}

func closeObject(s *openapi3.Schema, seen map[*openapi3.Schema]bool, no *bool) {
	if s == nil || seen[s] {
		return
	}
	seen[s] = true
	if len(s.Properties) > 0 && s.AdditionalProperties.Has == nil && s.AdditionalProperties.Schema == nil {
		s.AdditionalProperties.Has = no
	}
	for _, p := range s.Properties {
		closeObject(p.Value, seen, no)
	}
	if s.Items != nil {
		closeObject(s.Items.Value, seen, no)
	}
	for _, o := range s.AnyOf {
		closeObject(o.Value, seen, no)
	}
}

type contractTransport struct {
	t    testing.TB
	c    *contract
	next http.RoundTripper
}

func (ct *contractTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := ct.next.RoundTrip(req)
	if err != nil || !strings.HasPrefix(req.URL.Path, "/v1/") {
		return resp, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if problem := ct.c.check(req, resp, body); problem != "" {
		ct.t.Errorf("OpenAPI contract: %s %s answered %d: %s\nbody: %s", req.Method, req.URL.RequestURI(), resp.StatusCode, problem, body)
	}
	return resp, nil
}

// check returns what is wrong with the response, or "".
func (c *contract) check(req *http.Request, resp *http.Response, body []byte) string {
	route, params, err := c.router.FindRoute(req)
	if err != nil {
		if resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusMethodNotAllowed {
			return "no operation matches the request (" + err.Error() + "), yet the status is not 404 or 405"
		}
		var v any
		if err := json.Unmarshal(body, &v); err != nil {
			return "body is not JSON"
		}
		if err := c.doc.Components.Schemas["Status"].Value.VisitJSON(v); err != nil {
			return "body is not a Status: " + err.Error()
		}
		return ""
	}
	if resp.StatusCode != http.StatusOK && route.Operation.Responses.Status(resp.StatusCode) == nil {
		return "the operation does not document this status"
	}
	err = openapi3filter.ValidateResponse(req.Context(), &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
		Status:                 resp.StatusCode,
		Header:                 resp.Header,
		Body:                   io.NopCloser(bytes.NewReader(body)),
		Options: &openapi3filter.Options{
			IncludeResponseStatus: true,
			MultiError:            true,
			SchemaValidationOptions: []openapi3.SchemaValidationOption{
				openapi3.EnableFormatValidation(),
				// The message names the field; the schema dump is noise.
				openapi3.DisableSchemaErrorDetails(),
			},
		},
	})
	if err != nil {
		return err.Error()
	}
	return ""
}
