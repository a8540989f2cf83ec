// Command openapigen writes userd's OpenAPI 3 document. `make generate`
// runs it on the Swagger 2.0 document protoc-gen-openapiv2 derives from the
// proto and its HTTP rules: kin-openapi's openapi2conv converts it, then
// this program adds what neither the proto nor the rules can say — the
// security schemes, every error status with the Status schema and what it
// means, the Idempotency-Key and X-Request-Id headers, the "me" alias, the
// optional :ensure body, the fields every response always has — and
// validates the result. The output is committed under gen/openapi and
// served at /openapi.json with info.version set to the binary's version.
//
//	go run ./internal/cmd/openapigen -in bin/openapiv2/userd.swagger.json -out gen/openapi/userd.openapi.json
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/getkin/kin-openapi/openapi2"
	"github.com/getkin/kin-openapi/openapi2conv"
	"github.com/getkin/kin-openapi/openapi3"
)

func main() {
	in := flag.String("in", "", "Swagger 2.0 document written by protoc-gen-openapiv2")
	out := flag.String("out", "", "OpenAPI 3 document to write")
	flag.Parse()
	if err := run(*in, *out); err != nil {
		fmt.Fprintln(os.Stderr, "openapigen:", err)
		os.Exit(1)
	}
}

func run(in, out string) error {
	if in == "" || out == "" {
		return errors.New("usage: openapigen -in swagger.json -out openapi.json")
	}
	raw, err := os.ReadFile(in)
	if err != nil {
		return err
	}
	doc, err := Convert(raw)
	if err != nil {
		return err
	}
	return os.WriteFile(out, doc, 0o644)
}

// Convert turns the Swagger 2.0 document into userd's OpenAPI 3 document,
// indented JSON with a final newline.
func Convert(swagger []byte) ([]byte, error) {
	var v2 openapi2.T
	if err := json.Unmarshal(swagger, &v2); err != nil {
		return nil, fmt.Errorf("parse Swagger 2.0: %w", err)
	}
	doc, err := openapi2conv.ToV3(&v2)
	if err != nil {
		return nil, fmt.Errorf("convert to OpenAPI 3: %w", err)
	}
	if err := complete(doc); err != nil {
		return nil, err
	}
	raw, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	// Validate what is written, loaded afresh (so every $ref resolves).
	written, err := openapi3.NewLoader().LoadFromData(raw)
	if err != nil {
		return nil, fmt.Errorf("load the generated document: %w", err)
	}
	if err := written.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("the generated document is invalid: %w", err)
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		return nil, err
	}
	buf.WriteByte('\n')
	return buf.Bytes(), nil
}

// complete adds to the converted document what the proto cannot say.
func complete(doc *openapi3.T) error {
	doc.Info = &openapi3.Info{
		Title:       "userd",
		Version:     APIVersion,
		Description: apiDescription(doc),
	}
	// Where the API is: userd runs wherever it is deployed, so the server
	// is a template whose defaults are `userd serve`'s own (USERD_HTTP_ADDR
	// :8080, plain HTTP behind a TLS-terminating proxy in production).
	doc.Servers = openapi3.Servers{{
		URL:         "{scheme}://{host}",
		Description: "A userd HTTP API listener (USERD_HTTP_ADDR), or the proxy in front of it.",
		Variables: map[string]*openapi3.ServerVariable{
			"scheme": {Enum: []string{"https", "http"}, Default: "http", Description: "https behind a TLS-terminating proxy; userd itself serves plain HTTP."},
			"host":   {Default: "localhost:8080", Description: "Host and port of the listener or proxy."},
		},
	}}
	c := doc.Components
	c.SecuritySchemes = securitySchemes()
	doc.Security = anyCaller
	c.Parameters = openapi3.ParametersMap{
		"RequestId":      {Value: requestIDParameter()},
		"IdempotencyKey": {Value: idempotencyKeyParameter()},
	}
	c.Headers = openapi3.Headers{
		"X-Request-Id":     {Value: &openapi3.Header{Parameter: openapi3.Parameter{Description: requestIDHeaderDoc, Required: true, Schema: stringSchema().NewRef()}}},
		"WWW-Authenticate": {Value: &openapi3.Header{Parameter: openapi3.Parameter{Description: `Bearer realm="userd"`, Required: true, Schema: stringSchema().NewRef()}}},
		"Retry-After":      {Value: &openapi3.Header{Parameter: openapi3.Parameter{Description: "Seconds to wait before retrying.", Required: true, Schema: openapi3.NewIntegerSchema().NewRef()}}},
	}
	completeSchemas(c.Schemas)
	c.Responses = openapi3.ResponseBodies{}
	for _, e := range errorResponses {
		c.Responses[e.name] = &openapi3.ResponseRef{Value: e.response()}
	}

	seen := map[string]bool{}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			spec, ok := operations[op.OperationID]
			if !ok {
				return fmt.Errorf("%s %s: operation %q is not described in openapigen", method, path, op.OperationID)
			}
			seen[op.OperationID] = true
			if err := spec.apply(op); err != nil {
				return fmt.Errorf("%s %s: %w", method, path, err)
			}
		}
	}
	for id := range operations {
		if !seen[id] {
			return fmt.Errorf("openapigen describes operation %q, which the document lacks", id)
		}
	}
	return nil
}

