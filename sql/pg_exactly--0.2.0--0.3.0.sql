-- pg_exactly 0.2.0 -> 0.3.0: hardening.
--
-- * Every statement pg_exactly writes is schema-qualified, operators included (the library
--   does that); its SQL functions run with a pinned search_path.
-- * PUBLIC may execute nothing; exactly.grant_usage(role) gives an application role what
--   it needs. Privileges roles were given on schema exactly under 0.2.0 (the 0.2.0
--   README's GRANTs let them write state tables directly) are revoked here: run
--   `SELECT exactly.grant_usage('app')` for each application role, in the same transaction
--   as the update so the application never goes without (a NOTICE names each role).
-- * Claims record keys in their stored form, not as text: live claims and failure records
--   are converted.
-- * New: exactly.grant_usage, exactly.purge_claim_attempts, the check on new accounts,
--   exactly.flush_log (for the setting exactly.early_lock_release).
-- * Invoice numbering: templates, periods (exactly.invoice_periods), a start
--   (exactly.set_next_invoice_number), scopes of several columns and commit-time numbers
--   (exactly.assign_invoice_number_at_commit); next_invoice_number(s) take on_date.

-- exactly.early_lock_release: what transactions released early wrote is flushed before
-- pg_exactly's read functions report on it.
CREATE FUNCTION exactly.flush_log() RETURNS void
VOLATILE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'flush_log_wrapper';

-- verify_ledger: every name qualified, search_path pinned, the log flushed first.
CREATE OR REPLACE FUNCTION exactly.verify_ledger(account text DEFAULT NULL)
RETURNS TABLE (account text, ok boolean, detail text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    -- what transactions released early wrote is durable before we report on it
    SELECT exactly.flush_log();
    WITH entries AS (
        SELECT p.account, p.id, p.amount, p.running_balance,
               COALESCE(pg_catalog.lag(p.running_balance) OVER w, 0) AS previous,
               pg_catalog.count(*) OVER w AS position
        FROM exactly.payments p
        WHERE $1 IS NULL OR p.account OPERATOR(pg_catalog.=) $1
        WINDOW w AS (PARTITION BY p.account ORDER BY p.id)
    ),
    per_account AS (
        SELECT e.account,
               pg_catalog.count(*) AS entries,
               (pg_catalog.array_agg(e.running_balance ORDER BY e.id DESC))[1] AS last_balance,
               pg_catalog.min(e.id) FILTER (
                   WHERE e.running_balance OPERATOR(pg_catalog.<>)
                         (e.previous OPERATOR(pg_catalog.+) e.amount)) AS first_bad
        FROM entries e GROUP BY e.account
    )
    SELECT a.account,
           b.first_bad IS NULL
               AND a.balance OPERATOR(pg_catalog.=) COALESCE(b.last_balance, 0)
               AND a.entries OPERATOR(pg_catalog.=) COALESCE(b.entries, 0) AS ok,
           CASE
               WHEN b.first_bad IS NOT NULL THEN
                   (SELECT pg_catalog.format('entry %s: running_balance %s, but previous %s + amount %s = %s',
                                  e.id, e.running_balance, e.previous, e.amount,
                                  e.previous OPERATOR(pg_catalog.+) e.amount)
                    FROM entries e
                    WHERE e.account OPERATOR(pg_catalog.=) a.account
                      AND e.id OPERATOR(pg_catalog.=) b.first_bad)
               WHEN a.balance OPERATOR(pg_catalog.<>) COALESCE(b.last_balance, 0) THEN
                   pg_catalog.format('balance %s, but the last entry''s running_balance is %s',
                                     a.balance, COALESCE(b.last_balance, 0))
               WHEN a.entries OPERATOR(pg_catalog.<>) COALESCE(b.entries, 0) THEN
                   pg_catalog.format('entries %s, but %s entries exist', a.entries, COALESCE(b.entries, 0))
               ELSE pg_catalog.format('%s entries, balance %s', a.entries, a.balance)
           END AS detail
    FROM exactly.accounts a
    LEFT JOIN per_account b ON b.account OPERATOR(pg_catalog.=) a.account
    WHERE $1 IS NULL OR a.account OPERATOR(pg_catalog.=) $1
    ORDER BY a.account
$$;

-- purge_ticket_batches: deletes as the extension's owner (batch keys are state).
CREATE OR REPLACE FUNCTION exactly.purge_ticket_batches(older_than interval) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    purged bigint;
BEGIN
    IF older_than IS NULL THEN
        RAISE EXCEPTION 'argument "older_than" must not be NULL'
            USING ERRCODE = 'null_value_not_allowed', HINT = 'e.g. exactly.purge_ticket_batches(''30 days'')';
    END IF;
    DELETE FROM exactly.ticket_batches b
    WHERE b.created_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) older_than);
    GET DIAGNOSTICS purged = ROW_COUNT;
    RETURN purged;
