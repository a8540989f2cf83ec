-- Queries on users. Names are Verb+Noun; every read of a live user filters
-- deleted_at IS NULL. A user is read with its personal account's plan and
-- balance (the account's id is the user's), and updated_at is the later of
-- the profile's and the account's. The balance leaves out the due part of
-- expiring grants (userd_account_due, db/migrations/00035_account_due.sql:
-- inlined, it calls PL/pgSQL only for an account holding expiring
-- credits).

-- name: GetLiveUserByClerkID :one
SELECT u.id, u.clerk_user_id, u.email, u.first_name, u.last_name, u.image_url, a.plan, (a.credits - userd_account_due(a.id, a.expiring_credits))::bigint AS credits,
       u.clerk_updated_at, u.created_at, greatest(u.updated_at, a.updated_at)::timestamptz AS updated_at, u.deleted_at
FROM users u JOIN accounts a ON a.id = u.id
WHERE u.clerk_user_id = @clerk_user_id AND u.deleted_at IS NULL;

-- name: GetLiveUserByID :one
SELECT u.id, u.clerk_user_id, u.email, u.first_name, u.last_name, u.image_url, a.plan, (a.credits - userd_account_due(a.id, a.expiring_credits))::bigint AS credits,
       u.clerk_updated_at, u.created_at, greatest(u.updated_at, a.updated_at)::timestamptz AS updated_at, u.deleted_at
FROM users u JOIN accounts a ON a.id = u.id
WHERE u.id = @id AND u.deleted_at IS NULL;

-- name: GetLiveUserByEmail :one
SELECT u.id, u.clerk_user_id, u.email, u.first_name, u.last_name, u.image_url, a.plan, (a.credits - userd_account_due(a.id, a.expiring_credits))::bigint AS credits,
       u.clerk_updated_at, u.created_at, greatest(u.updated_at, a.updated_at)::timestamptz AS updated_at, u.deleted_at
FROM users u JOIN accounts a ON a.id = u.id
WHERE lower(u.email) = lower(@email::text) AND u.deleted_at IS NULL;

-- expiring_credits > 0 makes the balance read time-dependent (grants
-- fall due without a write): the read cache never keeps such a row
-- (internal/store/readcache.go).
-- name: GetUserByClerkIDIncludingDeleted :one
SELECT u.id, u.clerk_user_id, u.email, u.first_name, u.last_name, u.image_url, a.plan, (a.credits - userd_account_due(a.id, a.expiring_credits))::bigint AS credits,
       u.clerk_updated_at, u.created_at, greatest(u.updated_at, a.updated_at)::timestamptz AS updated_at, u.deleted_at,
       a.expiring_credits
FROM users u JOIN accounts a ON a.id = u.id
WHERE u.clerk_user_id = @clerk_user_id;

-- GetUsersByClerkIDsIncludingDeleted is GetUserByClerkIDIncludingDeleted
-- for several Clerk ids at once (no row for an id without a user; a row
-- per occurrence of an id given twice): the store's read batcher answers
-- the concurrent reads of a user by Clerk id with one statement
-- (internal/store/readbatch.go). Each id is looked up on its own, through
-- the LATERAL sub-select (LIMIT 1 keeps PostgreSQL from flattening it into
-- a plain join), so that the plan is two index probes per id whatever the
-- planner estimates: written as a join with `= ANY(ids)`, PostgreSQL chose
-- (generic and custom plans alike) a sequential scan of every account and
-- a hash join on make bench's thousand users: pgbench ran batches of four
-- at 0.65 of this statement's rate.
-- name: GetUsersByClerkIDsIncludingDeleted :many
SELECT u.id, u.clerk_user_id, u.email, u.first_name, u.last_name, u.image_url, u.plan, u.credits,
       u.clerk_updated_at, u.created_at, u.updated_at, u.deleted_at, u.expiring_credits
FROM unnest(@clerk_user_ids::text[]) AS k (clerk_user_id)
CROSS JOIN LATERAL (
    SELECT u.id, u.clerk_user_id, u.email, u.first_name, u.last_name, u.image_url, a.plan, (a.credits - userd_account_due(a.id, a.expiring_credits))::bigint AS credits,
           u.clerk_updated_at, u.created_at, greatest(u.updated_at, a.updated_at)::timestamptz AS updated_at, u.deleted_at,
           a.expiring_credits
    FROM users u JOIN accounts a ON a.id = u.id
    WHERE u.clerk_user_id = k.clerk_user_id
    LIMIT 1
) u;

-- InsertUserWithInitialCredits creates the user, its personal account and
-- the ledger entry of its initial credits in one round trip (see
-- userd_create_user in db/schema.sql). Its u_id is NULL when the Clerk id
-- already exists (live or deleted); concurrent inserts for one id wait for
-- each other and exactly one returns the user.
-- name: InsertUserWithInitialCredits :one
SELECT * FROM userd_create_user(@clerk_user_id::text, sqlc.narg(email)::text, sqlc.narg(first_name)::text,
    sqlc.narg(last_name)::text, sqlc.narg(image_url)::text, sqlc.narg(clerk_updated_at)::bigint, @credits::bigint);

-- GetPersonalAccount reads the personal account of a live user.
-- name: GetPersonalAccount :one
SELECT a.id, a.plan, (a.credits - userd_account_due(a.id, a.expiring_credits))::bigint AS credits, a.created_at, a.updated_at, a.closed_at, u.clerk_user_id
FROM users u JOIN accounts a ON a.id = u.id
WHERE u.clerk_user_id = @clerk_user_id::text AND u.deleted_at IS NULL;

-- GetOrganizationAccount reads an organization's account (closed or not).
-- name: GetOrganizationAccount :one
SELECT a.id, a.plan, (a.credits - userd_account_due(a.id, a.expiring_credits))::bigint AS credits, a.created_at, a.updated_at, a.closed_at, o.clerk_org_id
FROM organizations o JOIN accounts a ON a.organization_id = o.id
WHERE o.clerk_org_id = @clerk_org_id::text;

-- GetClerkVersions returns, for each of the Clerk ids that has a row, the
-- Clerk updated_at of its stored state and whether it is deleted: what
-- `userd sync-clerk` compares Clerk's listing with before writing.
-- name: GetClerkVersions :many
SELECT clerk_user_id, coalesce(clerk_updated_at, 0)::bigint AS clerk_updated_at, (deleted_at IS NOT NULL)::boolean AS deleted
FROM users
WHERE clerk_user_id = ANY(@clerk_user_ids::text[]);

-- ListLiveClerkUserIDs pages through the Clerk ids of live users in id
-- order: pass after = '' for the first page, then the last id seen.
-- name: ListLiveClerkUserIDs :many
SELECT clerk_user_id FROM users
WHERE deleted_at IS NULL AND clerk_user_id > @after::text
ORDER BY clerk_user_id
LIMIT @row_limit::int;
