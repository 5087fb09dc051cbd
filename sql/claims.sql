-- Work claims (seed 003): exactly.claim_batch hands pending rows of the user's own table
-- (done_column IS NULL) to one worker at a time. One row here per live claim: which rows
-- (primary keys, as text) it holds and until when. A row of the user's table is handed out
-- again only once no live claim holds it; exactly.complete_batch marks the rows done and
-- deletes the claim. Claims whose lease ran out are deleted by the next claim_batch on the
-- same table, and their rows counted in claim_attempts.
CREATE TABLE exactly.claims (
    claim        uuid PRIMARY KEY,
    rel          regclass NOT NULL,
    done_column  text NOT NULL,
    row_keys     text[] NOT NULL,
    leased_until timestamptz NOT NULL,
    claimed_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX claims_rel_leased_until_idx ON exactly.claims (rel, leased_until);
COMMENT ON TABLE exactly.claims IS
    'pg_exactly: live work claims of exactly.claim_batch, one row per claimed batch';

-- Per row of a user's table, how many claims of it ended without completing it (the
-- lease ran out or the claim was released): a row that keeps failing shows up here.
-- Rows stay after they are completed, as a record; delete them when you like.
CREATE TABLE exactly.claim_attempts (
    rel             regclass NOT NULL,
    row_key         text NOT NULL,
    failed_attempts integer NOT NULL,
    last_failed_at  timestamptz NOT NULL,
    PRIMARY KEY (rel, row_key)
);
COMMENT ON TABLE exactly.claim_attempts IS
    'pg_exactly: per claimed row, how many claims of it ended without completing it';

SELECT pg_catalog.pg_extension_config_dump('exactly.claims', '');
SELECT pg_catalog.pg_extension_config_dump('exactly.claim_attempts', '');