END $$;

-- New accounts: no empty name, no limit that could never be one.
CREATE FUNCTION exactly.check_new_account() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.account OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION 'account must not be an empty string'
            USING ERRCODE = 'invalid_parameter_value', HINT = 'name the account, e.g. ''alice''';
    END IF;
    IF NEW.min_balance IS NOT NULL
       AND (NEW.min_balance OPERATOR(pg_catalog.=) 'NaN'::pg_catalog.numeric
            OR pg_catalog.abs(NEW.min_balance) OPERATOR(pg_catalog.=) 'Infinity'::pg_catalog.numeric) THEN
        RAISE EXCEPTION 'min_balance must be a finite number or NULL, not %', NEW.min_balance
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'NULL means no limit; 0 forbids a negative balance';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER check_new_account BEFORE INSERT ON exactly.accounts
    FOR EACH ROW EXECUTE FUNCTION exactly.check_new_account();

-- Claims: keys in their stored form. 0.2.0 kept a one-column primary key's text; it is
-- read back through the key type's input function (with this session's settings). A live
-- claim whose keys no longer read back is dropped (its rows are pending again); so is a
-- failure record. The function doing it exists only during this script.
CREATE FUNCTION exactly.claim_key_of_0_2_text(regclass, text) RETURNS bytea
LANGUAGE c STRICT
AS 'MODULE_PATHNAME', 'claim_key_of_0_2_text';

ALTER TABLE exactly.claims RENAME COLUMN row_keys TO row_keys_0_2;
ALTER TABLE exactly.claims ADD COLUMN row_keys bytea[], ADD COLUMN keys jsonb[], ADD COLUMN key_types oid[];
UPDATE exactly.claims c
SET row_keys = (SELECT pg_catalog.array_agg(exactly.claim_key_of_0_2_text(c.rel, u.k) ORDER BY u.n)
                FROM pg_catalog.unnest(c.row_keys_0_2) WITH ORDINALITY AS u(k, n)),
    keys = (SELECT pg_catalog.array_agg(pg_catalog.jsonb_build_object(p.attname, u.k) ORDER BY u.n)
            FROM pg_catalog.unnest(c.row_keys_0_2) WITH ORDINALITY AS u(k, n)),
    key_types = ARRAY[p.atttypid]
FROM (SELECT c.oid AS rel, a.attname, a.atttypid
      FROM pg_catalog.pg_class c
      JOIN pg_catalog.pg_index i ON i.indrelid OPERATOR(pg_catalog.=) c.oid AND i.indisprimary
      JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid
                                   AND a.attnum OPERATOR(pg_catalog.=) i.indkey[0]
      WHERE i.indnatts OPERATOR(pg_catalog.=) 1) p
WHERE p.rel OPERATOR(pg_catalog.=) c.rel;
DELETE FROM exactly.claims c
WHERE c.key_types IS NULL OR c.row_keys IS NULL
   OR pg_catalog.array_position(c.row_keys, NULL) IS NOT NULL;
