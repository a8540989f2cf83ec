package main

import (
	"slices"
	"sort"
	"strings"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/userd/userd/internal/apperr"
)

// optionalResponseFields are the response fields that can be absent. The
// gateway emits every other field, zero values included
// (EmitDefaultValues); message fields are absent only when unset, which
// these are when there is nothing to say.
var optionalResponseFields = map[string]bool{
	"SetPlanResponse.bonusTransaction": true, // no bonus credits
	// One of the two: a user's plan change or an organization's.
	"SetPlanResponse.user":    true,
	"SetPlanResponse.account": true,
	// One of each oneof.
	"WatchUserEventsResponse.event":     true,
	"WatchUserEventsResponse.heartbeat": true,
	"UserEvent.user":                    true,
	"UserEvent.planChange":              true,
	"UserEvent.creditTransaction":       true,
	"UserEvent.organization":            true,
	"UserEvent.membership":              true,
	"UserEvent.memberCapChange":         true,
	"Account.closeTime":                 true, // open
	// Absent from an organization.deleted event's organization, and
	// deleteTime while it lives.
	"Organization.createTime":            true,
	"Organization.updateTime":            true,
	"Organization.deleteTime":            true,
	"OrganizationMembership.createTime":  true,
	"OrganizationMembership.updateTime":  true,
	"OrganizationMembership.deleteTime":  true,
	"MemberSpendingCapChange.changeTime": true,
	// A grant that is not an allowance; a plan without an allowance.
	"CreditGrant.periodStartTime":       true,
	"ListGrantsResponse.nextRefillTime": true,
}

func completeSchemas(schemas openapi3.Schemas) {
	var names []string
	for name := range schemas {
		if strings.HasSuffix(name, "Response") {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	done := map[string]bool{}
	for _, name := range names {
		requireAll(schemas, name, done)
	}

	str := func(desc string) *openapi3.SchemaRef {
		s := stringSchema()
		s.Description = desc
		return s.NewRef()
	}
	typeURL := func(url string) *openapi3.SchemaRef {
		s := stringSchema()
		s.Enum = []any{url}
		return s.NewRef()
	}
	schemas["ErrorInfo"] = (&openapi3.Schema{
		Type:        &openapi3.Types{openapi3.TypeObject},
		Description: "google.rpc.ErrorInfo: a stable, machine-readable reason for an error.",
		Required:    []string{"@type", "reason", "domain"},
		Properties: openapi3.Schemas{
			"@type": typeURL("type.googleapis.com/google.rpc.ErrorInfo"),
			"reason": str("Stable reason: " + strings.Join([]string{apperr.ReasonInsufficientCredits,
				apperr.ReasonIdempotencyKeyReused, apperr.ReasonEmailInUse, apperr.ReasonUserDeleted,
				apperr.ReasonCursorExpired, apperr.ReasonMemberCapReached, apperr.ReasonAccountClosed,
				apperr.ReasonNotOrganizationMember, apperr.ReasonMissingOrganizationPermission,
				apperr.ReasonOrganizationNotActive, apperr.ReasonImpersonationNotAllowed}, ", ") +
				" (more may be added)."),
			"domain": str(`Always "` + apperr.Domain + `".`),
			"metadata": {Value: &openapi3.Schema{
				Type:                 &openapi3.Types{openapi3.TypeObject},
				Description:          "Facts about the error; for INSUFFICIENT_CREDITS, required and available; for CURSOR_EXPIRED, oldest_cursor.",
				AdditionalProperties: openapi3.AdditionalProperties{Schema: stringSchema().NewRef()},
			}},
		},
	}).NewRef()
	schemas["BadRequest"] = (&openapi3.Schema{
		Type:        &openapi3.Types{openapi3.TypeObject},
		Description: "google.rpc.BadRequest: the invalid fields of a request.",
		Required:    []string{"@type", "fieldViolations"},
		Properties: openapi3.Schemas{
			"@type": typeURL("type.googleapis.com/google.rpc.BadRequest"),
			"fieldViolations": {Value: &openapi3.Schema{
				Type: &openapi3.Types{openapi3.TypeArray},
				Items: (&openapi3.Schema{
					Type:     &openapi3.Types{openapi3.TypeObject},
					Required: []string{"field", "description"},
					Properties: openapi3.Schemas{
						"field":       str("The field, in the proto's snake_case (e.g. idempotency_key)."),
						"description": str("What is wrong with it."),
						"reason":      stringSchema().NewRef(),
					},
				}).NewRef(),
			}},
		},
	}).NewRef()

	status := schemas["Status"].Value
	status.Description = "An error: the gRPC status code, a message for humans and typed details. " +
		"The HTTP status says which documented error it is."
	status.Required = []string{"code", "message"}
	status.Properties["code"].Value.Description = "gRPC status code (e.g. 9 FAILED_PRECONDITION for 402)."
	status.Properties["message"].Value.Description = "For humans; do not parse it (use details)."
	details := status.Properties["details"].Value
	details.Description = "ErrorInfo and BadRequest details; other kinds may be added."
	details.Items = &openapi3.SchemaRef{Value: &openapi3.Schema{AnyOf: openapi3.SchemaRefs{
		openapi3.NewSchemaRef("#/components/schemas/ErrorInfo", nil),
		openapi3.NewSchemaRef("#/components/schemas/BadRequest", nil),
		openapi3.NewSchemaRef("#/components/schemas/Any", nil),
	}}}
}

// requireAll marks every property of the object schema name and of the
// object schemas it refers to as required, except optionalResponseFields.
func requireAll(schemas openapi3.Schemas, name string, done map[string]bool) {
	if done[name] {
		return
	}
	done[name] = true
	s := schemas[name]
	if s == nil || s.Value == nil || !s.Value.Type.Is(openapi3.TypeObject) {
		return
	}
	var required []string
	for prop, ref := range s.Value.Properties {
		if !optionalResponseFields[name+"."+prop] {
			required = append(required, prop)
		}
		target := ref
		if ref.Value != nil && ref.Value.Type.Is(openapi3.TypeArray) && ref.Value.Items != nil {
			target = ref.Value.Items
		}
		if target.Ref != "" {
			requireAll(schemas, strings.TrimPrefix(target.Ref, "#/components/schemas/"), done)
		}
	}
	slices.Sort(required)
	s.Value.Required = required
}
