-- Bench operation: webhook user.created (signed, unique), with the change feed.
-- Ceiling of a Svix-delivered Clerk user.created for a new user (its Svix
-- id, Clerk id and email all unseen before) with what userd writes for it:
-- webhook_create_nofeed.sql's one statement (the user, its personal
-- account with plan FREE and 10 initial credits, the INITIAL ledger row,
-- the webhook_events row recording the Svix id and its outcome) plus the
-- user's first two events, user.created (the profile with the account's
-- plan and balance) then credits.changed for the INITIAL entry, in that
-- order. A new user's stream has no previous event (users rows are never
-- removed), so their order_xid is the transaction's id. No row back (the
-- user exists) or a unique violation (a redelivered Svix id, an email
-- another user holds) sends the event down the general path. It commits
-- each event on its own: userd's group commit shares one commit among the
-- deliveries that arrive together, which this ceiling does not.
\set k random(1, 1000000000000)
WITH new_user AS (
    INSERT INTO users (clerk_user_id, email, first_name, last_name, image_url, clerk_updated_at)
    VALUES ('user_pgb' || :k || '_' || :client_id, 'pgb' || :k || '_' || :client_id || '@bench.example',
            NULL, NULL, '', 1700000000000)
    ON CONFLICT (clerk_user_id) DO NOTHING
    RETURNING *
), account AS (
    INSERT INTO accounts (id, owner_user_id, plan, credits)
    SELECT id, id, 'FREE', 10 FROM new_user
    RETURNING id, plan, credits
), initial AS (
    INSERT INTO credit_transactions AS t (user_id, delta, balance_after, kind)
    SELECT id, credits, credits, 'INITIAL' FROM account
    RETURNING t.*
), events AS (
    INSERT INTO feed_events (order_xid, kind, user_id, clerk_user_id, account_id, payload)
    SELECT pg_current_xact_id()::text::bigint, x.kind, new_user.id, new_user.clerk_user_id, x.account_id, x.payload
    FROM new_user JOIN account ON account.id = new_user.id, LATERAL (
        SELECT 1 AS n, 'user.created' AS kind, NULL::uuid AS account_id,
               jsonb_build_object('email', new_user.email, 'first_name', new_user.first_name,
                   'last_name', new_user.last_name, 'image_url', new_user.image_url, 'plan', account.plan,
                   'credits', account.credits, 'created_at', new_user.created_at,
                   'updated_at', new_user.updated_at) AS payload
        UNION ALL
        SELECT 2, 'credits.changed', account.id,
               jsonb_build_object('id', i.id, 'delta', i.delta, 'balance_after', i.balance_after, 'kind', i.kind,
                   'reason', i.reason, 'idempotency_key', i.idempotency_key, 'created_at', i.created_at,
                   'actor_user_id', i.actor_user_id, 'service', i.service)
        FROM initial i
    ) x
    ORDER BY x.n
)
INSERT INTO webhook_events (svix_id, event_type, object_id, outcome)
SELECT 'pgbmsg' || :k || '_' || :client_id, 'user.created', clerk_user_id, 'created' FROM new_user
RETURNING svix_id;
