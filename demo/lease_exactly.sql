-- Seed 003 with pg_exactly's lease: the write after the third-party call is fenced.
CREATE EXTENSION pg_exactly;
CREATE TABLE sync_writes (seq bigserial PRIMARY KEY, fence bigint NOT NULL);

CREATE FUNCTION take_lease(ttl interval) RETURNS bigint LANGUAGE sql AS $$
    SELECT COALESCE(max(l.fence), 0) FROM exactly.acquire_lease('third_party_sync', ttl) l
$$;
-- refused (false) when the lease was granted to someone else since this holder's grant
CREATE FUNCTION write_under_lease(fence bigint) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM exactly.check_fence('third_party_sync', fence);
    INSERT INTO sync_writes (fence) VALUES (fence);
    RETURN true;
EXCEPTION WHEN object_in_use THEN
    RETURN false;
END $$;
