
-- Running balances, transfers and holds (seed 004): by account; an account `scope:rest`
-- lives on the shard of `scope`. A transfer or hold between accounts of two shards is
-- refused: it would be two transactions on two servers (docs/router.md).
-- The row types of pg_exactly's tables that its functions return, column for column.
CREATE TYPE exactly.payments AS (
    id bigint, account text, amount numeric, running_balance numeric, idempotency_key text,
    created_at timestamptz, transfer_id bigint);
CREATE TYPE exactly.transfers AS (
    id bigint, from_account text, to_account text, amount numeric, currency text, metadata jsonb,
    event_at timestamptz, created_at timestamptz, idempotency_key text, hold_id bigint, leg integer);
CREATE TYPE exactly.holds AS (
    id bigint, from_account text, to_account text, amount numeric, currency text, state text,
    expires_at timestamptz, posted_amount numeric, transfer_id bigint, metadata jsonb,
    idempotency_key text, created_at timestamptz, finished_at timestamptz);

-- The shard of a transfer or hold between two accounts; refused when they are on two
-- shards. A NULL account goes with the other, for pg_exactly's own error.
CREATE FUNCTION exactly_router.shard_of_pair(from_account text, to_account text) RETURNS int
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a int := exactly.shard_for(from_account);
    b int := exactly.shard_for(to_account);
BEGIN
    IF from_account IS NULL THEN
        RETURN b;
    ELSIF to_account IS NULL OR a OPERATOR(pg_catalog.=) b THEN
        RETURN a;
    END IF;
    RAISE EXCEPTION 'accounts % and % are on different shards (% and %)',
            pg_catalog.quote_literal(from_account), pg_catalog.quote_literal(to_account), a, b
        USING ERRCODE = 'feature_not_supported',
              DETAIL = 'Moving money between shards would take a distributed transaction: the debit and the credit would commit on two servers, and a failure between them would leave the ledger out of balance.',
              HINT = 'name a tenant''s accounts scope:rest (e.g. ''11:cash'', ''11:revenue'') so they share a shard; docs/scale-out.md';
END $$;

CREATE FUNCTION exactly_router.append_payment(shard int, account text, amount numeric, idempotency_key text)
RETURNS exactly.payments
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly.shard_for(account);
    SELECT r.id, r.account, r.amount, r.running_balance, r.idempotency_key, r.created_at, r.transfer_id
    FROM exactly.append_payment(exactly.on_shard(shard, account), amount, idempotency_key) AS r;
$$;

