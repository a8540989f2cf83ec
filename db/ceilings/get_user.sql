-- Ceiling of GetUser by Clerk id (and of EnsureUser for an existing user):
-- the one SELECT any implementation needs, by the unique Clerk id, live
-- users only. userd-bench runs it with pgbench -M prepared against the
-- users it seeded (user_bench0 .. user_bench<users-1>).
\set n random(0, :users - 1)
SELECT * FROM users WHERE clerk_user_id = 'user_bench' || :n AND deleted_at IS NULL;
