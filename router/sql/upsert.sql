
-- Find or create and counters (seed 002): by (table, key), exactly.shard_for_row(rel, key).
-- rel is text here: the table lives on the shards, not on the router.
CREATE FUNCTION exactly_router.find_or_create(route int, rel text, key jsonb, defaults jsonb)
RETURNS TABLE (data jsonb, created boolean)
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON route;
    SELECT f.data, f.created FROM exactly.find_or_create(rel::pg_catalog.regclass, key, defaults) AS f;
$$;

CREATE FUNCTION exactly.find_or_create(rel text, key jsonb, defaults jsonb DEFAULT '{}')
RETURNS TABLE (data jsonb, created boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    route int := exactly_router.route_row(rel, key);
BEGIN
    RETURN QUERY SELECT * FROM exactly_router.find_or_create(route, rel, key, defaults);
EXCEPTION WHEN internal_error OR admin_shutdown OR crash_shutdown OR cannot_connect_now THEN
    PERFORM exactly_router.unreachable(route, SQLSTATE, SQLERRM);
END $$;

CREATE FUNCTION exactly_router.increment(route int, rel text, key jsonb, col text, by numeric) RETURNS numeric
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON route;
    SELECT exactly.increment(rel::pg_catalog.regclass, key, col, by);
$$;

CREATE FUNCTION exactly.increment(rel text, key jsonb, col text, by numeric DEFAULT 1) RETURNS numeric
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    route int := exactly_router.route_row(rel, key);
BEGIN
    RETURN exactly_router.increment(route, rel, key, col, by);
EXCEPTION WHEN internal_error OR admin_shutdown OR crash_shutdown OR cannot_connect_now THEN
    PERFORM exactly_router.unreachable(route, SQLSTATE, SQLERRM);
END $$;
