package errstatus_test

import (
	"testing"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/errstatus"
)

// TestEveryKindIsMapped: a kind added to apperr without a row here would
// answer code OK / status 0.
func TestEveryKindIsMapped(t *testing.T) {
	t.Parallel()
	seen := map[any]apperr.Kind{}
	for _, k := range apperr.Kinds() {
		code, st := errstatus.GRPCCode(k), errstatus.HTTPStatus(k)
		if code == 0 || st == 0 {
			t.Errorf("kind %v has no row (gRPC %v, HTTP %d)", k, code, st)
		}
		if other, dup := seen[code]; dup {
			t.Errorf("kinds %v and %v share gRPC code %v: KindForCode cannot tell them apart", k, other, code)
		}
		seen[code] = k
		if back, ok := errstatus.KindForCode(code); !ok || back != k {
			t.Errorf("KindForCode(%v) = %v, %v; want %v", code, back, ok, k)
		}
	}
}
