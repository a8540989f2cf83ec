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

-- InsertUserIfAbsent returns no row when the Clerk id already exists (live or
-- deleted); concurrent inserts for one id wait for each other and exactly one
-- returns the row.
-- name: InsertUserIfAbsent :one
INSERT INTO users (clerk_user_id, email, first_name, last_name, image_url, plan, credits, clerk_updated_at)
VALUES (@clerk_user_id, @email, @first_name, @last_name, @image_url, 'FREE', @credits, @clerk_updated_at)
ON CONFLICT (clerk_user_id) DO NOTHING
RETURNING *;

-- name: UpdateUserCredits :one
UPDATE users
SET credits = @credits, updated_at = now()
WHERE id = @id
RETURNING *;

-- name: UpdateUserPlanAndCredits :one
UPDATE users
SET plan = @plan, credits = @credits, updated_at = now()
WHERE id = @id
RETURNING *;