CREATE FUNCTION exactly.append_payment(account text, amount numeric, idempotency_key text DEFAULT NULL)
RETURNS exactly.payments
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
BEGIN
    RETURN exactly_router.append_payment(exactly.shard_for(account), account, amount, idempotency_key);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(exactly.shard_for(account), SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;

-- the seed's single ledger: pg_exactly's default account, 'default'
CREATE FUNCTION exactly.append_payment(amount numeric) RETURNS exactly.payments
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
BEGIN
    RETURN exactly_router.append_payment(exactly.shard_for('default'), 'default', amount, NULL);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(exactly.shard_for('default'), SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;

CREATE FUNCTION exactly_router.append_payments(shard int, account text, amounts numeric[])
RETURNS SETOF exactly.payments
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly.shard_for(account);
    SELECT r.id, r.account, r.amount, r.running_balance, r.idempotency_key, r.created_at, r.transfer_id
    FROM exactly.append_payments(exactly.on_shard(shard, account), amounts) AS r;
$$;

CREATE FUNCTION exactly.append_payments(account text, amounts numeric[]) RETURNS SETOF exactly.payments
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
BEGIN
    RETURN QUERY SELECT * FROM exactly_router.append_payments(exactly.shard_for(account), account, amounts);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(exactly.shard_for(account), SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;

CREATE FUNCTION exactly_router.balance_at(shard int, account text, at timestamptz) RETURNS numeric
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly.shard_for(account);
    SELECT exactly.balance_at(exactly.on_shard(shard, account), at);
$$;

CREATE FUNCTION exactly.balance_at(account text, at timestamptz) RETURNS numeric
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
BEGIN
    RETURN exactly_router.balance_at(exactly.shard_for(account), account, at);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(exactly.shard_for(account), SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;

CREATE FUNCTION exactly_router.verify_ledger(shard int, account text)
RETURNS TABLE (account text, ok boolean, detail text)
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly.shard_for(account);
    SELECT v.account, v.ok, v.detail FROM exactly.verify_ledger(exactly.on_shard(shard, account)) AS v;
$$;

CREATE FUNCTION exactly_router.verify_ledgers()
RETURNS TABLE (account text, ok boolean, detail text)
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON ALL;
    SELECT v.account, v.ok, v.detail FROM exactly.verify_ledger() AS v;
$$;

-- NULL: every account of every shard. A SQL function, as pg_exactly's: PL/pgSQL cannot
-- have an argument and a result column both named account.
CREATE FUNCTION exactly_router.verify(one text)
RETURNS TABLE (account text, ok boolean, detail text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    error_detail text;
    error_hint text;
BEGIN
    IF one IS NULL THEN
        RETURN QUERY SELECT * FROM exactly_router.verify_ledgers();
    ELSE
        RETURN QUERY SELECT * FROM exactly_router.verify_ledger(exactly.shard_for(one), one);
    END IF;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(CASE WHEN one IS NOT NULL THEN exactly.shard_for(one) END,
                                  SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;

CREATE FUNCTION exactly.verify_ledger(account text DEFAULT NULL)
RETURNS TABLE (account text, ok boolean, detail text)
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM exactly_router.verify($1)
$$;

CREATE FUNCTION exactly_router.transfer(shard int, from_account text, to_account text, amount numeric,
    idempotency_key text, metadata jsonb, event_at timestamptz) RETURNS exactly.transfers
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly_router.shard_of_pair(from_account, to_account);
    SELECT r.id, r.from_account, r.to_account, r.amount, r.currency, r.metadata, r.event_at, r.created_at, r.idempotency_key, r.hold_id, r.leg
    FROM exactly.transfer(exactly.on_shard(shard, from_account), to_account, amount, idempotency_key, metadata, event_at) AS r;
$$;

CREATE FUNCTION exactly.transfer(from_account text, to_account text, amount numeric,
    idempotency_key text DEFAULT NULL, metadata jsonb DEFAULT NULL, event_at timestamptz DEFAULT NULL)
RETURNS exactly.transfers
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
    shard int := exactly_router.shard_of_pair(from_account, to_account);
BEGIN
    RETURN exactly_router.transfer(shard, from_account, to_account, amount, idempotency_key, metadata, event_at);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(shard, SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;

-- The shard of a multi-leg transfer: every leg's accounts on one shard, or refused.
-- Legs that are not what pg_exactly reads go to one shard anyway, for its own error.
CREATE FUNCTION exactly_router.shard_of_legs(legs jsonb) RETURNS int
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    accounts text[];
    i int;
BEGIN
    IF pg_catalog.jsonb_typeof(legs) IS DISTINCT FROM 'array' THEN
        RETURN 0;
    END IF;
    SELECT pg_catalog.array_agg(a.account) INTO accounts
    FROM pg_catalog.jsonb_array_elements(legs) AS l(leg),
         LATERAL (VALUES (l.leg OPERATOR(pg_catalog.->>) 'from'), (l.leg OPERATOR(pg_catalog.->>) 'to')) AS a(account)
    WHERE pg_catalog.jsonb_typeof(l.leg) OPERATOR(pg_catalog.=) 'object' AND a.account IS NOT NULL;
    FOR i IN 2 .. COALESCE(pg_catalog.array_length(accounts, 1), 0) LOOP
        PERFORM exactly_router.shard_of_pair(accounts[1], accounts[i]);
    END LOOP;
    RETURN exactly.shard_for(accounts[1]);
END $$;

CREATE FUNCTION exactly_router.transfers(shard int, legs jsonb, idempotency_key text, metadata jsonb, event_at timestamptz)
RETURNS SETOF exactly.transfers
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly_router.shard_of_legs(legs);
    SELECT r.id, r.from_account, r.to_account, r.amount, r.currency, r.metadata, r.event_at, r.created_at, r.idempotency_key, r.hold_id, r.leg
    FROM exactly.transfers(exactly.on_shard(shard, legs), idempotency_key, metadata, event_at) AS r;
$$;

CREATE FUNCTION exactly.transfers(legs jsonb, idempotency_key text DEFAULT NULL, metadata jsonb DEFAULT NULL,
    event_at timestamptz DEFAULT NULL) RETURNS SETOF exactly.transfers
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
    shard int := exactly_router.shard_of_legs(legs);
BEGIN
    RETURN QUERY SELECT * FROM exactly_router.transfers(shard, legs, idempotency_key, metadata, event_at);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(shard, SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;

CREATE FUNCTION exactly_router.hold(shard int, from_account text, to_account text, amount numeric,
    timeout interval, idempotency_key text, metadata jsonb) RETURNS exactly.holds
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly_router.shard_of_pair(from_account, to_account);
    SELECT r.id, r.from_account, r.to_account, r.amount, r.currency, r.state, r.expires_at, r.posted_amount,
           r.transfer_id, r.metadata, r.idempotency_key, r.created_at, r.finished_at
    FROM exactly.hold(exactly.on_shard(shard, from_account), to_account, amount, timeout, idempotency_key, metadata) AS r;
$$;

CREATE FUNCTION exactly.hold(from_account text, to_account text, amount numeric, timeout interval DEFAULT NULL,
    idempotency_key text DEFAULT NULL, metadata jsonb DEFAULT NULL) RETURNS exactly.holds
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
    shard int := exactly_router.shard_of_pair(from_account, to_account);
BEGIN
    RETURN exactly_router.hold(shard, from_account, to_account, amount, timeout, idempotency_key, metadata);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(shard, SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;

CREATE FUNCTION exactly_router.post_hold(shard int, hold bigint, amount numeric) RETURNS exactly.transfers
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly_router.shard_of_id(hold);
    SELECT r.id, r.from_account, r.to_account, r.amount, r.currency, r.metadata, r.event_at, r.created_at, r.idempotency_key, r.hold_id, r.leg
    FROM exactly.post_hold(exactly.on_shard(shard, hold), amount) AS r;
$$;

CREATE FUNCTION exactly.post_hold(hold bigint, amount numeric DEFAULT NULL) RETURNS exactly.transfers
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
BEGIN
    RETURN exactly_router.post_hold(exactly_router.shard_of_id(hold), hold, amount);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(exactly_router.shard_of_id(hold), SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;

CREATE FUNCTION exactly_router.void_hold(shard int, hold bigint) RETURNS exactly.holds
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON exactly_router.shard_of_id(hold);
    SELECT r.id, r.from_account, r.to_account, r.amount, r.currency, r.state, r.expires_at, r.posted_amount,
           r.transfer_id, r.metadata, r.idempotency_key, r.created_at, r.finished_at
    FROM exactly.void_hold(exactly.on_shard(shard, hold)) AS r;
$$;

CREATE FUNCTION exactly.void_hold(hold bigint) RETURNS exactly.holds
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
BEGIN
    RETURN exactly_router.void_hold(exactly_router.shard_of_id(hold), hold);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(exactly_router.shard_of_id(hold), SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;

CREATE FUNCTION exactly_router.expire_holds() RETURNS SETOF bigint
LANGUAGE plproxy AS $$
    CLUSTER 'exactly'; RUN ON ALL;
    SELECT exactly.expire_holds();
$$;

CREATE FUNCTION exactly.expire_holds() RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    error_detail text;
    error_hint text;
BEGIN
    RETURN (SELECT pg_catalog.sum(e)::pg_catalog.int8 FROM exactly_router.expire_holds() AS e);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
    PERFORM exactly_router.failed(NULL, SQLSTATE, SQLERRM, error_detail, error_hint);
END $$;
