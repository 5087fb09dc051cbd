
-- Find or create and counters (seed 002): by (table, key), exactly.shard_for_row(rel, key).
-- rel is text here: the table lives on the shards, not on the router.
CREATE FUNCTION exactly_router.find_or_create(shard int, rel text, key jsonb, defaults jsonb)
RETURNS TABLE (data jsonb, created boolean)
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly.shard_for_row(rel, key);
    SELECT f.data, f.created FROM exactly.find_or_create(exactly.on_shard(shard, rel)::pg_catalog.regclass, key, defaults) AS f;
$$;

CREATE FUNCTION exactly.find_or_create(rel text, key jsonb, defaults jsonb DEFAULT '{}')
RETURNS TABLE (data jsonb, created boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
    shard int := exactly.shard_for_row(rel, key);
BEGIN
    RETURN QUERY SELECT * FROM exactly_router.find_or_create(shard, rel, key, defaults);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(shard, SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;

CREATE FUNCTION exactly_router.increment(shard int, rel text, key jsonb, col text, by numeric) RETURNS numeric
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly.shard_for_row(rel, key);
    SELECT exactly.increment(exactly.on_shard(shard, rel)::pg_catalog.regclass, key, col, by);
$$;

CREATE FUNCTION exactly.increment(rel text, key jsonb, col text, by numeric DEFAULT 1) RETURNS numeric
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
    shard int := exactly.shard_for_row(rel, key);
BEGIN
    RETURN exactly_router.increment(shard, rel, key, col, by);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(shard, SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;
