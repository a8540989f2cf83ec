-- Queries on users. Names are Verb+Noun; every read of a live user filters
-- deleted_at IS NULL.

-- name: GetLiveUserByClerkID :one
SELECT * FROM users
WHERE clerk_user_id = @clerk_user_id AND deleted_at IS NULL;

-- name: GetLiveUserByID :one
SELECT * FROM users
WHERE id = @id AND deleted_at IS NULL;

-- name: GetLiveUserByEmail :one
SELECT * FROM users
WHERE lower(email) = lower(@email::text) AND deleted_at IS NULL;

-- name: GetUserByClerkIDIncludingDeleted :one
SELECT * FROM users
WHERE clerk_user_id = @clerk_user_id;

-- InsertUserWithInitialCredits creates the user and the ledger entry of
-- its initial credits in one round trip. It returns no row when the Clerk
-- id already exists (live or deleted); concurrent inserts for one id wait
-- for each other and exactly one returns the row.
-- name: InsertUserWithInitialCredits :one
WITH new_user AS (
    INSERT INTO users (clerk_user_id, email, first_name, last_name, image_url, plan, credits, clerk_updated_at)
    VALUES (@clerk_user_id, @email, @first_name, @last_name, @image_url, 'FREE', @credits, @clerk_updated_at)
    ON CONFLICT (clerk_user_id) DO NOTHING
    RETURNING *
), initial AS (
    INSERT INTO credit_transactions (user_id, delta, balance_after, kind)
    SELECT new_user.id, new_user.credits, new_user.credits, 'INITIAL' FROM new_user
)
SELECT * FROM new_user;

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
