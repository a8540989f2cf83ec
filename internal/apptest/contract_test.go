package apptest

import (
	"net/http"
	"strings"
	"testing"
)

// TestContractCatchesMismatches: the contract check rejects responses that
// break the OpenAPI document, so the end-to-end tests that use it can fail.
func TestContractCatchesMismatches(t *testing.T) {
	t.Parallel()
	c := loadContract(t)
	user := func(credits string, extra string) string {
		return `{"user":{"id":"6f1c8a52-4a8e-4b8e-9d7e-0c1f2a3b4c5d","clerkUserId":"user_a","email":"",` +
			`"firstName":"","lastName":"","imageUrl":"","plan":"PLAN_FREE","credits":` + credits + `,` +
			`"createTime":"2026-01-02T03:04:05Z","updateTime":"2026-01-02T03:04:05Z"` + extra + `}}`
	}
	status := `{"code":9,"message":"insufficient credits: 2 required, 1 available","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"INSUFFICIENT_CREDITS","domain":"userd","metadata":{"required":"2","available":"1"}}]}`
	withID := http.Header{"Content-Type": {"application/json"}, "X-Request-Id": {"abc"}}
	noID := http.Header{"Content-Type": {"application/json"}}
	cases := []struct {
		name, method, path string
		code               int
		header             http.Header
		body               string
		wantProblem        bool
	}{
		{"Valid", "GET", "/v1/users/user_a", 200, withID, user(`"10"`, ""), false},
		{"NoRequestID", "GET", "/v1/users/user_a", 200, noID, user(`"10"`, ""), true},
		{"UndocumentedField", "GET", "/v1/users/user_a", 200, withID, user(`"10"`, `,"secret":"x"`), true},
		{"MissingField", "GET", "/v1/users/user_a", 200, withID, strings.Replace(user(`"10"`, ""), `"email":"",`, "", 1), true},
		{"Int64AsNumber", "GET", "/v1/users/user_a", 200, withID, user(`10`, ""), true},
		{"UndocumentedStatus", "GET", "/v1/users/user_a", 418, withID, status, true},
		{"402OnARead", "GET", "/v1/users/user_a", 402, withID, status, true},
		{"402OnDeduct", "POST", "/v1/users/user_a/credits:deduct", 402, withID, status, false},
		{"ErrorNotAStatus", "POST", "/v1/users/user_a/credits:deduct", 402, withID, `{"error":"no"}`, true},
		{"401WithoutChallenge", "GET", "/v1/users/user_a", 401, withID, `{"code":16,"message":"no"}`, true},
		{"NoRoute404", "GET", "/v1/nothing", 404, withID, `{"code":5,"message":"no such route"}`, false},
		{"NoRoute200", "GET", "/v1/nothing", 200, withID, `{}`, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			req, err := http.NewRequest(tc.method, "http://127.0.0.1:1"+tc.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			problem := c.check(req, &http.Response{StatusCode: tc.code, Header: tc.header}, []byte(tc.body))
			if (problem != "") != tc.wantProblem {
				t.Errorf("problem %q, want one: %v", problem, tc.wantProblem)
			}
		})
	}
}
