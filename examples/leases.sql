-- Seed 003 without a transaction held across the third-party call: a lease with a fencing
-- token, slots, and claims that act like a queue (docs/coordination.md).
\set VERBOSITY default
\set SHOW_CONTEXT never

CREATE TABLE resources (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name      text NOT NULL,
    synced_at timestamptz
);
INSERT INTO resources (name) VALUES ('A'), ('B'), ('C');

-- Worker 1 takes the sync lease (in its own short transaction) and reads what to send.
SELECT token AS w1_token, fence AS w1_fence FROM exactly.acquire_lease('third_party_sync', ttl => '2 seconds') \gset
SELECT :w1_fence AS worker_1_fence;
-- Worker 2 asks too, while worker 1's lease is live: no row, nothing to do.
SELECT count(*) AS granted_to_worker_2 FROM exactly.acquire_lease('third_party_sync', ttl => '2 seconds');

-- Worker 1 stalls in the third-party call past its lease...
SELECT pg_sleep(2.2);
-- ...so worker 2 gets the lease, with a greater fence, sends the rows and marks them, fenced.
SELECT token AS w2_token, fence AS w2_fence FROM exactly.acquire_lease('third_party_sync', ttl => '30 seconds') \gset
SELECT :w2_fence AS worker_2_fence;
BEGIN;
SELECT exactly.check_fence('third_party_sync', :w2_fence);
UPDATE resources SET synced_at = now() WHERE synced_at IS NULL;
COMMIT;

-- Worker 1 wakes up and tries to mark its rows: its fence is stale, the write is refused.
BEGIN;
SELECT exactly.check_fence('third_party_sync', :w1_fence);
\echo :LAST_ERROR_SQLSTATE
UPDATE resources SET name = name || ' (stale)';
ROLLBACK;
SELECT exactly.renew_lease('third_party_sync', :'w1_token', '30 seconds') AS worker_1_renewed;
SELECT exactly.release_lease('third_party_sync', :'w2_token') AS worker_2_released;
SELECT id, name, synced_at IS NOT NULL AS synced FROM resources ORDER BY id;

-- At most two syncs at once: the third caller gets NULL until a slot is given back.
SELECT exactly.acquire_slot('sync:tenant-42', 2, ttl => '1 minute') AS slot_1 \gset
SELECT exactly.acquire_slot('sync:tenant-42', 2, ttl => '1 minute') IS NOT NULL AS slot_2_taken;
SELECT exactly.acquire_slot('sync:tenant-42', 2, ttl => '1 minute') IS NOT NULL AS slot_3_taken;
SELECT exactly.release_slot('sync:tenant-42', :'slot_1') AS released;
SELECT exactly.acquire_slot('sync:tenant-42', 2, ttl => '1 minute') IS NOT NULL AS slot_3_taken;

-- A queue: rows that keep failing are given up after two attempts, with their last error.
INSERT INTO resources (name) VALUES ('D'), ('E');
SELECT claim AS c FROM exactly.claim_batch('resources', 'synced_at', max_attempts => 2) LIMIT 1 \gset
SELECT exactly.complete_rows(:'c', '[{"id": 4}]') AS completed;
SELECT exactly.fail_rows(:'c', '[5]', 'HTTP 422: name rejected') AS failed;
SELECT data->>'name' AS handed_out_again FROM exactly.claim_batch('resources', 'synced_at', max_attempts => 2);
SELECT claim AS c FROM exactly.claims \gset
SELECT exactly.fail_rows(:'c', '[5]', 'HTTP 422: name rejected again') AS failed;
SELECT count(*) AS handed_out_again FROM exactly.claim_batch('resources', 'synced_at', max_attempts => 2);
SELECT key, failed_attempts, last_error, given_up_at IS NOT NULL AS given_up
FROM exactly.claim_attempts ORDER BY key;
