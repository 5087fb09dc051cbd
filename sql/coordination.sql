-- Leases with fencing tokens and counting semaphores (slots): coordination that lives in a
-- table, not in a session or a transaction (docs/coordination.md). Only pg_exactly's
-- functions write here.

-- One row per lease name, kept after release so that its fence keeps growing: `fence`
-- counts the grants of the name. token and expires_at are NULL while nobody holds it.
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
