
-- Who may call the router: nobody until exactly.grant_usage(role). A routed call connects
-- to the shards as the user mapping of server `exactly` says, for the calling role or
-- PUBLIC; give that user pg_exactly's grant_usage on every shard.
CREATE FUNCTION exactly.grant_usage(role regrole) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF role IS NULL THEN
        RAISE EXCEPTION 'argument "role" must not be NULL'
            USING ERRCODE = 'null_value_not_allowed', HINT = 'e.g. SELECT exactly.grant_usage(''app'')';
    END IF;
    EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA exactly, exactly_router TO %s', role);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA exactly, exactly_router TO %s', role);
    EXECUTE pg_catalog.format('REVOKE EXECUTE ON FUNCTION exactly.grant_usage(regrole) FROM %s', role);
    IF EXISTS (SELECT FROM pg_catalog.pg_foreign_server s WHERE s.srvname OPERATOR(pg_catalog.=) 'exactly') THEN
        EXECUTE pg_catalog.format('GRANT USAGE ON FOREIGN SERVER exactly TO %s', role);
    END IF;
END $$;
COMMENT ON FUNCTION exactly.grant_usage(regrole) IS
    'pg_exactly_router: let a role call the router''s functions (and use server exactly)';

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA exactly, exactly_router FROM PUBLIC;
