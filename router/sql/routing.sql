-- pg_exactly_router: the router database's side of a sharded pg_exactly (docs/router.md).
--
-- Every function in schema `exactly` has pg_exactly's name and arguments and runs the call
-- on the shard that owns its key, through a PL/Proxy function in schema `exactly_router`
-- (CLUSTER 'exactly': the SQL/MED server of that name lists the shards as p0, p1, ...).
-- Each PL/Proxy function finds its shard from its own key arguments (RUN ON), so calling
-- one directly cannot send a key elsewhere; the wrapper also passes the shard's number, and
-- the shard checks that it is that shard (exactly.on_shard, around the call's first
-- argument) before it does anything: a router whose partitions are listed in another order
-- than the shards were numbered is refused (55000), not obeyed on the wrong shard. The
-- wrappers pin DateStyle and IntervalStyle: PL/Proxy passes every value as text.
--
-- Each routed call is a transaction of its own on its shard: PL/Proxy commits it before it
-- returns. The wrappers in `exactly` are PL/pgSQL to turn PL/Proxy's own errors (a shard
-- it could not reach or lost: XX000) into 08006 naming the shard, and to give the caller a
-- shard's error as pg_exactly raised it, without PL/Proxy's prefixes (exactly_router.failed).

CREATE SCHEMA exactly_router;
COMMENT ON SCHEMA exactly_router IS
    'pg_exactly_router: the PL/Proxy functions behind the functions of schema exactly';

-- Routing is PL/pgSQL, not SQL functions: from the PL/pgSQL wrappers a SQL function is
-- planned anew on every call, PL/pgSQL keeps its plans.

-- How many partitions the cluster has: the pN options of server `exactly` (NULL: no such
-- server; a call routed by NULL fails, and exactly_router.failed says why).
CREATE FUNCTION exactly_router.partitions_or_null() RETURNS int
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n int;
BEGIN
    SELECT (SELECT pg_catalog.count(*) FROM pg_catalog.unnest(s.srvoptions) AS o(option)
            WHERE o.option OPERATOR(pg_catalog.~) '^p[0-9]+=')::pg_catalog.int4 INTO n
    FROM pg_catalog.pg_foreign_server s WHERE s.srvname OPERATOR(pg_catalog.=) 'exactly';
    RETURN n;
END $$;

-- The same, or 55000 when there is no server `exactly`.
CREATE FUNCTION exactly_router.partitions() RETURNS int
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n int := exactly_router.partitions_or_null();
BEGIN
    IF n IS NULL OR n OPERATOR(pg_catalog.=) 0 THEN
        RAISE EXCEPTION 'the router has no shards'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'CREATE SERVER exactly FOREIGN DATA WRAPPER plproxy OPTIONS (p0 ''dbname=...'', p1 ''...''), a power of two of them (docs/router.md)';
    END IF;
    RETURN n;
END $$;

-- The shard a hash lands on, as PL/Proxy would pick it (the partitions are a power of two).
CREATE FUNCTION exactly_router.shard_of(hash int) RETURNS int
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n int := exactly_router.partitions_or_null();
BEGIN
    IF n IS NULL OR n OPERATOR(pg_catalog.<) 1 OR n OPERATOR(pg_catalog.&) (n OPERATOR(pg_catalog.-) 1) OPERATOR(pg_catalog.<>) 0 THEN
        n := exactly_router.partitions();  -- raises when there is no server
        RAISE EXCEPTION 'the router has % partitions, not a power of two', n
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'list the shards as p0, p1, ... in server exactly, a power of two of them';
    END IF;
    RETURN hash OPERATOR(pg_catalog.&) (n OPERATOR(pg_catalog.-) 1);
END $$;

-- The shard of a key: a tenant, an account, a lock, lease or slot name. A key
-- `scope:rest` is the scope's, so a tenant's accounts and names share its shard. NULL goes
-- to shard 0, whose pg_exactly refuses it with its own error.
CREATE FUNCTION exactly.shard_for(key text) RETURNS int
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    colon int := pg_catalog.strpos(key, ':');
BEGIN
    RETURN exactly_router.shard_of(COALESCE(pg_catalog.hashtext(
        CASE WHEN colon OPERATOR(pg_catalog.>) 1
             THEN pg_catalog.left(key, colon OPERATOR(pg_catalog.-) 1) ELSE key END), 0));
END $$;
COMMENT ON FUNCTION exactly.shard_for(text) IS
    'pg_exactly_router: the shard that owns a tenant, account or name (a key scope:rest: the shard of scope)';

