// Package requestid makes and checks the request ids that tie a call's
// log lines together across HTTP and gRPC.
package requestid

import (
	"crypto/rand"
	"encoding/hex"
)

// Key names the request id in HTTP headers (X-Request-Id: header names are
// case-insensitive) and in gRPC metadata, whose keys are lower case.
const Key = "x-request-id"

// New returns a random request id.
func New() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Valid accepts short ids of safe characters, so that a caller-supplied id
// cannot inject into logs.
func Valid(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c == '-' || c == '_' || c == '.' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}
