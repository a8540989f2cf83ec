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

-- LockLiveUserByClerkID takes the row lock that serialises every change of
-- one user's balance and plan.
-- name: LockLiveUserByClerkID :one
SELECT * FROM users
WHERE clerk_user_id = @clerk_user_id AND deleted_at IS NULL
FOR UPDATE;

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

-- name: UpdateUserPlanAndCredits :one
UPDATE users
SET plan = @plan, credits = @credits, updated_at = now()
WHERE id = @id
RETURNING *;

-- LockLiveUserByEmailExcept locks the other live user, if any, that holds an
-- email (case-insensitively).
-- name: LockLiveUserByEmailExcept :one
SELECT * FROM users
WHERE lower(email) = lower(@email::text) AND deleted_at IS NULL AND clerk_user_id <> @clerk_user_id
FOR UPDATE;

-- UpdateUserProfile stores a newer Clerk state of the profile.
-- name: UpdateUserProfile :one
UPDATE users
SET email = @email, first_name = @first_name, last_name = @last_name, image_url = @image_url,
    clerk_updated_at = @clerk_updated_at, updated_at = now()
WHERE id = @id
RETURNING *;

-- ClearUserEmail takes an email away from a user whose stored state is older
-- than the state that now claims it. clerk_updated_at is kept, so the user's
-- own newer events still apply.
-- name: ClearUserEmail :exec
UPDATE users SET email = NULL, updated_at = now() WHERE id = @id;

-- TombstoneUser marks the user deleted, inserting a tombstone (no credits,
-- no ledger) when the deletion arrives before any other event for the user.
-- A deletion is final: an existing deleted_at is kept.
-- name: TombstoneUser :one
INSERT INTO users (clerk_user_id, plan, credits, deleted_at)
VALUES (@clerk_user_id, 'FREE', 0, now())
ON CONFLICT (clerk_user_id) DO UPDATE
SET deleted_at = coalesce(users.deleted_at, now()), updated_at = now()
RETURNING *;

-- LockLiveUserWithKey takes the user's row lock and, in the same round
-- trip, finds what the user already did under an idempotency key: a ledger
-- entry and/or a plan change. Both come from the statement's snapshot: one
-- committed by a racing transaction while this one waited for the lock is
-- not seen, and inserting it again then fails on the key's unique
-- constraint (the caller retries once and then sees it).
-- name: LockLiveUserWithKey :one
SELECT sqlc.embed(users),
       t.id AS tx_id, t.delta AS tx_delta, t.balance_after AS tx_balance_after,
       t.kind AS tx_kind, t.reason AS tx_reason, t.created_at AS tx_created_at,
       pc.id AS plan_change_id
FROM users
LEFT JOIN credit_transactions t ON t.user_id = users.id AND t.idempotency_key = @idempotency_key::text
LEFT JOIN plan_changes pc ON pc.user_id = users.id AND pc.idempotency_key = @idempotency_key::text
WHERE users.clerk_user_id = @clerk_user_id AND users.deleted_at IS NULL
FOR UPDATE OF users;

-- LockUserAndEmailHolder locks, in one round trip, the row a Clerk event is
-- about (live or tombstone) and the other live user, if any, holding the
-- event's email.
-- name: LockUserAndEmailHolder :many
SELECT * FROM users
WHERE clerk_user_id = @clerk_user_id
   OR (@email::text <> '' AND lower(email) = lower(@email::text) AND deleted_at IS NULL)
FOR UPDATE;