// APIVersion is info.version in the committed document; the server
// replaces it with its own version when it serves the document.
const APIVersion = "v1"

func apiDescription(doc *openapi3.T) string {
	service := ""
	for _, t := range doc.Tags {
		if t.Name == "UserService" {
			service = t.Description
		}
	}
	return service + `

REST conventions (grpc-gateway over the gRPC service userd.v1.UserService):

- JSON as protojson writes it: camelCase field names, 64-bit integers as
  decimal strings (numbers are accepted on input), enums by name, timestamps
  in RFC 3339. Every field of a response is present, zero values included.
- Unknown fields in a request body are ignored, so a client built against a
  newer version of this API works with an older server.
- A "+" in a query string is a plus sign, not a space:
  "?email=ada+tag@example.com" and "?email=ada%2Btag@example.com" are the
  same. No parameter can contain a space.
- A method a path does not support is answered 405 with an Allow header.
- Every response carries X-Request-Id; quote it when reporting a problem.
- Errors are a Status object: the gRPC code, a message for humans and
  details (google.rpc.BadRequest field violations, google.rpc.ErrorInfo with
  a stable reason). The HTTP status says which of the documented errors it is.
- "me" as {clerkUserId} names the caller's own user (session tokens only).`
}

// Security requirements: any caller, or backend services only.
var (
	anyCaller = openapi3.SecurityRequirements{
		{"serviceToken": {}},
		{"sessionToken": {}},
		{"sessionCookie": {}},
	}
	servicesOnly = openapi3.SecurityRequirements{
		{"serviceToken": {}},
	}
)

func securitySchemes() openapi3.SecuritySchemes {
	return openapi3.SecuritySchemes{
		"serviceToken": {Value: &openapi3.SecurityScheme{
			Type: "http", Scheme: "bearer",
			Description: "A backend service's token, one of USERD_SERVICE_TOKENS: " +
				"`Authorization: Bearer <token>`. May call every operation for any user; " +
				"`me` is not available to it.",
		}},
		"sessionToken": {Value: &openapi3.SecurityScheme{
			Type: "http", Scheme: "bearer", BearerFormat: "JWT",
			Description: "The signed-in user's Clerk session token (`await getToken()`): " +
				"`Authorization: Bearer <jwt>`. May read and ensure only its own user " +
				"(`me` or its own Clerk id); other users are 404, credits and plans 403.",
		}},
		"sessionCookie": {Value: &openapi3.SecurityScheme{
			Type: "apiKey", In: "cookie", Name: "__session",
			Description: "For a frontend served from the same origin: Clerk's `__session` cookie, " +
				"holding the session token, with the same rights as sessionToken. An Authorization " +
				"header wins over it. A write (POST) authenticated by the cookie must carry an " +
				"`Origin` among CLERK_AUTHORIZED_PARTIES, else it is 403 (CSRF protection).",
		}},
	}
}

const requestIDHeaderDoc = "The call's request id: the caller's X-Request-Id when it was valid, " +
	"else one userd made. It ties userd's log lines of the call together."

func requestIDParameter() *openapi3.Parameter {
	maxLen := uint64(64)
	return &openapi3.Parameter{
		Name: "X-Request-Id", In: openapi3.ParameterInHeader,
		Description: "Optional id for the call, echoed in the response and logged. " +
			"One that does not match the pattern is replaced by a fresh one.",
		Schema: (&openapi3.Schema{Type: &openapi3.Types{openapi3.TypeString}, MinLength: 1, MaxLength: &maxLen,
			Pattern: `^[A-Za-z0-9._-]+$`}).NewRef(),
	}
}

func idempotencyKeyParameter() *openapi3.Parameter {
	maxLen := uint64(255)
	return &openapi3.Parameter{
		Name: "Idempotency-Key", In: openapi3.ParameterInHeader,
		Description: "The idempotency key, as an alternative to the body's idempotencyKey " +
			"(one of them is required; when both are set they must be equal). A retry with " +
			"the same key and parameters returns the first result and changes nothing; the " +
			"same key with other parameters is 409 IDEMPOTENCY_KEY_REUSED. Keys are scoped " +
			"to one user.",
		Schema: (&openapi3.Schema{Type: &openapi3.Types{openapi3.TypeString}, MinLength: 1, MaxLength: &maxLen,
			Pattern: `^[!-~]+$`}).NewRef(),
	}
}

func stringSchema() *openapi3.Schema {
	return &openapi3.Schema{Type: &openapi3.Types{openapi3.TypeString}}
}
