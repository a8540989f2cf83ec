// Package layers_test keeps the dependency arrows of docs/architecture.md pointing one
// way: transports → domain → store → PostgreSQL, with the domain and its
// error kinds free of transports and storage, the store free of transports,
// config free of both, and transports reaching the database only through
// the domain.
package layers_test

import (
	"os/exec"
	"strings"
	"testing"
)

const mod = "github.com/userd/userd/"

var (
	transports = []string{mod + "internal/grpcapi", mod + "internal/gateway", mod + "internal/clerkhook", mod + "internal/app", mod + "gen/userd", "google.golang.org/grpc", "github.com/grpc-ecosystem", "net/http"}
	storage    = []string{mod + "internal/store", mod + "gen/sqlcdb", "github.com/jackc/pgx"}
)

// rules: a package (and everything it imports, transitively) must not
// depend on any of these import path prefixes.
var rules = map[string][]string{
	mod + "internal/apperr":    concat(transports, storage),
	mod + "internal/users":     concat(transports, storage, []string{mod + "internal/config", mod + "internal/auth"}),
	mod + "internal/feed":      concat(transports, storage, []string{mod + "internal/config", mod + "internal/auth"}),
	mod + "internal/store":     transports,
	mod + "internal/config":    concat(transports, storage, []string{mod + "internal/auth"}),
	mod + "internal/grpcapi":   storage,
	mod + "internal/gateway":   storage,
	mod + "internal/clerkhook": storage,
	mod + "internal/console":   storage,
	// The consistency token is shared by transports and storage.
	mod + "internal/consistency": concat(transports, storage),
	// The lifecycle knows nothing of what it runs.
	mod + "internal/lifecycle": concat(transports, storage, []string{mod + "internal/config"}),
}

func concat(lists ...[]string) []string {
	var out []string
	for _, l := range lists {
		out = append(out, l...)
	}
	return out
}

func TestLayers(t *testing.T) {
	t.Parallel()
	for pkg, forbidden := range rules {
		out, err := exec.Command("go", "list", "-deps", pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", pkg, err)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, f := range forbidden {
				if dep == f || strings.HasPrefix(dep, f+"/") || (strings.HasSuffix(f, "/") && strings.HasPrefix(dep, f)) {
					t.Errorf("%s depends on %s (forbidden: %s)", strings.TrimPrefix(pkg, mod), dep, f)
				}
			}
		}
	}
}
