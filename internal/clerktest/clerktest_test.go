package clerktest_test

import (
	"testing"
	"time"

	"github.com/userd/userd/internal/clerktest"
)

// TestAddUsersBodiesAreSampleEventBodies: the bodies AddUsers makes from a
// template are byte for byte what clerkhook.SampleEvent makes.
func TestAddUsersBodiesAreSampleEventBodies(t *testing.T) {
	t.Parallel()
	fake := clerktest.New(t)
	for _, u := range fake.AddUsers("tpl", 3, time.Now().Truncate(time.Millisecond)) {
		got, ok := fake.UserState(u.ID)
		if want := clerktest.UserJSON(t, u); !ok || string(got) != string(want) {
			t.Errorf("%s:\n got %s\nwant %s", u.ID, got, want)
		}
	}
}
