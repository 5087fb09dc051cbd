-- pg_exactly 0.1.0 -> 0.2.0: find_or_create and increment (seed 002), named locks and
-- exactly-once work claims (seed 003). Run by ALTER EXTENSION pg_exactly UPDATE, with
-- search_path set to the extension's schema. Nothing of 0.1.0 changes in SQL; the new
-- library serves the old functions as before.

-- sql/claims.sql, as in 0.2.0
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

-- the new functions, as pgrx writes them for 0.2.0
-- pg_exactly::claims::claim_batch
CREATE  FUNCTION "claim_batch"(
	"rel" regclass, /* Option < PgRelation > */
	"done_column" TEXT, /* Option < & str > */
	"batch" INT DEFAULT 100, /* Option < i32 > */
	"lease" interval DEFAULT '5 minutes' /* Option < Interval > */
) RETURNS TABLE (
	"claim" uuid,  /* Uuid */
	"data" jsonb  /* RowJson */
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'claim_batch_wrapper';

-- pg_exactly::claims::complete_batch
CREATE  FUNCTION "complete_batch"(
	"claim" uuid /* Option < Uuid > */
) RETURNS bigint /* i64 */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'complete_batch_wrapper';

-- pg_exactly::claims::extend_claim
CREATE  FUNCTION "extend_claim"(
	"claim" uuid, /* Option < Uuid > */
	"lease" interval DEFAULT '5 minutes' /* Option < Interval > */
) RETURNS bigint /* i64 */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'extend_claim_wrapper';

-- pg_exactly::upsert::find_or_create
CREATE  FUNCTION "find_or_create"(
	"rel" regclass, /* Option < PgRelation > */
	"key" jsonb, /* Option < JsonB > */
	"defaults" jsonb DEFAULT '{}' /* Option < JsonB > */
) RETURNS TABLE (
	"data" jsonb,  /* RowJson */
	"created" bool  /* bool */
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'find_or_create_wrapper';

-- pg_exactly::upsert::increment
CREATE  FUNCTION "increment"(
	"rel" regclass, /* Option < PgRelation > */
	"key" jsonb, /* Option < JsonB > */
	"col" TEXT, /* Option < & str > */
	"by" NUMERIC DEFAULT 1 /* Option < AnyNumeric > */
) RETURNS NUMERIC /* AnyNumeric */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'increment_wrapper';

-- pg_exactly::locks::lock
CREATE  FUNCTION "lock"(
	"name" TEXT, /* Option < & str > */
	"timeout" interval DEFAULT NULL /* Option < Interval > */
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'lock_wrapper';

-- pg_exactly::locks::lock_status
CREATE  FUNCTION "lock_status"(
	"name" TEXT /* Option < & str > */
) RETURNS TABLE (
	"pid" INT,  /* Option < i32 > */
	"granted" bool,  /* Option < bool > */
	"waiting_since" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"xact_start" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"state" TEXT,  /* Option < String > */
	"query" TEXT  /* Option < String > */
)
VOLATILE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'lock_status_wrapper';

-- pg_exactly::claims::release_claim
CREATE  FUNCTION "release_claim"(
	"claim" uuid /* Option < Uuid > */
) RETURNS bigint /* i64 */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'release_claim_wrapper';

-- pg_exactly::locks::try_lock
CREATE  FUNCTION "try_lock"(
	"name" TEXT /* Option < & str > */
) RETURNS bool /* bool */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'try_lock_wrapper';
