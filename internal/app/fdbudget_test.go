package app

import (
	"strings"
	"testing"

	"github.com/userd/userd/internal/config"
)

// TestPlanConnBudget: the listeners' limits always fit the file descriptor
// limit with the reserve, the operations listener's share comes first, and
// a limit too low to serve refuses to start, saying what to raise.
func TestPlanConnBudget(t *testing.T) {
	t.Parallel()
	all := listenersOn{grpc: true, http: true, webhook: true, ops: true}
	def := config.DefaultLimits()
	for _, tc := range []struct {
		name                     string
		fds                      uint64
		on                       listenersOn
		grpc, http, webhook, ops int
		lowered                  bool
	}{
		{"Roomy", 1 << 20, all, 4096, 4096, 4096, 64, false},
		{"Unlimited", 1 << 62, all, 4096, 4096, 4096, 64, false},
		// 1024 - (64 + 16 + 4) = 940; ops 64; 876 shared equally.
		{"ulimit 1024", 1024, all, 292, 292, 292, 64, true},
		// 4096 - 84 = 4012; ops 64; 3948 shared.
		{"ulimit 4096", 4096, all, 1316, 1316, 1316, 64, true},
		// Tight: the ops share is at most an eighth of what is left.
		{"ulimit 200", 200, all, 34, 34, 34, 14, true},
		{"Only gRPC and ops", 1024, listenersOn{grpc: true, ops: true}, 876, 0, 0, 64, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b, err := planConnBudget(tc.fds, 16, def, tc.on)
			if err != nil {
				t.Fatal(err)
			}
			if b.GRPC != tc.grpc || b.HTTP != tc.http || b.Webhook != tc.webhook || b.Ops != tc.ops || b.Lowered != tc.lowered {
				t.Errorf("got grpc %d http %d webhook %d ops %d lowered %v; want %d %d %d %d %v",
					b.GRPC, b.HTTP, b.Webhook, b.Ops, b.Lowered, tc.grpc, tc.http, tc.webhook, tc.ops, tc.lowered)
			}
			if tc.fds < 1<<40 && uint64(b.Reserve+b.GRPC+b.HTTP+b.Webhook+b.Ops) > tc.fds {
				t.Errorf("%d + %d + %d + %d + %d exceeds the limit %d", b.Reserve, b.GRPC, b.HTTP, b.Webhook, b.Ops, tc.fds)
			}
		})
	}
	if _, err := planConnBudget(100, 16, def, all); err == nil || !strings.Contains(err.Error(), "ulimit -n") {
		t.Errorf("fd limit 100: %v, want a refusal naming ulimit -n", err)
	}
}
