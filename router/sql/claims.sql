
-- Work claims (seed 003): a table sharded like the application's others has pending rows on
-- every shard, so claim_batch claims on every shard (up to `batch` rows from each, one
-- claim per shard) and each claim id carries its shard's number: the calls that take a
-- claim run there. rel is text here: the table lives on the shards.
CREATE FUNCTION exactly_router.claim_batch_all(rel text, done_column text, batch int, lease interval,
    max_attempts int, retry_after interval, order_by text, complete uuid)
RETURNS TABLE (claim uuid, data jsonb)
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON ALL;
    SELECT c.claim, c.data
    FROM exactly.claim_batch(rel::pg_catalog.regclass, done_column, batch, lease, max_attempts, retry_after, order_by, complete) AS c;
$$;

CREATE FUNCTION exactly_router.claim_batch_on(shard int, rel text, done_column text, batch int, lease interval,
    max_attempts int, retry_after interval, order_by text, complete uuid)
RETURNS TABLE (claim uuid, data jsonb)
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON shard;
    SELECT c.claim, c.data
    FROM exactly.claim_batch(exactly.on_shard(shard, rel)::pg_catalog.regclass, done_column, batch, lease, max_attempts, retry_after, order_by, complete) AS c;
$$;

-- All shards at once; when one cannot be reached, one at a time, skipping it with a
-- WARNING (what the others claimed in the failed attempt comes back after its lease).
CREATE FUNCTION exactly.claim_batch(rel text, done_column text, batch int DEFAULT 100,
    lease interval DEFAULT '5 minutes', max_attempts int DEFAULT NULL, retry_after interval DEFAULT NULL,
    order_by text DEFAULT NULL, complete uuid DEFAULT NULL)
RETURNS TABLE (claim uuid, data jsonb)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    shard int;
    error_detail text;
    error_hint text;
BEGIN
    RETURN QUERY SELECT * FROM exactly_router.claim_batch_all(rel, done_column, batch, lease, max_attempts,
        retry_after, order_by, complete);
EXCEPTION WHEN OTHERS THEN
    IF NOT exactly_router.shard_lost(SQLSTATE, SQLERRM) THEN
        GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
        PERFORM exactly_router.failed(NULL, SQLSTATE, SQLERRM, error_detail, error_hint);
    END IF;
    FOR shard IN 0 .. exactly_router.partitions() OPERATOR(pg_catalog.-) 1 LOOP
        BEGIN
            RETURN QUERY SELECT * FROM exactly_router.claim_batch_on(shard, rel, done_column, batch, lease,
                max_attempts, retry_after, order_by, complete);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
            -- the claim to complete is on this shard: it was not completed, say so
            IF NOT exactly_router.shard_lost(SQLSTATE, SQLERRM)
               OR (complete IS NOT NULL
                   AND shard OPERATOR(pg_catalog.=) exactly_router.shard_of(exactly.shard_of_claim(complete))) THEN
                PERFORM exactly_router.failed(shard, SQLSTATE, SQLERRM, error_detail, error_hint);
            END IF;
            RAISE WARNING 'shard % is unavailable: claimed from the others', shard
                USING ERRCODE = 'connection_failure', DETAIL = SQLERRM;
        END;
    END LOOP;
END $$;

CREATE FUNCTION exactly_router.complete_batch(shard int, claim uuid) RETURNS bigint
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly.shard_of_claim(claim);
    SELECT exactly.complete_batch(exactly.on_shard(shard, claim));
$$;

CREATE FUNCTION exactly.complete_batch(claim uuid) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
BEGIN
    RETURN exactly_router.complete_batch(exactly.shard_of_claim(claim), claim);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(exactly.shard_of_claim(claim), SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;

CREATE FUNCTION exactly_router.extend_claim(shard int, claim uuid, lease interval) RETURNS bigint
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly.shard_of_claim(claim);
    SELECT exactly.extend_claim(exactly.on_shard(shard, claim), lease);
$$;

CREATE FUNCTION exactly.extend_claim(claim uuid, lease interval DEFAULT '5 minutes') RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
BEGIN
    RETURN exactly_router.extend_claim(exactly.shard_of_claim(claim), claim, lease);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(exactly.shard_of_claim(claim), SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;

CREATE FUNCTION exactly_router.release_claim(shard int, claim uuid) RETURNS bigint
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly.shard_of_claim(claim);
    SELECT exactly.release_claim(exactly.on_shard(shard, claim));
$$;

CREATE FUNCTION exactly.release_claim(claim uuid) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
BEGIN
    RETURN exactly_router.release_claim(exactly.shard_of_claim(claim), claim);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(exactly.shard_of_claim(claim), SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;

CREATE FUNCTION exactly_router.complete_rows(shard int, claim uuid, keys jsonb) RETURNS bigint
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly.shard_of_claim(claim);
    SELECT exactly.complete_rows(exactly.on_shard(shard, claim), keys);
$$;

CREATE FUNCTION exactly.complete_rows(claim uuid, keys jsonb) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
BEGIN
    RETURN exactly_router.complete_rows(exactly.shard_of_claim(claim), claim, keys);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(exactly.shard_of_claim(claim), SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;

CREATE FUNCTION exactly_router.fail_rows(shard int, claim uuid, keys jsonb, error text) RETURNS bigint
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly.shard_of_claim(claim);
    SELECT exactly.fail_rows(exactly.on_shard(shard, claim), keys, error);
$$;

CREATE FUNCTION exactly.fail_rows(claim uuid, keys jsonb, error text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
BEGIN
    RETURN exactly_router.fail_rows(exactly.shard_of_claim(claim), claim, keys, error);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(exactly.shard_of_claim(claim), SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;

CREATE FUNCTION exactly_router.purge_claim_attempts(older_than interval) RETURNS SETOF bigint
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON ALL;
    SELECT exactly.purge_claim_attempts(older_than);
$$;

CREATE FUNCTION exactly.purge_claim_attempts(older_than interval) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
BEGIN
    RETURN (SELECT pg_catalog.sum(p)::pg_catalog.int8 FROM exactly_router.purge_claim_attempts(older_than) AS p);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(NULL, SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;
