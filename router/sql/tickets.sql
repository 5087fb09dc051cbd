
-- Raffles and tickets (seed 000): a raffle lives on the shard whose number its id carries.
-- create_raffle (the router's way to create one) picks a shard at random.
CREATE FUNCTION exactly_router.create_raffle(route int, tickets_requested bigint, code_length int) RETURNS bigint
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON route;
    SELECT exactly.create_raffle(tickets_requested, code_length);
$$;

CREATE FUNCTION exactly.create_raffle(tickets_requested bigint, code_length int DEFAULT 12) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    shard int := pg_catalog.floor(pg_catalog.random() OPERATOR(pg_catalog.*) exactly_router.partitions())::pg_catalog.int4;
    id bigint;
BEGIN
    id := exactly_router.create_raffle(shard, tickets_requested, code_length);
    IF exactly_router.route_id(id) OPERATOR(pg_catalog.<>) shard THEN
        RAISE EXCEPTION 'shard % made raffle % with the number of shard % in its id', shard, id, exactly_router.route_id(id)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = pg_catalog.format('number every shard as its partition: SELECT exactly.set_shard(%s) on p%s; exactly.router_shards() lists them', shard, shard);
    END IF;
    RETURN id;
EXCEPTION WHEN internal_error OR admin_shutdown OR crash_shutdown OR cannot_connect_now THEN
    PERFORM exactly_router.unreachable(shard, SQLSTATE, SQLERRM);
END $$;
COMMENT ON FUNCTION exactly.create_raffle(bigint, int) IS
    'pg_exactly_router: create a raffle on a shard picked at random; its id carries the shard';

CREATE FUNCTION exactly_router.batch_create_tickets(route int, raffle bigint, n int, batch_key text) RETURNS int
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON route;
    SELECT exactly.batch_create_tickets(raffle, n, batch_key);
$$;

CREATE FUNCTION exactly.batch_create_tickets(raffle bigint, n int, batch_key text DEFAULT NULL) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN exactly_router.batch_create_tickets(exactly_router.route_id(raffle), raffle, n, batch_key);
EXCEPTION WHEN internal_error OR admin_shutdown OR crash_shutdown OR cannot_connect_now THEN
    PERFORM exactly_router.unreachable(exactly_router.route_id(raffle), SQLSTATE, SQLERRM);
END $$;

CREATE FUNCTION exactly_router.purge_ticket_batches(older_than interval) RETURNS SETOF bigint
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON ALL;
    SELECT exactly.purge_ticket_batches(older_than);
$$;

CREATE FUNCTION exactly.purge_ticket_batches(older_than interval) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (SELECT pg_catalog.sum(p)::pg_catalog.int8 FROM exactly_router.purge_ticket_batches(older_than) AS p);
EXCEPTION WHEN internal_error OR admin_shutdown OR crash_shutdown OR cannot_connect_now THEN
    PERFORM exactly_router.unreachable_any(SQLSTATE, SQLERRM);
END $$;
