-- The reference: leases as a careful user would write them in PL/pgSQL — a table of
-- leases, a grant that takes an expired or released lease in one upsert, and a fence that
-- grows with every grant. (No fence check: pg_exactly's check_fence has no counterpart
-- here; these rates compare acquire, renew and release.)
CREATE TABLE ref_leases (
    name       text PRIMARY KEY,
    token      uuid,
    fence      bigint NOT NULL,
    expires_at timestamptz
);

CREATE FUNCTION ref_acquire_lease(p_name text, p_ttl interval)
RETURNS TABLE (token uuid, fence bigint) LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    INSERT INTO ref_leases AS l (name, token, fence, expires_at)
    VALUES (p_name, gen_random_uuid(), 1, clock_timestamp() + p_ttl)
    ON CONFLICT (name) DO UPDATE
    SET token = excluded.token, fence = l.fence + 1, expires_at = excluded.expires_at
    WHERE l.token IS NULL OR l.expires_at <= clock_timestamp()
    RETURNING l.token, l.fence;
END $$;

CREATE FUNCTION ref_renew_lease(p_name text, p_token uuid, p_ttl interval)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    UPDATE ref_leases l SET expires_at = clock_timestamp() + p_ttl
    WHERE l.name = p_name AND l.token = p_token AND l.expires_at > clock_timestamp();
    RETURN FOUND;
END $$;

CREATE FUNCTION ref_release_lease(p_name text, p_token uuid)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    UPDATE ref_leases l SET token = NULL, expires_at = NULL
    WHERE l.name = p_name AND l.token = p_token AND l.expires_at > clock_timestamp();
    RETURN FOUND;
END $$;