-- The shard of a user table's row: by the table's name (its last part, as PostgreSQL reads
-- it) and the key's values in column-name order, numbers in their shortest form and strings
-- as they are, so {"id": 1}, {"id": 1.0} and {"id": "1"} are one key.
CREATE FUNCTION exactly.shard_for_row(rel text, key jsonb) RETURNS int
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    name text[] := pg_catalog.parse_ident(rel);
    spelled text;
BEGIN
    IF pg_catalog.jsonb_typeof(key) OPERATOR(pg_catalog.=) 'object' THEN
        SELECT pg_catalog.string_agg(
                   e.key OPERATOR(pg_catalog.||) E'\x1e' OPERATOR(pg_catalog.||)
                   CASE WHEN pg_catalog.jsonb_typeof(e.value) OPERATOR(pg_catalog.=) 'number'
                        THEN pg_catalog.trim_scale(e.value::pg_catalog.text::pg_catalog.numeric)::pg_catalog.text
                        WHEN pg_catalog.jsonb_typeof(e.value) OPERATOR(pg_catalog.=) 'string'
                        THEN e.value OPERATOR(pg_catalog.#>>) '{}'::pg_catalog.text[]
                        ELSE e.value::pg_catalog.text END,
                   E'\x1f' ORDER BY e.key COLLATE "C")
        INTO spelled FROM pg_catalog.jsonb_each(key) AS e;
    ELSE
        spelled := key::pg_catalog.text;
    END IF;
    RETURN exactly_router.shard_of(COALESCE(pg_catalog.hashtext(
        name[pg_catalog.array_upper(name, 1)] OPERATOR(pg_catalog.||) E'\x1f' OPERATOR(pg_catalog.||) spelled), 0));
END $$;
COMMENT ON FUNCTION exactly.shard_for_row(text, jsonb) IS
    'pg_exactly_router: the shard that owns the row of table rel with key (find_or_create, increment)';

-- The shard an id was made on: a numbered shard's raffle and hold ids are shard * 2^48 + n,
-- its claim ids start with the shard's number in four hex digits (pg_exactly's set_shard).
-- Not reduced to the cluster's size: an id of a shard the cluster does not have is refused
-- by the shard it lands on, as not its own.
CREATE FUNCTION exactly_router.shard_of_id(id bigint) RETURNS int
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN COALESCE((id OPERATOR(pg_catalog.>>) 48)::pg_catalog.int4, 0);
END $$;

CREATE FUNCTION exactly.shard_of_claim(claim uuid) RETURNS int
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN COALESCE(('x' OPERATOR(pg_catalog.||) pg_catalog.left(claim::pg_catalog.text, 4))::pg_catalog.bit(16)::pg_catalog.int4, 0);
END $$;
COMMENT ON FUNCTION exactly.shard_of_claim(uuid) IS
    'pg_exactly_router: the shard a claim id was made on (its first four hex digits)';

-- Whether an error means the shard was lost: PL/Proxy's own (XX000 without REMOTE: it
-- could not connect, or lost the connection), or the shard shutting down under the call.
CREATE FUNCTION exactly_router.shard_lost(state text, message text) RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT $1 OPERATOR(pg_catalog.=) ANY ('{57P01,57P02,57P03}'::pg_catalog.text[])
        OR ($1 OPERATOR(pg_catalog.=) 'XX000' AND pg_catalog.strpos($2, '] REMOTE ') OPERATOR(pg_catalog.=) 0)
$$;

-- A wrapper's error handler: 08006 naming the shard (NULL: a call on every shard) when it
-- was lost; else the error as the shard raised it, without PL/Proxy's prefixes.
CREATE FUNCTION exactly_router.failed(shard int, state text, message text, detail text, hint text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF exactly_router.shard_lost(state, message) THEN
        PERFORM exactly_router.partitions();  -- no server `exactly`: say that instead
        RAISE EXCEPTION '%', CASE WHEN shard IS NULL THEN 'a shard is unavailable'
                                  ELSE pg_catalog.format('shard %s is unavailable', shard) END
            USING ERRCODE = 'connection_failure',
                  DETAIL = message,
                  HINT = CASE WHEN shard IS NULL
                    THEN 'this call runs on every shard; exactly.router_shards() says which are reachable'
                    ELSE 'calls for keys of other shards go on. A call that was running when its shard went away may have committed there: retry it with its idempotency key, or look' END;
    END IF;
    message := pg_catalog.regexp_replace(message, '^[^ ]+\(\d+\): \[[^]]*\] REMOTE [A-Z]+: ', '');
    -- an absent detail or hint reads as '' in the handler
    detail := pg_catalog.regexp_replace(detail, '^Remote detail: ', '');
    hint := pg_catalog.regexp_replace(hint, '^Remote hint: ', '');
    IF detail OPERATOR(pg_catalog.=) '' THEN detail := NULL; END IF;
    IF hint OPERATOR(pg_catalog.=) '' THEN hint := NULL; END IF;
    IF detail IS NULL AND hint IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = state, MESSAGE = message;
    ELSIF hint IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = state, MESSAGE = message, DETAIL = detail;
    ELSIF detail IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = state, MESSAGE = message, HINT = hint;
    END IF;
    RAISE EXCEPTION USING ERRCODE = state, MESSAGE = message, DETAIL = detail, HINT = hint;
END $$;

-- What the cluster is: one row per partition, with what its shard says of itself.
CREATE FUNCTION exactly_router.shard_itself(partition int)
RETURNS TABLE (set_shard int, version text)
LANGUAGE plproxy AS $$
    CLUSTER 'exactly';
    RUN ON partition;
    SELECT (SELECT s.shard FROM exactly.this_shard s) AS set_shard,
           (SELECT e.extversion FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) 'pg_exactly') AS version;
