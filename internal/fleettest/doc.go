// Package fleettest rolls a release out the way a fleet does, under load:
// the previous release's binary (built from git history) serves a database
// it migrated, the new binary starts on the same database and applies its
// expand migrations while the old one serves, both serve, the old one
// stops, and `userd migrate up` applies the post-deploy (contract)
// migrations while the new one serves. A deduct/grant workload with
// idempotency keys and a change-feed consumer run throughout; afterwards
// nothing acknowledged is lost, the only error seen is UNAVAILABLE (retried
// with the same key), every balance equals the sum of its ledger, and both
// binaries answered in every phase.
//
// Its tests are behind the build tag fleettest (`make fleet-test`, which
// CI runs after `make test`): they build two binaries and need the git
// history (a full clone). docs/operations.md ("Rolling out a release with a
// post-deploy migration") describes the rollout they run.
package fleettest
