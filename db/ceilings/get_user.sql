-- Ceiling of GetUser by Clerk id (and of EnsureUser for an existing user):
-- the one SELECT any implementation needs, by the unique Clerk id, live
-- users only, with the personal account's plan and balance. userd-bench
-- runs it with pgbench -M prepared against the users it seeded
-- (user_bench0 .. user_bench<users-1>).
\set n random(0, :users - 1)
SELECT u.*, a.plan, a.credits FROM users u JOIN accounts a ON a.id = u.id
WHERE u.clerk_user_id = 'user_bench' || :n AND u.deleted_at IS NULL;
