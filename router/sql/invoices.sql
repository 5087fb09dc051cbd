
-- Invoice numbers (seed 001): by tenant. A number handed out through the router is
-- committed on the tenant's shard when the call returns; to number rows of your own table,
-- insert them on that shard with exactly.assign_invoice_number (docs/router.md).
CREATE FUNCTION exactly_router.define_invoice_sequence(route int, tenant text, prefix text, width int,
    format text, reset text, fiscal_year_start int) RETURNS void
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON route;
    SELECT exactly.define_invoice_sequence(tenant, prefix, width, format, reset, fiscal_year_start);
$$;

CREATE FUNCTION exactly.define_invoice_sequence(tenant text, prefix text, width int DEFAULT 8,
    format text DEFAULT NULL, reset text DEFAULT 'never', fiscal_year_start int DEFAULT 1) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM exactly_router.define_invoice_sequence(exactly_router.route(tenant), tenant, prefix, width,
        format, reset, fiscal_year_start);
EXCEPTION WHEN internal_error OR admin_shutdown OR crash_shutdown OR cannot_connect_now THEN
    PERFORM exactly_router.unreachable(exactly_router.route(tenant), SQLSTATE, SQLERRM);
END $$;

CREATE FUNCTION exactly_router.next_invoice_number(route int, tenant text, on_date date) RETURNS text
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON route;
    SELECT exactly.next_invoice_number(tenant, on_date);
$$;

CREATE FUNCTION exactly.next_invoice_number(tenant text, on_date date DEFAULT NULL) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN exactly_router.next_invoice_number(exactly_router.route(tenant), tenant, on_date);
EXCEPTION WHEN internal_error OR admin_shutdown OR crash_shutdown OR cannot_connect_now THEN
    PERFORM exactly_router.unreachable(exactly_router.route(tenant), SQLSTATE, SQLERRM);
END $$;

CREATE FUNCTION exactly_router.next_invoice_numbers(route int, tenant text, n int, on_date date) RETURNS SETOF text
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON route;
    SELECT * FROM exactly.next_invoice_numbers(tenant, n, on_date);
$$;

CREATE FUNCTION exactly.next_invoice_numbers(tenant text, n int, on_date date DEFAULT NULL) RETURNS SETOF text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY SELECT * FROM exactly_router.next_invoice_numbers(exactly_router.route(tenant), tenant, n, on_date);
EXCEPTION WHEN internal_error OR admin_shutdown OR crash_shutdown OR cannot_connect_now THEN
    PERFORM exactly_router.unreachable(exactly_router.route(tenant), SQLSTATE, SQLERRM);
END $$;

CREATE FUNCTION exactly_router.set_next_invoice_number(route int, tenant text, next_value bigint, on_date date) RETURNS void
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON route;
    SELECT exactly.set_next_invoice_number(tenant, next_value, on_date);
$$;

CREATE FUNCTION exactly.set_next_invoice_number(tenant text, next_value bigint, on_date date DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM exactly_router.set_next_invoice_number(exactly_router.route(tenant), tenant, next_value, on_date);
EXCEPTION WHEN internal_error OR admin_shutdown OR crash_shutdown OR cannot_connect_now THEN
    PERFORM exactly_router.unreachable(exactly_router.route(tenant), SQLSTATE, SQLERRM);
END $$;
