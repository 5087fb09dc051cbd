-- pg_exactly 0.5.0 -> 0.6.0: a database's number as a shard of a router (docs/router.md),
-- carried by the raffle, hold and claim ids it hands out; exactly.create_raffle.
CREATE TABLE exactly.this_shard (
    only_row bool PRIMARY KEY DEFAULT true CHECK (only_row),
    shard    int NOT NULL CHECK (shard BETWEEN 0 AND 32767),
    set_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE exactly.this_shard IS
    'pg_exactly: this database''s number as a shard (exactly.set_shard); its raffle, hold and claim ids carry it';
SELECT pg_catalog.pg_extension_config_dump('exactly.this_shard', '');

-- Number this database, once, before it is used as shard `shard` (0-based, in the order of
-- the router's partitions p0, p1, ...). Not granted to application roles.
CREATE FUNCTION exactly.set_shard(shard int) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    numbered int;
    low bigint;
    early text;
BEGIN
    IF shard IS NULL THEN
        RAISE EXCEPTION 'argument "shard" must not be NULL'
            USING ERRCODE = 'null_value_not_allowed', HINT = 'e.g. SELECT exactly.set_shard(2) on the router''s partition p2';
    END IF;
    IF shard OPERATOR(pg_catalog.<) 0 OR shard OPERATOR(pg_catalog.>) 32767 THEN
        RAISE EXCEPTION 'shard % is out of range', shard
            USING ERRCODE = 'invalid_parameter_value', HINT = 'a shard''s number is 0 to 32767: its partition pN in the router';
    END IF;
    SELECT s.shard INTO numbered FROM exactly.this_shard s;
    IF numbered OPERATOR(pg_catalog.=) shard THEN
        RETURN;
    ELSIF numbered IS NOT NULL THEN
        RAISE EXCEPTION 'this database is shard %, not %', numbered, shard
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'a shard''s number cannot change: the ids it handed out carry it';
    END IF;
    low := shard::bigint OPERATOR(pg_catalog.<<) 48;
    IF shard OPERATOR(pg_catalog.>) 0 THEN
        -- ids made before the number would route to shard 0
        SELECT w INTO early FROM (
            SELECT 'raffles' FROM exactly.raffles r
            WHERE (r.id OPERATOR(pg_catalog.>>) 48) OPERATOR(pg_catalog.<>) shard
            UNION ALL
            SELECT 'holds' FROM exactly.holds h
            WHERE (h.id OPERATOR(pg_catalog.>>) 48) OPERATOR(pg_catalog.<>) shard
            UNION ALL
            SELECT 'claims' FROM exactly.claims) AS e(w)
        LIMIT 1;
        IF early IS NOT NULL THEN
            RAISE EXCEPTION 'this database has % made before it was numbered', early
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = pg_catalog.format('Their ids would send the router to shard 0, not shard %s.', shard),
                      HINT = 'number a database before it is used, or make it shard 0';
        END IF;
        PERFORM pg_catalog.setval('exactly.raffles_id_seq', low, false)
        WHERE (SELECT q.last_value FROM exactly.raffles_id_seq q) OPERATOR(pg_catalog.<) low;
        PERFORM pg_catalog.setval('exactly.holds_id_seq', low, false)
        WHERE (SELECT q.last_value FROM exactly.holds_id_seq q) OPERATOR(pg_catalog.<) low;
    END IF;
    INSERT INTO exactly.this_shard (shard) VALUES (shard);
END $$;
COMMENT ON FUNCTION exactly.set_shard(int) IS
    'pg_exactly: number this database as shard N of a router (once, before use); its raffle, hold and claim ids carry N';

-- `value`, once this database is shard `shard`; else 55000. A router wraps the first
-- argument of every call it routes in it, so a call sent to the wrong database (partitions
-- listed in another order than the shards were numbered) changes nothing there.
CREATE FUNCTION exactly.on_shard(shard int, value anyelement) RETURNS anyelement
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    numbered int;
BEGIN
    SELECT s.shard INTO numbered FROM exactly.this_shard s;
    IF numbered IS NULL OR numbered OPERATOR(pg_catalog.<>) shard THEN
        RAISE EXCEPTION 'this database is %, not shard %',
                COALESCE('shard ' OPERATOR(pg_catalog.||) numbered, 'not numbered as a shard'), shard
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = CASE WHEN numbered IS NULL
                    THEN pg_catalog.format('number it: SELECT exactly.set_shard(%s), if it is the router''s partition p%s', shard, shard)
                    ELSE 'the router lists its partitions in another order than its shards were numbered: compare exactly.router_shards() there' END;
    END IF;
    -- PL/Proxy reads what this connection prints as text: dates must be unambiguous
    IF NOT pg_catalog.starts_with(pg_catalog.current_setting('DateStyle'), 'ISO') THEN
        RAISE EXCEPTION 'a router''s connection to a shard must use DateStyle ISO, not %', pg_catalog.current_setting('DateStyle')
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'ALTER ROLE ... SET DateStyle = ''ISO'' for the role the router connects as, or options=''-c DateStyle=ISO'' in its connection string';
    END IF;
    RETURN value;
END $$;
COMMENT ON FUNCTION exactly.on_shard(int, anyelement) IS
    'pg_exactly: value, once this database is shard N (exactly.set_shard); else 55000. For routers';

-- A new claim id: random, with this shard's number in its first four hex digits.
CREATE FUNCTION exactly.new_claim_id() RETURNS uuid
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN s.shard IS NULL THEN g.id
           ELSE pg_catalog.overlay(g.id::pg_catalog.text, pg_catalog.lpad(pg_catalog.to_hex(s.shard), 4, '0'), 1, 4)::pg_catalog.uuid
           END
    FROM (SELECT pg_catalog.gen_random_uuid()) AS g(id) LEFT JOIN exactly.this_shard s ON true
$$;

-- Create a raffle and return its id: what INSERT INTO exactly.raffles ... RETURNING id does,
-- as a function a router can call on a shard. SECURITY DEFINER: raffles are pg_exactly's
-- state; an application role may insert these two columns anyway.
CREATE FUNCTION exactly.create_raffle(tickets_requested bigint, code_length int DEFAULT 12) RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO exactly.raffles (tickets_requested, code_length) VALUES ($1, $2) RETURNING id
$$;
COMMENT ON FUNCTION exactly.create_raffle(bigint, int) IS
    'pg_exactly: create a raffle of tickets_requested tickets; returns its id';

CREATE OR REPLACE FUNCTION exactly.grant_usage(role regrole) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF role IS NULL THEN
        RAISE EXCEPTION 'argument "role" must not be NULL'
            USING ERRCODE = 'null_value_not_allowed', HINT = 'e.g. SELECT exactly.grant_usage(''app'')';
    END IF;
    -- regrole's text is the role's name, quoted where needed
    EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA exactly TO %s', role);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA exactly TO %s', role);
    EXECUTE pg_catalog.format('REVOKE EXECUTE ON FUNCTION exactly.grant_usage(regrole) FROM %s', role);
    EXECUTE pg_catalog.format('REVOKE EXECUTE ON FUNCTION exactly.set_shard(int) FROM %s', role);
    EXECUTE pg_catalog.format('GRANT SELECT ON ALL TABLES IN SCHEMA exactly TO %s', role);
    -- a raffle is created by inserting its row; an account may be opened beforehand to set
    -- its limit: those columns only
    EXECUTE pg_catalog.format('GRANT INSERT (tickets_requested, code_length) ON exactly.raffles TO %s', role);
    EXECUTE pg_catalog.format('GRANT INSERT (account, min_balance, max_balance, currency) ON exactly.accounts TO %s', role);
END $$;
COMMENT ON FUNCTION exactly.grant_usage(regrole) IS
    'pg_exactly: give an application role everything it needs, and no way to write state around the functions';

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA exactly FROM PUBLIC;

-- roles given usage under 0.5.0 get the new functions and table now
DO $$
DECLARE
    grantee pg_catalog.regrole;
BEGIN
    FOR grantee IN
        SELECT DISTINCT a.grantee::pg_catalog.regrole
        FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a
        WHERE n.nspname OPERATOR(pg_catalog.=) 'exactly'
          AND a.privilege_type OPERATOR(pg_catalog.=) 'USAGE'
          AND a.grantee OPERATOR(pg_catalog.<>) n.nspowner
          AND a.grantee OPERATOR(pg_catalog.<>) 0
    LOOP
        RAISE NOTICE 'pg_exactly 0.6.0: exactly.grant_usage(%) run again for the new functions and table', grantee;
        PERFORM exactly.grant_usage(grantee);
    END LOOP;
END $$;
