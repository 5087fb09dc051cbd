
-- Locks, leases and slots (seed 003): by name (a name `scope:rest` on the shard of scope).
-- Leases and slots outlive transactions and are routed; lock, try_lock and check_fence act
-- within the caller's transaction on the shard and are refused (exactly_router.refuse_transaction_scoped).
CREATE FUNCTION exactly.lock(name text, timeout interval DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM exactly_router.refuse_transaction_scoped('lock', name);
END $$;

CREATE FUNCTION exactly.try_lock(name text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM exactly_router.refuse_transaction_scoped('try_lock', name);
    RETURN NULL;
END $$;

CREATE FUNCTION exactly.check_fence(name text, fence bigint) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM exactly_router.refuse_transaction_scoped('check_fence', name);
END $$;

CREATE FUNCTION exactly_router.lock_status(shard int, name text)
RETURNS TABLE (pid int, granted boolean, waiting_since timestamptz, xact_start timestamptz, state text, query text)
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly.shard_for(name);
    SELECT l.pid, l.granted, l.waiting_since, l.xact_start, l.state, l.query FROM exactly.lock_status(exactly.on_shard(shard, name)) AS l;
$$;

CREATE FUNCTION exactly.lock_status(name text)
RETURNS TABLE (pid int, granted boolean, waiting_since timestamptz, xact_start timestamptz, state text, query text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
BEGIN
    RETURN QUERY SELECT * FROM exactly_router.lock_status(exactly.shard_for($1), $1);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(exactly.shard_for($1), SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;

CREATE FUNCTION exactly_router.acquire_lease(shard int, name text, ttl interval)
RETURNS TABLE (token uuid, fence bigint)
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly.shard_for(name);
    SELECT l.token, l.fence FROM exactly.acquire_lease(exactly.on_shard(shard, name), ttl) AS l;
$$;

CREATE FUNCTION exactly.acquire_lease(name text, ttl interval) RETURNS TABLE (token uuid, fence bigint)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
BEGIN
    RETURN QUERY SELECT * FROM exactly_router.acquire_lease(exactly.shard_for($1), $1, $2);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(exactly.shard_for($1), SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;

CREATE FUNCTION exactly_router.renew_lease(shard int, name text, token uuid, ttl interval) RETURNS boolean
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly.shard_for(name);
    SELECT exactly.renew_lease(exactly.on_shard(shard, name), token, ttl);
$$;

CREATE FUNCTION exactly.renew_lease(name text, token uuid, ttl interval) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
BEGIN
    RETURN exactly_router.renew_lease(exactly.shard_for(name), name, token, ttl);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(exactly.shard_for(name), SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;

CREATE FUNCTION exactly_router.release_lease(shard int, name text, token uuid) RETURNS boolean
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly.shard_for(name);
    SELECT exactly.release_lease(exactly.on_shard(shard, name), token);
$$;

CREATE FUNCTION exactly.release_lease(name text, token uuid) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
BEGIN
    RETURN exactly_router.release_lease(exactly.shard_for(name), name, token);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(exactly.shard_for(name), SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;

CREATE FUNCTION exactly_router.acquire_slot(shard int, name text, slots int, ttl interval) RETURNS uuid
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly.shard_for(name);
    SELECT exactly.acquire_slot(exactly.on_shard(shard, name), slots, ttl);
$$;

CREATE FUNCTION exactly.acquire_slot(name text, slots int, ttl interval) RETURNS uuid
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
BEGIN
    RETURN exactly_router.acquire_slot(exactly.shard_for(name), name, slots, ttl);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(exactly.shard_for(name), SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;

CREATE FUNCTION exactly_router.renew_slot(shard int, name text, token uuid, ttl interval) RETURNS boolean
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly.shard_for(name);
    SELECT exactly.renew_slot(exactly.on_shard(shard, name), token, ttl);
$$;

CREATE FUNCTION exactly.renew_slot(name text, token uuid, ttl interval) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
BEGIN
    RETURN exactly_router.renew_slot(exactly.shard_for(name), name, token, ttl);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(exactly.shard_for(name), SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;

CREATE FUNCTION exactly_router.release_slot(shard int, name text, token uuid) RETURNS boolean
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly.shard_for(name);
    SELECT exactly.release_slot(exactly.on_shard(shard, name), token);
$$;

CREATE FUNCTION exactly.release_slot(name text, token uuid) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
BEGIN
    RETURN exactly_router.release_slot(exactly.shard_for(name), name, token);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(exactly.shard_for(name), SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;
