package errstatus_test

import (
	"testing"

	"github.com/userd/userd/internal/apperr"
	"github.com/userd/userd/internal/errstatus"
)

// reasons are the ErrorInfo reasons the kinds that share a gRPC code
// carry.
var reasons = map[apperr.Kind]string{
	apperr.KindFailedPrecondition:  apperr.ReasonAccountClosed,
	apperr.KindInsufficientCredits: apperr.ReasonInsufficientCredits,
}

// TestEveryKindIsMapped: a kind added to apperr without a row here would
// answer code OK / status 0, and one whose gRPC code another kind has
// must be told apart by its reason.
func TestEveryKindIsMapped(t *testing.T) {
	t.Parallel()
	seen := map[any]apperr.Kind{}
	for _, k := range apperr.Kinds() {
		code, st := errstatus.GRPCCode(k), errstatus.HTTPStatus(k)
		if code == 0 || st == 0 {
			t.Errorf("kind %v has no row (gRPC %v, HTTP %d)", k, code, st)
		}
		if other, dup := seen[code]; dup && (reasons[k] == "" || reasons[other] == "") {
			t.Errorf("kinds %v and %v share gRPC code %v and no reason tells them apart", k, other, code)
		}
		seen[code] = k
		if back, ok := errstatus.KindForStatus(code, reasons[k]); !ok || back != k {
			t.Errorf("KindForStatus(%v, %q) = %v, %v; want %v", code, reasons[k], back, ok, k)
		}
	}
}

// TestSharedCodeByReason: FAILED_PRECONDITION is 402 for insufficient
// credits and a member's cap (and a status without a reason), 412 for a
// closed account.
func TestSharedCodeByReason(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		reason string
		want   int
	}{
		{apperr.ReasonInsufficientCredits, 402},
		{apperr.ReasonMemberCapReached, 402},
		{"", 402},
		{apperr.ReasonAccountClosed, 412},
	} {
		k, ok := errstatus.KindForStatus(errstatus.GRPCCode(apperr.KindInsufficientCredits), c.reason)
		if got := errstatus.HTTPStatus(k); !ok || got != c.want {
			t.Errorf("reason %q: HTTP %d (%v), want %d", c.reason, got, ok, c.want)
		}
	}
	if k := apperr.MemberCapReached(10, 8, 2, 5, "day").Kind; k != apperr.KindInsufficientCredits {
		t.Errorf("MemberCapReached kind = %v, want insufficient credits", k)
	}
	if k := apperr.AccountClosed().Kind; k != apperr.KindFailedPrecondition {
		t.Errorf("AccountClosed kind = %v, want failed precondition", k)
	}
}