ALTER TABLE exactly.claims DROP COLUMN row_keys_0_2,
    ALTER COLUMN row_keys SET NOT NULL, ALTER COLUMN keys SET NOT NULL, ALTER COLUMN key_types SET NOT NULL;

CREATE TABLE exactly.claim_attempts_0_3 (
    rel             regclass NOT NULL,
    row_key         bytea NOT NULL,
    key             jsonb NOT NULL,
    failed_attempts integer NOT NULL,
    last_failed_at  timestamptz NOT NULL
);
INSERT INTO exactly.claim_attempts_0_3 (rel, row_key, key, failed_attempts, last_failed_at)
SELECT a.rel, x.image,
       (pg_catalog.array_agg(pg_catalog.jsonb_build_object(p.attname, a.row_key)))[1],
       pg_catalog.sum(a.failed_attempts), pg_catalog.max(a.last_failed_at)
FROM exactly.claim_attempts a
JOIN (SELECT c.oid AS rel, a.attname, a.atttypid
      FROM pg_catalog.pg_class c
      JOIN pg_catalog.pg_index i ON i.indrelid OPERATOR(pg_catalog.=) c.oid AND i.indisprimary
      JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid
                                   AND a.attnum OPERATOR(pg_catalog.=) i.indkey[0]
      WHERE i.indnatts OPERATOR(pg_catalog.=) 1) p ON p.rel OPERATOR(pg_catalog.=) a.rel
CROSS JOIN LATERAL (SELECT exactly.claim_key_of_0_2_text(a.rel, a.row_key) AS image) x
WHERE x.image IS NOT NULL
GROUP BY a.rel, x.image;
-- out of the extension first: that also takes it off pg_dump's list
ALTER EXTENSION pg_exactly DROP TABLE exactly.claim_attempts;
DROP TABLE exactly.claim_attempts;
ALTER TABLE exactly.claim_attempts_0_3 RENAME TO claim_attempts;
ALTER TABLE exactly.claim_attempts ADD PRIMARY KEY (rel, row_key);
COMMENT ON TABLE exactly.claim_attempts IS
    'pg_exactly: per claimed row, how many claims of it ended without completing it';
SELECT pg_catalog.pg_extension_config_dump('exactly.claim_attempts', '');

DROP FUNCTION exactly.claim_key_of_0_2_text(regclass, text);

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

-- Privileges: what 0.2.0's README had roles granted is revoked (see the top of this file).
DO $$
DECLARE
    grantee regrole;
BEGIN
    FOR grantee IN
        SELECT DISTINCT a.grantee::pg_catalog.regrole
        FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
        WHERE c.relnamespace OPERATOR(pg_catalog.=) 'exactly'::pg_catalog.regnamespace
          AND a.grantee OPERATOR(pg_catalog.<>) c.relowner AND a.grantee OPERATOR(pg_catalog.<>) 0
        UNION
        SELECT DISTINCT a.grantee::pg_catalog.regrole
        FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a
        WHERE n.nspname OPERATOR(pg_catalog.=) 'exactly'
          AND a.grantee OPERATOR(pg_catalog.<>) n.nspowner AND a.grantee OPERATOR(pg_catalog.<>) 0
        UNION
        SELECT DISTINCT a.grantee::pg_catalog.regrole
        FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
        WHERE p.pronamespace OPERATOR(pg_catalog.=) 'exactly'::pg_catalog.regnamespace
          AND a.grantee OPERATOR(pg_catalog.<>) p.proowner AND a.grantee OPERATOR(pg_catalog.<>) 0
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON ALL TABLES IN SCHEMA exactly FROM %s', grantee);
        EXECUTE pg_catalog.format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA exactly FROM %s', grantee);
        EXECUTE pg_catalog.format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA exactly FROM %s', grantee);
        EXECUTE pg_catalog.format('REVOKE ALL ON SCHEMA exactly FROM %s', grantee);
        RAISE NOTICE 'pg_exactly 0.3.0: the privileges of role % on schema exactly were revoked; give it what it needs with SELECT exactly.grant_usage(%L);',
            grantee, grantee::pg_catalog.text;
    END LOOP;
