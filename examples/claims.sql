-- Named locks and exactly-once work claims (seed 003).
\set VERBOSITY default
\set SHOW_CONTEXT never

-- The seed's sync queue: resources waiting to be sent to a third party.
CREATE TABLE resources (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name      text NOT NULL,
    synced_at timestamptz
);
CREATE INDEX ON resources (id) WHERE synced_at IS NULL;
INSERT INTO resources (name) VALUES ('A'), ('B'), ('C');

-- A worker claims up to two pending rows; a second worker gets the rest, not the same rows.
SELECT data FROM exactly.claim_batch('resources', 'synced_at', batch => 2);
SELECT data FROM exactly.claim_batch('resources', 'synced_at', batch => 2);
SELECT data FROM exactly.claim_batch('resources', 'synced_at', batch => 2);
-- exactly.claims shows each live claim's rows by key
SELECT keys, leased_until > now() AS live FROM exactly.claims ORDER BY claimed_at, claim;
SELECT claim AS first_claim FROM exactly.claims WHERE keys = ARRAY['{"id": 1}', '{"id": 2}']::jsonb[] \gset
SELECT claim AS second_claim FROM exactly.claims WHERE keys = ARRAY['{"id": 3}']::jsonb[] \gset

-- After the third-party call: mark the claimed rows done. A claim completes once.
SELECT exactly.complete_batch(:'first_claim');
SELECT exactly.complete_batch(:'first_claim');

-- A worker that needs longer extends its lease; one that gives up releases its rows.
SELECT exactly.extend_claim(:'second_claim', '10 minutes');
SELECT exactly.release_claim(:'second_claim');
SELECT data FROM exactly.claim_batch('resources', 'synced_at');
SELECT key, failed_attempts FROM exactly.claim_attempts;
SELECT id, name, synced_at IS NOT NULL AS synced FROM resources ORDER BY id;

-- The seed's advisory lock, held to the end of the transaction.
BEGIN;
SELECT exactly.lock('third_party_sync', timeout => '5 seconds');
SELECT exactly.try_lock('third_party_sync');
SELECT granted FROM exactly.lock_status('third_party_sync');
COMMIT;
SELECT count(*) FROM exactly.lock_status('third_party_sync');

-- Bad input is refused with a SQLSTATE.
SELECT * FROM exactly.claim_batch('resources', 'synced_at', batch => 0);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM exactly.claim_batch('resources', 'name');
\echo :LAST_ERROR_SQLSTATE
SELECT exactly.lock('third_party_sync', timeout => '-1 second');
\echo :LAST_ERROR_SQLSTATE
