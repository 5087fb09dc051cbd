-- pg_exactly 0.4.0 -> 0.5.0: leases with fencing tokens, slots, and claims that act like a
-- queue (docs/coordination.md).

-- claims remember what a failure of their rows means; failed rows remember why, and when
-- they may go out again
ALTER TABLE exactly.claims ADD COLUMN max_attempts integer, ADD COLUMN retry_after interval;
ALTER TABLE exactly.claim_attempts
    ADD COLUMN last_error text,
    ADD COLUMN max_attempts integer,
    ADD COLUMN retry_after interval,
    ADD COLUMN retry_at timestamptz,
    ADD COLUMN given_up_at timestamptz;
CREATE INDEX claim_attempts_held_back_idx ON exactly.claim_attempts (rel)
    WHERE given_up_at IS NOT NULL OR retry_at IS NOT NULL;

-- as sql/coordination.sql installs them
CREATE TABLE exactly.leases (
    name       text PRIMARY KEY,
    token      uuid,
    fence      bigint NOT NULL,
    granted_at timestamptz NOT NULL,
    expires_at timestamptz
);
COMMENT ON TABLE exactly.leases IS
    'pg_exactly: leases of exactly.acquire_lease, one row per name; fence counts its grants';

-- One row per slot holder of a name; a holder past expires_at no longer counts.
CREATE TABLE exactly.slots (
    name        text NOT NULL,
    token       uuid NOT NULL,
    acquired_at timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (name, token)
);
COMMENT ON TABLE exactly.slots IS
    'pg_exactly: holders of exactly.acquire_slot, one row per held slot';

SELECT pg_catalog.pg_extension_config_dump('exactly.leases', '');
SELECT pg_catalog.pg_extension_config_dump('exactly.slots', '');

DROP FUNCTION exactly.claim_batch(regclass, text, integer, interval);
CREATE FUNCTION exactly.acquire_lease(
	"name" TEXT,
	"ttl" interval
) RETURNS TABLE (
	"token" uuid,
	"fence" bigint
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'acquire_lease_wrapper';
CREATE FUNCTION exactly.renew_lease(
	"name" TEXT,
	"token" uuid,
	"ttl" interval
) RETURNS bool
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'renew_lease_wrapper';
CREATE FUNCTION exactly.release_lease(
	"name" TEXT,
	"token" uuid
) RETURNS bool
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'release_lease_wrapper';
CREATE FUNCTION exactly.check_fence(
	"name" TEXT,
	"fence" bigint
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'check_fence_wrapper';
CREATE FUNCTION exactly.acquire_slot(
	"name" TEXT,
	"slots" INT,
	"ttl" interval
) RETURNS uuid
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'acquire_slot_wrapper';
CREATE FUNCTION exactly.renew_slot(
	"name" TEXT,
	"token" uuid,
	"ttl" interval
) RETURNS bool
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'renew_slot_wrapper';
CREATE FUNCTION exactly.release_slot(
	"name" TEXT,
	"token" uuid
) RETURNS bool
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'release_slot_wrapper';
CREATE FUNCTION exactly.claim_batch(
	"rel" regclass,
	"done_column" TEXT,
	"batch" INT DEFAULT 100,
	"lease" interval DEFAULT '5 minutes',
	"max_attempts" INT DEFAULT NULL,
	"retry_after" interval DEFAULT NULL,
	"order_by" TEXT DEFAULT NULL,
	"complete" uuid DEFAULT NULL
) RETURNS TABLE (
	"claim" uuid,
	"data" jsonb
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'claim_batch_wrapper';
CREATE FUNCTION exactly.complete_rows(
	"claim" uuid,
	"keys" jsonb
) RETURNS bigint
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'complete_rows_wrapper';
CREATE FUNCTION exactly.fail_rows(
	"claim" uuid,
	"keys" jsonb,
	"error" TEXT DEFAULT NULL
) RETURNS bigint
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'fail_rows_wrapper';

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA exactly FROM PUBLIC;

-- roles given usage under 0.4.0 get the new functions and tables now
DO $$
DECLARE
    grantee pg_catalog.regrole;
BEGIN
    FOR grantee IN
        SELECT DISTINCT a.grantee::pg_catalog.regrole
        FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a
        WHERE n.nspname OPERATOR(pg_catalog.=) 'exactly'
          AND a.privilege_type OPERATOR(pg_catalog.=) 'USAGE'
          AND a.grantee OPERATOR(pg_catalog.<>) n.nspowner
          AND a.grantee OPERATOR(pg_catalog.<>) 0
    LOOP
        RAISE NOTICE 'pg_exactly 0.5.0: exactly.grant_usage(%) run again for the new functions and tables', grantee;
        PERFORM exactly.grant_usage(grantee);
    END LOOP;
END $$;
