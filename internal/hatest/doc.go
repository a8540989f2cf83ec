// Package hatest runs userd against a real high-availability formation on
// one machine: a pg_auto_failover monitor, a primary and a synchronous
// standby (Debian's postgresql-15-auto-failover and pg-auto-failover-cli),
// two userd replicas with a multi-host DATABASE_URL, a bank workload and a
// change-feed consumer; it kills the primary, then performs a planned
// switchover, and checks that nothing acknowledged was lost, the books
// balance and the consumer's history equals the committed one.
//
// Its tests are behind the build tag hatest (`make ha-test`), so that
// `make test` does not need the packages; docs/operations.md ("High
// availability") reports what they measured.
package hatest
