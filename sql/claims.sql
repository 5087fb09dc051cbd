-- Work claims (seed 003): exactly.claim_batch hands pending rows of the user's own table
-- (done_column IS NULL) to one worker at a time. One row here per live claim: which rows it
-- holds and until when. A row of the user's table is handed out again only once no live
-- claim holds it; exactly.complete_batch marks the rows done and deletes the claim. Claims
-- whose lease ran out are deleted by the next claim_batch on the same table, and their rows
-- counted in claim_attempts.
--
-- Rows are recorded by their primary key in its stored form (row_keys: the bytes the server
-- stores for the key's values, so no session setting changes them), with the key's column
-- types (key_types), and as JSON for people (keys). Only pg_exactly's functions write here.
CREATE TABLE exactly.claims (
    claim        uuid PRIMARY KEY,
    rel          regclass NOT NULL,
    done_column  text NOT NULL,
    row_keys     bytea[] NOT NULL,
    keys         jsonb[] NOT NULL,
    key_types    oid[] NOT NULL,
    leased_until timestamptz NOT NULL,
    claimed_at   timestamptz NOT NULL DEFAULT now(),
    -- what a failure of this claim's rows means (claim_batch's max_attempts, retry_after)
    max_attempts integer,
    retry_after  interval
);
CREATE INDEX claims_rel_leased_until_idx ON exactly.claims (rel, leased_until);
COMMENT ON TABLE exactly.claims IS
    'pg_exactly: live work claims of exactly.claim_batch, one row per claimed batch';

-- Per row of a user's table, how many claims of it ended without completing it (the
-- lease ran out, the claim was released, or fail_rows named it): a row that keeps failing
-- shows up here. Rows stay after they are completed, as a record. `key` is the row's
-- primary key as JSON ({"id": 42}); row_key its stored form, which identifies it. A row
-- with given_up_at set, or retry_at in the future, is not handed out; max_attempts and
-- retry_after are the settings of the claim that failed it last.
CREATE TABLE exactly.claim_attempts (
    rel             regclass NOT NULL,
    row_key         bytea NOT NULL,
    key             jsonb NOT NULL,
    failed_attempts integer NOT NULL,
    last_failed_at  timestamptz NOT NULL,
    last_error      text,
    max_attempts    integer,
    retry_after     interval,
    retry_at        timestamptz,
    given_up_at     timestamptz,
    PRIMARY KEY (rel, row_key)
);
-- the rows a claim must not hand out: given up, or waiting to be retried
CREATE INDEX claim_attempts_held_back_idx ON exactly.claim_attempts (rel)
    WHERE given_up_at IS NOT NULL OR retry_at IS NOT NULL;
COMMENT ON TABLE exactly.claim_attempts IS
    'pg_exactly: per claimed row, how many claims of it ended without completing it';

SELECT pg_catalog.pg_extension_config_dump('exactly.claims', '');
SELECT pg_catalog.pg_extension_config_dump('exactly.claim_attempts', '');

-- Forget the failure records of rows that last failed before `older_than` ago (rows that
-- failed since keep theirs). SECURITY DEFINER: only pg_exactly's functions write its
-- tables, so this one deletes as the extension's owner.
CREATE FUNCTION exactly.purge_claim_attempts(older_than interval) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    purged bigint;
BEGIN
    IF older_than IS NULL THEN
        RAISE EXCEPTION 'argument "older_than" must not be NULL'
            USING ERRCODE = 'null_value_not_allowed', HINT = 'e.g. exactly.purge_claim_attempts(''30 days'')';
    END IF;
    DELETE FROM exactly.claim_attempts a
    WHERE a.last_failed_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) older_than);
    GET DIAGNOSTICS purged = ROW_COUNT;
    RETURN purged;
END $$;
