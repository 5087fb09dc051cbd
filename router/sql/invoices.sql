
-- Invoice numbers (seed 001): by tenant. A number handed out through the router is
-- committed on the tenant's shard when the call returns; to number rows of your own table,
-- insert them on that shard with exactly.assign_invoice_number (docs/router.md).
CREATE FUNCTION exactly_router.define_invoice_sequence(shard int, tenant text, prefix text, width int,
    format text, reset text, fiscal_year_start int) RETURNS void
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly.shard_for(tenant);
    SELECT exactly.define_invoice_sequence(exactly.on_shard(shard, tenant), prefix, width, format, reset, fiscal_year_start);
$$;

CREATE FUNCTION exactly.define_invoice_sequence(tenant text, prefix text, width int DEFAULT 8,
    format text DEFAULT NULL, reset text DEFAULT 'never', fiscal_year_start int DEFAULT 1) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
BEGIN
    PERFORM exactly_router.define_invoice_sequence(exactly.shard_for(tenant), tenant, prefix, width,
        format, reset, fiscal_year_start);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(exactly.shard_for(tenant), SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;

CREATE FUNCTION exactly_router.next_invoice_number(shard int, tenant text, on_date date) RETURNS text
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly.shard_for(tenant);
    SELECT exactly.next_invoice_number(exactly.on_shard(shard, tenant), on_date);
$$;

CREATE FUNCTION exactly.next_invoice_number(tenant text, on_date date DEFAULT NULL) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
BEGIN
    RETURN exactly_router.next_invoice_number(exactly.shard_for(tenant), tenant, on_date);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(exactly.shard_for(tenant), SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;

CREATE FUNCTION exactly_router.next_invoice_numbers(shard int, tenant text, n int, on_date date) RETURNS SETOF text
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly.shard_for(tenant);
    SELECT * FROM exactly.next_invoice_numbers(exactly.on_shard(shard, tenant), n, on_date);
$$;

CREATE FUNCTION exactly.next_invoice_numbers(tenant text, n int, on_date date DEFAULT NULL) RETURNS SETOF text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
BEGIN
    RETURN QUERY SELECT * FROM exactly_router.next_invoice_numbers(exactly.shard_for(tenant), tenant, n, on_date);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(exactly.shard_for(tenant), SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;

CREATE FUNCTION exactly_router.set_next_invoice_number(shard int, tenant text, next_value bigint, on_date date) RETURNS void
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly.shard_for(tenant);
    SELECT exactly.set_next_invoice_number(exactly.on_shard(shard, tenant), next_value, on_date);
$$;

CREATE FUNCTION exactly.set_next_invoice_number(tenant text, next_value bigint, on_date date DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
BEGIN
    PERFORM exactly_router.set_next_invoice_number(exactly.shard_for(tenant), tenant, next_value, on_date);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(exactly.shard_for(tenant), SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;
