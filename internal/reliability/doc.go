// Package reliability holds userd's reliability tests: a "bank" of
// concurrent clients over real gRPC, and load through a database outage.
// (The crash and abusive-client tests run the real binary and live in
// cmd/userd.) The package has no code of its own.
package reliability
