
-- Raffles and tickets (seed 000): a raffle lives on the shard whose number its id carries.
-- create_raffle (the router's way to create one) picks a shard at random.
CREATE FUNCTION exactly_router.create_raffle(shard int, tickets_requested bigint, code_length int) RETURNS bigint
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON shard;
    SELECT exactly.create_raffle(exactly.on_shard(shard, tickets_requested), code_length);
$$;

CREATE FUNCTION exactly.create_raffle(tickets_requested bigint, code_length int DEFAULT 12) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
    shard int := pg_catalog.floor(pg_catalog.random() OPERATOR(pg_catalog.*) exactly_router.partitions())::pg_catalog.int4;
BEGIN
    -- the shard checks that it is this shard before it makes the raffle
    RETURN exactly_router.create_raffle(shard, tickets_requested, code_length);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(shard, SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;
COMMENT ON FUNCTION exactly.create_raffle(bigint, int) IS
    'pg_exactly_router: create a raffle on a shard picked at random; its id carries the shard';

CREATE FUNCTION exactly_router.batch_create_tickets(shard int, raffle bigint, n int, batch_key text) RETURNS int
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly_router.shard_of_id(raffle);
    SELECT exactly.batch_create_tickets(exactly.on_shard(shard, raffle), n, batch_key);
$$;

CREATE FUNCTION exactly.batch_create_tickets(raffle bigint, n int, batch_key text DEFAULT NULL) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
BEGIN
    RETURN exactly_router.batch_create_tickets(exactly_router.shard_of_id(raffle), raffle, n, batch_key);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(exactly_router.shard_of_id(raffle), SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;

CREATE FUNCTION exactly_router.purge_ticket_batches(older_than interval) RETURNS SETOF bigint
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON ALL;
    SELECT exactly.purge_ticket_batches(older_than);
$$;

CREATE FUNCTION exactly.purge_ticket_batches(older_than interval) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
BEGIN
    RETURN (SELECT pg_catalog.sum(p)::pg_catalog.int8 FROM exactly_router.purge_ticket_batches(older_than) AS p);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(NULL, SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;
