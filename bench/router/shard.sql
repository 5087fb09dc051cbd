-- Run on every shard before the rounds, with psql -v shard=K: pg_exactly numbered as shard K,
-- and the keys the scripts use, made beforehand on every shard (a call finds what it looks
-- for whichever shard owns its key, and the direct and the routed calls see the same tables):
-- invoice tenants t1..t100 and hot, accounts account-1..account-10000, and a counter_caches
-- table (bench/upsert's) holding k1..k100000.
CREATE EXTENSION pg_exactly;
SELECT exactly.set_shard(:shard);
SELECT count(exactly.next_invoice_number(t)) FROM (SELECT 't' || i AS t FROM generate_series(1, 100) i UNION ALL SELECT 'hot') s;
INSERT INTO exactly.accounts (account) SELECT 'account-' || i FROM generate_series(1, 10000) i;
CREATE TABLE counter_caches (
    id         bigserial PRIMARY KEY,
    key        text NOT NULL UNIQUE,
    value      bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO counter_caches (key) SELECT 'k' || i FROM generate_series(1, 100000) i;
VACUUM ANALYZE;
CHECKPOINT;