END $$;

CREATE FUNCTION exactly.grant_usage(role regrole) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF role IS NULL THEN
        RAISE EXCEPTION 'argument "role" must not be NULL'
            USING ERRCODE = 'null_value_not_allowed', HINT = 'e.g. SELECT exactly.grant_usage(''app'')';
    END IF;
    -- regrole's text is the role's name, quoted where needed
    EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA exactly TO %s', role);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA exactly TO %s', role);
    EXECUTE pg_catalog.format('REVOKE EXECUTE ON FUNCTION exactly.grant_usage(regrole) FROM %s', role);
    EXECUTE pg_catalog.format('GRANT SELECT ON ALL TABLES IN SCHEMA exactly TO %s', role);
    -- a raffle is created by inserting its row; an account may be opened beforehand to set
    -- its limit: those columns only
    EXECUTE pg_catalog.format('GRANT INSERT (tickets_requested, code_length) ON exactly.raffles TO %s', role);
    EXECUTE pg_catalog.format('GRANT INSERT (account, min_balance) ON exactly.accounts TO %s', role);
END $$;
COMMENT ON FUNCTION exactly.grant_usage(regrole) IS
    'pg_exactly: give an application role everything it needs, and no way to write state around the functions';

-- Invoice numbering with templates, periods and commit-time numbers. A tenant numbered
-- before the update keeps its row and its next number: the new columns say "as before"
-- (reset 'never', the default template), and its counter stays where it was.
ALTER TABLE exactly.invoice_sequences
    ADD COLUMN format text,
    ADD COLUMN reset text NOT NULL DEFAULT 'never',
    ADD COLUMN fiscal_year_start int NOT NULL DEFAULT 1;
CREATE TABLE exactly.invoice_periods (
    tenant      text NOT NULL,
    period      date NOT NULL,
    next_value  bigint NOT NULL DEFAULT 1,
    PRIMARY KEY (tenant, period)
) WITH (fillfactor = 50);
COMMENT ON TABLE exactly.invoice_periods IS
    'pg_exactly: per tenant and period, the next invoice number to hand out';
SELECT pg_catalog.pg_extension_config_dump('exactly.invoice_periods', '');

-- on_date and the template's settings are new arguments: the old signatures go (an
-- overload beside them would make every old call ambiguous)
DROP FUNCTION exactly.define_invoice_sequence(text, text, int);
DROP FUNCTION exactly.next_invoice_number(text);
DROP FUNCTION exactly.next_invoice_numbers(text, int);
CREATE FUNCTION exactly.define_invoice_sequence(
    "tenant" TEXT,
    "prefix" TEXT,
    "width" INT DEFAULT 8,
    "format" TEXT DEFAULT NULL,
    "reset" TEXT DEFAULT 'never',
    "fiscal_year_start" INT DEFAULT 1
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'define_invoice_sequence_wrapper';
CREATE FUNCTION exactly.next_invoice_number(
    "tenant" TEXT,
    "on_date" date DEFAULT NULL
) RETURNS TEXT
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'next_invoice_number_wrapper';
CREATE FUNCTION exactly.next_invoice_numbers(
    "tenant" TEXT,
    "n" INT,
    "on_date" date DEFAULT NULL
) RETURNS SETOF TEXT
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'next_invoice_numbers_wrapper';
CREATE FUNCTION exactly.set_next_invoice_number(
    "tenant" TEXT,
    "next_value" bigint,
    "on_date" date DEFAULT NULL
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'set_next_invoice_number_wrapper';
CREATE FUNCTION exactly.assign_invoice_number_at_commit() RETURNS trigger
LANGUAGE c
AS 'MODULE_PATHNAME', 'assign_invoice_number_at_commit_wrapper';

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA exactly FROM PUBLIC;
