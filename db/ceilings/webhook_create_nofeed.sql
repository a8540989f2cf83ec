-- Bench operation: webhook user.created (signed, unique), without the change feed (no feed_events row).
-- Ceiling of a Svix-delivered Clerk user.created for a new user (its Svix
-- id, Clerk id and email all unseen before): one statement that inserts the
-- user, its personal account (plan FREE, 10 initial credits), the INITIAL
-- ledger row of those credits and the webhook_events row recording the
-- Svix id with its outcome, so the event is applied exactly once and acknowledged only once
-- committed. The common path needs no lock: the unique constraints on the
-- Clerk id, the live email and the Svix id serialize racing deliveries. No
-- row back (the user already exists) or a unique violation (a redelivered
-- Svix id, an email another user holds) sends the event down the general
-- path (ordering by Clerk's updated_at, email hand-over, tombstones), which
-- may take more round trips; the common path may not. It commits each
-- event on its own: userd's group commit shares one commit among the
-- deliveries that arrive together, which this ceiling does not.
\set k random(1, 1000000000000)
WITH new_user AS (
    INSERT INTO users (clerk_user_id, email, first_name, last_name, image_url, clerk_updated_at)
    VALUES ('user_pgb' || :k || '_' || :client_id, 'pgb' || :k || '_' || :client_id || '@bench.example',
            NULL, NULL, '', 1700000000000)
    ON CONFLICT (clerk_user_id) DO NOTHING
    RETURNING id, clerk_user_id
), account AS (
    INSERT INTO accounts (id, owner_user_id, plan, credits)
    SELECT id, id, 'FREE', 10 FROM new_user
    RETURNING id, credits
), initial AS (
    INSERT INTO credit_transactions (user_id, delta, balance_after, kind)
    SELECT id, credits, credits, 'INITIAL' FROM account
)
INSERT INTO webhook_events (svix_id, event_type, object_id, outcome)
SELECT 'pgbmsg' || :k || '_' || :client_id, 'user.created', clerk_user_id, 'created' FROM new_user
RETURNING svix_id;
