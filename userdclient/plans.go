package userdclient

import userdv1 "github.com/userd/userd/gen/userd/v1"

// HasCredits reports whether the user can spend n credits now. A
// deduction can still fail if another one lands first: check
// IsInsufficientCredits on its error too.
func HasCredits(u *userdv1.User, n int64) bool {
	return u != nil && u.GetCredits() >= n
}

// IsProOrHigher reports whether the user is on a paid plan (PRO or
// ENTERPRISE).
func IsProOrHigher(u *userdv1.User) bool {
	switch u.GetPlan() {
	case userdv1.Plan_PLAN_PRO, userdv1.Plan_PLAN_ENTERPRISE:
		return true
	}
	return false
}
