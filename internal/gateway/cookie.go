package gateway

import (
	"net/http"
	"slices"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// SessionCookie is the cookie in which Clerk keeps the session token of
// a signed-in browser.
const SessionCookie = "__session"

// sessionCookie lets a same-origin frontend authenticate with Clerk's
// __session cookie instead of an Authorization header: the cookie's token
// becomes the bearer token (and is verified like one). An Authorization
// header wins over the cookie.
//
// A browser sends cookies with requests other sites make, so a write
// authenticated by the cookie must prove it comes from the frontend: its
// Origin must be one of CLERK_AUTHORIZED_PARTIES (the origins allowed as
// the token's azp); without an Origin, or with none configured, it is
// refused. Reads need no such proof: another site cannot read the answer.
func sessionCookie(h http.Handler, parties []string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			h.ServeHTTP(w, r)
			return
		}
		c, err := r.Cookie(SessionCookie)
		if err != nil || c.Value == "" {
			h.ServeHTTP(w, r)
			return
		}
		if !safeMethod(r.Method) {
			origin := r.Header.Get("Origin")
			if origin == "" || !slices.Contains(parties, origin) {
				writeStatus(w, http.StatusForbidden, &runtime.JSONPb{}, status.New(codes.PermissionDenied,
					"a write authenticated by the __session cookie needs an Origin header naming an authorized party "+
						"(CLERK_AUTHORIZED_PARTIES); send the token in Authorization instead"))
				return
			}
		}
		r.Header.Set("Authorization", "Bearer "+c.Value)
		h.ServeHTTP(w, r)
	})
}

func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}