$$;

CREATE FUNCTION exactly.router_shards()
RETURNS TABLE (shard int, connection text, reachable boolean, set_shard int, version text, ok boolean, problem text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p record;
BEGIN
    FOR p IN
        SELECT pg_catalog.substr(o.option_name, 2)::pg_catalog.int4 AS n, o.option_value AS conn
        FROM pg_catalog.pg_foreign_server s, pg_catalog.pg_options_to_table(s.srvoptions) AS o
        WHERE s.srvname OPERATOR(pg_catalog.=) 'exactly'
          AND o.option_name OPERATOR(pg_catalog.~) '^p[0-9]+$'
        ORDER BY 1
    LOOP
        shard := p.n;
        connection := pg_catalog.regexp_replace(p.conn, 'password\s*=\s*(''([^'']|\\'')*''|\S+)', 'password=...', 'g');
        set_shard := NULL;
        version := NULL;
        problem := NULL;
        BEGIN
            SELECT i.set_shard, i.version INTO set_shard, version FROM exactly_router.shard_itself(p.n) AS i;
            reachable := true;
        EXCEPTION WHEN OTHERS THEN
            -- an error the shard raised means it was reached (PL/Proxy marks those REMOTE)
            reachable := pg_catalog.strpos(SQLERRM, '] REMOTE ') OPERATOR(pg_catalog.>) 0;
            problem := SQLERRM;
        END;
        ok := reachable AND problem IS NULL AND set_shard IS NOT DISTINCT FROM p.n
              AND version IS NOT NULL AND pg_catalog.string_to_array(version, '.')::pg_catalog.int4[]
                  OPERATOR(pg_catalog.>=) '{0,6,0}'::pg_catalog.int4[];
        problem := CASE
            WHEN NOT reachable THEN 'unreachable: ' OPERATOR(pg_catalog.||) problem
            WHEN problem IS NOT NULL THEN 'pg_exactly 0.6.0 or later is not installed there: ' OPERATOR(pg_catalog.||) problem
            WHEN version IS NULL THEN 'pg_exactly is not installed in this database'
            WHEN NOT ok AND set_shard IS NULL AND pg_catalog.string_to_array(version, '.')::pg_catalog.int4[]
                  OPERATOR(pg_catalog.<) '{0,6,0}'::pg_catalog.int4[]
                THEN 'pg_exactly ' OPERATOR(pg_catalog.||) version OPERATOR(pg_catalog.||) ' is too old: 0.6.0 or later numbers its ids'
            WHEN set_shard IS NULL THEN pg_catalog.format('not numbered: run SELECT exactly.set_shard(%s) there', p.n)
            WHEN NOT ok THEN pg_catalog.format('numbered %s, but it is partition p%s', set_shard, p.n)
            END;
        RETURN NEXT;
    END LOOP;
END $$;
COMMENT ON FUNCTION exactly.router_shards() IS
    'pg_exactly_router: the shards of server exactly, whether each is reachable and numbered as its partition';

-- lock, try_lock and check_fence act within the caller's transaction on the shard; a routed
-- call is a transaction of its own.
CREATE FUNCTION exactly_router.refuse_transaction_scoped(what text, name text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION '% cannot be called through the router', what
        USING ERRCODE = 'feature_not_supported',
              DETAIL = pg_catalog.format('%s acts within the transaction of the work it guards; a routed call is a transaction of its own on its shard, so it would end as the call returns.', what),
              HINT = pg_catalog.format('call exactly.%s on shard %s (SELECT exactly.shard_for(%L)) in the transaction of that work, or use a lease (exactly.acquire_lease) through the router',
                                       what, exactly.shard_for(name), name);
END $$;
