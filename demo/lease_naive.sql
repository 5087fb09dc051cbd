-- Seed 003 with a lease instead of a lock held across the call: the lease a user would write
-- without fencing (a table, an expiry, a counter), and the writes made under it.
CREATE TABLE sync_leases (name text PRIMARY KEY, token uuid, fence bigint NOT NULL, expires_at timestamptz);
CREATE TABLE sync_writes (seq bigserial PRIMARY KEY, fence bigint NOT NULL);

-- the grant: one upsert that takes an expired or released lease; fence 0 when not granted
CREATE FUNCTION take_lease(ttl interval) RETURNS bigint LANGUAGE sql AS $$
    WITH granted AS (
        INSERT INTO sync_leases AS l VALUES ('third_party_sync', gen_random_uuid(), 1, clock_timestamp() + ttl)
        ON CONFLICT (name) DO UPDATE SET token = excluded.token, fence = l.fence + 1, expires_at = excluded.expires_at
        WHERE l.expires_at <= clock_timestamp()
        RETURNING l.fence)
    SELECT COALESCE(max(g.fence), 0) FROM granted g
$$;
-- the write made after the third-party call: it lands whoever holds the lease now
CREATE FUNCTION write_under_lease(fence bigint) RETURNS boolean LANGUAGE sql AS $$
    INSERT INTO sync_writes (fence) VALUES (fence) RETURNING true
$$;
